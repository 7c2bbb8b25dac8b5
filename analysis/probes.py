"""The probes, defined once, and their cross-fitted ridge fits.

    linear    phase                                  a "progress bar"
    trig      sin, cos of 2*pi*phase                 a "clock"; R^2 is the mean of the two
    helix     phase, sin, cos at once (one penalty)  both; R^2 is the mean of the three

Each probe is fitted for both label schemes (the configured one first) and in four models:

    acts       ridge on the layer's activations (the study's probe)
    joint      the same ridge plus the structure baseline's features, fitted together (each block
               keeps its own model's penalty: the acts probe's, the structure baseline's)
    structure  the structure baseline alone (labels only: baseline.py)
    position   the position-only baseline (labels only)

Every fold is predicted by models fitted on the other folds, with each penalty chosen by
cross-validation over those other folds only. Readouts (probe.decode) turn a prediction back into
a phase: linear clips it to 0..1, trig takes atan2(sin, cos), helix the nearest point of the helix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.stats import Eig, LinearFit, Moments, Sums, joint_fit, r2_on

TARGETS = ("phase", "sin", "cos")  # per scheme; label column 3 * scheme + index
HELIX_GRID = np.linspace(0.0, 1.0, 720, endpoint=False)  # half a degree of phase
DECODE_ROWS = 2048  # rows per helix-decoding block: bounds the (rows, grid) distance matrix


def decode_linear(pred: np.ndarray) -> np.ndarray:
    return np.clip(pred[:, 0], 0.0, 1.0)


def decode_trig(pred: np.ndarray) -> np.ndarray:
    return np.arctan2(pred[:, 0], pred[:, 1]) / (2 * np.pi) % 1.0


def decode_helix(pred: np.ndarray) -> np.ndarray:
    angle = 2 * np.pi * HELIX_GRID
    curve = np.stack([HELIX_GRID, np.sin(angle), np.cos(angle)], axis=1)  # (grid, 3)
    nearest = np.empty(len(pred), dtype=np.int64)
    for i in range(0, len(pred), DECODE_ROWS):
        block = pred[i : i + DECODE_ROWS]
        nearest[i : i + DECODE_ROWS] = (-2 * block @ curve.T + (curve**2).sum(1)).argmin(axis=1)
    return HELIX_GRID[nearest]


@dataclass(frozen=True)
class Probe:
    name: str
    targets: tuple[str, ...]
    decode: Callable[[np.ndarray], np.ndarray]  # (rows, len(targets)) prediction -> (rows,) phase

    def columns(self, scheme: int) -> list[int]:
        """Label columns of this probe's targets in scheme 0 (configured) or 1 (the other)."""
        return [3 * scheme + TARGETS.index(t) for t in self.targets]


PROBES = {
    p.name: p
    for p in (
        Probe("linear", ("phase",), decode_linear),
        Probe("trig", ("sin", "cos"), decode_trig),
        Probe("helix", ("phase", "sin", "cos"), decode_helix),
    )
}
SCHEME_COLUMNS = list(range(6))


def circular_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a - b) % 1.0
    return np.minimum(d, 1.0 - d)


