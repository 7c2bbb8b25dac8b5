"""The study's probes, scored on held-out conversations with bootstrap intervals.

    linear    phase                                  a "progress bar"
    trig      sin, cos of 2*pi*phase                 a "clock"; R^2 is the mean of the two
    helix     phase, sin, cos at once (one penalty)  both; R^2 is the mean of the three
    position  the helix targets from the token's absolute position and index in its turn only
              (spline features), so the report can say how much phase information is beyond
              position (the rotary-position confound)

R^2 is sklearn's `r2_score` (uniform average over a probe's targets) on the test part: 1 minus
the squared error over that of predicting the test mean. Each probe also reads the phase back
(linear: the prediction; trig: atan2(sin, cos); helix: the nearest point of the helix) and
reports its circular mean absolute error in phase units (0 to 0.5).

Test scores are kept as per-conversation sums, so the 95% interval is a bootstrap over test
conversations (scipy.stats.bootstrap, percentile method) without keeping per-token predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.stats
from sklearn.preprocessing import SplineTransformer

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.source import Labels
from turnphase.analysis.split import Split
from turnphase.analysis.stats import PartStats, RidgeFit, RidgePath, cv_r2

TARGETS = ("phase", "sin", "cos")
PROBES: dict[str, list[int]] = {"linear": [0], "trig": [1, 2], "helix": [0, 1, 2]}
HELIX_GRID = np.linspace(0.0, 1.0, 720, endpoint=False)  # half a degree of phase
DECODE_ROWS = 2048  # rows per helix-decoding block: bounds the (rows, grid) distance matrix
BOOTSTRAP_BATCH = 100  # resamples per vectorised call: bounds the (batch, conversations, sums) array


@dataclass
class Probes:
    fits: dict[str, RidgeFit]  # each restricted to its probe's targets
    cv_r2: dict[str, list[float]]  # mean validation R^2 per penalty in config.alphas

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {name: fit.predict(x) for name, fit in self.fits.items()}  # name -> (b, n_targets)


def fit_probes(stats: PartStats, train_parts: list[int], alphas: list[float]) -> Probes:
    scores = cv_r2(stats, train_parts, alphas)  # (n_alphas, 3)
    path = RidgePath(stats.moments(train_parts), stats.shift)
    fits, cv = {}, {}
    for name, cols in PROBES.items():
        probe_scores = scores[:, cols].mean(axis=1)
        full = path.fit(alphas[int(np.argmax(probe_scores))])
        fits[name] = RidgeFit(full.coef[:, cols], full.intercept[cols], full.alpha)
        cv[name] = probe_scores.tolist()
    return Probes(fits, cv)


def read_phase(name: str, pred: np.ndarray) -> np.ndarray:
    """The phase (0..1) a probe's prediction (b, n_targets) stands for: (b,)."""
    if name == "linear":
        return np.clip(pred[:, 0], 0.0, 1.0)
    if name == "trig":
        return np.arctan2(pred[:, 0], pred[:, 1]) / (2 * np.pi) % 1.0
    angle = 2 * np.pi * HELIX_GRID
    curve = np.stack([HELIX_GRID, np.sin(angle), np.cos(angle)], axis=1)  # (grid, 3)
    nearest = np.empty(len(pred), dtype=np.int64)
    for i in range(0, len(pred), DECODE_ROWS):
        block = pred[i : i + DECODE_ROWS]
        nearest[i : i + DECODE_ROWS] = (-2 * block @ curve.T + (curve**2).sum(1)).argmin(
            axis=1
        )  # (rows, grid)
    return HELIX_GRID[nearest]


def circular_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a - b) % 1.0
    return np.minimum(d, 1.0 - d)


