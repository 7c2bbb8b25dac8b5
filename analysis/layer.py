"""One layer, two passes over its activation rows, for the real data and its three nulls.

    pass 1  sums per part (fold x role) -> per held-out fold: PCA, penalties by nested CV, probes,
                                           joint and baseline fits, colour-wheel planes, one-role
                                           readouts for the cross-role test
    pass 2  each fold's rows through the  -> per-conversation sums of errors, angle terms and
            readouts fitted without it       correlations; a PCA spectrum per round for the figures;
                                             the few tokens the figures and the continuity test need

Every pairing sees each activation batch once per pass: a null just looks up other labels
(split.Pairing). Memory: the sums (parts * d_model^2), the round grids and the labels; never more
than one batch of activations, in streaming mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from turnphase.analysis import planes, rotation
from turnphase.analysis.baseline import ASSISTANT, USER, BaselineFeatures
from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.fourier import RoundGrid, Spectrum, spectrum
from turnphase.analysis.probes import (
    PROBES,
    SCHEME_COLUMNS,
    TARGETS,
    EigCache,
    LinearFit,
    Readout,
    activation_fits,
    circular_error,
    label_fits,
    role_fit,
)
from turnphase.analysis.scores import ConvSums, pearson_columns
from turnphase.analysis.source import Batch, Labels, LayerData
from turnphase.analysis.split import Folds, Pairing, make_folds, pairings
from turnphase.analysis.stats import PCA, Eig, Sums, pca_from
from turnphase.builders.log import progress  # a tqdm bar hidden with -q
from turnphase.timing import Stopwatch

FOURIER_KS = (1, 2)  # cycles per round whose mean coefficients pass 1 accumulates
# Per sampled token: the linear probe's prediction, the two top PCs of all tokens, each plane's (u0, u1)
SPECTRUM_PAIRINGS = ("real", "scrambled")  # the study's figures: real data and its control
SCATTER_COLUMNS = ("linear", "pc0", "pc1", *(f"{p}:{c}" for p in planes.PLANES for c in ("u0", "u1")))


@dataclass
class Columns:
    """The label-side columns z of every analysed token: targets, baseline features, Fourier weights."""

    labels: Labels
    baseline: BaselineFeatures
    fourier: np.ndarray  # (n, 2 * len(FOURIER_KS)) float32, RoundGrid.token_weights

    @property
    def width(self) -> int:
        return len(SCHEME_COLUMNS) + self.baseline.width + self.fourier.shape[1]

    def baseline_slice(self, which: slice) -> slice:
        return slice(len(SCHEME_COLUMNS) + which.start, len(SCHEME_COLUMNS) + which.stop)

    def fourier_column(self, k: int) -> tuple[int, int]:
        start = len(SCHEME_COLUMNS) + self.baseline.width + 2 * FOURIER_KS.index(k)
        return start, start + 1

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self.labels.targets(idx), self.baseline.transform(idx), self.fourier[idx]], axis=1
        )


@dataclass
class Samples:
    """Sorted analysed-token indices the figures and tests draw, chosen once for every layer."""

    scatter: np.ndarray  # any analysed tokens (all are held out once): scatters and colour wheels
    view_conversation: int  # the conversation the token views show
    view: np.ndarray  # its analysed tokens
    cuts: dict  # rotation.cut_points
    cut_tokens: np.ndarray  # every token a cut reads


def choose_samples(labels: Labels, view_conversation: int, config: AnalysisConfig) -> Samples:
    pool = np.arange(labels.n)
    if len(pool) > config.max_scatter:
        pool = np.sort(config.rng("scatter sample").choice(pool, config.max_scatter, replace=False))
    cuts = rotation.cut_points(labels, np.ones(labels.n, bool), config.continuity_window)
    cut_tokens = np.unique(np.concatenate([np.concatenate([b.ravel(), a.ravel()]) for b, a in cuts.values()]))
    view = np.flatnonzero(labels.conversation == view_conversation)
    return Samples(pool, view_conversation, view, cuts, cut_tokens)


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

    def merge(self, other: Capture) -> None:
        """Take the other's captured rows (captures of disjoint row sets)."""
        got = ~np.isnan(other.values).all(axis=1)
        self.values[got] = other.values[got]


