"""Streaming and in-memory analyses of the same dataset give the same report."""

from __future__ import annotations

import numpy as np

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze


def assert_same(a, b, path="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and a and isinstance(a[0], (dict, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, list) and a and isinstance(a[0], str):
        assert a == b, path
    elif isinstance(a, (float, int, list)) and not isinstance(a, bool):
        np.testing.assert_allclose(
            np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-7, atol=1e-9, err_msg=path
        )
    else:
        assert a == b, path


def test_streaming_report_equals_in_memory(helix_dataset, helix_report, tmp_path):
    streamed = analyze(
        AnalysisConfig(source=str(helix_dataset), streaming=True), tmp_path / "r", verbose=False
    )
    memory = {k: v for k, v in helix_report.items() if k != "_out"}
    assert streamed["config"].pop("streaming") is True
    assert memory["config"].pop("streaming") is False
    assert_same(streamed, memory)


def test_batch_size_changes_memory_not_results(helix_dataset, helix_report, tmp_path):
    small = analyze(
        AnalysisConfig(source=str(helix_dataset), streaming=True, batch_size=500, layers=[2]),
        tmp_path / "r",
        verbose=False,
    )
    assert_same(small["layers"]["2"], helix_report["layers"]["2"])
