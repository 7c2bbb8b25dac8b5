"""Sufficient statistics accumulated shard by shard, and the ridge and PCA fits they determine.

Streaming means the activations never sit in memory at once, so probes and PCA are fitted from
sums (n, sum x, X^T X, X^T Y, sum y, sum y^2) kept per part of the split. Memory is
O(parts * d_model^2), whatever the number of tokens. scikit-learn has no estimator that fits from
such sums (partial_fit exists only for SGD-type models, which do not give the closed-form ridge
solution), so the accumulation and the closed form are here; both reproduce
`sklearn.linear_model.Ridge(fit_intercept=True)` and `sklearn.decomposition.PCA` on the same rows
(tests/analysis/test_probes.py checks this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass
class Moments:
    """Centred second moments of one set of rows (coordinates shifted by `shift`)."""

    n: float
    mean_x: np.ndarray  # (d,)
    mean_y: np.ndarray  # (t,)
    sxx: np.ndarray  # (d, d)  sum of (x - mean_x)(x - mean_x)^T
    sxy: np.ndarray  # (d, t)
    syy: np.ndarray  # (t,)    sum of (y - mean_y)^2, per target


class PartStats:
    """Per-part sums of features x (d wide) and targets y (t wide), in float64."""

    def __init__(self, n_parts: int, d: int, t: int):
        self.n = np.zeros(n_parts)
        self.sx = np.zeros((n_parts, d))
        self.sxx = np.zeros((n_parts, d, d))
        self.sxy = np.zeros((n_parts, d, t))
        self.sy = np.zeros((n_parts, t))
        self.syy = np.zeros((n_parts, t))
        # X^T X - n mean mean^T cancels digits when features have a large common offset (LLM residual
        # streams have a few huge dimensions); summing about the first batch's mean avoids that.
        self.shift: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray, part: np.ndarray) -> None:
        """x: (b, d) float64, y: (b, t), part: (b,) part index of each row."""
        if len(x) == 0:
            return
        if self.shift is None:
            self.shift = x.mean(axis=0)
        xs = x - self.shift
        for p in np.unique(part):
            m = part == p
            xp, yp = xs[m], y[m]
            self.n[p] += len(xp)
            self.sx[p] += xp.sum(axis=0)
            self.sxx[p] += xp.T @ xp
            self.sxy[p] += xp.T @ yp
            self.sy[p] += yp.sum(axis=0)
            self.syy[p] += (yp * yp).sum(axis=0)

    def moments(self, parts: list[int] | None = None) -> Moments:
        """Centred moments of the union of `parts` (all parts when None)."""
        sel = slice(None) if parts is None else parts
        n = self.n[sel].sum()
        if n == 0:
            raise ValueError("no rows in the selected parts")
        mx, my = self.sx[sel].sum(0) / n, self.sy[sel].sum(0) / n
        return Moments(
            n=n,
            mean_x=mx,
            mean_y=my,
            sxx=self.sxx[sel].sum(0) - n * np.outer(mx, mx),
            sxy=self.sxy[sel].sum(0) - n * np.outer(mx, my),
            syy=self.syy[sel].sum(0) - n * my * my,
        )


@dataclass
class RidgeFit:
    """Ridge with intercept, as sklearn's Ridge(alpha, fit_intercept=True) would fit it."""

    coef: np.ndarray  # (d, t)
    intercept: np.ndarray  # (t,), for unshifted features
    alpha: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef + self.intercept  # (b, t)


class RidgePath:
    """Ridge solutions for many penalties from one eigendecomposition of the centred Gram matrix."""

    def __init__(self, m: Moments, shift: np.ndarray):
        self.m, self.shift = m, shift
        self.eigval, self.eigvec = scipy.linalg.eigh(m.sxx)  # (d,), (d, d)
        self.rotated = self.eigvec.T @ m.sxy  # (d, t)

    def fit(self, alpha: float) -> RidgeFit:
        coef = self.eigvec @ (self.rotated / (np.maximum(self.eigval, 0.0) + alpha)[:, None])  # (d, t)
        intercept = self.m.mean_y - (self.m.mean_x + self.shift) @ coef
        return RidgeFit(coef, intercept, float(alpha))


def r2_on(m: Moments, shift: np.ndarray, fit: RidgeFit) -> np.ndarray:
    """Per-target R^2 (sklearn's r2_score) of `fit` on the rows summarised by `m`: (t,)."""
    offset = m.mean_y - (m.mean_x + shift) @ fit.coef - fit.intercept  # mean residual, (t,)
    quad = np.einsum("dt,de,et->t", fit.coef, m.sxx, fit.coef)
    sse = m.syy - 2 * np.einsum("dt,dt->t", fit.coef, m.sxy) + quad + m.n * offset**2
    return 1 - sse / m.syy


def cv_r2(stats: PartStats, train_parts: list[int], alphas: list[float]) -> np.ndarray:
    """Mean validation R^2 over the training folds, per penalty and target: (n_alphas, t).

    Ridge decouples targets, so a multi-target probe's score (sklearn's uniform average) is the
    mean of its columns; choosing its penalty by that score is GridSearchCV over these folds.
    """
    scores = np.zeros((len(alphas), len(stats.sy[0])))
    for fold in train_parts:
        path = RidgePath(stats.moments([p for p in train_parts if p != fold]), stats.shift)
        val = stats.moments([fold])
        scores += np.stack([r2_on(val, stats.shift, path.fit(a)) for a in alphas])
    return scores / len(train_parts)


@dataclass
class PCA:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), rows orthonormal, by decreasing variance
    explained_variance: np.ndarray  # (k,) variance along each component
    explained_variance_ratio: np.ndarray  # (k,)

    @property
    def std(self) -> np.ndarray:
        """(k,) standard deviation along each component (never exactly 0, it divides)."""
        return np.sqrt(np.maximum(self.explained_variance, np.finfo(float).tiny))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T  # (b, k)


def pca_from(stats: PartStats, k: int) -> PCA:
    """Top-k principal components of all rows in `stats`, signs fixed like sklearn's svd_flip."""
    m = stats.moments()
    eigval, eigvec = scipy.linalg.eigh(m.sxx)
    order = np.argsort(eigval)[::-1][:k]
    comps = eigvec[:, order].T  # (k, d)
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    total = max(float(np.trace(m.sxx)), np.finfo(float).tiny)
    variance = np.maximum(eigval[order], 0.0)
    return PCA(m.mean_x + stats.shift, comps, variance / max(m.n - 1, 1), variance / total)
