"""Writing a dataset folder safely: every file appears whole or not at all.

Shards and JSON files are written under a hidden temporary name in the same folder and renamed
into place, so a killed build never leaves a file that a reader or a resumed build would trust.
A shard that exists under its final name is complete; that is what resuming relies on.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_error(path: Path, e: OSError) -> TurnphaseError:
    """One line for a failed write that names the file and says what to do."""
    if e.errno == errno.ENOSPC:
        return TurnphaseError(f"no space left on device writing {path}: free space and rerun to resume")
    reason = e.strerror or str(e).splitlines()[0]
    return TurnphaseError(f"cannot write {path}: {reason}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` to write to; renamed to `path` when the block succeeds,
    removed when it fails. A failed write (full disk, read-only folder) becomes one line."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`, replacing what was there (a report, a steering run):
    a folder named `out` is always whole."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def sweep_unfinished(parent: Path, prefix: str) -> None:
    """Remove the temporary folders or files `<prefix><pid>` in `parent` whose process is gone: one
    killed (kill -9, SIGTERM) before cleaning up leaves them behind."""
    for old in Path(parent).glob(glob.escape(prefix) + "*"):
        pid = old.name[len(prefix) :]
        if pid.isdigit() and not running(int(pid)):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def running(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to write a result into (a report, a steering run); it replaces
    `out` when the block succeeds and is removed when it fails, so `out` is always whole. Made on
    entry, so an unwritable place fails before the work; failed writes become one line. Named by
    host and pid: the staged folders of this host's killed runs for `out` are removed on entry."""
    out = Path(out)
    mine = f".{out.name}.partial-{socket.gethostname()}-"
    tmp = out.parent / f"{mine}{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_unfinished(out.parent, mine)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise write_error(out, e) from None
    try:
        yield tmp
        replace_folder(tmp, out)
    except OSError as e:
        raise write_error(Path(e.filename) if e.filename else out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shard_path(root: Path, config: str, index: int, n_shards: int) -> Path:
    return Path(root) / config / schema.shard_name(index, n_shards)


def write_shard(root: Path, config: str, index: int, n_shards: int, table: pa.Table) -> Path:
    """Write one Parquet shard of `config` atomically; returns its final path.

    `table` must already have the config's schema: a mismatch is a bug in the caller, not
    something to coerce silently.
    """
    path = shard_path(root, config, index, n_shards)
    # Dictionary-encode only the small categorical columns; activations compress poorly and
    # would waste time in a dictionary.
    dict_cols = [c for c in ("role", "topic", "model", "token") if c in table.column_names]
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=schema.row_group_rows(config),
            compression="zstd",
            use_dictionary=dict_cols,
            write_statistics=["conversation_id", "position"]
            if "position" in table.column_names
            else ["conversation_id"],
        )
    return path


def complete_shards(root: Path, config: str, n_shards: int) -> set[int]:
    """Indices of shards of `config` that exist under their final name for this shard count."""
    folder = Path(root) / config
    if not folder.is_dir():
        return set()
    done = set()
    for f in folder.iterdir():
        parsed = schema.parse_shard_name(f.name)
        if parsed and parsed[1] == n_shards:
            done.add(parsed[0])
    return done


def remove_temp_files(root: Path) -> None:
    """Drop temporaries left by a killed writer (they are never read)."""
    for tmp in Path(root).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def layer_table(tokens: pa.Table, activations, dtype: schema.Dtype) -> pa.Table:
    """The `layer_<L>` table for `tokens` rows and their activations.

    activations: (n_tokens, d_model) numpy array, any float dtype; cast to `dtype`.
    Raises ValueError on a non-finite value (after the cast: float16 overflows count too).
    """
    import numpy as np

    n, d_model = activations.shape
    if n != tokens.num_rows:
        raise ValueError(f"{n} activation rows for {tokens.num_rows} tokens")
    values = np.ascontiguousarray(activations, dtype=dtype)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise ValueError(f"{bad} activation rows are not finite in {dtype}")
    flat = pa.array(values.reshape(-1), type=schema.ARROW_FLOAT[dtype])
    column = pa.FixedSizeListArray.from_arrays(flat, d_model)
    columns = [tokens.column(name) for name in schema.KEY_LABEL_COLUMNS] + [column]
    return pa.Table.from_arrays(columns, schema=schema.layer_schema(d_model, dtype))


def finalize(root: Path, provenance: dict, repo_id: str | None = None) -> None:
    """Write the provenance JSON, then the card: a folder with a card is a finished build."""
    from turnphase.builders.card import render_card

    shards = {
        config: sorted((Path(root) / config).glob(schema.SHARD_GLOB))
        for config in provenance["counts"]["rows"]
    }
    provenance["counts"]["bytes"] = {
        config: sum(f.stat().st_size for f in files) for config, files in shards.items()
    }
    provenance["counts"]["arrow_bytes"] = {
        config: sum(arrow_nbytes(f) for f in files) for config, files in shards.items()
    }
    provenance["sha256"] = shard_hashes(root, provenance["counts"]["rows"])
    atomic_write_json(Path(root) / schema.PROVENANCE_FILE, provenance)
    atomic_write_bytes(Path(root) / schema.CARD_FILE, render_card(provenance, repo_id).encode())


def arrow_nbytes(path: Path) -> int:
    """The Arrow (in-memory) size of a shard as `datasets` counts a split's `num_bytes`: it reads
    a Parquet file in batches of its first row group's size and adds up each batch's `nbytes`."""
    f = pq.ParquetFile(path)
    if f.metadata.num_row_groups == 0:
        return 0
    batches = f.iter_batches(batch_size=f.metadata.row_group(0).num_rows)
    return sum(pa.Table.from_batches([batch]).nbytes for batch in batches)


def shard_hashes(root: Path, configs) -> dict[str, str]:
    """sha256 of every shard of `configs`, keyed by its path in the folder (`tokens/train-...`):
    the integrity record `validate` and `push` check."""
    from turnphase.builders.provenance import sha256_file

    return {
        f"{config}/{f.name}": sha256_file(f)
        for config in configs
        for f in sorted((Path(root) / config).glob(schema.SHARD_GLOB))
    }
