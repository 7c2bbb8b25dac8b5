"""The streaming Fourier machinery equals its direct definition."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from turnphase.analysis import planes
from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.fourier import RoundGrid, round_starts, spectrum
from turnphase.analysis.scores import ConvSums
from turnphase.analysis.source import DatasetSource, Labels


def test_spectrum_of_a_pure_cosine():
    grid, rounds, offset = 64, 5, 0.7
    u = np.arange(grid) / grid
    pc0 = 3 * np.cos(2 * np.pi * u + offset)
    pc1 = np.random.default_rng(0).normal(size=(rounds, grid))  # a different noise every round
    values = np.stack([np.tile(pc0, rounds), pc1.ravel()], axis=1)  # (rounds * grid, 2)
    spec = spectrum(values, rounds, grid)
    assert spec.coherence[0, 1] == pytest.approx(1.5)
    assert spec.itpc[0, 1] == pytest.approx(1.0)
    assert spec.angle[0, 1] == pytest.approx(offset)
    assert spec.coherence[0, 2:].max() < 1e-12
    assert spec.itpc[1, 1] < 0.9


def test_round_grid_in_any_order_equals_direct_resampling(helix_dataset):
    config = AnalysisConfig(source=str(helix_dataset))
    labels = DatasetSource.open(config.source).labels(config)
    grid = RoundGrid(labels, 16)
    z = np.random.default_rng(1).normal(size=(labels.n, 3))
    values = np.zeros((grid.n_rounds * 16, 3), dtype=np.float32)
    order = np.random.default_rng(2).permutation(labels.n)
    for chunk in np.array_split(order, 5):
        grid.add(values, chunk, z[chunk])
    starts = round_starts(labels)
    expected = [
        np.stack([np.interp(np.arange(16) / 16, labels.phase[s:e], z[s:e, k]) for k in range(3)], axis=1)
        for s, e in zip(starts[:-1], starts[1:], strict=True)
    ]
    assert grid.n_rounds == len(expected)  # every synthetic round has both turns
    np.testing.assert_allclose(values, np.concatenate(expected), atol=1e-5)
    coef = scipy.fft.rfft(np.concatenate(expected).reshape(-1, 16, 3), axis=1) / 16
    np.testing.assert_allclose(
        spectrum(values, grid.n_rounds, 16).coherence, np.abs(coef.mean(0)).T, atol=1e-5
    )


def fisher_lee(a: np.ndarray, b: np.ndarray) -> float:
    """The definition, over all pairs of tokens."""
    i, j = np.triu_indices(len(a), 1)
    sa, sb = np.sin(a[i] - a[j]), np.sin(b[i] - b[j])
    return float((sa * sb).sum() / np.sqrt((sa**2).sum() * (sb**2).sum()))


@pytest.mark.parametrize("orientation", [1, -1])
def test_angle_sums_give_the_circular_statistics(orientation):
    rng = np.random.default_rng(3)
    phase = rng.uniform(size=600)
    u = rng.normal(size=(600, 2))
    u[:, 0] += 2 * np.cos(2 * np.pi * phase)
    u[:, 1] += orientation * 3 * np.sin(2 * np.pi * phase)
    sums = ConvSums(np.arange(3))
    for c, sl in enumerate(np.array_split(np.arange(600), 3)):
        sums.add(np.full(len(sl), c), planes.angle_columns("p", u[sl], 0.4, phase[sl]))
    theta = np.arctan2(u[:, 1], u[:, 0]) - 0.4
    expected = fisher_lee(theta, 2 * np.pi * phase)
    assert sums.statistic(planes.fisher_lee("p")) == pytest.approx(expected, abs=1e-10)
    assert np.sign(expected) == orientation and abs(expected) > 0.4
    locking = np.abs(np.exp(1j * (theta - 2 * np.pi * phase)).mean())
    assert sums.statistic(planes.locking("p")) == pytest.approx(locking, abs=1e-10)
    d = (planes.estimate(u, 0.4) - phase) % 1.0
    assert sums.statistic(planes.angular_error("p")) == pytest.approx(np.minimum(d, 1 - d).mean())


def test_fisher_lee_sees_a_monotone_one_cycle_relation(helix_dataset):
    """The angle is the study's phase, scored against phase_round (nearly uniform on the circle)."""
    config = AnalysisConfig(source=str(helix_dataset), phase_scheme="phase_round")
    labels = DatasetSource.open(config.source).labels(config)
    u = np.stack([np.cos(2 * np.pi * labels.phase_other), np.sin(2 * np.pi * labels.phase_other)], axis=1)
    sums = ConvSums(np.zeros(1))
    sums.add(np.zeros(len(u)), planes.angle_columns("p", u, 0.0, labels.phase))
    assert sums.statistic(planes.fisher_lee("p")) > 0.5