@dataclass
class FoldModels:
    readout: Readout  # every activation readout of this fold (probes, joint, planes, one-role)
    offsets: dict[str, float]  # plane -> angle offset
    pair: planes.PairChoice
    alphas: dict[str, float]  # fit name ('acts/trig/0', ...) -> ridge penalty chosen
    mean: np.ndarray  # (d,) activation mean of the training rows
    std: np.ndarray  # (d,) their standard deviation per dimension


@dataclass
class PairingResult:
    models: list[FoldModels]  # per held-out fold
    coherence_power: dict[int, float]  # k -> power of the mean coefficient over whitened PCs
    spectrum: Spectrum | None  # all-token PCA, for the study's heatmaps (SPECTRUM_PAIRINGS only)
    scatter: np.ndarray  # (len(samples.scatter), 9): SCATTER_COLUMNS


@dataclass
class LayerResult:
    layer: int
    pca: PCA  # of all analysed tokens (figures)
    n_rounds: int
    scores: ConvSums
    label_fits: list[dict[str, LinearFit]]  # per held-out fold
    pairings: dict[str, PairingResult]
    view_estimate: np.ndarray  # (len(samples.view),) Fourier-plane estimate, real pairing


def analysed_batches(
    data: LayerData, labels: Labels, desc: str, clock: Stopwatch
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(analysed-token indices, their activations as float64 (b, d_model)) batch by batch; the time
    spent getting each batch (disk or network, decoding) goes to the clock's "read_activations"."""
    seen = 0
    batches = iter(data.batches())
    with progress(total=labels.n_rows, unit="tok", desc=desc, leave=False) as bar:
        while True:
            with clock.stage("read_activations"):
                batch = next(batches, None)
            if batch is None:
                return
            rows, x = analysed_part(labels, batch, seen)
            seen += len(rows)
            bar.update(len(batch.x))
            yield rows, x


def analysed_part(labels: Labels, batch: Batch, seen: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's analysed tokens: their indices (`seen` analysed tokens come before the batch) and
    their activations as float64 (b, d_model)."""
    keep = labels.analysed[batch.start : batch.start + len(batch.x)]
    return np.arange(seen, seen + int(keep.sum())), batch.x[keep].astype(np.float64)


def fold_models(
    sums: Sums,
    eigs: EigCache,
    outer: int,
    pairing: Pairing,
    cols: Columns,
    baselines: dict[str, LinearFit],
    config: AnalysisConfig,
) -> FoldModels:
    train = [f for f in range(sums.folds) if f != outer]
    m = sums.moments(train, pairing.name)
    pca = pca_from(eigs(train), m, sums.shift, max(config.n_pcs, config.fourier_pcs))
    structure = cols.baseline_slice(cols.baseline.structure)
    fits = activation_fits(sums, eigs, outer, pairing.name, structure, baselines, config)
    by_role = [sums.moments(train, pairing.name, role) for role in (0, 1)]
    centre = (by_role[0].mean_x + by_role[1].mean_x) / 2 + sums.shift  # both roles weighted equally
    re, im = cols.fourier_column(1)
    coef_x = m.sxz[:, re] + 1j * m.sxz[:, im]  # (d,) mean coefficient at 1 cycle per round
    choice = planes.best_pair(pca.components[: config.n_pcs] @ coef_x)
    pair_fit, pair_offset = planes.pair_plane(pca, choice, centre)
    trig = fits["acts/trig/0"]
    fits |= {
        "plane/pair": pair_fit,
        "plane/fourier": planes.fourier_plane(pca, config.fourier_pcs, coef_x, centre),
        "plane/trig": planes.trig_plane(trig),
        "role/user": role_fit(by_role[0], sums.shift, PROBES["trig"].columns(0), trig.alpha),
        "role/assistant": role_fit(by_role[1], sums.shift, PROBES["trig"].columns(0), trig.alpha),
    }
    return FoldModels(
        Readout.stack(fits, structure.stop - structure.start),
        {"pair": pair_offset, "fourier": 0.0, "trig": 0.0},
        choice,
        {name: fit.alpha for name, fit in fits.items() if name.startswith(("acts/", "joint/"))},
        m.mean_x + sums.shift,
        np.sqrt(np.maximum(np.diag(m.sxx), 0.0) / max(m.n - 1, 1)),
    )


def coherence_power(sums: Sums, pca: PCA, pairing: str, cols: Columns, k_pcs: int) -> dict[int, float]:
    m = sums.moments(list(range(sums.folds)), pairing)
    w = pca.components[:k_pcs] / pca.std[:k_pcs, None]
    out = {}
    for k in FOURIER_KS:
        re, im = cols.fourier_column(k)
        out[k] = float(np.sum(np.abs(w @ (m.sxz[:, re] + 1j * m.sxz[:, im])) ** 2))
    return out


@dataclass
class LayerInputs:
    """The label side of both passes: the same for every layer (a cluster ships it to each worker once)."""

    labels: Labels
    folds: Folds
    pairs: list[Pairing]
    cols: Columns
    grid: RoundGrid
    samples: Samples
    config: AnalysisConfig

    @classmethod
    def of(cls, labels: Labels, config: AnalysisConfig) -> LayerInputs:
        """Folds, nulls, samples (the token views show the first conversation), grid and columns."""
        folds = make_folds(labels, config)
        samples = choose_samples(labels, int(labels.conversation[0]), config)
        grid = RoundGrid(labels, config.grid)
        cols = Columns(labels, BaselineFeatures(labels), grid.token_weights(FOURIER_KS).astype(np.float32))
        return cls(labels, folds, pairings(labels, folds, config), cols, grid, samples, config)

    def __post_init__(self) -> None:
        self.part_of = self.folds.fold.astype(np.int64) * 2 + (self.labels.role == ASSISTANT)  # Sums parts

    def new_sums(self, d_model: int, shift: np.ndarray | None = None) -> Sums:
        sums = Sums(self.folds.k, d_model, self.cols.width, [p.name for p in self.pairs])
        sums.shift = shift
        return sums

    def add_sums(self, sums: Sums, rows: np.ndarray, x: np.ndarray) -> None:
        """Pass 1 on analysed tokens `rows` with activations x (b, d_model) float64."""
        xs = sums.shifted(x)
        z_real = self.cols(rows)
        sums.add_rows(xs, z_real, self.part_of[rows])
        for p in self.pairs:
            lab = p.labels_of(rows)
            sums.add_cross(
                p.name, xs, z_real if p.label_of_row is None else self.cols(lab), self.part_of[lab]
            )
            if not p.keeps_role:
                user = self.labels.role[lab] == USER
                sums.add_scrambled_user(xs[user], self.folds.fold[lab[user]])


@dataclass
class Fitted:
    """What pass 2 reads of pass 1's fits."""

    label_fits: list[dict[str, LinearFit]]  # per held-out fold
    models: dict[str, list[FoldModels]]  # pairing -> per held-out fold
    figure_pca: PCA
    baseline: dict[str, slice]  # structure, position: their columns in Columns


class Scores:
    """Pass 2's accumulators over any subset of the rows; `merge` adds another subset's. Holds only
    arrays (what a cluster task sends back); the inputs and fits come with each `add`."""

    def __init__(self, inputs: LayerInputs, fitted: Fitted):
        labels, samples, grid = inputs.labels, inputs.samples, inputs.grid
        k = fitted.figure_pca.components.shape[0]
        self.scores = ConvSums(np.unique(labels.conversation))
        # float64: a float32 grid's sums would depend on the batch size in the last digits
        self.values = {
            p.name: np.zeros((grid.n_rounds * grid.grid, k))
            for p in inputs.pairs
            if p.name in SPECTRUM_PAIRINGS
        }
        self.scatter = {p.name: Capture(samples.scatter, len(SCATTER_COLUMNS)) for p in inputs.pairs}
        self.cut = {p.name: Capture(samples.cut_tokens, 2) for p in inputs.pairs}
        self.view = Capture(samples.view, 1)

    def add(self, inputs: LayerInputs, fitted: Fitted, rows: np.ndarray, x: np.ndarray) -> None:
        """Pass 2 on analysed tokens `rows` with activations x (b, d_model) float64."""
        labels, folds, cols = inputs.labels, inputs.folds, inputs.cols
        z_pc = fitted.figure_pca.transform(x)
        for p in inputs.pairs:
            if p.name in self.values:
                inputs.grid.add(self.values[p.name], p.labels_of(rows), z_pc)
        structure = fitted.baseline["structure"]
        fold_of = folds.fold[rows]
        for o in np.unique(fold_of):
            m = fold_of == o
            ro, xo = rows[m], x[m]
            z = cols(ro)
            self.scores.add(labels.conversation[ro], label_columns(z, fitted.baseline, fitted.label_fits[o]))
            for p in inputs.pairs:
                lab = p.labels_of(ro)
                zl = z if p.label_of_row is None else cols(lab)
                fm = fitted.models[p.name][o]
                preds = fm.readout.predict(xo, zl[:, structure])
                self.scores.add(labels.conversation[lab], pairing_columns(p.name, preds, fm, labels, lab, zl))
                u = {name: preds[f"plane/{name}"] for name in planes.PLANES}
                shown = [preds["acts/linear/0"], z_pc[m][:, :2], *u.values()]
                self.scatter[p.name].add(lab, np.concatenate(shown, axis=1))
                self.cut[p.name].add(lab, u["trig"])
                if p.label_of_row is None:
                    self.view.add(lab, planes.estimate(u["fourier"], 0.0)[:, None])

    def merge(self, other: Scores) -> Scores:
        self.scores.merge(other.scores)
        for name, values in other.values.items():
            self.values[name] += values
        captures = [
            *zip(self.scatter.values(), other.scatter.values(), strict=True),
            *zip(self.cut.values(), other.cut.values(), strict=True),
        ]
        for mine, theirs in [*captures, (self.view, other.view)]:
            mine.merge(theirs)
        return self


class LocalPasses:
    """Both passes over one layer's batches in this process."""

    def __init__(self, data: LayerData, clock: Stopwatch):
        self.data, self.clock = data, clock

    def sums(self, inputs: LayerInputs) -> Sums:
        sums = inputs.new_sums(self.data.src.d_model)
        for rows, x in analysed_batches(
            self.data, inputs.labels, f"layer {self.data.layer} pass 1/2", self.clock
        ):
            inputs.add_sums(sums, rows, x)
        return sums

    def scores(self, inputs: LayerInputs, fitted: Fitted) -> Scores:
        scores = Scores(inputs, fitted)
        for rows, x in analysed_batches(
            self.data, inputs.labels, f"layer {self.data.layer} pass 2/2", self.clock
        ):
            scores.add(inputs, fitted, rows, x)
        return scores


class Passes(Protocol):
    """Where the two passes run: LocalPasses, or cluster.ClusterPasses (per-shard tasks, tree-reduced)."""

    def sums(self, inputs: LayerInputs) -> Sums: ...

    def scores(self, inputs: LayerInputs, fitted: Fitted) -> Scores: ...


def analyze_layer(
    layer: int, passes: Passes, inputs: LayerInputs, clock: Stopwatch | None = None
) -> LayerResult:
    """On the clock: pass_1_sums, fits, pass_2_scores, and read_activations within both passes."""
    clock = clock or Stopwatch()
    labels, folds, pairs, cols, config = inputs.labels, inputs.folds, inputs.pairs, inputs.cols, inputs.config
    with clock.stage("pass_1_sums"):
        sums = passes.sums(inputs)

    with clock.stage("fits"):
        eigs = EigCache(sums)
        everything = list(range(folds.k))
        pca = pca_from(
            Eig(sums.moments(everything, "real").sxx),
            sums.moments(everything, "real"),
            sums.shift,
            max(config.n_pcs, config.fourier_pcs),
        )
        baseline = {
            name: cols.baseline_slice(getattr(cols.baseline, name)) for name in ("structure", "position")
        }
        lfits = [label_fits(sums, o, baseline, config) for o in range(folds.k)]
        models = {
            p.name: [fold_models(sums, eigs, o, p, cols, lfits[o], config) for o in range(folds.k)]
            for p in pairs
        }
        power = {p.name: coherence_power(sums, pca, p.name, cols, config.fourier_pcs) for p in pairs}
        del sums, eigs
        k = config.n_pcs
        figure_pca = PCA(
            pca.mean, pca.components[:k], pca.explained_variance[:k], pca.explained_variance_ratio[:k]
        )

    with clock.stage("pass_2_scores"):
        acc = passes.scores(inputs, Fitted(lfits, models, figure_pca, baseline))
        scores, grid, samples = acc.scores, inputs.grid, inputs.samples
        results = {
            p.name: PairingResult(
                models=models[p.name],
                coherence_power=power[p.name],
                spectrum=spectrum(acc.values.pop(p.name), grid.n_rounds, grid.grid)
                if p.name in acc.values
                else None,
                scatter=acc.scatter[p.name].values,
            )
            for p in pairs
        }
        for p in pairs:
            conv, columns = rotation.continuity_columns(
                f"{p.name}/cont",
                samples.cuts,
                samples.cut_tokens,
                acc.cut[p.name].values,
                labels.conversation,
            )
            scores.add(conv, columns)
    return LayerResult(layer, figure_pca, grid.n_rounds, scores, lfits, results, acc.view.values[:, 0])


def label_columns(
    z: np.ndarray, baseline: dict[str, slice], fits: dict[str, LinearFit]
) -> dict[str, np.ndarray]:
    """Per-token terms of the labels alone: n, sums of targets and squares, baseline errors."""
    cols = {"n": np.ones(len(z))}
    for scheme in (0, 1):
        for t, name in enumerate(TARGETS):
            y = z[:, 3 * scheme + t]
            cols[f"sy:{scheme}:{name}"] = y
            cols[f"syy:{scheme}:{name}"] = y * y
    for model, feats in baseline.items():
        for scheme in (0, 1):
            for probe in PROBES.values():
                fit = fits[f"{model}/{probe.name}/{scheme}"]
                pred = z[:, feats] @ fit.coef + fit.intercept
                cols |= error_columns(f"{model}/{probe.name}/{scheme}", probe, scheme, pred, z)
    return cols


def error_columns(
    prefix: str, probe, scheme: int, pred: np.ndarray, z: np.ndarray, decode: bool = True
) -> dict[str, np.ndarray]:
    """Squared errors per target and, with `decode`, the circular error of the phase read back."""
    y = z[:, probe.columns(scheme)]
    cols = {f"{prefix}:{t}": (y[:, i] - pred[:, i]) ** 2 for i, t in enumerate(probe.targets)}
    if decode:
        cols[f"{prefix}:err"] = circular_error(probe.decode(pred), z[:, 3 * scheme])
    return cols


def pairing_columns(
    name: str, preds: dict[str, np.ndarray], fm: FoldModels, labels: Labels, lab: np.ndarray, z: np.ndarray
) -> dict[str, np.ndarray]:
    cols = {}
    for model in ("acts", "joint"):
        for scheme in (0, 1):
            for probe in PROBES.values():
                key = f"{model}/{probe.name}/{scheme}"
                cols |= error_columns(f"{name}/{key}", probe, scheme, preds[key], z, decode=model == "acts")
    for plane in planes.PLANES:
        cols |= planes.angle_columns(
            f"{name}/plane/{plane}", preds[f"plane/{plane}"], fm.offsets[plane], z[:, 0]
        )
    role = labels.role[lab]
    trig = PROBES["trig"].columns(0)
    for train, test in (("user", ASSISTANT), ("assistant", USER)):
        on = role == test
        pred = np.where(on[:, None], preds[f"role/{train}"], 0.0)
        for i, t in enumerate(PROBES["trig"].targets):
            y = np.where(on, z[:, trig[i]], 0.0)
            prefix = f"{name}/transfer/{train}/{t}"
            c = pearson_columns(prefix, pred[:, i], y)
            c[f"{prefix}:n"] = on.astype(np.float64)
            cols |= c
    return cols
