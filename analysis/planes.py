"""Colour-wheel planes, each fitted on the training folds and scored on the held-out fold.

    pair      the study's replication: the pair of top principal components with the highest
              pair score coherence_i * coherence_j * sin^2(angle_i - angle_j) at one cycle per round
              (PCs scaled to unit variance, the angle offset from PC i's mean coefficient)
    fourier   the once-per-round Fourier plane over `fourier_pcs` whitened PCs: the real and
              imaginary parts of the mean per-round coefficient c at one cycle per round. A rotation
              z = Re(2c e^{i theta}) is read back by least squares: (cos, sin) = pinv([Re c, -Im c]) z.
              It can find a rotation that carries 1% of the variance, far below the top 16 PCs
    trig      the supervised plane: the trig probe's (cos, sin) prediction, an upper bound

Each plane is a 2-D linear readout u = R x + b (coordinates (cos-like, sin-like)) and an angle
offset; the phase estimate is (atan2(u1, u0) - offset) / 2pi mod 1. Unsupervised planes measure
angles about a centre fitted on training rows with both roles weighted equally (assistant tokens
are ~80% of the rows and would pull a token-weighted mean off the wheel's centre).

The mean per-round coefficient is linear in the activations: each token carries a complex weight
(its share of each grid point of its round's resampling, times the DFT twiddle; fourier.py), so
the coefficient of any set of folds is a column of X^T Z in stats.Sums.

Scores on held-out tokens, from per-conversation sums (scores.py): the Fisher-Lee circular
correlation of the angle with 2*pi*phase (1983; needs no circular means, which are arbitrary for
near-uniform phases), phase locking |mean exp(i(angle - 2*pi*phase))| and the circular mean absolute
error of the estimate (0..0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turnphase.analysis.scores import Statistic, Sums
from turnphase.analysis.stats import PCA, LinearFit

PLANES = ("pair", "fourier", "trig")


@dataclass
class PairChoice:
    pair: tuple[int, int]
    score: float  # coherence_i * coherence_j * sin^2, activation units^2
    orientation: int  # +1 or -1, the sign that makes the angle grow with phase
    offset: float  # angle of PC i's mean coefficient, radians


def pair_scores(coef: np.ndarray) -> np.ndarray:
    """coef: (k,) complex mean coefficients of k PCs at one cycle per round: (k, k) pair scores."""
    c, a = np.abs(coef), np.angle(coef)
    pair = np.outer(c, c) * np.sin(a[:, None] - a[None, :]) ** 2
    np.fill_diagonal(pair, 0.0)
    return pair


def best_pair(coef: np.ndarray) -> PairChoice:
    scores = pair_scores(coef)
    i, j = np.unravel_index(np.argmax(np.triu(scores, 1)), scores.shape)
    a = np.angle(coef)
    orientation = -1 if np.sin(a[j] - a[i]) > 0 else 1
    return PairChoice((int(i), int(j)), float(scores[i, j]), orientation, float(a[i]))


def pair_plane(pca: PCA, choice: PairChoice, centre: np.ndarray) -> tuple[LinearFit, float]:
    i, j = choice.pair
    r = np.stack([pca.components[i] / pca.std[i], choice.orientation * pca.components[j] / pca.std[j]])
    return LinearFit(r.T, -r @ centre, 0.0), choice.offset


def fourier_plane(pca: PCA, k: int, coef_x: np.ndarray, centre: np.ndarray) -> LinearFit:
    """coef_x: (d,) complex mean coefficient in activation space; plane over the top k whitened PCs."""
    w = pca.components[:k] / pca.std[:k, None]  # (k, d) whitening
    c = w @ coef_x  # (k,) complex
    r = np.linalg.pinv(np.stack([c.real, -c.imag], axis=1)) @ w  # (2, d)
    return LinearFit(r.T, -r @ centre, 0.0)


def trig_plane(trig: LinearFit) -> LinearFit:
    """The trig probe's (sin, cos) columns as (cos, sin) coordinates."""
    return trig.select([1, 0])


def angle_columns(prefix: str, u: np.ndarray, offset: float, phase: np.ndarray) -> dict[str, np.ndarray]:
    """Per-token terms whose sums give the angle statistics: u (rows, 2) plane coordinates."""
    a = np.arctan2(u[:, 1], u[:, 0]) - offset
    b = 2 * np.pi * phase
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    d = (estimate(u, offset) - phase) % 1.0
    return {
        f"{prefix}:n": np.ones(len(a)),
        f"{prefix}:cc": ca * cb,
        f"{prefix}:cs": ca * sb,
        f"{prefix}:sc": sa * cb,
        f"{prefix}:ss": sa * sb,
        f"{prefix}:c2a": np.cos(2 * a),
        f"{prefix}:s2a": np.sin(2 * a),
        f"{prefix}:c2b": np.cos(2 * b),
        f"{prefix}:s2b": np.sin(2 * b),
        f"{prefix}:err": np.minimum(d, 1.0 - d),
    }


def fisher_lee(prefix: str) -> Statistic:
    """Fisher-Lee circular correlation: sum over token pairs of sin(a_i - a_j) sin(b_i - b_j),
    normalised, which reduces to these sums."""

    def stat(s: Sums) -> np.ndarray:
        n2 = s[f"{prefix}:n"] ** 2
        num = 4 * (s[f"{prefix}:cc"] * s[f"{prefix}:ss"] - s[f"{prefix}:cs"] * s[f"{prefix}:sc"])
        den = (n2 - s[f"{prefix}:c2a"] ** 2 - s[f"{prefix}:s2a"] ** 2) * (
            n2 - s[f"{prefix}:c2b"] ** 2 - s[f"{prefix}:s2b"] ** 2
        )
        return num / np.sqrt(np.maximum(den, np.finfo(float).tiny))

    return stat


def locking(prefix: str) -> Statistic:
    def stat(s: Sums) -> np.ndarray:
        cos = s[f"{prefix}:cc"] + s[f"{prefix}:ss"]  # sum of cos(a - b)
        sin = s[f"{prefix}:sc"] - s[f"{prefix}:cs"]  # sum of sin(a - b)
        return np.hypot(cos, sin) / s[f"{prefix}:n"]

    return stat


def angular_error(prefix: str) -> Statistic:
    return lambda s: s[f"{prefix}:err"] / s[f"{prefix}:n"]


def estimate(u: np.ndarray, offset: float) -> np.ndarray:
    """Phase estimate (0..1) from plane coordinates u (rows, 2)."""
    return (np.arctan2(u[:, 1], u[:, 0]) - offset) / (2 * np.pi) % 1.0
