"""On planted geometry the analysis finds what was planted, and nothing where nothing was."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from reference import load_reference
from sklearn.decomposition import PCA
from synthetic import planted_basis

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze

LAYERS = ("1", "2")


@pytest.fixture(scope="module")
def switch_report(switch_dataset, tmp_path_factory):
    return analyze(
        AnalysisConfig(source=str(switch_dataset)), tmp_path_factory.mktemp("sw") / "r", verbose=False
    )


@pytest.fixture(scope="module")
def noise_report(noise_dataset, tmp_path_factory):
    return analyze(
        AnalysisConfig(source=str(noise_dataset)), tmp_path_factory.mktemp("no") / "r", verbose=False
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_helix_is_found(helix_report, helix_dataset, layer):
    probes, fourier = (
        helix_report["layers"][layer]["probes"],
        helix_report["layers"][layer]["fourier"]["real"],
    )
    assert probes["helix"]["real"]["r2"] > 0.75
    assert min(probes["trig"]["real"]["r2_per_target"].values()) > 0.75
    assert probes["linear"]["real"]["r2"] > 0.6
    assert probes["trig"]["real"]["phase_mae"] < 0.06
    assert fourier["angle_phase_circcorr"] > 0.7
    assert fourier["angle_phase_locking"] > 0.8

    # The best PC pair spans the plane the clock was planted in. PCA cannot keep the line out of
    # it entirely: phase correlates with sin(2 pi phase), so the planted sin and line directions
    # share variance and the top PCs tilt toward the line, inside the helix's 3-D span.
    ref = load_reference(helix_dataset, int(layer))
    components = PCA(helix_report["config"]["n_pcs"]).fit(ref.x).components_
    plane = components[fourier["best_pair"]].T  # (d_model, 2)
    basis = planted_basis(ref.x.shape[1]).T  # (d_model, 3): cos, sin, line
    assert np.degrees(scipy.linalg.subspace_angles(plane, basis)).max() < 10
    to_clock = np.degrees(scipy.linalg.subspace_angles(plane, basis[:, :2]))
    assert to_clock.min() < 5 and to_clock.max() < 35


@pytest.mark.parametrize("layer", LAYERS)
def test_scrambled_control_shows_no_signal(helix_report, layer):
    entry = helix_report["layers"][layer]
    for probe in entry["probes"].values():
        assert probe["scrambled"]["r2"] < 0.02
        assert probe["scrambled"]["ci95"][0] < 0.01
    scrambled, real = entry["fourier"]["scrambled"], entry["fourier"]["real"]
    assert abs(scrambled["angle_phase_circcorr"]) < 0.15 and scrambled["angle_phase_locking"] < 0.15
    assert scrambled["pair_score"] < 0.01 * real["pair_score"]


@pytest.mark.parametrize("layer", LAYERS)
def test_switch_does_not_pass_as_a_clock(switch_report, helix_report, layer):
    """Only whose turn it is: sin(2 pi phase) follows the role, cos does not, and nothing turns."""
    probes, fourier = (
        switch_report["layers"][layer]["probes"],
        switch_report["layers"][layer]["fourier"]["real"],
    )
    assert probes["trig"]["real"]["r2_per_target"]["cos"] < 0.05
    assert probes["trig"]["real"]["r2_per_target"]["sin"] > 0.4  # the role is found ...
    assert abs(fourier["angle_phase_circcorr"]) < 0.3  # ... but no angle tracks the phase
    assert fourier["angle_phase_locking"] < 0.5
    assert fourier["pair_score"] < 0.1 * helix_report["layers"][layer]["fourier"]["real"]["pair_score"]
    assert probes["trig"]["real"]["phase_mae"] > 0.1


def test_noise_has_nothing(noise_report):
    for entry in noise_report["layers"].values():
        for probe in entry["probes"].values():
            assert probe["real"]["r2"] < 0.02
        assert abs(entry["fourier"]["real"]["angle_phase_circcorr"]) < 0.15


def test_report_folder_holds_what_it_lists(helix_report):
    out = helix_report["_out"]
    listed = set(helix_report["figures"])
    for entry in helix_report["layers"].values():
        listed |= set(entry["figures"]) | {entry["token_view"]}
    assert {p.name for p in out.iterdir()} == listed | {"report.json"}
    assert all(name.endswith(".png") for name in listed if "token_view" not in name)
    html = (out / "layer1_token_view.html").read_text()
    assert "<span" in html and "t10" in html
    assert not list(out.parent.glob(".*partial*"))
