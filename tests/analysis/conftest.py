"""Planted-geometry datasets and analysed reports, built once per test session."""

from __future__ import annotations

import pytest
from synthetic import write_synthetic_dataset

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze

# One layer, 64 wide (room for the weak helix's 30 distractors), 20 conversations x 3 rounds
PLANTED = {"n_conversations": 20, "rounds": 3, "d_model": 64, "layers": (1,)}


@pytest.fixture(scope="session")
def helix_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("helix") / "ds", geometry="helix")


@pytest.fixture(scope="session")
def helix_report(helix_dataset, tmp_path_factory) -> dict:
    """The in-memory report of the helix dataset, with default settings."""
    out = tmp_path_factory.mktemp("helix_report") / "report"
    report = analyze(AnalysisConfig(source=str(helix_dataset)), out, verbose=False).report
    report["_out"] = out
    return report


@pytest.fixture(scope="session")
def planted_report(tmp_path_factory):
    """geometry -> the default report of a planted dataset (tests/synthetic.py), built on first use."""
    reports: dict[str, dict] = {}

    def get(geometry: str) -> dict:
        if geometry not in reports:
            root = tmp_path_factory.mktemp(geometry)
            ds = write_synthetic_dataset(root / "ds", geometry=geometry, seed=len(reports) + 1, **PLANTED)
            reports[geometry] = analyze(AnalysisConfig(source=str(ds)), root / "report", verbose=False).report
        return reports[geometry]

    return get
