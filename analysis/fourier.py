"""PCA + per-round Fourier analysis: which principal components turn once per round, and in step?

For every round (one user turn and the assistant's answer), each PC's values are resampled onto
`grid` uniform points of phase (linear interpolation, np.interp's rule), Fourier transformed
(scipy.fft.rfft / grid), and the complex coefficients are averaged over rounds:

    coherence[pc, k] = |mean over rounds of C|        (the study's, amplitude-weighted)
    itpc[pc, k]      = |mean over rounds of C / |C||  (inter-trial phase coherence, 0..1)

A cos(2*pi*phase + a) component has C[k=1] = e^{ia} / 2, so two PCs turning a quarter cycle
apart make a plane in which a token's angle tracks its phase. Pair score at k = 1:
coherence_i * coherence_j * sin^2(angle_i - angle_j); the best pair is the study's colour wheel.

Streaming: resampling and the FFT are linear in the values, so each round's grid is a sparse
weighted sum of its tokens' projections and can be filled in any token order (the scrambled
control's rounds are spread over the whole stream). Memory is rounds * grid * n_pcs floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse

from turnphase.analysis.source import Labels
from turnphase.builders import schema

ROUND_CHUNK = 1024  # rounds per FFT call: bounds the complex (rounds, freqs, pcs) temporary


def round_starts(labels: Labels) -> np.ndarray:
    """Start index (into analysed tokens) of each (conversation, round) run, plus the end: (R + 1,)."""
    change = (np.diff(labels.conversation) != 0) | (np.diff(labels.round) != 0)
    return np.concatenate([[0], np.flatnonzero(change) + 1, [labels.n]])


def interp_weights(phase: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.interp(arange(grid) / grid, phase, values) as (token, grid point, weight) triples.

    phase: (m,) non-decreasing. Points outside [phase[0], phase[-1]] take the end values.
    """
    u = np.arange(grid) / grid
    m = len(phase)
    k = np.searchsorted(phase, u, side="right") - 1  # last token at or before u; phase[k+1] > phase[k]
    inside = (k >= 0) & (k < m - 1)
    a = np.clip(k, 0, m - 1)
    b = np.minimum(a + 1, m - 1)
    t = np.zeros(grid)
    t[inside] = (u[inside] - phase[a[inside]]) / (phase[b[inside]] - phase[a[inside]])
    g = np.arange(grid)
    return np.concatenate([a, b[inside]]), np.concatenate([g, g[inside]]), np.concatenate([1 - t, t[inside]])


class RoundGrid:
    """The sparse map from analysed tokens to (round, grid point), for rounds with both turns."""

    def __init__(self, labels: Labels, grid: int):
        self.grid = grid
        starts = round_starts(labels)
        user, assistant = schema.ROLES.index("user"), schema.ROLES.index("assistant")
        tokens, cols, weights = [], [], []
        n_rounds = 0
        for s, e in zip(starts[:-1], starts[1:], strict=True):
            roles = labels.role[s:e]
            # A round without both turns does not span a cycle; resampling it would invent one.
            if e - s < 2 or not ((roles == user).any() and (roles == assistant).any()):
                continue
            order = np.argsort(labels.phase[s:e], kind="stable")
            tok, g, w = interp_weights(labels.phase[s:e][order].astype(np.float64), grid)
            tokens.append(s + order[tok])
            cols.append(n_rounds * grid + g)
            weights.append(w)
            n_rounds += 1
        self.n_rounds = n_rounds
        if n_rounds == 0:
            self.matrix = scipy.sparse.csr_array((labels.n, 0))
            return
        self.matrix = scipy.sparse.csr_array(
            (np.concatenate(weights), (np.concatenate(tokens), np.concatenate(cols))),
            shape=(labels.n, n_rounds * grid),
        )  # (n_tokens, rounds * grid)

    def add(self, values: np.ndarray, label_idx: np.ndarray, z: np.ndarray) -> None:
        """Add tokens `label_idx` carrying projections z (b, k) into values (rounds * grid, k)."""
        sub = self.matrix[label_idx].tocoo()  # (b, rounds * grid), about 2 * grid entries per round
        points, where = np.unique(sub.col, return_inverse=True)
        gather = scipy.sparse.csr_array((sub.data, (where, sub.row)), shape=(len(points), len(label_idx)))
        values[points] += gather @ z  # (points, k)


@dataclass
class Spectrum:
    coherence: np.ndarray  # (k_pcs, n_freqs)
    itpc: np.ndarray  # (k_pcs, n_freqs)
    angle: np.ndarray  # (k_pcs, n_freqs), angle of the mean coefficient
    pair_score: np.ndarray  # (k_pcs, k_pcs), frequency 1, zero diagonal

    @property
    def best_pair(self) -> tuple[int, int]:
        i, j = np.unravel_index(np.argmax(np.triu(self.pair_score, 1)), self.pair_score.shape)
        return int(i), int(j)

    @property
    def orientation(self) -> int:
        """+1 or -1: the sign that makes the angle in the best plane grow with phase."""
        i, j = self.best_pair
        return -1 if np.sin(self.angle[j, 1] - self.angle[i, 1]) > 0 else 1


