"""Sufficient statistics accumulated shard by shard, and the ridge and PCA fits they determine.

Streaming means the activations never sit in memory at once, so every fit comes from sums kept
per *part*: a fold of the cross-fitting crossed with the label's role (user, assistant). For the
activations x (d wide) and label-side columns z (targets, baseline features, Fourier weights):

    n, sum x, X^T X              per part, once: a null permutes rows inside folds and roles
                                 (except `scrambled`, which mixes roles: its user parts are
                                 summed separately and its assistant parts are fold minus user)
    sum z, Z^T Z                 per part, once: labels stay in place under every null
    X^T Z                        per part and pairing

Memory is O(parts * d^2), whatever the number of tokens. scikit-learn has no estimator that fits
from such sums (partial_fit exists only for SGD-type models, which do not give the closed-form
ridge solution), so the accumulation and the closed forms are here; tests/analysis/test_probes.py
checks them against `sklearn.linear_model.Ridge` and `sklearn.decomposition.PCA` on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

N_ROLES = 2  # parts are (fold, user) and (fold, assistant)


@dataclass
class Moments:
    """Centred moments of one set of rows: features x (d), label-side columns z (w)."""

    n: float
    mean_x: np.ndarray  # (d,), in shifted coordinates
    mean_z: np.ndarray  # (w,)
    sxx: np.ndarray  # (d, d) sum of (x - mean_x)(x - mean_x)^T
    sxz: np.ndarray  # (d, w)
    szz: np.ndarray  # (w, w)

    def labels_as_x(self, cols: slice) -> Moments:
        """The same rows with label-side columns `cols` as the features (a baseline's regression)."""
        return Moments(self.n, self.mean_z[cols], self.mean_z, self.szz[cols, cols], self.szz[cols], self.szz)


class Sums:
    """Per-part sums for one layer and every pairing, in float64."""

    def __init__(self, folds: int, d: int, w: int, pairings: list[str]):
        p = folds * N_ROLES
        self.folds = folds
        self.n = np.zeros(p)
        self.sx, self.sxx = np.zeros((p, d)), np.zeros((p, d, d))
        self.sz, self.szz = np.zeros((p, w)), np.zeros((p, w, w))
        self.sxz = {name: np.zeros((p, d, w)) for name in pairings}
        self._activation: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # moments() cache, after adding
        # `scrambled` rows whose label is a user token, per fold
        self.user_sx, self.user_sxx = np.zeros((folds, d)), np.zeros((folds, d, d))
        # X^T X - n mean mean^T cancels digits when features have a large common offset (LLM residual
        # streams have a few huge dimensions); summing about the first batch's mean avoids that.
        self.shift: np.ndarray | None = None

    def shifted(self, x: np.ndarray) -> np.ndarray:
        if self.shift is None:
            self.shift = x.mean(axis=0)
        return x - self.shift

    def add_rows(self, xs: np.ndarray, z: np.ndarray, part: np.ndarray) -> None:
        """The real pairing's rows: xs (b, d) shifted, z (b, w) their labels' columns, part (b,)."""
        for p in np.unique(part):
            m = part == p
            self.n[p] += m.sum()
            self.sx[p] += xs[m].sum(axis=0)
            self.sxx[p] += xs[m].T @ xs[m]
            self.sz[p] += z[m].sum(axis=0)
            self.szz[p] += z[m].T @ z[m]

    def add_cross(self, pairing: str, xs: np.ndarray, z: np.ndarray, part: np.ndarray) -> None:
        """X^T Z of rows xs paired with labels whose columns are z and parts `part` (the label's)."""
        for p in np.unique(part):
            m = part == p
            self.sxz[pairing][p] += xs[m].T @ z[m]

    def add_scrambled_user(self, xs: np.ndarray, fold: np.ndarray) -> None:
        """Rows that `scrambled` pairs with a user token."""
        for f in np.unique(fold):
            m = fold == f
            self.user_sx[f] += xs[m].sum(axis=0)
            self.user_sxx[f] += xs[m].T @ xs[m]

    def merge(self, other: Sums) -> Sums:
        """Add another row subset's sums, accumulated about the same shift."""
        if other.shift is None:
            return self
        if self.shift is None:
            self.shift = other.shift
        elif not np.array_equal(self.shift, other.shift):
            raise ValueError("sums accumulated about different shifts")
        for name in ("n", "sx", "sxx", "sz", "szz", "user_sx", "user_sxx"):
            getattr(self, name)[...] += getattr(other, name)
        for pairing, sxz in other.sxz.items():
            self.sxz[pairing] += sxz
        self._activation.clear()
        return self

    def _activation_sums(
        self, folds: list[int], role: int | None, scrambled: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """sum x and X^T X of the rows in `folds` whose label has `role`, shared by every pairing that
        keeps roles (the d x d sums are the cost of moments(), so they are kept once computed)."""
        key = (tuple(folds), role, scrambled)
        if key not in self._activation:
            if scrambled:
                user_sx, user_sxx = self.user_sx[folds].sum(0), self.user_sxx[folds].sum(0)
                if role == 0:
                    sums = user_sx, user_sxx
                else:
                    both = self.parts(folds)
                    sums = self.sx[both].sum(0) - user_sx, self.sxx[both].sum(0) - user_sxx
            else:
                parts = self.parts(folds, role)
                sums = self.sx[parts].sum(0), self.sxx[parts].sum(0)
            n = self.n[self.parts(folds, role)].sum()
            mx = sums[0] / n
            self._activation[key] = mx, sums[1] - n * np.outer(mx, mx)
        return self._activation[key]

    def parts(self, folds: list[int], role: int | None = None) -> list[int]:
        """Part indices of `folds`, one role (0 user, 1 assistant) or both."""
        roles = range(N_ROLES) if role is None else [role]
        return [f * N_ROLES + r for f in folds for r in roles]

    def moments(self, folds: list[int], pairing: str, role: int | None = None) -> Moments:
        parts = self.parts(folds, role)
        n = self.n[parts].sum()
        if n == 0:
            raise ValueError("no rows in the selected parts")
        mx, sxx = self._activation_sums(folds, role, scrambled=pairing == "scrambled" and role is not None)
        mz = self.sz[parts].sum(0) / n
        return Moments(
            n=n,
            mean_x=mx,
            mean_z=mz,
            sxx=sxx,
            sxz=self.sxz[pairing][parts].sum(0) - n * np.outer(mx, mz),
            szz=self.szz[parts].sum(0) - n * np.outer(mz, mz),
        )


@dataclass
class LinearFit:
    """y = x @ coef + f @ coef_f + intercept: ridge on x, with a baseline block f for joint fits."""

    coef: np.ndarray  # (d, t), for unshifted x
    intercept: np.ndarray  # (t,)
    alpha: float
    coef_f: np.ndarray | None = None  # (b, t) on baseline columns, for joint fits

    def predict(self, x: np.ndarray, f: np.ndarray | None = None) -> np.ndarray:
        y = x @ self.coef + self.intercept  # (rows, t)
        return y if self.coef_f is None else y + f @ self.coef_f

    def select(self, cols: list[int]) -> LinearFit:
        cf = None if self.coef_f is None else self.coef_f[:, cols]
        return LinearFit(self.coef[:, cols], self.intercept[cols], self.alpha, cf)


class Eig:
    """Eigendecomposition of a centred Gram matrix: ridge solutions for any penalty and target, and
    the principal components, from one call to scipy.linalg.eigh."""

    def __init__(self, sxx: np.ndarray):
        self.eigval, self.eigvec = scipy.linalg.eigh(sxx, driver="evd")  # ascending, (d,), (d, d)
        self.eigval = np.maximum(self.eigval, 0.0)

    def solve(self, sxy: np.ndarray, alphas: list[float]) -> np.ndarray:
        """Ridge coefficients (n_alphas, d, t) of (Sxx + alpha I) beta = Sxy."""
        rotated = self.eigvec.T @ sxy  # (d, t)
        scaled = rotated[:, None, :] / (self.eigval[:, None, None] + np.asarray(alphas)[None, :, None])
        d, a, t = scaled.shape
        return (self.eigvec @ scaled.reshape(d, a * t)).reshape(d, a, t).transpose(1, 0, 2)  # (a, d, t)


def ridge_from(m: Moments, shift: np.ndarray, coef: np.ndarray, y: list[int], alpha: float) -> LinearFit:
    intercept = m.mean_z[y] - (m.mean_x + shift) @ coef
    return LinearFit(coef, intercept, float(alpha))


def r2_on(m: Moments, shift: np.ndarray, coef: np.ndarray, intercept: np.ndarray, y: list[int]) -> np.ndarray:
    """Per-target R^2 (sklearn's r2_score) of x @ coef + intercept on the rows of m.
    coef (..., d, t) for any leading batch of fits: (..., t)."""
    offset = m.mean_z[y] - (m.mean_x + shift) @ coef - intercept  # mean residual, (..., t)
    flat = np.moveaxis(coef, -2, 0)  # (d, ..., t): one matrix product for every fit
    quad = (coef * np.moveaxis((m.sxx @ flat.reshape(len(flat), -1)).reshape(flat.shape), 0, -2)).sum(axis=-2)
    sse = m.szz[y, y] - 2 * (coef * m.sxz[:, y]).sum(axis=-2) + quad + m.n * offset**2
    return 1 - sse / m.szz[y, y]


def joint_fit(
    m: Moments, shift: np.ndarray, y: list[int], f: slice, alpha: float, alpha_f: float
) -> LinearFit:
    """Ridge on x (penalty alpha) jointly with baseline columns f of z (penalty alpha_f), by block
    elimination: with A = (Sff + alpha_f I)^-1, (Sxx - Sxf A Sfx + alpha I) beta = Sxy - Sxf A Sfy,
    then gamma = A (Sfy - Sfx beta). (Unpenalised, a baseline spline seen by a handful of training
    tokens gets any coefficient and wrecks a held-out fold whose tokens sit there.)"""
    sff, sfx, sfy = m.szz[f, f], m.sxz[:, f].T, m.szz[f][:, y]  # (b, b), (b, d), (b, t)
    sol = scipy.linalg.solve(
        sff + alpha_f * np.eye(len(sff)), np.concatenate([sfx, sfy], axis=1), assume_a="pos"
    )  # (b, d + t)
    a, b = sol[:, : sfx.shape[1]], sol[:, sfx.shape[1] :]
    sxx_r = m.sxx - sfx.T @ a  # (d, d)
    sxy_r = m.sxz[:, y] - sfx.T @ b  # (d, t)
    coef = scipy.linalg.solve(sxx_r + alpha * np.eye(len(sxx_r)), sxy_r, assume_a="pos")  # (d, t)
    coef_f = b - a @ coef  # (b, t)
    intercept = m.mean_z[y] - (m.mean_x + shift) @ coef - m.mean_z[f] @ coef_f
    return LinearFit(coef, intercept, float(alpha), coef_f)


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


def pca_from(eig: Eig, m: Moments, shift: np.ndarray, k: int) -> PCA:
    """Top-k principal components of the rows of m, signs fixed like sklearn's svd_flip."""
    order = np.argsort(eig.eigval)[::-1][:k]
    comps = eig.eigvec[:, order].T.copy()  # (k, d)
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    total = max(float(np.trace(m.sxx)), np.finfo(float).tiny)
    variance = eig.eigval[order]
    return PCA(m.mean_x + shift, comps, variance / max(m.n - 1, 1), variance / total)
