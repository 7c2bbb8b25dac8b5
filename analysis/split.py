"""The held-out split and the scrambled control: which label goes with which activation row, and
which part of the split each label belongs to.

Parts: 0..cv_folds-1 are folds of the training data (for choosing the ridge penalty), part
cv_folds is the held-out test set. The split is over labels, so the real data and its scrambled
control share it.

The scrambled control is the dataset with its activation rows permuted by a seeded permutation,
labels left in place. It is a view: activations are never moved or copied. Pairing activation
row pi(i) with label i is the same set of pairs as pairing activation row j with label
pi^-1(j), so while activation row j streams by, the scrambled analysis looks up label
`label_of_row[j]`. Only analysed (turn) tokens are permuted among themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.source import Labels
from turnphase.builders.errors import TurnphaseError

PairingName = Literal["real", "scrambled"]


@dataclass
class Split:
    part: np.ndarray  # (n,) int8: training fold, or the test part
    test_part: int

    @property
    def train_parts(self) -> list[int]:
        return list(range(self.test_part))

    def summary(self, labels: Labels) -> dict:
        test = self.part == self.test_part
        return {
            "tokens": {"train": int((~test).sum()), "test": int(test.sum())},
            "conversations": {
                "train": int(len(np.unique(labels.conversation[~test]))),
                "test": int(len(np.unique(labels.conversation[test]))),
            },
        }


def make_split(labels: Labels, config: AnalysisConfig) -> Split:
    n = labels.n
    index = np.arange(n)
    if config.split == "conversation":
        groups = labels.conversation
        n_groups = len(np.unique(groups))
        if n_groups * (1 - config.test_fraction) < config.cv_folds or n_groups * config.test_fraction < 1:
            raise TurnphaseError(
                f"{n_groups} conversations are too few for a conversation split with {config.cv_folds} "
                "folds; use more conversations, fewer folds, or --split token"
            )
        splitter = GroupShuffleSplit(n_splits=1, test_size=config.test_fraction, random_state=config.seed)
        train, test = next(splitter.split(index, groups=groups))
        folds = GroupKFold(config.cv_folds, shuffle=True, random_state=config.seed).split(
            train, groups=groups[train]
        )
    else:
        splitter = ShuffleSplit(n_splits=1, test_size=config.test_fraction, random_state=config.seed)
        train, test = next(splitter.split(index))
        folds = KFold(config.cv_folds, shuffle=True, random_state=config.seed).split(train)
    part = np.full(n, config.test_part, dtype=np.int8)
    for fold, (_, val) in enumerate(folds):
        part[train[val]] = fold
    return Split(part=part, test_part=config.test_part)


@dataclass
class Pairing:
    """Which analysed label sits next to each analysed activation row."""

    name: PairingName
    label_of_row: np.ndarray | None  # (n,) int32 permutation; None for the real, identity pairing

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.label_of_row is None else self.label_of_row[rows]


def pairings(n: int, config: AnalysisConfig) -> list[Pairing]:
    perm = config.rng("scramble").permutation(n).astype(np.int32)
    return [Pairing("real", None), Pairing("scrambled", perm)]