def spectrum(values: np.ndarray, n_rounds: int, grid: int) -> Spectrum:
    """values: (rounds * grid, k_pcs) resampled projections."""
    k = values.shape[1]
    total = np.zeros((grid // 2 + 1, k), dtype=complex)
    unit = np.zeros_like(total)
    for r0 in range(0, n_rounds, ROUND_CHUNK):
        rounds = values[r0 * grid : (r0 + ROUND_CHUNK) * grid].reshape(-1, grid, k).astype(np.float64)
        coef = scipy.fft.rfft(rounds, axis=1) / grid  # (rounds, freqs, k)
        total += coef.sum(axis=0)
        size = np.abs(coef)
        unit += np.divide(coef, size, out=np.zeros_like(coef), where=size > 0).sum(axis=0)
    mean = (total / max(n_rounds, 1)).T  # (k, freqs)
    coherence = np.abs(mean)
    angle = np.angle(mean)
    c1, a1 = coherence[:, 1], angle[:, 1]
    pair = np.outer(c1, c1) * np.sin(a1[:, None] - a1[None, :]) ** 2
    np.fill_diagonal(pair, 0.0)
    return Spectrum(coherence, np.abs(unit / max(n_rounds, 1)).T, angle, pair)


class AngleMoments:
    """One-pass sums that give, for every PC pair, the circular correlation (Jammalamadaka and
    SenGupta) between a token's angle in the pair's plane and 2*pi*phase. The best pair is only
    known after the pass, so all pairs are tracked; scipy.stats has circmean but no
    circular-circular correlation.

    Angles are taken on PCs scaled to unit variance, so an elliptical wheel counts as a circle.
    """

    def __init__(self, scale: np.ndarray):
        self.scale = scale  # (k,) standard deviation of each PC
        self.pi, self.pj = np.triu_indices(len(scale), 1)
        n_pairs = len(self.pi)
        self.su = np.zeros((n_pairs, 2))
        self.suu = np.zeros((n_pairs, 2, 2))
        self.suv = np.zeros((n_pairs, 2, 2))
        self.sv = np.zeros(2)
        self.svv = np.zeros((2, 2))

    def add(self, z: np.ndarray, phase: np.ndarray) -> None:
        """z: (b, k) projections, phase: (b,) in 0..1."""
        zi, zj = z[:, self.pi] / self.scale[self.pi], z[:, self.pj] / self.scale[self.pj]  # (b, pairs)
        r = np.hypot(zi, zj)
        r[r == 0] = 1.0
        cos, sin = zi / r, zj / r  # (b, pairs): the token's angle in each pair's plane
        v = np.stack([np.cos(2 * np.pi * phase), np.sin(2 * np.pi * phase)], axis=-1)  # (b, 2)
        self.su += np.stack([cos.sum(0), sin.sum(0)], axis=-1)
        cs = (cos * sin).sum(0)
        cc, ss = (cos * cos).sum(0), (sin * sin).sum(0)
        self.suu += np.stack([np.stack([cc, cs], -1), np.stack([cs, ss], -1)], axis=-2)
        self.suv += np.stack([cos.T @ v, sin.T @ v], axis=-2)  # (pairs, 2, 2)
        self.sv += v.sum(axis=0)
        self.svv += v.T @ v

    def corr(self, i: int, j: int, orientation: int) -> float:
        """Circular correlation of atan2(orientation * z_j, z_i) with 2*pi*phase."""
        p = int(np.flatnonzero((self.pi == i) & (self.pj == j))[0])
        flip = np.array([1.0, float(orientation)])
        su, suu, suv = flip * self.su[p], np.outer(flip, flip) * self.suu[p], flip[:, None] * self.suv[p]
        mean_u, mean_v = np.arctan2(su[1], su[0]), np.arctan2(self.sv[1], self.sv[0])
        a = np.array([-np.sin(mean_u), np.cos(mean_u)])  # sin(x - mean) = [cos x, sin x] . a
        b = np.array([-np.sin(mean_v), np.cos(mean_v)])
        den = np.sqrt((a @ suu @ a) * (b @ self.svv @ b))
        return float(a @ suv @ b / den) if den > 0 else 0.0


def wheel_phase(z: np.ndarray, spec: Spectrum, scale: np.ndarray) -> np.ndarray:
    """Each token's phase estimate (0..1) from its angle in the best plane: (b,)."""
    i, j = spec.best_pair
    theta = np.arctan2(spec.orientation * z[:, j] / scale[j], z[:, i] / scale[i])
    return (theta - spec.angle[i, 1]) / (2 * np.pi) % 1.0


def fourier_summary(spec: Spectrum, moments: AngleMoments, n_rounds: int, top: int = 5) -> dict:
    i, j = spec.best_pair
    coh = spec.coherence[:, 1:]  # frequency 0 is each PC's mean, not a rhythm
    order = np.argsort(coh, axis=None)[::-1][:top]
    return {
        "best_pair": [i, j],
        "pair_score": float(spec.pair_score[i, j]),
        "angle_phase_circcorr": moments.corr(i, j, spec.orientation),
        "orientation": spec.orientation,
        "phase_offset": float(spec.angle[i, 1] / (2 * np.pi) % 1.0),
        "coherence_k1": spec.coherence[:, 1].tolist(),
        "itpc_k1": spec.itpc[:, 1].tolist(),
        "top_coherence": [
            {"pc": int(pc), "k": int(k) + 1, "coherence": float(coh[pc, k])}
            for pc, k in zip(*np.unravel_index(order, coh.shape), strict=True)
        ],
        "n_rounds": n_rounds,
    }
