"""Reading a turnphase dataset, from a folder or a Hub id, in memory or streaming.

    src = DatasetSource.open("data/smollm2", streaming=True)
    labels = src.labels(config)                  # a few bytes per token, held in memory
    for batch in src.layer(13, labels).batches():  # repeatable; re-streams shards each time
        batch.x                                  # (rows, d_model) as stored (float16 or float32)

Labels come from the `tokens` config without its text column. Layer rows are checked against them
batch by batch (conversation_id and position), because everything downstream pairs activation row
r with label row r.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from turnphase.analysis.config import AnalysisConfig
from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError, one_line
from turnphase.builders.provenance import read_provenance, sha256_file

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
LABEL_BATCH = 8192


@contextmanager
def datasets_progress_off() -> Iterator[None]:
    """`datasets`' own progress bars ("Generating train split", one per config read) off while the
    analysis reads, then as they were: the analysis shows its own progress per layer. A user who set
    HF_DATASETS_DISABLE_PROGRESS_BARS=0 keeps them."""
    import datasets

    if datasets.are_progress_bars_disabled() or datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is False:
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


@dataclass
class Labels:
    """Labels in dataset row order; `analysed` picks the turn tokens every analysis uses."""

    conversation_id: np.ndarray  # (n_rows,) int32, every row, for alignment checks
    position: np.ndarray  # (n_rows,) int32
    analysed: np.ndarray  # (n_rows,) bool: turn tokens (phase not null), template kept or not
    # One entry per analysed token, in row order:
    conversation: np.ndarray  # (n,) int32
    role: np.ndarray  # (n,) int8, index into schema.ROLES
    round: np.ndarray  # (n,) int16
    phase: np.ndarray  # (n,) float32, in the configured scheme
    phase_other: np.ndarray  # (n,) float32, in the other scheme (reported beside it)
    token_position: np.ndarray  # (n,) int32, absolute position in the conversation
    index_in_turn: np.ndarray  # (n,) int32
    template_excluded: dict[str, int]  # role -> chat-template tokens left out (exclude_template)

    @property
    def n_rows(self) -> int:
        return len(self.analysed)

    @property
    def n(self) -> int:
        return len(self.phase)

    def targets(self, idx: np.ndarray | slice) -> np.ndarray:
        """[phase, sin 2*pi*phase, cos 2*pi*phase] in the configured scheme, then the same in the other
        scheme, of analysed tokens `idx`: (len, 6). Column meanings: probes.TARGETS."""
        cols = []
        for phase in (self.phase, self.phase_other):
            p = phase[idx].astype(np.float64)
            cols += [p, np.sin(2 * np.pi * p), np.cos(2 * np.pi * p)]
        return np.stack(cols, axis=1)


@dataclass
class Batch:
    start: int  # first dataset row of this batch
    x: np.ndarray  # (rows, d_model), stored dtype


class LayerData:
    """One layer's activations; iterate `batches()` as often as needed (each pass re-reads in streaming)."""

    def __init__(self, src: DatasetSource, layer: int, labels: Labels):
        self.src, self.layer, self.labels = src, layer, labels
        self.config = schema.layer_config(layer)
        self._in_memory: np.ndarray | None = None
        if not src.streaming:
            self._in_memory = np.empty((labels.n_rows, src.d_model), dtype=src.dtype)  # (n_rows, d_model)
            for b in self._read():
                self._in_memory[b.start : b.start + len(b.x)] = b.x

    def batches(self) -> Iterator[Batch]:
        if self._in_memory is None:
            yield from self._read()
            return
        step = self.src.batch_size
        for start in range(0, self.labels.n_rows, step):
            yield Batch(start, self._in_memory[start : start + step])

    def _read(self) -> Iterator[Batch]:
        start = 0
        for table in self.src.tables(self.config, [*schema.KEY_LABEL_COLUMNS[:2], schema.ACTIVATION]):
            yield checked_batch(self.src.source, self.config, table, start, self.labels, self.src.d_model)
            start += table.num_rows
        if start != self.labels.n_rows:
            raise TurnphaseError(f"{self.config}: {start} rows for {self.labels.n_rows} tokens")