def test_token_weights_give_the_mean_round_coefficient(helix_dataset):
    config = AnalysisConfig(source=str(helix_dataset))
    labels = DatasetSource.open(config.source).labels(config)
    grid = RoundGrid(labels, 16)
    z = np.random.default_rng(1).normal(size=(labels.n, 3))
    values = np.zeros((grid.n_rounds * 16, 3))
    grid.add(values, np.arange(labels.n), z)
    coef = scipy.fft.rfft(values.reshape(-1, 16, 3), axis=1).mean(0) / 16  # (freqs, 3)
    w = grid.token_weights((1, 2))
    for col, k in enumerate((1, 2)):
        np.testing.assert_allclose(w[:, 2 * col] @ z + 1j * (w[:, 2 * col + 1] @ z), coef[k], atol=1e-12)


def test_best_pair_turns_a_quarter_cycle_apart():
    coef = np.array([1.0, 2 * np.exp(0.3j), 0.1, 2 * np.exp(0.3j + 1.2j), 1.9 * np.exp(0.35j)])
    choice = planes.best_pair(coef)
    assert choice.pair == (1, 3) and choice.offset == pytest.approx(0.3)
    assert choice.orientation == -1  # PC3 leads PC1: its sign is flipped so the angle grows with phase
    np.testing.assert_allclose(planes.pair_scores(coef), planes.pair_scores(coef).T)


def test_round_grid_edge_cases_match_np_interp():
    """Tiny rounds, repeated phases, end extrapolation, and a round without an answer (skipped)."""
    rounds = [  # (conversation, round, roles, phases)
        (0, 0, [1, 1, 2, 2], [0.0, 0.5, 0.5, 1.0]),
        (0, 1, [1, 1, 1], [0.0, 0.25, 0.5]),
        (1, 0, [1, 2, 2, 2], [0.0, 0.5, 0.7, 0.9]),
        (2, 0, [1, 2], [0.1, 0.6]),
    ]

    def cat(i: int) -> np.ndarray:
        return np.concatenate([np.asarray(r[i]) if i > 1 else np.full(len(r[2]), r[i]) for r in rounds])

    n = len(cat(2))
    labels = Labels(
        conversation_id=cat(0).astype(np.int32),
        position=np.arange(n, dtype=np.int32),
        analysed=np.ones(n, bool),
        conversation=cat(0).astype(np.int32),
        role=cat(2).astype(np.int8),
        round=cat(1).astype(np.int16),
        phase=cat(3).astype(np.float32),
        phase_other=cat(3).astype(np.float32),
        token_position=np.arange(n, dtype=np.int32),
        index_in_turn=np.zeros(n, dtype=np.int32),
        template_excluded={},
    )
    grid = RoundGrid(labels, 8)
    assert grid.n_rounds == 3
    z = np.random.default_rng(4).normal(size=(n, 2))
    values = np.zeros((3 * 8, 2), dtype=np.float32)
    grid.add(values, np.arange(n)[::-1].copy(), z[::-1].copy())
    starts = round_starts(labels)
    expected = [
        np.stack([np.interp(np.arange(8) / 8, labels.phase[s:e], z[s:e, k]) for k in range(2)], axis=1)
        for s, e in zip(starts[:-1], starts[1:], strict=True)
        if e - s != 3
    ]
    np.testing.assert_allclose(values, np.concatenate(expected), atol=1e-6)
