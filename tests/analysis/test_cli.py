"""`turnphase analyze`: one clear line and exit 2 on bad input, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from synthetic import write_synthetic_dataset

from turnphase.builders.cli import main
from turnphase.builders.provenance import sha256_file


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["analyze", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_source(capsys, tmp_path):
    rc, _, err = run(capsys, tmp_path / "nothing", "--out", tmp_path / "r")
    assert rc == 2
    assert "no such dataset folder" in error_line(err)
    assert not (tmp_path / "r").exists()


def test_folder_without_provenance(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, tmp_path / "empty", "--out", tmp_path / "r")
    assert rc == 2 and "not a turnphase dataset" in error_line(err)


def test_existing_report_folder_is_refused(capsys, helix_dataset, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("mine")
    rc, _, err = run(capsys, helix_dataset, "--out", tmp_path / "r")
    assert rc == 2 and "--overwrite" in error_line(err)
    assert (tmp_path / "r" / "keep.txt").read_text() == "mine"


def test_layer_not_in_dataset(capsys, helix_dataset, tmp_path):
    rc, _, err = run(capsys, helix_dataset, "--out", tmp_path / "r", "--layers", "1,7")
    assert rc == 2 and "--layers: layer(s) [7] not in the dataset, which holds [1, 2]" in error_line(err)


def test_bad_layers_argument(capsys, helix_dataset, tmp_path):
    rc, _, err = run(capsys, helix_dataset, "--out", tmp_path / "r", "--layers", "x")
    assert rc == 2 and "--layers: 'x': use auto, all, 13-24" in error_line(err)
    assert not (tmp_path / "r").exists()


def test_corrupt_shard_leaves_nothing(capsys, tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds")
    (ds / "layer_2" / "train-00001-of-00003.parquet").write_bytes(b"not parquet")
    rc, _, err = run(capsys, ds, "--out", tmp_path / "r", "--streaming")
    assert rc == 2 and "layer_2" in error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_misaligned_layer_rows_are_an_error(capsys, tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds")
    a, b = ds / "layer_1" / "train-00000-of-00003.parquet", ds / "layer_1" / "train-00001-of-00003.parquet"
    shutil.move(a, tmp_path / "tmp.parquet")
    shutil.move(b, a)
    shutil.move(tmp_path / "tmp.parquet", b)
    rc, _, err = run(capsys, ds, "--out", tmp_path / "r", "--streaming", "--layers", "1")
    assert rc == 2 and "sha256 differs" in error_line(err)  # the integrity record catches it first
    # as if the build had written them so: the row check while streaming still catches it
    prov = json.loads((ds / "turnphase.json").read_text())
    prov["sha256"] = {rel: sha256_file(ds / rel) for rel in prov["sha256"]}
    (ds / "turnphase.json").write_text(json.dumps(prov))
    rc, _, err = run(capsys, ds, "--out", tmp_path / "r", "--streaming", "--layers", "1")
    assert rc == 2 and "do not line up with the tokens config" in error_line(err)


def test_options_reach_the_report_and_overwrite_replaces(capsys, helix_dataset, tmp_path):
    args = [helix_dataset, "--out", tmp_path / "r", "--layers", "2", "--split", "token", "--seed", "3"]
    args += ["--phase-scheme", "phase_round", "--bootstrap", "200", "--folds", "4", "--fourier-pcs", "8"]
    rc, out, _ = run(capsys, *args, "--include-template")
    assert rc == 0
    assert "verdict" in out and "report.json" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["split"]["kind"] == "token" and report["split"]["seed"] == 3
    assert report["split"]["folds"] == 4 and len(report["split"]["tokens_per_fold"]) == 4
    assert report["config"]["fourier_pcs"] == 8
    assert report["phase_scheme"] == "phase_round" and report["config"]["exclude_template"] is False
    assert report["tokens"]["template_excluded"] == {"user": 0, "assistant": 0}
    assert list(report["layers"]) == ["2"]
    probes = report["layers"]["2"]["probes"]
    assert list(probes) == ["phase_round", "phase"]  # the configured scheme first, the other beside it
    assert (
        probes["phase"]["helix"]["acts"]["real"]["r2"] > probes["phase_round"]["helix"]["acts"]["real"]["r2"]
    )
    assert probes["phase_round"]["helix"]["acts"]["real"]["r2"] > 0.3  # phase_round is not what was planted

    rc, _, _ = run(capsys, *args, "--overwrite")
    assert rc == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["config"]["exclude_template"] is True
    assert sum(report["tokens"]["template_excluded"].values()) > 0


def test_too_few_conversations_for_the_folds(capsys, helix_dataset, tmp_path):
    rc, _, err = run(capsys, helix_dataset, "--out", tmp_path / "r", "--folds", "20")
    assert rc == 2 and "too few for 20 conversation folds" in error_line(err)
    assert not (tmp_path / "r").exists()


def test_analyze_never_loads_the_model_stack(helix_dataset, tmp_path):
    """Neither mode may pull in torch, transformers or nnsight (datasets would import torch)."""
    code = (
        "import sys\n"
        "from turnphase.builders.cli import main\n"
        f"assert main(['analyze', {str(helix_dataset)!r}, '--out', {str(tmp_path / 'a')!r}, '--layers', '1']) == 0\n"
        f"assert main(['analyze', {str(helix_dataset)!r}, '--out', {str(tmp_path / 'b')!r}, '--streaming']) == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'nnsight'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"} | {"TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