def checked_batch(source: str, config: str, table: pa.Table, start: int, labels: Labels, d: int) -> Batch:
    """Dataset rows start.. of a layer config as a Batch, once they line up with the labels (conversation_id
    and position) and hold only finite activations."""
    n = table.num_rows
    conv = table.column("conversation_id").to_numpy()
    pos = table.column("position").to_numpy()
    if start + n > labels.n_rows or not (
        np.array_equal(conv, labels.conversation_id[start : start + n])
        and np.array_equal(pos, labels.position[start : start + n])
    ):
        raise TurnphaseError(
            f"{config}: rows {start}..{start + n - 1} do not line up with the tokens config "
            "(conversation_id/position differ); run `turnphase validate` on the dataset"
        )
    flat = pc.list_flatten(table.column(schema.ACTIVATION)).to_numpy()
    if not np.isfinite(flat).all():
        raise TurnphaseError(
            f"{source}: {config} rows {start}..{start + n - 1} hold non-finite "
            "activations; run `turnphase validate` on the dataset"
        )
    return Batch(start, flat.reshape(n, d))  # (rows, d_model)


@dataclass
class Shard:
    """One Parquet file of a config, as a worker opens it: a local path or an hf:// URL pinned to a commit."""

    url: str
    name: str
    rows: int


