"""Planted-geometry datasets and one analysed report, built once per test session."""

from __future__ import annotations

import pytest
from synthetic import write_synthetic_dataset

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze


@pytest.fixture(scope="session")
def helix_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("helix") / "ds", geometry="helix")


@pytest.fixture(scope="session")
def switch_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("switch") / "ds", geometry="switch", seed=1)


@pytest.fixture(scope="session")
def noise_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("noise") / "ds", geometry="noise", seed=2)


@pytest.fixture(scope="session")
def helix_report(helix_dataset, tmp_path_factory) -> dict:
    """The in-memory report of the helix dataset, with default settings."""
    out = tmp_path_factory.mktemp("helix_report") / "report"
    report = analyze(AnalysisConfig(source=str(helix_dataset)), out, verbose=False)
    report["_out"] = out
    return report
