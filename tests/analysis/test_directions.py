"""directions.safetensors: the fitted readouts, reloaded, reproduce the report's held-out numbers."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from turnphase.analysis import AnalysisConfig, Directions, analyze
from turnphase.analysis.directions import DIRECTIONS_FILE
from turnphase.builders.errors import TurnphaseError


def read(dataset, config: str, columns: list[str]) -> pa.Table:
    return pa.concat_tables(
        [pq.read_table(s, columns=columns) for s in sorted((dataset / config).glob("*.parquet"))]
    )


def held_out_rows(dataset, layer: int):
    """Activations, conversation ids and phases of the analysed (non-template turn) rows."""
    t = read(dataset, f"layer_{layer}", ["conversation_id", "phase", "activation"])
    phase = t["phase"].to_numpy(zero_copy_only=False).astype(float)
    keep = ~np.asarray(read(dataset, "tokens", ["is_template"])["is_template"]) & ~np.isnan(phase)
    x = np.stack(t["activation"].to_numpy(zero_copy_only=False))[keep].astype(np.float64)
    return x, np.asarray(t["conversation_id"])[keep], phase[keep]


def test_reloaded_probes_reproduce_the_reports_r2(helix_dataset, helix_report):
    d = Directions.load(helix_report["_out"] / DIRECTIONS_FILE)
    layer = 1
    x, conv, phase = held_out_rows(helix_dataset, layer)
    targets = {"phase": phase, "sin": np.sin(2 * np.pi * phase), "cos": np.cos(2 * np.pi * phase)}
    for probe in ("linear", "trig", "helix"):
        pred = np.full(
            (len(x), len(d.layers[layer].folds[0].readouts["real"][f"probe/{probe}"].targets)), np.nan
        )
        for f in d.layers[layer].folds:
            rows = np.isin(conv, d.held_out(f.fold))
            pred[rows] = f.readouts["real"][f"probe/{probe}"](x[rows])
        assert not np.isnan(pred).any(), "every analysed conversation is held out once"
        names = d.layers[layer].folds[0].readouts["real"][f"probe/{probe}"].targets
        r2 = np.mean(
            [
                1 - np.sum((targets[t] - pred[:, i]) ** 2) / np.sum((targets[t] - targets[t].mean()) ** 2)
                for i, t in enumerate(names)
            ]
        )
        reported = helix_report["layers"][str(layer)]["probes"]["phase"][probe]["acts"]["real"]["r2"]
        assert r2 == pytest.approx(reported, abs=2e-3), probe


def test_analyze_without_a_folder_returns_the_same_directions(helix_dataset, helix_report, tmp_path):
    result = analyze(AnalysisConfig(source=str(helix_dataset), layers=[1]), verbose=False)
    assert result.out is None and result.report["directions"] is None
    saved = Directions.load(helix_report["_out"])  # a folder finds its file
    for pairing in ("real", "scrambled"):
        for name, r in result.directions.layers[1].folds[2].readouts[pairing].items():
            np.testing.assert_allclose(
                r.weight, saved.layers[1].folds[2].readouts[pairing][name].weight, rtol=1e-9
            )
    assert result.report["layers"]["1"]["probes"] == helix_report["layers"]["1"]["probes"]
    assert saved.metadata["phase_scheme"] == "phase" and saved.metadata["model"]["id"]
    # the real probe's direction is not the scrambled null's
    real = saved.layers[1].folds[0].readouts["real"]["probe/linear"].weight[:, 0]
    null = saved.layers[1].folds[0].readouts["scrambled"]["probe/linear"].weight[:, 0]
    assert abs(real @ null) / np.linalg.norm(real) / np.linalg.norm(null) < 0.5


def test_a_broken_file_is_one_line(tmp_path):
    bad = tmp_path / DIRECTIONS_FILE
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(TurnphaseError, match="not a readable safetensors file"):
        Directions.load(bad)
    with pytest.raises(TurnphaseError, match="no such file"):
        Directions.load(tmp_path / "absent.safetensors")