class DatasetSource:
    def __init__(
        self, source: str, provenance: dict, streaming: bool, batch_size: int, revision: str | None = None
    ):
        self.source, self.provenance, self.streaming, self.batch_size = (
            source,
            provenance,
            streaming,
            batch_size,
        )
        self.revision = revision
        self.shards: dict[str, list[Shard]] = {}  # config -> its files in row order (check_shards)
        try:
            self.layers = [int(L) for L in provenance["layers"]]
            self.d_model = int(provenance["model"]["d_model"])
            if provenance["dtype"] not in schema.ARROW_FLOAT:
                raise ValueError(f"dtype {provenance['dtype']!r}")
            self.dtype = np.dtype(provenance["dtype"])
            self.model_id = str(provenance["model"]["id"])
        except (KeyError, TypeError, ValueError) as e:
            raise TurnphaseError(
                f"{source}: {schema.PROVENANCE_FILE} lacks layers, model or dtype ({e})"
            ) from e

    @classmethod
    def open(
        cls, source: str, *, streaming: bool = False, batch_size: int = 4096, revision: str | None = None
    ) -> DatasetSource:
        path = Path(source)
        if path.is_dir():
            if revision:
                raise TurnphaseError(f"{source}: --revision applies to Hub datasets, not folders")
            try:
                prov = read_provenance(path)
            except (OSError, ValueError) as e:
                raise TurnphaseError(
                    f"{source}: not a turnphase dataset (no readable {schema.PROVENANCE_FILE})"
                ) from e
            src = cls(str(path), prov, streaming, batch_size)
        elif path.exists() or not _HUB_ID.match(source):
            raise TurnphaseError(f"{source}: no such dataset folder")
        else:
            src = cls(source, _hub_provenance(source, revision), streaming, batch_size, revision)
        src.check_shards()
        return src

    @property
    def local(self) -> bool:
        return Path(self.source).is_dir()

    def check_shards(self) -> None:
        """Every shard's schema (from its Parquet footer) against the schema module, and the same
        shard files in every per-token config, before anything is computed: a damaged or foreign
        dataset fails here in one line instead of giving a report of garbage."""
        import pyarrow.parquet as pq

        if self.local:
            from fsspec.implementations.local import LocalFileSystem

            fs, root = LocalFileSystem(), str(Path(self.source).absolute())
            protocol = ""
        else:
            from huggingface_hub import HfApi, HfFileSystem

            try:  # pinned to the commit, as datasets does: every shard read from one snapshot
                sha = HfApi().dataset_info(self.source, revision=self.revision or "main").sha
            except Exception as e:
                raise TurnphaseError(f"{self.source}: cannot read the repository ({one_line(e)})") from None
            fs, root = HfFileSystem(), f"datasets/{self.source}@{sha}"
            protocol = "hf://"
            self.revision = sha  # and every later read from the same commit
        names = {}
        for config in schema.config_names(self.layers):
            try:
                files = sorted(fs.glob(f"{root}/{config}/{schema.SHARD_GLOB}"))
            except Exception as e:  # the Hub unreachable, a revision that does not exist
                raise TurnphaseError(f"{self.source}: cannot list {config} ({one_line(e)})") from None
            if not files:
                raise TurnphaseError(f"{self.source}: {config} has no shards; run `turnphase validate`")
            names[config] = [f.rsplit("/", 1)[-1] for f in files]
            if config != schema.CONVERSATIONS and names[config] != names[schema.TOKENS]:
                raise TurnphaseError(
                    f"{self.source}: {config}'s shard files differ from the tokens config's; "
                    "run `turnphase validate`"
                )
            expected = schema.schema_for(config, self.d_model, str(self.dtype))
            self.shards[config] = []
            for path, name in zip(files, names[config], strict=True):
                try:
                    with fs.open(path, "rb") as f:
                        footer = pq.ParquetFile(f)
                        got, rows = footer.schema_arrow, footer.metadata.num_rows
                except Exception as e:
                    raise TurnphaseError(
                        f"{self.source}: {config}/{name} is not readable Parquet ({one_line(e)})"
                    ) from None
                difference = schema.schema_difference(got, expected)
                if difference:
                    raise TurnphaseError(
                        f"{self.source}: {config}/{name} does not have the dataset's schema ({difference}); "
                        "run `turnphase validate`"
                    )
                if self.local:
                    self._check_hash(Path(path), f"{config}/{name}")
                self.shards[config].append(Shard(protocol + path, name, rows))

    def _check_hash(self, path: Path, rel: str) -> None:
        """A local shard against the sha256 the build recorded (well under a second for the default
        dataset). Hub shards are not hashed here: that would read each one twice; `push` checked
        them against the record before uploading."""
        recorded = self.provenance.get("sha256")
        if not isinstance(recorded, dict):
            return  # an older build without the record: `turnphase validate` says so
        if recorded.get(rel) != sha256_file(path):
            raise TurnphaseError(
                f"{self.source}: {rel}'s sha256 differs from {schema.PROVENANCE_FILE} (the file was "
                "changed or damaged after the build); run `turnphase validate`"
            )

    def tables(self, config: str, columns: list[str], batch_size: int | None = None) -> Iterator[pa.Table]:
        """Arrow batches of `config`'s columns in dataset row order."""
        import datasets

        try:
            # A local folder is always read in place: a non-streamed load would first copy it into
            # datasets' Arrow cache (254 MB for the default dataset, per run). In memory or not is
            # decided by the caller (LayerData keeps what it read).
            ds = datasets.load_dataset(
                self.source,
                config,
                split=schema.SPLIT,
                streaming=self.streaming or self.local,
                revision=self.revision,
            )
            it = iter(ds.select_columns(columns).with_format("arrow").iter(batch_size or self.batch_size))
        except Exception as e:  # datasets raises many types for missing configs, shards or schemas
            raise TurnphaseError(
                f"{self.source}: cannot open config {config} ({type(e).__name__}: {e})"
            ) from e
        while True:
            try:
                table = next(it)
            except StopIteration:
                return
            except Exception as e:  # a corrupt or unreadable shard surfaces here, mid-stream
                raise TurnphaseError(f"{self.source}: cannot read {config} ({type(e).__name__}: {e})") from e
            yield table

    def labels(self, config: AnalysisConfig) -> Labels:
        cols = [*schema.KEY_LABEL_COLUMNS, "index_in_turn", "is_template"]
        other = config.other_scheme
        # Filled in place at the provenance's row count: growing lists of small chunks and
        # concatenating would leave their size behind as heap fragments (measured: +36 B/token).
        n_rows = self.token_count()
        conv, pos = np.empty(n_rows, np.int32), np.empty(n_rows, np.int32)
        keep = np.empty(n_rows, bool)
        role, rnd = np.empty(n_rows, np.int8), np.empty(n_rows, np.int16)
        phase, iit = np.empty(n_rows, np.float32), np.empty(n_rows, np.int32)
        phase_other = np.empty(n_rows, np.float32)
        template_excluded = dict.fromkeys(schema.ROLES[1:], 0)
        start = k = 0
        for t in self.tables(schema.TOKENS, cols, LABEL_BATCH):
            end = start + t.num_rows
            if end > n_rows:
                raise TurnphaseError(
                    f"{self.source}: the tokens config has more rows than {schema.PROVENANCE_FILE} says"
                )
            kept_mask = pc.is_valid(t.column(config.phase_scheme)).to_numpy(zero_copy_only=False)
            if config.exclude_template:
                template = kept_mask & t.column("is_template").to_numpy(zero_copy_only=False)
                kept_mask &= ~template
                template_roles = t.column("role").to_numpy(zero_copy_only=False)[template]
                for r in template_excluded:
                    template_excluded[r] += int((template_roles == r).sum())
            kept = t.filter(pa.array(kept_mask))
            roles = pc.index_in(kept.column("role"), value_set=pa.array(schema.ROLES))
            if roles.null_count:
                raise TurnphaseError(f"{self.source}: tokens config has roles outside {schema.ROLES}")
            conv[start:end] = t.column("conversation_id").to_numpy()
            pos[start:end] = t.column("position").to_numpy()
            keep[start:end] = kept_mask
            m = k + kept.num_rows
            if kept.column("round").null_count or kept.column(other).null_count:
                raise TurnphaseError(
                    f"{self.source}: the tokens config has turn tokens without a round or a phase in "
                    f"rows {start}..{end - 1}; run `turnphase validate`"
                )
            role[k:m] = roles.to_numpy()
            rnd[k:m] = kept.column("round").to_numpy()
            phase[k:m] = kept.column(config.phase_scheme).to_numpy()
            phase_other[k:m] = kept.column(other).to_numpy()
            iit[k:m] = kept.column("index_in_turn").to_numpy()
            bad = ~((phase[k:m] >= 0) & (phase[k:m] <= 1) & (phase_other[k:m] >= 0) & (phase_other[k:m] <= 1))
            if bad.any() or (iit[k:m] < 0).any() or (rnd[k:m] < 0).any():
                raise TurnphaseError(
                    f"{self.source}: the tokens config has turn tokens with a phase outside 0..1 (or NaN), "
                    f"or a negative round or index_in_turn, in rows {start}..{end - 1}; run `turnphase validate`"
                )
            start, k = end, m
        if start != n_rows:
            raise TurnphaseError(
                f"{self.source}: the tokens config has {start} rows, {schema.PROVENANCE_FILE} says {n_rows}"
            )
        if k == 0:
            raise TurnphaseError(f"{self.source}: no turn tokens to analyse")
        return Labels(
            conversation_id=conv,
            position=pos,
            analysed=keep,
            conversation=conv[keep],
            role=role[:k],
            round=rnd[:k],
            phase=phase[:k],
            phase_other=phase_other[:k],
            token_position=pos[keep],
            index_in_turn=iit[:k],
            template_excluded=template_excluded,
        )

    def token_count(self) -> int:
        try:
            return int(self.provenance["counts"]["tokens"])
        except (KeyError, TypeError, ValueError) as e:
            raise TurnphaseError(f"{self.source}: {schema.PROVENANCE_FILE} lacks counts.tokens") from e

    def layer(self, layer: int, labels: Labels) -> LayerData:
        if layer not in self.layers:
            raise TurnphaseError(
                f"layer {layer} is not in this dataset (layers: {', '.join(map(str, self.layers))})"
            )
        return LayerData(self, layer, labels)

    def conversation_tokens(self, conversation_id: int) -> pa.Table:
        """position, role, phase and token text of one conversation (for the HTML token view only)."""
        cols = ["conversation_id", "position", "role", "phase", "token"]
        found = [
            t.filter(pc.equal(t.column("conversation_id"), conversation_id))
            for t in self.tables(schema.TOKENS, cols, LABEL_BATCH)
        ]
        return pa.concat_tables(found)


def _hub_provenance(repo_id: str, revision: str | None) -> dict:
    import json

    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, schema.PROVENANCE_FILE, repo_type="dataset", revision=revision)
        return json.loads(Path(path).read_text())
    except Exception as e:  # offline, no such repo, or not a turnphase dataset: one line either way
        raise TurnphaseError(
            f"{repo_id}: not a local folder, and its {schema.PROVENANCE_FILE} cannot be fetched from the Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
