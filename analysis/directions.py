"""What `analyze` found per layer, as arrays: the probes and planes of every fold, in activation units.

Saved beside report.json as `directions.safetensors` (safetensors: tensors and string metadata,
nothing executable), and returned by `analyze()` without any folder. Steering reads it
(turnphase.steering); the schema is documented in analysis/REPORT.md ("directions.safetensors").

    d = Directions.load("report/smollm2/directions.safetensors")
    probe = d.layers[20].folds[0].readouts["real"]["probe/linear"]
    phase = probe(activations)              # (rows, 1): the phase predicted by fold 0's linear probe
    d.held_out(0)                           # the conversation ids fold 0's models never saw

Every readout is `y = x @ weight + bias` on raw activations x (float, the dataset's units), with
named target columns. Readouts per fold and pairing (`real`, and `scrambled`, the null direction):

    probe/linear   (d, 1)  phase                  (the configured phase scheme)
    probe/trig     (d, 2)  sin, cos of 2*pi*phase
    probe/helix    (d, 3)  phase, sin, cos
    plane/pair     (d, 2)  u0, u1: the study's best PC pair, phase = (atan2(u1, u0) - offset) / 2pi
    plane/fourier  (d, 2)  u0, u1: the once-per-round Fourier plane (offset 0)
    plane/trig     (d, 2)  u0, u1 = cos, sin columns of the trig probe (offset 0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from turnphase.analysis.planes import PLANES
from turnphase.analysis.probes import PROBES
from turnphase.analysis.stats import PCA
from turnphase.builders.errors import TurnphaseError

DIRECTIONS_FILE = "directions.safetensors"
FORMAT = "turnphase-directions"
FORMAT_VERSION = 1
SAVED_PAIRINGS = ("real", "scrambled")
# file name -> (name in probes.Readout, target columns); probes in the configured scheme (0), from
# the probe registry; planes as (cos-like, sin-like) coordinates
READOUTS = {
    **{f"probe/{p.name}": (f"acts/{p.name}/0", p.targets) for p in PROBES.values()},
    **{f"plane/{name}": (f"plane/{name}", ("u0", "u1")) for name in PLANES},
}


@dataclass
class Linear:
    """y = x @ weight + bias; planes also carry the angle offset of their phase estimate."""

    weight: np.ndarray  # (d, t)
    bias: np.ndarray  # (t,)
    targets: tuple[str, ...]
    offset: float = 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias


@dataclass
class FoldDirections:
    fold: int
    mean: np.ndarray  # (d,) activation mean of the training rows (the standardisation)
    std: np.ndarray  # (d,) their standard deviation per dimension
    readouts: dict[str, dict[str, Linear]]  # pairing -> READOUTS name -> readout


@dataclass
class LayerDirections:
    layer: int
    pca: PCA  # of all analysed tokens (the figures' PCA)
    folds: list[FoldDirections]


@dataclass
class Directions:
    layers: dict[int, LayerDirections]
    conversation_id: np.ndarray  # (c,) analysed conversations, sorted
    conversation_fold: np.ndarray  # (c,) the fold each is held out in; -1 for every one under a token split
    metadata: dict = field(default_factory=dict)  # model, source, phase_scheme, split, ...

    def held_out(self, fold: int) -> np.ndarray:
        """Conversation ids held out in `fold` (never seen by that fold's models)."""
        return self.conversation_id[self.conversation_fold == fold]

    def to_tensors(self) -> dict[str, np.ndarray]:
        t = {"folds/conversation_id": self.conversation_id, "folds/fold": self.conversation_fold}
        for L, layer in self.layers.items():
            t |= {
                f"layer{L}/pca/mean": layer.pca.mean,
                f"layer{L}/pca/components": layer.pca.components,
                f"layer{L}/pca/explained_variance": layer.pca.explained_variance,
                f"layer{L}/pca/explained_variance_ratio": layer.pca.explained_variance_ratio,
            }
            for f in layer.folds:
                key = f"layer{L}/fold{f.fold}"
                t |= {f"{key}/mean": f.mean, f"{key}/std": f.std}
                for pairing, readouts in f.readouts.items():
                    for name, r in readouts.items():
                        t[f"{key}/{pairing}/{name}/weight"] = r.weight
                        t[f"{key}/{pairing}/{name}/bias"] = r.bias
                        t[f"{key}/{pairing}/{name}/offset"] = np.array([r.offset])
        return {k: np.ascontiguousarray(v) for k, v in t.items()}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "layers": json.dumps(sorted(self.layers)),
            "folds": json.dumps(len(next(iter(self.layers.values())).folds) if self.layers else 0),
            "readouts": json.dumps({name: list(t) for name, (_, t) in READOUTS.items()}),
            "metadata": json.dumps(self.metadata),
        }
        save_file(self.to_tensors(), str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Directions:
        """Read a directions.safetensors file, or raise TurnphaseError with one line."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        path = Path(path)
        if path.is_dir():
            path = path / DIRECTIONS_FILE
        if not path.is_file():
            raise TurnphaseError(f"{path}: no such file (turnphase analyze writes {DIRECTIONS_FILE})")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            t = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise TurnphaseError(f"{path}: not a readable safetensors file ({e})") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != str(FORMAT_VERSION):
            raise TurnphaseError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file")
        try:
            layers = {L: _layer_from(t, L, json.loads(meta["folds"])) for L in json.loads(meta["layers"])}
            return cls(layers, t["folds/conversation_id"], t["folds/fold"], json.loads(meta["metadata"]))
        except KeyError as e:
            raise TurnphaseError(f"{path}: tensor {e} is missing") from None


def _layer_from(t: dict[str, np.ndarray], L: int, n_folds: int) -> LayerDirections:
    pca = PCA(
        t[f"layer{L}/pca/mean"],
        t[f"layer{L}/pca/components"],
        t[f"layer{L}/pca/explained_variance"],
        t[f"layer{L}/pca/explained_variance_ratio"],
    )
    folds = []
    for o in range(n_folds):
        key = f"layer{L}/fold{o}"
        readouts = {
            pairing: {
                name: Linear(
                    t[f"{key}/{pairing}/{name}/weight"],
                    t[f"{key}/{pairing}/{name}/bias"],
                    targets,
                    float(t[f"{key}/{pairing}/{name}/offset"][0]),
                )
                for name, (_, targets) in READOUTS.items()
            }
            for pairing in SAVED_PAIRINGS
        }
        folds.append(FoldDirections(o, t[f"{key}/mean"], t[f"{key}/std"], readouts))
    return LayerDirections(L, pca, folds)


def layer_directions(res, pairings: tuple[str, ...] = SAVED_PAIRINGS) -> LayerDirections:
    """The readouts of a LayerResult (layer.py), fold by fold, for the saved pairings."""
    folds = []
    for o, real in enumerate(res.pairings["real"].models):
        readouts = {}
        for pairing in pairings:
            fm = res.pairings[pairing].models[o]
            readouts[pairing] = {
                name: Linear(
                    fm.readout.coef[:, fm.readout.blocks[inner]].copy(),
                    fm.readout.intercept[fm.readout.blocks[inner]].copy(),
                    targets,
                    float(fm.offsets.get(name.split("/")[1], 0.0)) if name.startswith("plane/") else 0.0,
                )
                for name, (inner, targets) in READOUTS.items()
            }
        folds.append(FoldDirections(o, real.mean, real.std, readouts))
    return LayerDirections(res.layer, res.pca, folds)


def conversation_folds(
    conversation: np.ndarray, fold: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted conversation ids of the analysed tokens, and the fold each is held out in (-1 under a
    token split, where a conversation's tokens are spread over every fold)."""
    ids, first = np.unique(conversation, return_index=True)
    folds = fold[first].astype(np.int64) if split == "conversation" else np.full(len(ids), -1)
    return ids.astype(np.int64), folds