class TestScores:
    """Per-test-conversation sums: n, sum y, sum y^2 per target; per probe its squared errors per
    target and its summed phase error. One row per test conversation."""

    def __init__(self, conversations: np.ndarray):
        self.conversations = conversations  # sorted ids
        self.col: dict[str, int | list[int]] = {"n": 0, "sy": [1, 2, 3], "syy": [4, 5, 6]}
        width = 7
        for name, cols in PROBES.items():
            self.col[f"sse_{name}"] = list(range(width, width + len(cols)))
            self.col[f"err_{name}"] = width + len(cols)
            width += len(cols) + 1
        self.sums = np.zeros((len(conversations), width))

    def add(self, conversation: np.ndarray, y: np.ndarray, preds: dict[str, np.ndarray]) -> None:
        """conversation: (b,) ids, y: (b, 3) targets, preds: probe -> (b, n_targets)."""
        if len(y) == 0:
            return
        cols = [np.ones(len(y)), *y.T, *(y**2).T]
        for name, target_cols in PROBES.items():
            cols += list(((y[:, target_cols] - preds[name]) ** 2).T)
            cols.append(circular_error(read_phase(name, preds[name]), y[:, 0]))
        where = np.searchsorted(self.conversations, conversation)
        for j, values in enumerate(cols):
            self.sums[:, j] += np.bincount(where, weights=values, minlength=len(self.conversations))

    def r2(self, name: str, sums: np.ndarray) -> np.ndarray:
        """Probe R^2 from column sums (..., width) over some set of conversations: (...)."""
        t = PROBES[name]
        n = sums[..., self.col["n"]][..., None]
        sy = sums[..., np.array(self.col["sy"])[t]]
        sst = sums[..., np.array(self.col["syy"])[t]] - sy**2 / n
        return (1.0 - sums[..., self.col[f"sse_{name}"]] / sst).mean(axis=-1)

    def per_target(self, name: str) -> dict[str, float]:
        total = self.sums.sum(0)
        n = total[self.col["n"]]
        out = {}
        for t, sse_col in zip(PROBES[name], self.col[f"sse_{name}"], strict=True):
            sst = total[self.col["syy"][t]] - total[self.col["sy"][t]] ** 2 / n
            out[TARGETS[t]] = float(1.0 - total[sse_col] / sst)
        return out

    def result(self, name: str, fit: RidgeFit, config: AnalysisConfig) -> dict:
        total = self.sums.sum(0)

        def mae(s: np.ndarray) -> np.ndarray:
            return s[..., self.col[f"err_{name}"]] / s[..., self.col["n"]]

        return {
            "r2": float(self.r2(name, total)),
            "ci95": bootstrap_interval(self.sums, lambda s: self.r2(name, s), config, f"r2 {name}"),
            "r2_per_target": self.per_target(name),
            "phase_mae": float(mae(total)),
            "phase_mae_ci95": bootstrap_interval(self.sums, mae, config, f"mae {name}"),
            "alpha": fit.alpha,
        }

    def gain_over(self, baseline: TestScores, name: str, config: AnalysisConfig) -> dict:
        """R^2 of this probe minus the baseline's on the same test tokens, with a paired interval."""
        both = np.concatenate([self.sums, baseline.sums], axis=1)
        w = self.sums.shape[1]

        def gain(s: np.ndarray) -> np.ndarray:
            return self.r2(name, s[..., :w]) - baseline.r2(name, s[..., w:])

        return {
            "r2": float(gain(both.sum(0))),
            "ci95": bootstrap_interval(both, gain, config, f"gain {name}"),
        }


def bootstrap_interval(
    per_conversation: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    config: AnalysisConfig,
    purpose: str,
) -> list[float] | None:
    """95% percentile interval of statistic(column sums) over conversations resampled with
    replacement; None with fewer than two test conversations."""
    if len(per_conversation) < 2:
        return None
    res = scipy.stats.bootstrap(
        (np.arange(len(per_conversation)),),
        lambda idx, axis: statistic(per_conversation[idx].sum(axis=-2)),
        vectorized=True,
        n_resamples=config.n_bootstrap,
        batch=BOOTSTRAP_BATCH,
        method="percentile",
        rng=config.rng(f"bootstrap {purpose}"),
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def test_conversations(labels: Labels, split: Split) -> np.ndarray:
    return np.unique(labels.conversation[split.part == split.test_part])


def position_baseline(labels: Labels, split: Split, config: AnalysisConfig) -> tuple[Probes, TestScores]:
    """Fit and score the helix targets from position features only (labels; no activations)."""
    feats = np.stack([labels.token_position, labels.index_in_turn], axis=1).astype(np.float64)  # (n, 2)
    spline = SplineTransformer(n_knots=8, degree=3, include_bias=False)
    spline.fit(feats[split.part != split.test_part])
    stats = PartStats(config.n_parts, spline.n_features_out_, len(TARGETS))
    chunks = [slice(i, i + config.batch_size) for i in range(0, labels.n, config.batch_size)]
    for sl in chunks:
        stats.add(spline.transform(feats[sl]), labels.targets(sl), split.part[sl])
    probes = fit_probes(stats, split.train_parts, config.alphas)
    scores = TestScores(test_conversations(labels, split))
    for sl in chunks:
        test = split.part[sl] == split.test_part
        if not test.any():
            continue
        x = spline.transform(feats[sl][test])
        scores.add(labels.conversation[sl][test], labels.targets(sl)[test], probes.predict(x))
    return probes, scores