@dataclass
class Readout:
    """Many linear readouts of one row, stacked so a batch needs one matrix product.
    Blocks are named; `predict` returns each block's (rows, width) columns."""

    coef: np.ndarray  # (d, C)
    coef_f: np.ndarray  # (b, C) on the structure baseline's features (joint fits only)
    intercept: np.ndarray  # (C,)
    blocks: dict[str, slice]

    @classmethod
    def stack(cls, fits: dict[str, LinearFit], b: int) -> Readout:
        blocks, start = {}, 0
        for name, fit in fits.items():
            blocks[name] = slice(start, start + fit.coef.shape[1])
            start += fit.coef.shape[1]
        d = next(iter(fits.values())).coef.shape[0]
        coef, coef_f, intercept = np.zeros((d, start)), np.zeros((b, start)), np.zeros(start)
        for name, fit in fits.items():
            coef[:, blocks[name]] = fit.coef
            intercept[blocks[name]] = fit.intercept
            if fit.coef_f is not None:
                coef_f[:, blocks[name]] = fit.coef_f
        return cls(coef, coef_f, intercept, blocks)

    def predict(self, x: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
        y = x @ self.coef + f @ self.coef_f + self.intercept  # (rows, C)
        return {name: y[:, sl] for name, sl in self.blocks.items()}


@dataclass
class EigCache:
    """One eigendecomposition per set of training folds, shared by every pairing (their Gram
    matrices are equal: split.py)."""

    sums: Sums
    cache: dict[tuple[int, ...], Eig] = field(default_factory=dict)

    def __call__(self, folds: list[int]) -> Eig:
        key = tuple(folds)
        if key not in self.cache:
            self.cache[key] = Eig(self.sums.moments(folds, "real").sxx)
        return self.cache[key]


def inner_scores(sums: Sums, eigs: EigCache, outer: int, pairing: str, config: AnalysisConfig) -> np.ndarray:
    """Mean validation R^2 (n_alphas, 6) over the folds other than `outer`, of ridge on activations
    fitted on the remaining folds: the penalty is chosen without the outer fold."""
    others = [f for f in range(sums.folds) if f != outer]
    scores = np.zeros((len(config.alphas), len(SCHEME_COLUMNS)))
    for val in others:
        train = [f for f in others if f != val]
        m = sums.moments(train, pairing)
        coefs = eigs(train).solve(m.sxz[:, SCHEME_COLUMNS], config.alphas)  # (A, d, 6)
        intercept = m.mean_z[SCHEME_COLUMNS] - (m.mean_x + sums.shift) @ coefs  # (A, 6)
        scores += r2_on(sums.moments([val], pairing), sums.shift, coefs, intercept, SCHEME_COLUMNS)
    return scores / len(others)


def best_alpha(scores: np.ndarray, cols: list[int], alphas: list[float]) -> float:
    return float(alphas[int(np.argmax(scores[:, cols].mean(axis=1)))])


def activation_fits(
    sums: Sums,
    eigs: EigCache,
    outer: int,
    pairing: str,
    structure: slice,
    baselines: dict[str, LinearFit],
    config: AnalysisConfig,
) -> dict[str, LinearFit]:
    """acts and joint fits of every probe and scheme for held-out fold `outer`: 'acts/trig/0' etc.
    A joint fit keeps the acts probe's penalty on the activations and the structure baseline's
    (`baselines`, label_fits of the same fold) on its features."""
    scores = inner_scores(sums, eigs, outer, pairing, config)
    train = [f for f in range(sums.folds) if f != outer]
    m = sums.moments(train, pairing)
    eig = eigs(train)
    fits, joint = {}, {}
    rotated = eig.eigvec.T @ m.sxz[:, SCHEME_COLUMNS]  # (d, 6), shared by every probe's solve
    for scheme in (0, 1):
        for probe in PROBES.values():
            cols = probe.columns(scheme)
            alpha = best_alpha(scores, cols, config.alphas)
            coef = eig.eigvec @ (rotated[:, cols] / (eig.eigval + alpha)[:, None])
            fits[f"acts/{probe.name}/{scheme}"] = LinearFit(
                coef, m.mean_z[cols] - (m.mean_x + sums.shift) @ coef, alpha
            )
            alpha_f = baselines[f"structure/{probe.name}/{scheme}"].alpha
            joint.setdefault((alpha, alpha_f), []).append((f"joint/{probe.name}/{scheme}", cols))
    for (alpha, alpha_f), wanted in joint.items():  # one solve per pair of penalties, all its targets
        cols = sorted({c for _, cs in wanted for c in cs})
        fit = joint_fit(m, sums.shift, cols, structure, alpha, alpha_f)
        for name, cs in wanted:
            fits[name] = fit.select([cols.index(c) for c in cs])
    return fits


def label_fits(
    sums: Sums, outer: int, features: dict[str, slice], config: AnalysisConfig
) -> dict[str, LinearFit]:
    """Baseline fits (labels only) of every probe and scheme for held-out fold `outer`, penalties
    by cross-validation over the other folds: 'structure/trig/0' etc."""
    others = [f for f in range(sums.folds) if f != outer]
    no_shift = np.zeros(1)
    fits = {}
    for model, feats in features.items():
        scores = np.zeros((len(config.alphas), len(SCHEME_COLUMNS)))
        for val in others:
            m = sums.moments([f for f in others if f != val], "real").labels_as_x(feats)
            coefs = Eig(m.sxx).solve(m.sxz[:, SCHEME_COLUMNS], config.alphas)  # (A, b, 6)
            intercept = m.mean_z[SCHEME_COLUMNS] - m.mean_x @ coefs
            val_m = sums.moments([val], "real").labels_as_x(feats)
            scores += r2_on(val_m, no_shift, coefs, intercept, SCHEME_COLUMNS)
        m = sums.moments(others, "real").labels_as_x(feats)
        eig = Eig(m.sxx)
        for scheme in (0, 1):
            for probe in PROBES.values():
                cols = probe.columns(scheme)
                alpha = best_alpha(scores, cols, config.alphas)
                coef = eig.solve(m.sxz[:, cols], [alpha])[0]
                fits[f"{model}/{probe.name}/{scheme}"] = LinearFit(
                    coef, m.mean_z[cols] - m.mean_x @ coef, alpha
                )
    return fits


def role_fit(m: Moments, shift: np.ndarray, cols: list[int], alpha: float) -> LinearFit:
    """Ridge on the activations of one role's rows (for the cross-role transfer test)."""
    coef = scipy.linalg.solve(m.sxx + alpha * np.eye(len(m.sxx)), m.sxz[:, cols], assume_a="pos")
    return LinearFit(coef, m.mean_z[cols] - (m.mean_x + shift) @ coef, alpha)
