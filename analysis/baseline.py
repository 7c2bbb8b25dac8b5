"""What the labels alone predict: the baselines the activations are scored against.

    structure  role, role x index in turn, absolute position and round: what the model can read
               from its context without representing phase. Not turn length: while a turn is being
               written the model cannot know it, and with it phase would be a formula.
    position   absolute position and index in turn only (the rotary-position confound the study
               names), kept as a secondary row.

Features are cubic B-splines (sklearn SplineTransformer, uniform knots over the range of each
label, which uses no target) and role indicators. The activations' own score is what they add to
the structure baseline when both are fitted together (probes.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import SplineTransformer

from turnphase.analysis.source import Labels
from turnphase.builders import schema

USER, ASSISTANT = schema.ROLES.index("user"), schema.ROLES.index("assistant")
N_KNOTS = 8


class BaselineFeatures:
    """Label-only features of analysed tokens: columns `structure` then `position` of transform()."""

    def __init__(self, labels: Labels):
        self.labels = labels
        self.spline = SplineTransformer(n_knots=N_KNOTS, degree=3, include_bias=False)
        self.spline.fit(self._raw(slice(None)))
        per = self.spline.n_features_out_ // 3  # features per raw label
        # structure: assistant, index x user, index x assistant, position, round; position: both splines
        self.n_structure = 1 + 4 * per
        self.n_position = 2 * per
        self.structure = slice(0, self.n_structure)
        self.position = slice(self.n_structure, self.n_structure + self.n_position)
        self.width = self.n_structure + self.n_position

    def _raw(self, idx: np.ndarray | slice) -> np.ndarray:
        lab = self.labels
        return np.stack([lab.token_position[idx], lab.index_in_turn[idx], lab.round[idx]], axis=1).astype(
            np.float64
        )

    def transform(self, idx: np.ndarray | slice) -> np.ndarray:
        """(len(idx), width) features of analysed tokens idx."""
        per = self.spline.n_features_out_ // 3
        s = self.spline.transform(self._raw(idx))  # (b, 3 * per): position, index, round splines
        position, index, rnd = s[:, :per], s[:, per : 2 * per], s[:, 2 * per :]
        assistant = (self.labels.role[idx] == ASSISTANT).astype(np.float64)[:, None]
        return np.concatenate(
            [assistant, index * (1 - assistant), index * assistant, position, rnd, position, index], axis=1
        )
