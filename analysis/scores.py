"""Held-out scores kept as per-conversation sums, so every number gets a bootstrap interval over
conversations without keeping per-token predictions.

    sums = ConvSums(conversations)
    sums.add(conversation_ids, {"n": ones, "sse:trig:sin": err**2, ...})   # batch by batch
    sums.statistic(lambda s: 1 - s["sse"] / s["sst"])                        # pooled value
    sums.interval(statistic, config, "purpose")                              # 95% bootstrap

A statistic is a function of named column sums (arrays with any leading resampling axes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import scipy.sparse
import scipy.stats

from turnphase.analysis.config import AnalysisConfig

BOOTSTRAP_BATCH = 100  # resamples per vectorised call: bounds the (batch, conversations, columns) array
Sums = Mapping[str, np.ndarray]
Statistic = Callable[[Sums], np.ndarray]


class ConvSums:
    """Named per-conversation sums; columns appear when first added."""

    def __init__(self, conversations: np.ndarray):
        self.conversations = conversations  # sorted ids
        self.index: dict[str, int] = {}
        self.table = np.zeros((len(conversations), 0))

    def add(self, conversation: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        if len(conversation) == 0:
            return
        where = np.searchsorted(self.conversations, conversation)
        onehot = scipy.sparse.csr_array(
            (np.ones(len(where)), (where, np.arange(len(where)))), shape=(len(self.table), len(where))
        )  # (conversations, rows)
        at = self._columns(columns)  # first: it may replace self.table
        self.table[:, at] += onehot @ np.stack(list(columns.values()), axis=1)

    def merge(self, other: ConvSums) -> None:
        """Add another row subset's sums (same conversations), column by column name."""
        at = self._columns(other.index)  # first: it may replace self.table
        self.table[:, at] += other.table[:, list(other.index.values())]

    def _columns(self, names) -> list[int]:
        """Table columns of `names`, appending any not seen yet."""
        new = [name for name in names if name not in self.index]
        if new:
            self.index.update({name: len(self.index) + i for i, name in enumerate(new)})
            self.table = np.concatenate([self.table, np.zeros((len(self.table), len(new)))], axis=1)
        return [self.index[name] for name in names]

    def view(self, table: np.ndarray) -> Sums:
        return _Columns(table, self.index)

    def statistic(self, stat: Statistic, rows: np.ndarray | None = None) -> float:
        table = self.table if rows is None else self.table[rows]
        return float(stat(self.view(table.sum(axis=0))))

    def interval(self, stat: Statistic, config: AnalysisConfig, purpose: str) -> list[float] | None:
        """95% percentile interval of stat(column sums) over conversations resampled with
        replacement; None with fewer than two conversations."""
        if len(self.table) < 2:
            return None
        used = _Recorder(self.table.sum(axis=0), self.index)
        stat(used)  # which columns the statistic reads: only those are resampled
        cols = [self.index[name] for name in used.read]
        table = self.table[:, cols]

        def resampled(idx: np.ndarray, axis: int) -> np.ndarray:
            sums = table[idx].sum(axis=-2)
            return stat({name: sums[..., i] for i, name in enumerate(used.read)})

        res = scipy.stats.bootstrap(
            (np.arange(len(self.table)),),
            resampled,
            vectorized=True,
            n_resamples=config.n_bootstrap,
            batch=BOOTSTRAP_BATCH,
            method="percentile",
            rng=config.rng(f"bootstrap {purpose}"),
        )
        low, high = res.confidence_interval
        return [float(low), float(high)]

    def result(self, stat: Statistic, config: AnalysisConfig, purpose: str) -> dict:
        return {"value": self.statistic(stat), "ci95": self.interval(stat, config, purpose)}


class _Columns(Mapping):
    """Named columns of a (..., n_columns) array, looked up only when read."""

    def __init__(self, table: np.ndarray, index: dict[str, int]):
        self.table, self.index = table, index

    def __getitem__(self, name: str) -> np.ndarray:
        return self.table[..., self.index[name]]

    def __iter__(self):
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)


class _Recorder(_Columns):
    """Columns that remember which of them a statistic read."""

    def __init__(self, table: np.ndarray, index: dict[str, int]):
        super().__init__(table, index)
        self.read: list[str] = []

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.read:
            self.read.append(name)
        return super().__getitem__(name)


def r2_stat(prefix: str, targets: list[str], over: str | None = None) -> Statistic:
    """Mean over targets ('<scheme>:<name>') of 1 - SSE / SST (sklearn's r2_score, uniform
    average), from columns `n`, `sy:<target>`, `syy:<target>` and `<prefix>:<name>` (squared
    errors). With `over`, SST is replaced by that model's squared errors `<over>:<name>`: a partial
    R^2, the share of what model `over` leaves unexplained that `prefix` explains."""

    def stat(s: Sums) -> np.ndarray:
        parts = []
        for target in targets:
            name = target.split(":", 1)[1]
            sst = s[f"syy:{target}"] - s[f"sy:{target}"] ** 2 / s["n"]
            parts.append(1.0 - s[f"{prefix}:{name}"] / (s[f"{over}:{name}"] if over else sst))
        return np.mean(parts, axis=0)

    return stat


def pearson_stat(prefix: str) -> Statistic:
    """Pearson r from columns <prefix>:{n, p, y, pp, yy, py}."""

    def stat(s: Sums) -> np.ndarray:
        n = s[f"{prefix}:n"]
        cov = s[f"{prefix}:py"] - s[f"{prefix}:p"] * s[f"{prefix}:y"] / n
        vp = s[f"{prefix}:pp"] - s[f"{prefix}:p"] ** 2 / n
        vy = s[f"{prefix}:yy"] - s[f"{prefix}:y"] ** 2 / n
        return cov / np.sqrt(np.maximum(vp * vy, np.finfo(float).tiny))

    return stat


def pearson_columns(prefix: str, p: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    return {
        f"{prefix}:n": np.ones(len(p)),
        f"{prefix}:p": p,
        f"{prefix}:y": y,
        f"{prefix}:pp": p * p,
        f"{prefix}:yy": y * y,
        f"{prefix}:py": p * y,
    }


def mean_of(*stats: Statistic) -> Statistic:
    return lambda s: np.mean([f(s) for f in stats], axis=0)
