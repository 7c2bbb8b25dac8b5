"""What the labels alone predict: the baselines the activations are scored against.

    structure  role, role x index in turn, absolute position and round: what the model can read
               from its context without representing phase. Not turn length: while a turn is being
               written the model cannot know it, and with it phase would be a formula.
    position   absolute position and index in turn only (the rotary-position confound the study
               names), kept as a secondary row.

Position and index in turn enter as cubic B-splines of log(1 + value) (sklearn SplineTransformer),
clipped to their 0.5%..99.5% range with knots at quantiles, so every basis function is carried by
many tokens of many conversations: a basis seen only by one long conversation would take any
coefficient when that conversation is held out (measured: a held-out fold at R^2 -0.8). Round is
one indicator per round. None of this looks at a target. The activations' own score is what they
add to the structure baseline when both are fitted together (probes.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import SplineTransformer

from turnphase.analysis.source import Labels
from turnphase.builders import schema

USER, ASSISTANT = schema.ROLES.index("user"), schema.ROLES.index("assistant")
N_KNOTS = 6
CLIP = (0.005, 0.995)  # quantiles the spline inputs are clipped to


class BaselineFeatures:
    """Label-only features of analysed tokens: columns `structure` then `position` of transform()."""

    def __init__(self, labels: Labels):
        self.labels = labels
        raw = self._log(slice(None))
        self.bounds = np.quantile(raw, CLIP, axis=0)  # (2, 2): low/high of log position, log index
        self.spline = SplineTransformer(n_knots=N_KNOTS, degree=3, knots="quantile", include_bias=False)
        self.spline.fit(np.clip(raw, *self.bounds))
        self.rounds = np.unique(labels.round)[1:]  # one indicator per round after the first
        per = self.spline.n_features_out_ // 2  # features per spline input
        # structure: assistant, index x user, index x assistant, position, rounds; position: both splines
        self.n_structure = 1 + 3 * per + len(self.rounds)
        self.n_position = 2 * per
        self.structure = slice(0, self.n_structure)
        self.position = slice(self.n_structure, self.n_structure + self.n_position)
        self.width = self.n_structure + self.n_position

    def _log(self, idx: np.ndarray | slice) -> np.ndarray:
        lab = self.labels
        return np.log1p(
            np.stack([lab.token_position[idx], lab.index_in_turn[idx]], axis=1).astype(np.float64)
        )

    def transform(self, idx: np.ndarray | slice) -> np.ndarray:
        """(len(idx), width) features of analysed tokens idx."""
        per = self.spline.n_features_out_ // 2
        s = self.spline.transform(np.clip(self._log(idx), *self.bounds))  # (b, 2 * per)
        position, index = s[:, :per], s[:, per:]
        assistant = (self.labels.role[idx] == ASSISTANT).astype(np.float64)[:, None]
        rounds = (self.labels.round[idx][:, None] == self.rounds[None, :]).astype(np.float64)
        return np.concatenate(
            [assistant, index * (1 - assistant), index * assistant, position, rounds, position, index], axis=1
        )
