import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from synthetic import write_synthetic_dataset

from turnphase.builders import schema
from turnphase.builders.cli import main
from turnphase.builders.validate import validate

SHARD = "train-00000-of-00003.parquet"


@pytest.fixture
def ds(tmp_path):
    return write_synthetic_dataset(tmp_path / "ds", n_conversations=12, conversations_per_shard=5)


def rewrite(path, fn):
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def test_a_fresh_dataset_is_valid(ds, capsys):
    assert validate(ds) == []
    assert main(["validate", str(ds)]) == 0
    assert "valid" in capsys.readouterr().out


def test_corrupt_missing_and_extra_shards(ds, capsys):
    (ds / "layer_1" / SHARD).write_bytes(b"not parquet")
    (ds / "layer_2" / "train-00002-of-00003.parquet").unlink()
    (ds / "notes").mkdir()
    problems = validate(ds)
    assert any(p.startswith("layer_1/train-00000-of-00003.parquet: unreadable Parquet") for p in problems)
    assert any("layer_2: missing shards train-00002-of-00003.parquet" in p for p in problems)
    assert any(p.startswith("notes/: folder not described") for p in problems)
    assert main(["validate", str(ds)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == len(problems)


def test_wrong_schema_and_misaligned_rows(ds):
    rewrite(ds / "tokens" / SHARD, lambda t: t.drop_columns(["is_template"]))
    rewrite(
        ds / "layer_2" / "train-00001-of-00003.parquet",
        lambda t: t.set_column(1, "position", pc.add(t.column("position"), pa.scalar(1, pa.int32()))),
    )
    problems = validate(ds)
    assert any(p.startswith("tokens/train-00000-of-00003.parquet: schema differs") for p in problems)
    assert any(
        p.startswith("layer_2/train-00001-of-00003.parquet: key/label columns do not line up")
        for p in problems
    )


def test_bad_phases_and_non_finite_activations(ds):
    def shuffle_phase(t):
        phase = t.column("phase").to_numpy(zero_copy_only=False).copy()
        phase[10:12] = phase[11:9:-1]  # two user tokens swapped: not increasing any more
        return t.set_column(t.schema.get_field_index("phase"), "phase", pa.array(phase, pa.float32()))

    for config in ("tokens", "layer_1", "layer_2"):
        rewrite(ds / config / SHARD, shuffle_phase)

    def poison(t):
        acts = np.stack(t.column("activation").to_numpy(zero_copy_only=False)).astype(np.float16)
        acts[3, 0] = np.inf
        arr = pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1), pa.float16()), acts.shape[1])
        return t.set_column(t.schema.get_field_index("activation"), "activation", arr)

    rewrite(ds / "layer_1" / "train-00001-of-00003.parquet", poison)
    problems = validate(ds)
    assert "tokens/train-00000-of-00003.parquet: phase does not increase within a turn" in problems
    assert "layer_1/train-00001-of-00003.parquet: non-finite activations in row group 0" in problems


def test_counts_and_card_must_match_the_provenance(ds):
    prov = json.loads((ds / schema.PROVENANCE_FILE).read_text())
    prov["counts"]["tokens"] += 1
    (ds / schema.PROVENANCE_FILE).write_text(json.dumps(prov))
    card = (ds / schema.CARD_FILE).read_text().replace("config_name: layer_2", "config_name: layer_9")
    (ds / schema.CARD_FILE).write_text(card)
    problems = validate(ds)
    assert any(p.startswith("tokens: ") and "provenance says" in p for p in problems)
    assert "README.md: config layer_2 is not listed" in problems
    assert "README.md: config layer_9 is not in the provenance" in problems


def test_not_a_dataset(tmp_path):
    assert validate(tmp_path / "missing") == [f"{tmp_path / 'missing'}: not a folder"]
    assert validate(tmp_path)[0].startswith("turnphase.json: missing or unreadable")
