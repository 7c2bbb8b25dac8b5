"""The analysis reads what `turnphase build` writes: a tiny random chat model, built through the
CLI, then analysed (the builder/analysis contract, beyond the synthetic writer's)."""

from __future__ import annotations

import json

from tiny_model import TINY_BUILD_ARGS, save_tiny_chat_model

from turnphase.analysis import rotation
from turnphase.builders.cli import main
from turnphase.builders.validate import validate


def test_analyze_a_built_dataset(tmp_path, capsys):
    model = save_tiny_chat_model(tmp_path / "model")
    args = list(TINY_BUILD_ARGS)
    args[args.index("-n") + 1] = "12"  # 5 conversation folds of at least 2 conversations each
    args[args.index("--rounds") + 1] = "3"
    assert main(["build", "--out", str(tmp_path / "ds"), "--model", str(model), *args]) == 0
    assert validate(tmp_path / "ds") == []
    r = ["analyze", str(tmp_path / "ds"), "--out", str(tmp_path / "r"), "--streaming", "--include-template"]
    assert main(r) == 0
    assert "verdict" in capsys.readouterr().out

    prov = json.loads((tmp_path / "ds" / "turnphase.json").read_text())
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    by_role = prov["counts"]["tokens_by_role"]
    assert report["tokens"] == {
        "rows": prov["counts"]["tokens"],
        "analysed": by_role["user"] + by_role["assistant"],
        "template_excluded": {"user": 0, "assistant": 0},
        "rounds_in_fourier": prov["counts"]["conversations"] * 3,
    }
    assert report["model"] == prov["model"]["id"]
    assert sorted(report["layers"], key=int) == [str(L) for L in prov["layers"]]
    for entry in report["layers"].values():
        for probe in entry["probes"]["phase"].values():
            assert probe["acts"]["scrambled"]["r2"] < 0.05
        assert entry["verdict"]["verdict"] in rotation.VERDICTS
