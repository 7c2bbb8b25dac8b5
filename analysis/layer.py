"""One layer, two passes over its activation rows, for the real data and its scrambled control.

    pass 1  sums per part of the split        -> PCA, ridge penalties by CV, probes
    pass 2  project onto the top PCs, predict -> test scores per conversation, per-round phase grids
                                                 for the Fourier analysis, angle moments, and the
                                                 few tokens the figures draw

Both pairings see each activation batch once per pass: the scrambled one just looks up other
labels (split.Pairing). Memory: the sums (parts * d_model^2), the round grids and the labels;
never more than one batch of activations, in streaming mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.fourier import AngleMoments, RoundGrid, Spectrum, spectrum
from turnphase.analysis.probes import TARGETS, Probes, TestScores, fit_probes, test_conversations
from turnphase.analysis.source import Labels, LayerData
from turnphase.analysis.split import Pairing, Split
from turnphase.analysis.stats import PCA, PartStats, pca_from


@dataclass
class Samples:
    """Sorted analysed-token indices the figures draw, chosen once for every layer and pairing."""

    scatter: np.ndarray  # any analysed tokens: PC scatters and colour wheels
    test: np.ndarray  # test tokens: predicted vs true phase
    view: np.ndarray  # the analysed tokens of the token-view conversation


def choose_samples(labels: Labels, split: Split, view_conversation: int, config: AnalysisConfig) -> Samples:
    def pick(pool: np.ndarray, purpose: str) -> np.ndarray:
        if len(pool) <= config.max_scatter:
            return pool
        return np.sort(config.rng(purpose).choice(pool, config.max_scatter, replace=False))

    return Samples(
        scatter=pick(np.arange(labels.n), "scatter sample"),
        test=pick(np.flatnonzero(split.part == split.test_part), "test sample"),
        view=np.flatnonzero(labels.conversation == view_conversation),
    )


class Capture:
    """Keeps the rows of streamed arrays whose label index is in a sorted sample."""

    def __init__(self, sample: np.ndarray, width: int):
        self.sample = sample
        self.values = np.full((len(sample), width), np.nan, dtype=np.float32)

    def add(self, label_idx: np.ndarray, values: np.ndarray) -> None:
        if len(self.sample) == 0 or len(label_idx) == 0:
            return
        pos = np.searchsorted(self.sample, label_idx)
        hit = self.sample[np.minimum(pos, len(self.sample) - 1)] == label_idx
        self.values[pos[hit]] = values[hit]


@dataclass
class PairingResult:
    probes: Probes
    scores: TestScores
    spectrum: Spectrum
    moments: AngleMoments
    scatter_z: np.ndarray  # (len(samples.scatter), n_pcs)
    test_pred: np.ndarray  # (len(samples.test), 6): linear, trig (sin, cos), helix (phase, sin, cos)


@dataclass
class LayerResult:
    layer: int
    pca: PCA
    n_rounds: int
    pairings: dict[str, PairingResult]
    view_z: np.ndarray  # (len(samples.view), n_pcs), real pairing


def analysed_batches(data: LayerData, labels: Labels, desc: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(analysed-token indices, their activations as float64 (b, d_model)) batch by batch."""
    seen = 0
    with tqdm(total=labels.n_rows, unit="tok", desc=desc, leave=False) as bar:
        for batch in data.batches():
            keep = labels.analysed[batch.start : batch.start + len(batch.x)]
            rows = np.arange(seen, seen + int(keep.sum()))
            seen += len(rows)
            bar.update(len(batch.x))
            yield rows, batch.x[keep].astype(np.float64)


def analyze_layer(
    data: LayerData,
    labels: Labels,
    split: Split,
    pairs: list[Pairing],
    grid: RoundGrid,
    samples: Samples,
    config: AnalysisConfig,
) -> LayerResult:
    d_model = data.src.d_model
    stats = {p.name: PartStats(config.n_parts, d_model, len(TARGETS)) for p in pairs}
    for rows, x in analysed_batches(data, labels, f"layer {data.layer} pass 1/2"):
        for p in pairs:
            lab = p.labels_of(rows)
            stats[p.name].add(x, labels.targets(lab), split.part[lab])
    # Every pairing sums the same activation rows, so the real pairing's covariance serves all.
    pca = pca_from(stats["real"], config.n_pcs)
    probes = {name: fit_probes(s, split.train_parts, config.alphas) for name, s in stats.items()}
    del stats

    k = len(pca.components)
    tests = test_conversations(labels, split)
    scores = {p.name: TestScores(tests) for p in pairs}
    values = {p.name: np.zeros((grid.n_rounds * grid.grid, k), dtype=np.float32) for p in pairs}
    moments = {p.name: AngleMoments(pca.std) for p in pairs}
    scatter = {p.name: Capture(samples.scatter, k) for p in pairs}
    test_pred = {p.name: Capture(samples.test, 6) for p in pairs}
    view = Capture(samples.view, k)
    for rows, x in analysed_batches(data, labels, f"layer {data.layer} pass 2/2"):
        z = pca.transform(x)  # (b, n_pcs)
        for p in pairs:
            lab = p.labels_of(rows)
            test = split.part[lab] == split.test_part
            preds = probes[p.name].predict(x[test])
            scores[p.name].add(labels.conversation[lab[test]], labels.targets(lab[test]), preds)
            test_pred[p.name].add(lab[test], np.concatenate(list(preds.values()), axis=1))
            grid.add(values[p.name], lab, z)
            moments[p.name].add(z, labels.phase[lab])
            scatter[p.name].add(lab, z)
            if p.label_of_row is None:
                view.add(lab, z)

    results = {
        p.name: PairingResult(
            probes=probes[p.name],
            scores=scores[p.name],
            spectrum=spectrum(values.pop(p.name), grid.n_rounds, grid.grid),
            moments=moments[p.name],
            scatter_z=scatter[p.name].values,
            test_pred=test_pred[p.name].values,
        )
        for p in pairs
    }
    return LayerResult(data.layer, pca, grid.n_rounds, results, view.values)
