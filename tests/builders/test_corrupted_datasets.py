"""A corrupted-dataset matrix: each case damages a copy of a tiny build, then `validate` must list a
problem (exit 1, no traceback) and `analyze` must refuse in one line (exit 2) and write nothing.

Cases marked `rehash` also rewrite the provenance's sha256 record, as if the damage had been
built in: they test analyze's own checks (schema, finiteness, labels), not the integrity record.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from turnphase.builders import schema
from turnphase.builders.cli import main
from turnphase.builders.provenance import sha256_file
from turnphase.builders.validate import validate

SHARD = "train-00000-of-00002.parquet"
ANALYZE = ["--folds", "3", "--bootstrap", "20", "--layers", "1"]


def _rewrite(path, fn):
    pq.write_table(fn(pq.read_table(path)), path)


def _random_bytes_in_a_data_page(ds):
    path = ds / "layer_1" / SHARD
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2000] = np.random.default_rng(0).bytes(2000)
    path.write_bytes(bytes(data))


def _tokens_without_is_template(ds):
    _rewrite(ds / "tokens" / SHARD, lambda t: t.drop_columns(["is_template"]))


def _layer_in_float32(ds):
    def cast(t):
        i = t.schema.get_field_index(schema.ACTIVATION)
        d = t.schema.field(i).type.list_size
        return t.set_column(i, schema.ACTIVATION, t.column(i).cast(pa.list_(pa.float32(), d)))

    _rewrite(ds / "layer_1" / SHARD, cast)


def _layer_without_activation(ds):
    _rewrite(ds / "layer_1" / SHARD, lambda t: t.drop_columns([schema.ACTIVATION]))


def _nan_activations(ds):
    def poison(t):
        i = t.schema.get_field_index(schema.ACTIVATION)
        d = t.schema.field(i).type.list_size
        flat = pc.list_flatten(t.column(i)).to_numpy().copy()
        flat[5 * d : 6 * d] = np.nan
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float16()), d)
        return t.set_column(i, schema.ACTIVATION, column)

    _rewrite(ds / "layer_1" / SHARD, poison)


def _nan_phase(ds):
    tokens = pq.read_table(ds / "tokens" / SHARD)
    analysed = pc.and_(pc.is_valid(tokens.column("phase")), pc.invert(tokens.column("is_template")))
    row = int(np.flatnonzero(analysed.to_numpy(zero_copy_only=False))[3])  # a content token

    def poison(t):
        i = t.schema.get_field_index("phase")
        phase = t.column(i).to_numpy(zero_copy_only=False).copy()
        system = np.isnan(phase)  # nulls, kept null below
        phase[row] = np.nan
        return t.set_column(i, t.schema.field(i), pa.array(phase, type=pa.float32(), mask=system))

    for config in ("tokens", "layer_1", "layer_3"):
        _rewrite(ds / config / SHARD, poison)


def _rows_reversed(ds):
    """Activations reversed inside a shard: same schema, labels and values, only the order differs."""

    def reverse(t):
        i = t.schema.get_field_index(schema.ACTIVATION)
        return t.set_column(i, schema.ACTIVATION, t.column(i).take(pa.array(range(t.num_rows - 1, -1, -1))))

    _rewrite(ds / "layer_1" / SHARD, reverse)


def _shard_deleted(ds):
    (ds / "layer_3" / SHARD).unlink()


def _provenance(edit):
    def damage(ds):
        prov = json.loads((ds / schema.PROVENANCE_FILE).read_text())
        edit(prov)
        (ds / schema.PROVENANCE_FILE).write_text(json.dumps(prov))

    return damage


def _broken_card_yaml(ds):
    card = ds / schema.CARD_FILE
    card.write_text(card.read_text().replace("configs:", "configs: [unclosed", 1))


CASES = {
    "random bytes in a data page": (_random_bytes_in_a_data_page, False),
    "tokens shard without is_template": (_tokens_without_is_template, True),
    "float32 layer shard in a float16 dataset": (_layer_in_float32, True),
    "layer shard without activation": (_layer_without_activation, True),
    "NaN activations": (_nan_activations, True),
    "NaN phase in analysed rows": (_nan_phase, True),
    "activations reversed in a shard": (_rows_reversed, False),
    "a layer shard deleted": (_shard_deleted, False),
    "provenance without counts.tokens": (_provenance(lambda p: p["counts"].pop("tokens")), False),
    "provenance layers an int": (_provenance(lambda p: p.update(layers=1)), False),
    "provenance not JSON": (lambda ds: (ds / schema.PROVENANCE_FILE).write_text("{oops"), False),
}
# analyze reads neither the card nor counts.rows: those two are validate's alone
VALIDATE_ONLY = {
    "broken card YAML": (_broken_card_yaml, False),
    "provenance rows a list": (_provenance(lambda p: p["counts"].update(rows=[1, 2])), False),
}


def _rehash(ds):
    prov = json.loads((ds / schema.PROVENANCE_FILE).read_text())
    prov["sha256"] = {rel: sha256_file(ds / rel) for rel in prov["sha256"] if (ds / rel).exists()}
    (ds / schema.PROVENANCE_FILE).write_text(json.dumps(prov))


def _damaged_copy(tiny_build, tmp_path, case):
    damage, rehash = case
    ds = tmp_path / "ds"
    shutil.copytree(tiny_build, ds)
    damage(ds)
    if rehash:
        _rehash(ds)
    return ds


def test_the_undamaged_copy_is_valid_and_analyses(tiny_build, tmp_path):
    ds = _damaged_copy(tiny_build, tmp_path, (lambda ds: None, False))
    assert validate(ds) == []
    assert main(["analyze", str(ds), "--out", str(tmp_path / "report"), *ANALYZE]) == 0


@pytest.mark.parametrize("name", [*CASES, *VALIDATE_ONLY])
def test_validate_lists_the_damage_and_never_raises(name, tiny_build, tmp_path, capsys):
    ds = _damaged_copy(tiny_build, tmp_path, {**CASES, **VALIDATE_ONLY}[name])
    problems = validate(ds)
    assert problems, name
    assert all("\n" not in p and "Traceback" not in p for p in problems)
    assert main(["validate", str(ds)]) == 1
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_analyze_refuses_in_one_line_and_writes_nothing(name, tiny_build, tmp_path, capsys):
    ds = _damaged_copy(tiny_build, tmp_path, CASES[name])
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(["analyze", str(ds), "--out", str(tmp_path / "report"), *ANALYZE]) == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turnphase analyze: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report, no partial folder, no lock


def test_analyze_names_what_it_found(tiny_build, tmp_path, capsys):
    """The messages say what is wrong, so the user knows what to look at."""
    expect = {
        "tokens shard without is_template": "missing is_template",
        "float32 layer shard in a float16 dataset": "halffloat>[32])",
        "NaN activations": "non-finite activations",
        "NaN phase in analysed rows": "phase outside 0..1 (or NaN)",
        "activations reversed in a shard": "sha256 differs",
    }
    for i, (name, words) in enumerate(expect.items()):
        ds = _damaged_copy(tiny_build, tmp_path / str(i), CASES[name])
        capsys.readouterr()
        assert main(["analyze", str(ds), "--out", str(tmp_path / str(i) / "report"), *ANALYZE]) == 2
        assert words in capsys.readouterr().err, name


def test_analyze_leaves_no_copy_in_the_datasets_cache(tiny_build, tmp_path, monkeypatch):
    cache = tmp_path / "datasets_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    assert main(["analyze", str(tiny_build), "--out", str(tmp_path / "report"), *ANALYZE]) == 0
    copies = [p for p in cache.rglob("*.arrow")] if cache.exists() else []
    assert copies == []
