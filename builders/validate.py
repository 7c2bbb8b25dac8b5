"""`turnphase validate DIR`: is this folder a complete, consistent turnphase dataset?

Returns one line per problem; an empty list means valid. Reads shard by shard and row group by
row group, so memory stays at one shard's labels whatever the dataset size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from turnphase.builders import schema
from turnphase.builders.errors import one_line

PHASE_TOL = 1e-6


def _card_configs(root: Path, problems: list[str]) -> tuple[dict[str, str], DatasetCardData | None]:
    """config name -> data_files glob, from the card's YAML; and the YAML (None if unreadable)."""
    try:
        card = DatasetCard.load(root / schema.CARD_FILE)
    except Exception as e:  # a missing or unparsable card is a problem to report, not a crash
        problems.append(f"{schema.CARD_FILE}: cannot read the dataset card ({one_line(e)})")
        return {}, None
    out = {}
    configs = card.data.to_dict().get("configs") or []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        problems.append(f"{schema.CARD_FILE}: `configs` is not a list of configs")
        return {}, card.data
    for cfg in configs:
        files = cfg.get("data_files") or []
        files = files if isinstance(files, list) else []
        paths = [f.get("path") for f in files if isinstance(f, dict) and f.get("split") == schema.SPLIT]
        if len(paths) != 1 or not isinstance(cfg.get("config_name"), str):
            problems.append(
                f"{schema.CARD_FILE}: config {cfg.get('config_name')} has no single '{schema.SPLIT}' path"
            )
            continue
        out[cfg["config_name"]] = paths[0]
    return out, card.data


def _check_card_sizes(data: DatasetCardData, prov: dict, rows: dict, problems: list[str]) -> None:
    """The card's split sizes against the provenance: `num_examples` against the rows and, where the
    build recorded them (`counts.arrow_bytes`; older builds did not), `num_bytes` against the
    Arrow sizes `datasets` computes."""
    try:
        infos = DatasetInfosDict.from_dataset_card_data(data)
        splits = {name: info.splits.get(schema.SPLIT) for name, info in infos.items() if info.splits}
    except Exception as e:  # whatever the YAML holds, one line
        problems.append(f"{schema.CARD_FILE}: unreadable `dataset_info` ({one_line(e)})")
        return
    arrow = prov["counts"].get("arrow_bytes")
    arrow = arrow if isinstance(arrow, dict) else {}
    for name, n_rows in rows.items():
        split = splits.get(name)
        if split is None:
            if name in arrow:
                problems.append(
                    f"{schema.CARD_FILE}: config {name} has no '{schema.SPLIT}' sizes in dataset_info"
                )
            continue
        if split.num_examples != n_rows:
            problems.append(
                f"{schema.CARD_FILE}: config {name} says {split.num_examples} rows, provenance {n_rows}"
            )
        if name in arrow and split.num_bytes != arrow[name]:
            problems.append(
                f"{schema.CARD_FILE}: config {name} says num_bytes {split.num_bytes}, Arrow size {arrow[name]}"
            )


def _shards(root: Path, config: str, problems: list[str]) -> list[Path]:
    files = sorted((root / config).glob(schema.SHARD_GLOB))
    if not files:
        problems.append(f"{config}: no shards")
        return []
    totals = {schema.parse_shard_name(f.name)[1] for f in files if schema.parse_shard_name(f.name)}
    names = {f.name for f in files}
    if len(totals) != 1:
        problems.append(f"{config}: shard names disagree on the shard count ({sorted(totals)})")
        return []
    n = totals.pop()
    missing = [schema.shard_name(i, n) for i in range(n) if schema.shard_name(i, n) not in names]
    if missing:
        problems.append(f"{config}: missing shards {', '.join(missing)}")
    return files


def _open(path: Path, expected: pa.Schema, root: Path, problems: list[str]) -> pq.ParquetFile | None:
    rel = path.relative_to(root)
    try:
        f = pq.ParquetFile(path)
        got = f.schema_arrow
    except Exception as e:
        problems.append(f"{rel}: unreadable Parquet ({one_line(e)})")
        return None
    difference = schema.schema_difference(got, expected)
    if difference:
        problems.append(f"{rel}: schema differs from the expected one: {difference}")
        return None
    return f


