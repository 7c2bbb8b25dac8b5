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
from huggingface_hub import DatasetCard

from turnphase.builders import schema

PHASE_TOL = 1e-6


def _card_configs(root: Path, problems: list[str]) -> dict[str, str]:
    """config name -> data_files glob, from the card's YAML."""
    try:
        card = DatasetCard.load(root / schema.CARD_FILE)
    except Exception as e:  # a missing or unparsable card is a problem to report, not a crash
        problems.append(f"{schema.CARD_FILE}: cannot read the dataset card ({type(e).__name__}: {e})")
        return {}
    out = {}
    for cfg in card.data.to_dict().get("configs") or []:
        files = cfg.get("data_files") or []
        paths = [f["path"] for f in files if f.get("split") == schema.SPLIT]
        if len(paths) != 1:
            problems.append(
                f"{schema.CARD_FILE}: config {cfg.get('config_name')} has no single '{schema.SPLIT}' path"
            )
            continue
        out[cfg["config_name"]] = paths[0]
    return out


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
        problems.append(f"{rel}: unreadable Parquet ({type(e).__name__}: {e})")
        return None
    if not got.remove_metadata().equals(expected.remove_metadata()):
        problems.append(
            f"{rel}: schema differs from the expected one: {got.remove_metadata()}".replace("\n", "; ")
        )
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


def validate(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: not a folder"]
    problems: list[str] = []
    try:
        prov = json.loads((root / schema.PROVENANCE_FILE).read_text())
        layers, d_model, dtype = prov["layers"], prov["model"]["d_model"], prov["dtype"]
        rows_expected = prov["counts"]["rows"]
    except Exception as e:
        return [f"{schema.PROVENANCE_FILE}: missing or unreadable ({type(e).__name__}: {e})"]

    expected = [schema.CONVERSATIONS, schema.TOKENS] + [schema.layer_config(L) for L in layers]
    card = _card_configs(root, problems)
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
    if n_conv != prov["counts"]["conversations"] or n_conv != rows_expected.get(schema.CONVERSATIONS):
        problems.append(f"conversations: {n_conv} rows, provenance says {prov['counts']['conversations']}")

    token_files = _shards(root, schema.TOKENS, problems)
    for L in layers:
        layer_names = {p.name for p in _shards(root, schema.layer_config(L), problems)}
        if layer_names != {p.name for p in token_files}:
            problems.append(f"{schema.layer_config(L)}: shard files differ from tokens' shard files")
    n_tokens = 0
    layer_rows = dict.fromkeys(layers, 0)
    for path in token_files:
        f = _open(path, schema.TOKENS_SCHEMA, root, problems)
        if f is None:
            continue
        tokens = f.read(columns=schema.KEY_LABEL_COLUMNS)
        n_tokens += tokens.num_rows
        _check_phases(tokens, str(path.relative_to(root)), problems)
        for L in layers:
            lpath = root / schema.layer_config(L) / path.name
            rel = lpath.relative_to(root)
            if not lpath.exists():
                continue  # reported by _shards
            lf = _open(lpath, schema.layer_schema(d_model, dtype), root, problems)
            if lf is None:
                continue
            layer_rows[L] += lf.metadata.num_rows
            labels = lf.read(columns=schema.KEY_LABEL_COLUMNS)
            if not labels.equals(tokens):
                problems.append(f"{rel}: key/label columns do not line up with {path.relative_to(root)}")
            for i in range(lf.num_row_groups):
                acts = lf.read_row_group(i, columns=[schema.ACTIVATION]).column(0)
                values = pc.list_flatten(acts).to_numpy(zero_copy_only=False)
                if not np.isfinite(values).all():
                    problems.append(f"{rel}: non-finite activations in row group {i}")
                    break

    if n_tokens != prov["counts"]["tokens"] or n_tokens != rows_expected.get(schema.TOKENS):
        problems.append(f"tokens: {n_tokens} rows, provenance says {prov['counts']['tokens']}")
    for L in layers:
        if layer_rows[L] != n_tokens:
            problems.append(f"{schema.layer_config(L)}: {layer_rows[L]} rows for {n_tokens} tokens")
    return problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="dataset folder written by `turnphase build`")


def run(args: argparse.Namespace) -> int:
    problems = validate(args.folder)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{args.folder}: valid")
    return 1 if problems else 0
