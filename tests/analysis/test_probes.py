"""Probe, PCA and baseline numbers equal scikit-learn fitted directly on the same split."""

from __future__ import annotations

import numpy as np
import pytest
from reference import load_reference
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.probes import PROBES
from turnphase.analysis.source import DatasetSource
from turnphase.analysis.split import make_split, pairings
from turnphase.analysis.stats import PartStats, pca_from


@pytest.fixture(scope="module")
def setup(helix_dataset):
    config = AnalysisConfig(source=str(helix_dataset))
    labels = DatasetSource.open(config.source).labels(config)
    split = make_split(labels, config)
    ref = load_reference(helix_dataset, layer=1)
    np.testing.assert_array_equal(labels.conversation, ref.conversation)
    return config, labels, split, ref


@pytest.mark.parametrize("pairing", ["real", "scrambled"])
@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_matches_sklearn_ridge(setup, helix_report, pairing, probe):
    config, labels, split, ref = setup
    x = ref.x
    if pairing == "scrambled":
        # The control pairs activation row j with label label_of_row[j]: permute a real copy.
        label_of_row = pairings(labels.n, config)[1].label_of_row
        x = np.empty_like(ref.x)
        x[label_of_row] = ref.x
    y = ref.targets[:, PROBES[probe]]
    train, test = split.part != split.test_part, split.part == split.test_part
    got = helix_report["layers"]["1"]["probes"][probe][pairing]

    search = GridSearchCV(Ridge(), {"alpha": config.alphas}, cv=PredefinedSplit(split.part[train]))
    search.fit(x[train], y[train])
    assert search.best_params_["alpha"] == got["alpha"]

    model = Ridge(alpha=got["alpha"]).fit(x[train], y[train])
    assert got["r2"] == pytest.approx(model.score(x[test], y[test]), abs=1e-8)
    lo, hi = got["ci95"]
    assert lo <= got["r2"] <= hi


@pytest.mark.parametrize("probe", list(PROBES))
def test_position_baseline_matches_sklearn_pipeline(setup, helix_report, probe):
    config, labels, split, ref = setup
    feats = np.stack([ref.position, ref.index_in_turn], axis=1).astype(np.float64)
    y = ref.targets[:, PROBES[probe]]
    train, test = split.part != split.test_part, split.part == split.test_part
    got = helix_report["layers"]["1"]["probes"][probe]["position"]
    model = make_pipeline(
        SplineTransformer(n_knots=8, degree=3, include_bias=False), Ridge(alpha=got["alpha"])
    )
    model.fit(feats[train], y[train])
    assert got["r2"] == pytest.approx(model.score(feats[test], y[test]), abs=1e-8)
    gain = helix_report["layers"]["1"]["probes"][probe]["gain_over_position"]["r2"]
    assert gain == pytest.approx(helix_report["layers"]["1"]["probes"][probe]["real"]["r2"] - got["r2"])


def test_pca_from_sums_matches_sklearn(setup):
    *_, ref = setup
    stats = PartStats(3, ref.x.shape[1], 1)
    for i, sl in enumerate(np.array_split(np.arange(len(ref.x)), 7)):  # uneven batches, mixed parts
        stats.add(ref.x[sl], ref.phase[sl, None], np.full(len(sl), i % 3))
    ours = pca_from(stats, 8)
    theirs = PCA(8).fit(ref.x)
    np.testing.assert_allclose(ours.explained_variance_ratio, theirs.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(ours.explained_variance, theirs.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(ours.components @ theirs.components_.T), np.eye(8), atol=1e-6)
