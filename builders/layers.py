"""The one grammar for layer lists, in build, analyze and steer alike.

    auto        relative depth 0.44..0.81 of the model (the study's 7..13 of 16); in analyze and
                steer, every layer the dataset holds, as `all`
    all         every layer (of the model, or that the dataset holds)
    13-24       a range, both ends included
    13,17,24    a list; ranges and single layers mix: 2,5-7

Layers are 0-based decoder blocks: layer L is the output of block L (see activations.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from turnphase.builders.errors import ConfigError

AUTO_DEPTH = (0.44, 0.81)  # the relative depths `auto` spans
Spec = Literal["auto", "all"] | list[int]


def parse_layers(spec: str | Iterable[int], field: str = "layers") -> Spec:
    """`auto` / `all`, or the sorted layers a text names; a list of ints is checked and sorted."""
    if not isinstance(spec, str):
        try:
            layers = sorted({int(L) for L in spec})
        except (TypeError, ValueError):
            raise ConfigError(field, f"{spec!r} is not a list of layer numbers") from None
        if not layers or layers[0] < 0:
            raise ConfigError(field, f"{spec!r}: name at least one layer, each 0 or more")
        return layers
    text = spec.strip().lower()
    if text in ("auto", "all"):
        return text  # type: ignore[return-value]
    layers: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = (int(x) for x in part.split("-"))
                if a > b:
                    raise ConfigError(field, f"{a}-{b} is an empty range; write {b}-{a}")
                layers.update(range(a, b + 1))
            else:
                layers.add(int(part))
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(field, f"{spec!r}: use auto, all, 13-24, 13,17,24 or 2,5-7") from None
    if min(layers) < 0:
        raise ConfigError(field, f"{spec!r}: layers are numbered from 0")
    return sorted(layers)


def resolve_layers(spec: str | Iterable[int], n_layers: int, field: str = "layers") -> list[int]:
    """The layers of a model with `n_layers` decoder blocks that `spec` names."""
    parsed = parse_layers(spec, field)
    if parsed == "auto":
        lo, hi = (round(d * n_layers) for d in AUTO_DEPTH)
        return list(range(lo, min(hi, n_layers - 1) + 1))
    if parsed == "all":
        return list(range(n_layers))
    bad = [L for L in parsed if L >= n_layers]
    if bad:
        raise ConfigError(field, f"layer(s) {bad} out of range; the model has layers 0..{n_layers - 1}")
    return parsed


def select_layers(
    spec: str | Iterable[int] | None,
    available: Iterable[int],
    field: str = "layers",
    holder: str = "the dataset",
) -> list[int]:
    """The layers of a dataset or report (`holder`, which holds `available`) that `spec` names;
    None, auto and all name every one."""
    have = sorted(available)
    parsed = "all" if spec is None else parse_layers(spec, field)
    if parsed in ("auto", "all"):
        return have
    missing = sorted(set(parsed) - set(have))
    if missing:
        raise ConfigError(field, f"layer(s) {missing} not in {holder}, which holds {have}")
    return parsed