def _check_phases(tokens: pa.Table, rel: str, problems: list[str]) -> None:
    role = tokens.column("role").to_numpy(zero_copy_only=False)
    turn = role != "system"
    phase = tokens.column("phase").to_numpy(zero_copy_only=False)
    phase_round = tokens.column("phase_round").to_numpy(zero_copy_only=False)
    if np.any(~turn & ~np.isnan(phase.astype(float))):
        problems.append(f"{rel}: system tokens carry a phase")
    p, pr = phase[turn].astype(float), phase_round[turn].astype(float)
    if np.isnan(p).any() or np.isnan(pr).any():
        problems.append(f"{rel}: turn tokens without a phase")
        return
    user = role[turn] == "user"
    lo, hi = np.where(user, 0.0, 0.5), np.where(user, 0.5, 1.0)
    if np.any(p < lo - PHASE_TOL) or np.any(p > hi + PHASE_TOL):
        problems.append(f"{rel}: phase outside its role's range (user 0..0.5, assistant 0.5..1)")
    if np.any(pr < -PHASE_TOL) or np.any(pr > 1 + PHASE_TOL):
        problems.append(f"{rel}: phase_round outside 0..1")
    conv = tokens.column("conversation_id").to_numpy()[turn]
    rnd = tokens.column("round").to_numpy(zero_copy_only=False)[turn]
    same_turn = (conv[1:] == conv[:-1]) & (rnd[1:] == rnd[:-1]) & (role[turn][1:] == role[turn][:-1])
    same_round = (conv[1:] == conv[:-1]) & (rnd[1:] == rnd[:-1])
    if np.any(np.diff(p)[same_turn] <= 0):
        problems.append(f"{rel}: phase does not increase within a turn")
    if np.any(np.diff(pr)[same_round] <= 0):
        problems.append(f"{rel}: phase_round does not increase within a round")


def _expected(prov: dict, problems: list[str]) -> tuple[list[int], int, str, dict, int, int] | None:
    """layers, d_model, dtype, rows per config, conversations and tokens from the provenance, with
    their types checked; None (and a problem per bad field) if any is unusable."""
    bad = len(problems)

    def get(*keys):
        value = prov
        for k in keys:
            if not isinstance(value, dict) or k not in value:
                problems.append(f"{schema.PROVENANCE_FILE}: {'.'.join(keys)} is missing")
                return None
            value = value[k]
        return value

    layers, d_model, dtype = get("layers"), get("model", "d_model"), get("dtype")
    rows, n_conv, n_tokens = get("counts", "rows"), get("counts", "conversations"), get("counts", "tokens")
    checks = [
        ("layers", layers, isinstance(layers, list) and all(type(L) is int and L >= 0 for L in layers)),
        ("model.d_model", d_model, type(d_model) is int and d_model > 0),
        ("dtype", dtype, dtype in schema.ARROW_FLOAT),
        ("counts.rows", rows, isinstance(rows, dict)),
        ("counts.conversations", n_conv, type(n_conv) is int),
        ("counts.tokens", n_tokens, type(n_tokens) is int),
    ]
    for name, value, ok in checks:
        if value is not None and not ok:
            problems.append(f"{schema.PROVENANCE_FILE}: {name} has an unusable value {value!r:.80}")
    if len(problems) > bad:
        return None
    return layers, d_model, dtype, rows, n_conv, n_tokens


def validate(root: Path, *, deep: bool = True) -> list[str]:
    """One line per problem; [] means valid. Never raises: whatever cannot be read is a problem.

    deep=False checks the provenance, the card, the shard lists and every shard's schema and row
    count from the Parquet footers only (what `analyze` checks before it starts); deep=True also
    reads the data: labels, phases, row alignment, finiteness and the shards' sha256."""
    root = Path(root)
    try:
        return _validate(root, deep)
    except Exception as e:  # a last resort: a check that meets data nobody foresaw
        return [f"{root}: cannot be checked ({one_line(e)})"]


