"""`turnphase compare`: reports of two variants side by side on a relative-depth axis, saying only
what the reports say; bad input is one line and writes nothing."""

from __future__ import annotations

import json

import pytest
from synthetic import write_synthetic_dataset

from turnphase.analysis import AnalysisConfig, analyze
from turnphase.analysis.compare import compare
from turnphase.analysis.split import NULLS
from turnphase.builders.cli import main
from turnphase.builders.errors import TurnphaseError


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory):
    """A helix model with 3 layers (layers 1, 2 analysed) and a switch model with 5 (1 and 4)."""
    root = tmp_path_factory.mktemp("variants")
    dirs = []
    for geometry, layers in (("helix", (1, 2)), ("switch", (1, 4))):
        data = write_synthetic_dataset(root / geometry, geometry=geometry, layers=layers)
        analyze(AnalysisConfig(str(data), n_bootstrap=50), root / f"report_{geometry}", verbose=False)
        dirs.append(root / f"report_{geometry}")
    return dirs


def test_variants_side_by_side_by_relative_depth(two_reports, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_reports), "--out", str(out)]) == 0
    assert "# Variants side by side" in capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    helix, switch = result["variants"]
    assert (helix["model"], switch["model"]) == ("synthetic-helix", "synthetic-switch")
    assert [r["depth"] for r in helix["layers"]] == [0.5, 1.0]  # layers 1, 2 of 0..2
    assert [r["depth"] for r in switch["layers"]] == [0.25, 1.0]  # layers 1, 4 of 0..4
    for variant, folder in zip(result["variants"], two_reports, strict=True):
        report = json.loads((folder / "report.json").read_text())
        for row in variant["layers"]:
            e = report["layers"][str(row["layer"])]
            assert row["verdict"] == e["verdict"]["verdict"]
            trig = e["probes"]["phase"]["trig"]["acts"]
            assert row["trig_r2"] == trig["real"]["r2"]
            assert row["trig_r2_null"] == max(trig[n]["r2"] for n in NULLS)
            for plane in ("pair", "fourier", "trig"):
                assert row[f"wheel_{plane}"] == e["planes"][plane]["real"]["circcorr"]["value"]
            for d in ("user_to_assistant", "assistant_to_user"):
                assert row[f"transfer_{d}"] == e["rotation"]["transfer"]["real"][d]["value"]
        assert variant["findings"] == report["findings"]
    assert {r["verdict"] for r in helix["layers"]} == {"helix"}
    assert "helix" not in {r["verdict"] for r in switch["layers"]}
    md = (out / "compare.md").read_text()
    assert md.count("| synthetic-helix |") == 2 and md.count("| synthetic-switch |") == 2
    figure = out / result["figures"][0]
    assert figure.suffix == ".png" and figure.stat().st_size > 0


def test_steering_findings_join_their_model(two_reports, tmp_path):
    steer = tmp_path / "steer"
    steer.mkdir()
    steer_json = {"model": {"id": "synthetic-switch"}, "findings": ["No condition changes turn length."]}
    (steer / "steer.json").write_text(json.dumps(steer_json))
    result = compare(two_reports, steer_dirs=[steer])
    assert result["variants"][0]["steering"] is None
    assert result["variants"][1]["steering"]["findings"] == steer_json["findings"]
    steer_json["model"]["id"] = "someone-else"
    (steer / "steer.json").write_text(json.dumps(steer_json))
    with pytest.raises(TurnphaseError, match="none of the reports analysed"):
        compare(two_reports, steer_dirs=[steer])


def test_bad_input_is_one_line_and_writes_nothing(two_reports, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(two_reports[0]), str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no report.json; is it a `turnphase analyze` folder?" in err[0]
    old = tmp_path / "old"
    old.mkdir()
    report = json.loads((two_reports[0] / "report.json").read_text())
    del report["dataset"]["n_layers"]  # a report from before turnphase recorded the depth
    (old / "report.json").write_text(json.dumps(report))
    with pytest.raises(TurnphaseError, match="rerun `turnphase analyze`"):
        compare([old])
    report["dataset"]["n_layers"], report["phase_scheme"] = 3, "phase_round"
    (old / "report.json").write_text(json.dumps(report))
    with pytest.raises(TurnphaseError, match="different phase schemes"):
        compare([two_reports[0], old])
    assert not out.exists()
