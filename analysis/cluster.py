"""`turnphase analyze --workers N` or `--scheduler ADDRESS`: both passes of each layer on a Dask cluster.

    turnphase analyze data/big --workers 2 --out report/big          # a local cluster, 2 processes
    turnphase analyze org/dataset --scheduler tcp://10.0.0.5:8786 --out report/big

Each pass is one task per shard of the layer's config: the worker reads its shard (a local path, or an
`hf://` URL pinned to the commit the analysis opened) with pyarrow, checks it against the labels as a
single-process read does, and accumulates the same sufficient statistics over its rows (pass 1:
stats.Sums; pass 2: layer.Scores). Partial results are added pairwise as they arrive, a tree whose
width is the number of shards; only the sums and the fits travel, never activations. The fits
between the passes run here, in the client, exactly as in a single-process run.

The label side (layer.LayerInputs: labels, folds, nulls, columns) is sent to every worker once. A
report equals the single-process one up to the order its sums were added in (1e-7 relative,
tests/analysis/test_cluster.py). Workers of a remote scheduler need turnphase installed and the
dataset reachable at the same path (a shared folder) or on the Hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import pyarrow as pa

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.layer import Fitted, LayerInputs, Scores, analysed_part
from turnphase.analysis.source import DatasetSource, Shard, checked_batch
from turnphase.analysis.stats import Sums
from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError, one_line
from turnphase.builders.log import progress  # a tqdm bar hidden with -q

INSTALL_HINT = "pip install 'turnphase[cluster]'"
T = TypeVar("T")


def shard_batches(
    source: str, config: str, shard: Shard, start: int, inputs: LayerInputs, d_model: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(analysed-token indices, activations float64 (b, d_model)) of one shard whose first row is
    dataset row `start`, batch by batch, checked as LayerData checks a single-process read."""
    import fsspec
    import pyarrow.parquet as pq

    labels = inputs.labels
    seen = int(np.count_nonzero(labels.analysed[:start]))
    row = start
    try:
        with fsspec.open(shard.url, "rb") as f:
            columns = [*schema.KEY_LABEL_COLUMNS[:2], schema.ACTIVATION]
            for record in pq.ParquetFile(f).iter_batches(batch_size, columns=columns):
                batch = checked_batch(source, config, pa.Table.from_batches([record]), row, labels, d_model)
                rows, x = analysed_part(labels, batch, seen)
                seen, row = seen + len(rows), row + len(batch.x)
                yield rows, x
    except TurnphaseError:
        raise
    except Exception as e:  # unreadable file, the Hub unreachable from the worker
        raise TurnphaseError(f"{source}: cannot read {config}/{shard.name} ({one_line(e)})") from None
    if row != start + shard.rows:
        raise TurnphaseError(
            f"{source}: {config}/{shard.name} has {row - start} rows, its footer {shard.rows}"
        )


def first_batch_mean(source, config, shard, inputs, d_model, batch_size) -> np.ndarray:
    """The shift the sums are accumulated about (stats.Sums.shifted): the first batch's mean."""
    _, x = next(shard_batches(source, config, shard, 0, inputs, d_model, batch_size))
    return x.mean(axis=0)


def shard_sums(source, config, shard, start, inputs: LayerInputs, d_model, batch_size, shift) -> Sums:
    sums = inputs.new_sums(d_model, shift)
    for rows, x in shard_batches(source, config, shard, start, inputs, d_model, batch_size):
        inputs.add_sums(sums, rows, x)
    return sums


def shard_scores(source, config, shard, start, inputs: LayerInputs, d_model, batch_size, fitted) -> Scores:
    scores = Scores(inputs, fitted)
    for rows, x in shard_batches(source, config, shard, start, inputs, d_model, batch_size):
        scores.add(inputs, fitted, rows, x)
    return scores


def merge(a: T, b: T) -> T:
    return a.merge(b)


class Cluster:
    """A Dask client with the label side on every worker; `passes(layer)` runs one layer's passes."""

    def __init__(self, client, src: DatasetSource, inputs: LayerInputs):
        self.client, self.src = client, src
        self.inputs = client.scatter(inputs, broadcast=True)

    def passes(self, layer: int) -> ClusterPasses:
        return ClusterPasses(self, schema.layer_config(layer))


class ClusterPasses:
    """layer.Passes as one task per shard, reduced pairwise as the partial results arrive."""

    def __init__(self, cluster: Cluster, config: str):
        self.cluster, self.config = cluster, config
        src = cluster.src
        self.shards = src.shards[config]
        self.starts = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])[:-1]]).tolist()
        self.fixed = (src.source, config)
        self.sizes = (src.d_model, src.batch_size)

    def sums(self, inputs: LayerInputs) -> Sums:
        client, inputs_f = self.cluster.client, self.cluster.inputs
        shift = client.submit(
            first_batch_mean, *self.fixed, self.shards[0], inputs_f, *self.sizes, pure=False
        )
        return self._reduce(shard_sums, shift, "pass 1/2")

    def scores(self, inputs: LayerInputs, fitted: Fitted) -> Scores:
        (fitted_f,) = self.cluster.client.scatter([fitted], broadcast=True)
        return self._reduce(shard_scores, fitted_f, "pass 2/2")

    def _reduce(self, task: Callable, extra, desc: str):
        from distributed import as_completed

        client = self.cluster.client
        parts = {
            client.submit(
                task, *self.fixed, shard, start, self.cluster.inputs, *self.sizes, extra, pure=False
            )
            for shard, start in zip(self.shards, self.starts, strict=True)
        }
        waiting = None
        done = as_completed(parts)
        with progress(total=len(parts), unit="shard", desc=f"{self.config} {desc}", leave=False) as bar:
            for future in done:  # a result is released once nothing here holds its future
                if future in parts:
                    parts.discard(future)
                    bar.update(1)
                if waiting is None:
                    waiting = future
                else:
                    done.add(client.submit(merge, waiting, future, pure=False))
                    waiting = None
        return waiting.result()


@contextmanager
def cluster_for(config: AnalysisConfig, src: DatasetSource, inputs: LayerInputs) -> Iterator[Cluster | None]:
    """The cluster `config` asks for (None: this process), closed afterwards if it was started here."""
    if config.workers is None and config.scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise TurnphaseError(f"--workers and --scheduler need Dask: {INSTALL_HINT}") from None
    if config.scheduler is not None:
        try:
            # waits up to Dask's `distributed.comm.timeouts.connect` (30 s unless configured)
            client = Client(config.scheduler)
        except Exception as e:
            raise TurnphaseError(
                f"cannot reach the Dask scheduler {config.scheduler} ({one_line(e)})"
            ) from None
        with client:
            yield Cluster(client, src, inputs)
        return
    # one thread per worker process: a worker's NumPy runs single-threaded (Dask's default environment)
    with (
        LocalCluster(
            n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        Client(local) as client,
    ):
        yield Cluster(client, src, inputs)
