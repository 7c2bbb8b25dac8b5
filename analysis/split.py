"""Cross-fitting folds and the null pairings: which label goes with which activation row, and which
fold each label belongs to.

Folds: every analysed token is in one of `config.folds` folds (whole conversations by default).
Each fold is held out once and scored with probes fitted on the others, whose penalty is chosen by
cross-validation over those others only (nested), so every conversation is a test conversation
once and no test token ever chose a penalty.

Nulls: the dataset with its activation rows permuted among groups of labels, labels in place.

    real         the identity
    scrambled    any row with any row of its fold: destroys everything (the study's control)
    within_role  rows of the same role and fold: keeps whose turn it is, destroys the rest
    within_turn  rows of the same turn: keeps role, round and conversation, destroys the position
                 inside the turn, so what a probe finds beyond this null is progress within turns

Permuting inside folds keeps every fold's set of activation rows, so the Gram matrix of any union
of folds is the same for every pairing (stats.py computes it once). A pairing is a view:
activation row j is paired with label `label_of_row[j]`, and activations never move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.source import Labels
from turnphase.builders.errors import TurnphaseError

PairingName = Literal["real", "scrambled", "within_role", "within_turn"]
NULLS: tuple[PairingName, ...] = ("scrambled", "within_role", "within_turn")
PAIRINGS: tuple[PairingName, ...] = ("real", *NULLS)


@dataclass
class Folds:
    fold: np.ndarray  # (n,) int8, fold of each analysed token
    k: int

    def others(self, *held_out: int) -> list[int]:
        return [f for f in range(self.k) if f not in held_out]

    def summary(self, labels: Labels) -> dict:
        return {
            "folds": self.k,
            "tokens_per_fold": np.bincount(self.fold, minlength=self.k).tolist(),
            "conversations_per_fold": [
                int(len(np.unique(labels.conversation[self.fold == f]))) for f in range(self.k)
            ],
        }


def make_folds(labels: Labels, config: AnalysisConfig) -> Folds:
    index = np.arange(labels.n)
    if config.split == "conversation":
        n_groups = len(np.unique(labels.conversation))
        if n_groups < config.folds:
            raise TurnphaseError(
                f"{n_groups} conversations are too few for {config.folds} conversation folds; "
                "use more conversations, fewer --folds, or --split token"
            )
        splits = GroupKFold(config.folds, shuffle=True, random_state=config.seed).split(
            index, groups=labels.conversation
        )
    else:
        splits = KFold(config.folds, shuffle=True, random_state=config.seed).split(index)
    fold = np.empty(labels.n, dtype=np.int8)
    for f, (_, held_out) in enumerate(splits):
        fold[held_out] = f
    return Folds(fold, config.folds)


@dataclass
class Pairing:
    """Which analysed label sits next to each analysed activation row."""

    name: PairingName
    label_of_row: np.ndarray | None  # (n,) int32 permutation; None for the real, identity pairing

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.label_of_row is None else self.label_of_row[rows]

    @property
    def keeps_role(self) -> bool:
        return self.name != "scrambled"


def turn_ids(labels: Labels) -> np.ndarray:
    """(n,) id of each analysed token's turn (consecutive tokens of one conversation, round and role)."""
    change = (np.diff(labels.conversation) != 0) | (np.diff(labels.round) != 0) | (np.diff(labels.role) != 0)
    return np.concatenate([[0], np.cumsum(change)])


def permute_within(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of 0..n-1 that maps every index to one of its own group: (n,) int32."""
    order = np.lexsort((rng.random(len(groups)), groups))  # each group's members, shuffled
    slots = np.argsort(groups, kind="stable")  # each group's members, in place order
    perm = np.empty(len(groups), dtype=np.int32)
    perm[slots] = order
    return perm


def pairings(labels: Labels, folds: Folds, config: AnalysisConfig) -> list[Pairing]:
    fold = folds.fold.astype(np.int64)
    groups = {
        "scrambled": fold,
        "within_role": fold * 8 + labels.role,
        "within_turn": fold * (int(labels.n) + 1) + turn_ids(labels),
    }
    return [Pairing("real", None)] + [
        Pairing(name, permute_within(groups[name], config.rng(f"null {name}"))) for name in NULLS
    ]
