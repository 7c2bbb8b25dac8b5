"""Cross-fitted probe, baseline, joint, plane and transfer numbers equal scikit-learn and scipy
fitted directly on the same folds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from reference import load_reference
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.preprocessing import SplineTransformer

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.probes import PROBES
from turnphase.analysis.source import DatasetSource
from turnphase.analysis.split import PAIRINGS, make_folds, pairings
from turnphase.analysis.stats import Eig, Sums, pca_from

LAYER = "1"


@pytest.fixture(scope="module")
def setup(helix_dataset):
    config = AnalysisConfig(source=str(helix_dataset))
    labels = DatasetSource.open(config.source).labels(config)
    folds = make_folds(labels, config)
    ref = load_reference(helix_dataset, layer=int(LAYER), exclude_template=True)
    np.testing.assert_array_equal(labels.conversation, ref.conversation)
    return config, labels, folds, ref


def paired(ref, labels, folds, config, pairing: str) -> np.ndarray:
    """Activations as each label sees them: the null pairs activation row j with label_of_row[j]."""
    p = dict(zip(PAIRINGS, pairings(labels, folds, config), strict=True))[pairing]
    if p.label_of_row is None:
        return ref.x
    x = np.empty_like(ref.x)
    x[p.label_of_row] = ref.x
    return x


def structure_features(ref) -> np.ndarray:
    """The structure baseline built independently: role, splines of log(1 + index in turn) per role
    and of log(1 + position) (clipped to their 0.5..99.5% quantiles, knots at quantiles), and one
    indicator per round after the first."""
    raw = np.log1p(np.stack([ref.position, ref.index_in_turn], axis=1).astype(float))
    raw = np.clip(raw, *np.quantile(raw, [0.005, 0.995], axis=0))
    s = SplineTransformer(n_knots=6, degree=3, knots="quantile", include_bias=False).fit_transform(raw)
    per = s.shape[1] // 2
    pos, idx = s[:, :per], s[:, per:]
    a = (ref.role == "assistant").astype(float)[:, None]
    rounds = (ref.round[:, None] == np.unique(ref.round)[None, 1:]).astype(float)
    return np.concatenate([a, idx * (1 - a), idx * a, pos, rounds], axis=1)


def nested_ridge(x, y, fold, config):
    """Cross-fitted predictions: per held-out fold, GridSearchCV over the other folds (leave one
    fold out), then Ridge on all of them. Returns predictions and the penalty per fold."""
    pred, alphas = np.empty_like(y), []
    for o in range(config.folds):
        train = fold != o
        search = GridSearchCV(Ridge(), {"alpha": config.alphas}, cv=PredefinedSplit(fold[train]))
        search.fit(x[train], y[train])
        alphas.append(search.best_params_["alpha"])
        pred[~train] = search.best_estimator_.predict(x[~train]).reshape(-1, y.shape[1])
    return pred, alphas


@pytest.mark.parametrize("pairing", ["real", "within_turn"])
@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_matches_sklearn_nested_cv(setup, helix_report, pairing, probe):
    config, labels, folds, ref = setup
    x = paired(ref, labels, folds, config, pairing)
    y = ref.targets[:, PROBES[probe].columns(0)]
    got = helix_report["layers"][LAYER]["probes"]["phase"][probe]["acts"][pairing]
    pred, alphas = nested_ridge(x, y, folds.fold, config)
    assert got["alpha_per_fold"] == alphas
    assert got["r2"] == pytest.approx(r2_score(y, pred), abs=1e-8)
    lo, hi = got["ci95"]
    assert lo <= got["r2"] <= hi


@pytest.mark.parametrize("probe", list(PROBES))
def test_joint_and_partial_r2_match_sklearn(setup, helix_report, probe):
    """The joint model is ridge on [activations, structure features] with one penalty per block (the
    acts probe's, the structure baseline's): sklearn's Ridge(alpha_x) on [x, f * sqrt(alpha_x /
    alpha_f)] is the same model."""
    config, labels, folds, ref = setup
    entry = helix_report["layers"][LAYER]["probes"]["phase"][probe]
    y = ref.targets[:, PROBES[probe].columns(0)]
    f = structure_features(ref)
    base, base_alphas = nested_ridge(f, y, folds.fold, config)
    assert entry["structure"]["alpha_per_fold"] == base_alphas
    assert entry["structure"]["r2"] == pytest.approx(r2_score(y, base), abs=1e-8)
    joint = np.empty_like(y)
    for o, (alpha, alpha_f) in enumerate(
        zip(entry["acts"]["real"]["alpha_per_fold"], base_alphas, strict=True)
    ):
        tr, te = folds.fold != o, folds.fold == o
        xf = np.concatenate([ref.x, f * np.sqrt(alpha / alpha_f)], axis=1)
        joint[te] = Ridge(alpha).fit(xf[tr], y[tr]).predict(xf[te]).reshape(-1, y.shape[1])
    assert entry["joint"]["real"]["r2"] == pytest.approx(r2_score(y, joint), abs=1e-6)
    partial = np.mean(1 - ((y - joint) ** 2).sum(0) / ((y - base) ** 2).sum(0))
    assert entry["partial_r2_over_structure"]["real"]["value"] == pytest.approx(partial, abs=1e-6)


def fisher_lee(a: np.ndarray, b: np.ndarray) -> float:
    """The definition, over all pairs of tokens."""
    i, j = np.triu_indices(len(a), 1)
    sa, sb = np.sin(a[i] - a[j]), np.sin(b[i] - b[j])
    return float((sa * sb).sum() / np.sqrt((sa**2).sum() * (sb**2).sum()))


def test_supervised_plane_and_cross_role_transfer_match_sklearn(setup, helix_report):
    config, labels, folds, ref = setup
    e = helix_report["layers"][LAYER]
    y = ref.targets[:, PROBES["trig"].columns(0)]  # sin, cos
    pred, alphas = nested_ridge(ref.x, y, folds.fold, config)
    angle = np.arctan2(pred[:, 0], pred[:, 1])
    got = e["planes"]["trig"]["real"]
    assert got["circcorr"]["value"] == pytest.approx(fisher_lee(angle, 2 * np.pi * ref.phase), abs=1e-9)
    locking = np.abs(np.exp(1j * (angle - 2 * np.pi * ref.phase)).mean())
    assert got["locking"]["value"] == pytest.approx(locking, abs=1e-9)

    transfer = {"user": np.empty(0), "assistant": np.empty(0)}
    for train_role, test_role in (("user", "assistant"), ("assistant", "user")):
        p, t = [], []
        for o, alpha in enumerate(alphas):
            tr = (folds.fold != o) & (ref.role == train_role)
            te = (folds.fold == o) & (ref.role == test_role)
            p.append(Ridge(alpha).fit(ref.x[tr], y[tr]).predict(ref.x[te]))
            t.append(y[te])
        p, t = np.concatenate(p), np.concatenate(t)
        transfer[train_role] = [scipy.stats.pearsonr(p[:, k], t[:, k]).statistic for k in range(2)]
    want = np.mean(transfer["user"] + transfer["assistant"])
    assert e["rotation"]["transfer"]["real"]["mean"]["value"] == pytest.approx(want, abs=1e-8)


def test_pca_from_sums_matches_sklearn(setup):
    *_, ref = setup
    sums = Sums(2, ref.x.shape[1], 1, ["real"])
    for i, sl in enumerate(np.array_split(np.arange(len(ref.x)), 7)):  # uneven batches, mixed parts
        xs = sums.shifted(ref.x[sl])
        sums.add_rows(xs, ref.phase[sl, None], np.full(len(sl), i % 4))
    m = sums.moments([0, 1], "real")
    ours = pca_from(Eig(m.sxx), m, sums.shift, 8)
    theirs = PCA(8).fit(ref.x)
    np.testing.assert_allclose(ours.explained_variance_ratio, theirs.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(ours.explained_variance, theirs.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(ours.components @ theirs.components_.T), np.eye(8), atol=1e-6)
    np.testing.assert_allclose(ours.mean, theirs.mean_, atol=1e-9)
