"""Both passes on a Dask cluster (analysis/cluster.py) give the single-process report.

The sums of row subsets merge into the sums of all rows (what the tree reduction relies on), and a
2-process local cluster reproduces the in-memory report of the planted helix; a shard that fails on a
worker is one TurnphaseError and no report folder. (tests/analysis/test_hub_source.py runs a cluster
on a Hub id, whose shards the workers read over hf:// URLs.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reference import assert_same
from synthetic import write_synthetic_dataset

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.layer import LayerInputs, LocalPasses, Scores, analysed_batches, analyze_layer
from turnphase.analysis.report import analyze
from turnphase.analysis.source import DatasetSource
from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError
from turnphase.timing import Stopwatch

pytest.importorskip("distributed")


def without_run_details(report: dict) -> dict:
    """The report minus what says how it was run: the config's cluster fields and the timings."""
    report = {k: v for k, v in report.items() if k not in ("timings", "_out")}
    report["config"] = {k: v for k, v in report["config"].items() if k not in ("workers", "scheduler")}
    return report


def test_two_worker_cluster_gives_the_in_memory_report(helix_dataset, helix_report, tmp_path):
    assert len(list((helix_dataset / "layer_1").glob("*.parquet"))) >= 3  # a tree, not one task
    got = analyze(AnalysisConfig(source=str(helix_dataset), workers=2), tmp_path / "r", verbose=False).report
    assert got["config"]["workers"] == 2
    assert_same(without_run_details(got), without_run_details(helix_report))
    assert (tmp_path / "r" / "report.json").is_file()


class Subsets:
    """layer.Passes that accumulates three uneven runs of batches apart and merges them out of order,
    as the cluster's tree does with shards."""

    def __init__(self, data):
        self.data = data

    def _runs(self, inputs):
        batches = list(analysed_batches(self.data, inputs.labels, "test", Stopwatch()))
        assert len(batches) >= 3
        cuts = [0, 1, len(batches) // 2 + 1, len(batches)]
        return [batches[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def sums(self, inputs):
        runs = self._runs(inputs)
        shift = runs[0][0][1].mean(axis=0)  # the first batch's mean, as a single pass takes it
        parts = []
        for run in runs:
            sums = inputs.new_sums(self.data.src.d_model, shift)
            for rows, x in run:
                inputs.add_sums(sums, rows, x)
            parts.append(sums)
        with pytest.raises(ValueError, match="different shifts"):
            inputs.new_sums(self.data.src.d_model, shift + 1).merge(parts[0])
        return parts[2].merge(parts[0]).merge(parts[1])

    def scores(self, inputs, fitted):
        parts = []
        for run in self._runs(inputs):
            scores = Scores(inputs, fitted)
            for rows, x in run:
                scores.add(inputs, fitted, rows, x)
            parts.append(scores)
        return parts[1].merge(parts[2]).merge(parts[0])


def test_row_subsets_merged_out_of_order_give_the_layer_result_of_one_pass(helix_dataset):
    config = AnalysisConfig(source=str(helix_dataset), batch_size=300)
    src = DatasetSource.open(config.source, batch_size=config.batch_size)
    inputs = LayerInputs.of(src.labels(config), config)
    data = src.layer(1, inputs.labels)
    one = analyze_layer(1, LocalPasses(data, Stopwatch()), inputs)
    merged = analyze_layer(1, Subsets(data), inputs)

    assert merged.scores.index.keys() == one.scores.index.keys()
    cols = [merged.scores.index[name] for name in one.scores.index]
    np.testing.assert_allclose(merged.scores.table[:, cols], one.scores.table, rtol=1e-8, atol=1e-10)
    for name, res in one.pairings.items():
        got = merged.pairings[name]
        np.testing.assert_allclose(got.scatter, res.scatter, rtol=1e-6, atol=1e-6)
        assert not np.isnan(got.scatter).any()  # every sampled token was captured by some subset
        if res.spectrum is not None:
            np.testing.assert_allclose(got.spectrum.coherence, res.spectrum.coherence, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(merged.view_estimate, one.view_estimate, rtol=1e-6, atol=1e-6)


def test_a_shard_that_fails_on_a_worker_is_one_error_and_no_report(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", n_conversations=10, rounds=2, d_model=16, layers=(1,))
    shard = sorted((ds / "layer_1").glob("*.parquet"))[1]
    table = pq.read_table(shard)
    acts = table.column(schema.ACTIVATION).to_pylist()
    acts[3] = [float("nan")] * len(acts[3])
    table = table.set_column(
        table.schema.get_field_index(schema.ACTIVATION),
        schema.ACTIVATION,
        pa.array(acts, table.schema.field(schema.ACTIVATION).type),
    )
    pq.write_table(table, shard)
    # the recorded sha256 now differs: drop the record so the read reaches the workers
    prov_path = ds / schema.PROVENANCE_FILE
    prov = json.loads(prov_path.read_text())
    prov.pop("sha256", None)
    prov_path.write_text(json.dumps(prov))
    with pytest.raises(TurnphaseError, match="layer_1 rows .* non-finite"):
        analyze(AnalysisConfig(source=str(ds), workers=2), tmp_path / "r", verbose=False)
    assert not (tmp_path / "r").exists()


def test_workers_and_scheduler_together_are_refused(helix_dataset, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "turnphase.builders.cli",
        "analyze",
        str(helix_dataset),
        "--out",
        str(tmp_path / "r"),
    ]
    done = subprocess.run(
        [*cmd, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    # Dask's own setting bounds the wait for a scheduler (default 30 s)
    env = os.environ | {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    done = subprocess.run(
        [*cmd, "--scheduler", "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:1" in errors[-1]
    assert not (tmp_path / "r").exists()
