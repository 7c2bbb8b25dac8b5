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

PHASE_ROLES = ("user", "assistant")
ROUND_CHUNK = 1024  # rounds per FFT call: bounds the complex (rounds, freqs, pcs) temporary


def round_starts(labels: Labels) -> np.ndarray:
    """Start index (into analysed tokens) of each (conversation, round) run, plus the end: (R + 1,)."""
    change = (np.diff(labels.conversation) != 0) | (np.diff(labels.round) != 0)
    return np.concatenate([[0], np.flatnonzero(change) + 1, [labels.n]])


class RoundGrid:
    """The sparse map from analysed tokens to (round, grid point), for rounds with both turns.

    Row t, column r * grid + g holds token t's weight in np.interp(g / grid, phases of round r,
    values of round r): the two tokens around each grid point share it linearly, and points
    outside a round's first and last phase take the end values, as np.interp does.
    """

    def __init__(self, labels: Labels, grid: int):
        self.grid = grid
        lengths = np.diff(round_starts(labels))
        round_of = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)  # (n,)
        has = [
            np.bincount(round_of, labels.role == schema.ROLES.index(r), len(lengths)) > 0 for r in PHASE_ROLES
        ]
        # A round without both turns does not span a cycle; resampling it would invent one.
        valid = has[0] & has[1] & (lengths >= 2)
        self.n_rounds = n_rounds = int(valid.sum())
        if n_rounds == 0:
            self.matrix = scipy.sparse.csr_array((labels.n, 0))
            return
        # One sorted key for all rounds, round r's phases in [2r, 2r + 1], so a single
        # searchsorted finds every grid point's neighbours.
        tokens = np.flatnonzero(valid[round_of])
        key = 2.0 * (np.cumsum(valid) - 1)[round_of[tokens]] + labels.phase[tokens]
        order = np.argsort(key, kind="stable")
        tokens, key = tokens[order], key[order]
        bounds = np.searchsorted(key, 2.0 * np.arange(n_rounds + 1) - 0.5)
        first, last = bounds[:-1, None], bounds[1:, None] - 1  # (rounds, 1) first/last sorted token
        query = 2.0 * np.arange(n_rounds)[:, None] + np.arange(grid) / grid  # (rounds, grid)
        k = np.searchsorted(key, query, side="right") - 1  # last token at or before the point
        inside = (k >= first) & (k < last)
        a = np.clip(k, first, last)
        b = np.minimum(a + 1, last)
        t = np.where(inside, (query - key[a]) / np.where(inside, key[b] - key[a], 1.0), 0.0)
        col = np.arange(n_rounds * grid).reshape(n_rounds, grid)
        self.matrix = scipy.sparse.csr_array(
            (
                np.concatenate([(1 - t).ravel(), t[inside]]),
                (
                    np.concatenate([tokens[a].ravel(), tokens[b][inside]]),
                    np.concatenate([col.ravel(), col[inside]]),
                ),
            ),
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
    """One-pass sums that give, for every PC pair, how a token's angle in the pair's plane follows
    2*pi*phase. The best pair is only known after the pass, so all pairs are tracked.

    `corr` is the Fisher-Lee circular correlation (1983): sum over token pairs of
    sin(a_i - a_j) sin(b_i - b_j), normalised; +1 when the angle equals the phase up to a fixed
    rotation, -1 when it runs backwards, about 0 when unrelated. Unlike Jammalamadaka-SenGupta it
    needs no circular means, which are arbitrary when phases are near uniform on the circle (the
    phase_round scheme): there JS gave -0.77 for a monotone one-cycle relation, Fisher-Lee +0.65.
    It reduces to the sums below; scipy.stats has circmean but no circular-circular correlation.
    `locking` is |mean of exp(i(angle - 2*pi*phase))|, 1 when the angle is the phase plus a constant.

    Angles are taken on PCs scaled to unit variance, so an elliptical wheel counts as a circle.
    """

    def __init__(self, scale: np.ndarray):
        self.scale = scale  # (k,) standard deviation of each PC
        self.pi, self.pj = np.triu_indices(len(scale), 1)
        n_pairs = len(self.pi)
        self.n = 0
        self.cross = np.zeros((n_pairs, 2, 2))  # sum of [cos a, sin a]^T [cos b, sin b]
        self.double = np.zeros((n_pairs, 2))  # sum of [cos 2a, sin 2a]
        self.phase_double = np.zeros(2)  # sum of [cos 2b, sin 2b]

    def add(self, z: np.ndarray, phase: np.ndarray) -> None:
        """z: (b, k) projections, phase: (b,) in 0..1."""
        zi, zj = z[:, self.pi] / self.scale[self.pi], z[:, self.pj] / self.scale[self.pj]  # (b, pairs)
        r = np.hypot(zi, zj)
        r[r == 0] = 1.0
        cos, sin = zi / r, zj / r  # (b, pairs): the token's angle in each pair's plane
        b = 2 * np.pi * phase
        v = np.stack([np.cos(b), np.sin(b)], axis=-1)  # (b, 2)
        self.n += len(z)
        self.cross += np.stack([cos.T @ v, sin.T @ v], axis=-2)  # (pairs, 2, 2)
        self.double += np.stack([(cos * cos - sin * sin).sum(0), 2 * (cos * sin).sum(0)], axis=-1)
        self.phase_double += [np.cos(2 * b).sum(), np.sin(2 * b).sum()]

    def _sums(self, i: int, j: int, orientation: int) -> tuple[np.ndarray, np.ndarray]:
        p = int(np.flatnonzero((self.pi == i) & (self.pj == j))[0])
        flip = np.array([1.0, float(orientation)])  # angle -> -angle flips every sin a
        return flip[:, None] * self.cross[p], flip * self.double[p]

    def corr(self, i: int, j: int, orientation: int) -> float:
        """Fisher-Lee correlation of atan2(orientation * z_j, z_i) with 2*pi*phase."""
        cross, double = self._sums(i, j, orientation)
        (cc, cs), (sc, ss) = cross
        n2 = float(self.n) ** 2
        den = (n2 - double @ double) * (n2 - self.phase_double @ self.phase_double)
        return float(4 * (cc * ss - cs * sc) / np.sqrt(den)) if den > 0 else 0.0

    def locking(self, i: int, j: int, orientation: int) -> float:
        """|mean exp(i(angle - 2*pi*phase))| for atan2(orientation * z_j, z_i)."""
        (cc, cs), (sc, ss) = self._sums(i, j, orientation)[0]
        return float(np.hypot(cc + ss, sc - cs) / max(self.n, 1))


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
        "angle_phase_locking": moments.locking(i, j, spec.orientation),
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
