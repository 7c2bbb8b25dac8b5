"""Streaming and in-memory analyses of the same dataset give the same report."""

from __future__ import annotations

from reference import assert_same

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze


def test_streaming_report_equals_in_memory(helix_dataset, helix_report, tmp_path):
    streamed = analyze(
        AnalysisConfig(source=str(helix_dataset), streaming=True), tmp_path / "r", verbose=False
    ).report
    memory = {k: v for k, v in helix_report.items() if k != "_out"}
    assert streamed["config"].pop("streaming") is True
    assert memory["config"].pop("streaming") is False
    assert_same(streamed, memory)


def test_batch_size_changes_memory_not_results(helix_dataset, helix_report, tmp_path):
    small = analyze(
        AnalysisConfig(source=str(helix_dataset), streaming=True, batch_size=500, layers=[2]),
        tmp_path / "r",
        verbose=False,
    ).report
    assert_same(small["layers"]["2"], helix_report["layers"]["2"])