def _validate(root: Path, deep: bool) -> list[str]:
    if not root.is_dir():
        return [f"{root}: not a folder"]
    problems: list[str] = []
    try:
        prov = json.loads((root / schema.PROVENANCE_FILE).read_text())
        if not isinstance(prov, dict):
            raise ValueError("not a JSON object")
    except Exception as e:
        return [f"{schema.PROVENANCE_FILE}: missing or unreadable ({one_line(e)})"]
    expected_values = _expected(prov, problems)
    if expected_values is None:
        return problems
    layers, d_model, dtype, rows_expected, n_conv_expected, n_tokens_expected = expected_values

    expected = schema.config_names(layers)
    card, card_data = _card_configs(root, problems)
    if card_data is not None:  # configs the card does not list are reported below, once
        listed = {name: rows_expected.get(name) for name in expected if name in card}
        _check_card_sizes(card_data, prov, listed, problems)
    for name in expected:
        if name not in card:
            problems.append(f"{schema.CARD_FILE}: config {name} is not listed")
        elif card[name] != schema.data_files_glob(name):
            problems.append(
                f"{schema.CARD_FILE}: config {name} points at {card[name]}, not {schema.data_files_glob(name)}"
            )
    for name in sorted(set(card) - set(expected)):
        problems.append(f"{schema.CARD_FILE}: config {name} is not in the provenance")
    on_disk = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for name in sorted(on_disk - set(expected)):
        problems.append(f"{name}/: folder not described by the card or provenance")

    conv_files = _shards(root, schema.CONVERSATIONS, problems)
    n_conv = 0
    for path in conv_files:
        f = _open(path, schema.CONVERSATIONS_SCHEMA, root, problems)
        n_conv += f.metadata.num_rows if f else 0
    if n_conv != n_conv_expected or n_conv != rows_expected.get(schema.CONVERSATIONS):
        problems.append(f"conversations: {n_conv} rows, provenance says {n_conv_expected}")

    token_files = _shards(root, schema.TOKENS, problems)
    layer_files = {L: _shards(root, schema.layer_config(L), problems) for L in layers}
    for L, files in layer_files.items():
        if {p.name for p in files} != {p.name for p in token_files}:
            problems.append(f"{schema.layer_config(L)}: shard files differ from tokens' shard files")
    n_tokens = 0
    layer_rows = dict.fromkeys(layers, 0)
    for path in token_files:
        f = _open(path, schema.TOKENS_SCHEMA, root, problems)
        if f is None:
            continue
        n_tokens += f.metadata.num_rows
        tokens = _read(f, path, root, problems, columns=schema.KEY_LABEL_COLUMNS) if deep else None
        if tokens is not None:
            _check_phases(tokens, str(path.relative_to(root)), problems)
        for L in layers:
            lpath = root / schema.layer_config(L) / path.name
            if not lpath.exists():
                continue  # reported by _shards
            lf = _open(lpath, schema.layer_schema(d_model, dtype), root, problems)
            if lf is None:
                continue
            layer_rows[L] += lf.metadata.num_rows
            if tokens is not None:
                _check_layer_shard(lf, lpath, tokens, path, root, problems)

    if n_tokens != n_tokens_expected or n_tokens != rows_expected.get(schema.TOKENS):
        problems.append(f"tokens: {n_tokens} rows, provenance says {n_tokens_expected}")
    for L in layers:
        if layer_rows[L] != n_tokens:
            problems.append(f"{schema.layer_config(L)}: {layer_rows[L]} rows for {n_tokens} tokens")
    if deep:
        _check_hashes(root, prov, conv_files + token_files + sum(layer_files.values(), []), problems)
    return problems


def _read(f: pq.ParquetFile, path: Path, root: Path, problems: list[str], **kwargs) -> pa.Table | None:
    try:
        return f.read(**kwargs)
    except Exception as e:  # a damaged data page
        problems.append(f"{path.relative_to(root)}: unreadable data ({one_line(e)})")
        return None


def _check_layer_shard(
    lf: pq.ParquetFile, lpath: Path, tokens: pa.Table, tpath: Path, root: Path, problems: list[str]
) -> None:
    rel = lpath.relative_to(root)
    labels = _read(lf, lpath, root, problems, columns=schema.KEY_LABEL_COLUMNS)
    if labels is None:
        return
    if not labels.equals(tokens):
        problems.append(f"{rel}: key/label columns do not line up with {tpath.relative_to(root)}")
    for i in range(lf.num_row_groups):
        try:
            acts = lf.read_row_group(i, columns=[schema.ACTIVATION]).column(0)
            values = pc.list_flatten(acts).to_numpy(zero_copy_only=False)
        except Exception as e:
            problems.append(f"{rel}: unreadable activations in row group {i} ({one_line(e)})")
            return
        if not np.isfinite(values).all():
            problems.append(f"{rel}: non-finite activations in row group {i}")
            return


def _check_hashes(root: Path, prov: dict, files: list[Path], problems: list[str]) -> None:
    """Every shard's sha256 against the provenance's record (what the build wrote)."""
    from turnphase.builders.provenance import sha256_file

    recorded = prov.get("sha256")
    if not isinstance(recorded, dict):
        problems.append(
            f"{schema.PROVENANCE_FILE}: no sha256 record of the shards (rebuild with this version)"
        )
        return
    on_disk = {str(p.relative_to(root)): p for p in files}
    for rel in sorted(set(recorded) - set(on_disk)):
        problems.append(f"{rel}: recorded in {schema.PROVENANCE_FILE} but missing")
    for rel, path in sorted(on_disk.items()):
        if rel not in recorded:
            problems.append(f"{rel}: not recorded in {schema.PROVENANCE_FILE}'s sha256 list")
        elif sha256_file(path) != recorded[rel]:
            problems.append(f"{rel}: sha256 differs from {schema.PROVENANCE_FILE} (the file was changed)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="dataset folder written by `turnphase build`")


def run(args: argparse.Namespace) -> int:
    problems = validate(args.folder)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{args.folder}: valid")
    return 1 if problems else 0
