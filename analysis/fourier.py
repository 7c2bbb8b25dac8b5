"""PCA + per-round Fourier analysis: which principal components turn once per round, and in step?

For every round (one user turn and the assistant's answer), each PC's values are resampled onto
`grid` uniform points of phase (linear interpolation, np.interp's rule), Fourier transformed
(scipy.fft.rfft / grid), and the complex coefficients are averaged over rounds:

    coherence[pc, k] = |mean over rounds of C|        (the study's, amplitude-weighted)
    itpc[pc, k]      = |mean over rounds of C / |C||  (inter-trial phase coherence, 0..1)

A cos(2*pi*phase + a) component has C[k=1] = e^{ia} / 2, so two PCs turning a quarter cycle
apart make a plane in which a token's angle tracks its phase. Pair score at k = 1:
coherence_i * coherence_j * sin^2(angle_i - angle_j); the best pair is the study's colour wheel.
Here this runs on the PCA of all analysed tokens, for the study's figures (coherence and pair-score
heatmaps); the colour wheels that are scored are fitted on training folds only (planes.py), from
the same resampling written as one complex weight per token (`token_weights`).

Streaming: resampling and the FFT are linear in the values, so each round's grid is a sparse
weighted sum of its tokens' projections and can be filled in any token order (the scrambled
control's rounds are spread over the whole stream). Memory is rounds * grid * n_pcs floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse

from turnphase.analysis.planes import best_pair, pair_scores
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

    def token_weights(self, ks: tuple[int, ...]) -> np.ndarray:
        """(n_tokens, 2 * len(ks)) real and imaginary parts of each token's weight in the mean over
        rounds of the rfft coefficient at k cycles per round: sum_t w_t x_t is that mean coefficient
        of any linear read-out x. Tokens of rounds without both turns weigh 0."""
        g = np.arange(self.grid)
        cols = []
        for k in ks:
            twiddle = np.tile(np.exp(-2j * np.pi * k * g / self.grid) / self.grid, self.n_rounds)
            w = self.matrix @ twiddle / max(self.n_rounds, 1)  # (n_tokens,) complex
            cols += [w.real, w.imag]
        return np.stack(cols, axis=1)

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
        return best_pair(self.coherence[:, 1] * np.exp(1j * self.angle[:, 1])).pair


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
    return Spectrum(coherence, np.abs(unit / max(n_rounds, 1)).T, angle, pair_scores(mean[:, 1]))
