"""Benchmark `turnphase analyze`: time and peak memory at 1x, 4x and 16x the default dataset size,
in memory vs streaming.

    .venv/bin/python scripts/bench_analysis.py --work /tmp/turnphase-bench

The default dataset is 50 conversations x 5 rounds x about 250 tokens per round, at the default
model's width (SmolLM2-135M-Instruct, d_model 576, float16). The data here is synthetic (a planted
helix plus noise), written through the real writer and schema, with `--layers` layers (default 2;
time and memory per layer do not depend on the layer count, which the analysis visits one by
one). Every (size, mode) runs in a fresh subprocess with a fresh `datasets` cache, so the
in-memory runs include building the Arrow cache; peak memory is that subprocess's ru_maxrss.
Targets: streaming peak memory at 16x at most 1.3x that at 1x; time growing linearly.

    .venv/bin/python scripts/bench_analysis.py --sizes 1 --compare-ref 3d53410

also runs the analysis code of another commit (checked out with `git worktree` under --work, run
by the same interpreter) on the same data in the same run, and prints new / old time per mode.
Target: the held-out planes, rotation tests, structure baseline and nulls make a default analyze
at most 2x slower than commit 3d53410's, which had none of them.

    .venv/bin/python scripts/bench_analysis.py --sizes 16 --modes streaming --workers 1,2

also runs the analysis on a local Dask cluster of each worker count (`analyze --scheduler` on a
cluster the child starts, one thread per worker) on the largest size's data, and prints wall time,
the client's peak memory, each worker's peak memory, and the time ratio to the first count.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from turnphase.builders import provenance, schema, writer
from turnphase.builders.phases import PHASE_START, ramp

D_MODEL = 576
CONVERSATIONS = 50
ROUNDS = 5
CONVERSATIONS_PER_SHARD = 10


def conversation_tokens(cid: int, rng: np.random.Generator) -> pa.Table:
    """Labels of one conversation: a system prompt, then rounds of ~50 user and ~200 assistant tokens."""
    rows = {k: [] for k in ("role", "round", "phase", "phase_round", "index_in_turn", "turn_length")}
    n_sys = 30
    rows["role"] += ["system"] * n_sys
    rows["round"] += [None] * n_sys
    rows["phase"] += [None] * n_sys
    rows["phase_round"] += [None] * n_sys
    rows["index_in_turn"] += list(range(n_sys))
    rows["turn_length"] += [n_sys] * n_sys
    for r in range(ROUNDS):
        n_user, n_asst = int(rng.integers(25, 75)), int(rng.integers(130, 270))
        for role, n in (("user", n_user), ("assistant", n_asst)):
            rows["role"] += [role] * n
            rows["round"] += [r] * n
            rows["phase"] += list(PHASE_START[role] + 0.5 * ramp(n))
            rows["index_in_turn"] += list(range(n))
            rows["turn_length"] += [n] * n
        rows["phase_round"] += list(ramp(n_user + n_asst))
    n = len(rows["role"])
    return pa.Table.from_pydict(
        {
            "conversation_id": [cid] * n,
            "position": list(range(n)),
            **{k: rows[k] for k in ("role", "round", "phase", "phase_round")},
            "token_id": rng.integers(0, 49152, n).tolist(),
            "token": ["tok"] * n,
            "index_in_turn": rows["index_in_turn"],
            "turn_length": rows["turn_length"],
            "is_template": [i < 3 for i in rows["index_in_turn"]],
        },
        schema=schema.TOKENS_SCHEMA,
    )


def write_dataset(root: Path, scale: int, layers: int, seed: int = 0) -> Path:
    if (root / schema.CARD_FILE).exists():
        return root
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D_MODEL, 3)))[0].T  # (3, d_model)
    n_conv = CONVERSATIONS * scale
    n_shards = -(-n_conv // CONVERSATIONS_PER_SHARD)
    n_tokens = 0
    for shard in range(n_shards):
        ids = range(shard * CONVERSATIONS_PER_SHARD, min(n_conv, (shard + 1) * CONVERSATIONS_PER_SHARD))
        tokens = pa.concat_tables([conversation_tokens(c, rng) for c in ids])
        n_tokens += tokens.num_rows
        writer.write_shard(root, schema.TOKENS, shard, n_shards, tokens)
        phase = np.nan_to_num(tokens.column("phase").to_numpy(zero_copy_only=False).astype(np.float32))
        angle = 2 * np.pi * phase
        signal = np.stack([np.cos(angle), np.sin(angle), phase], axis=1) @ (
            np.array([3, 3, 4])[:, None] * basis
        )
        for layer in range(layers):
            acts = rng.standard_normal((tokens.num_rows, D_MODEL), dtype=np.float32) + signal  # (n, d_model)
            writer.write_shard(
                root, schema.layer_config(layer), shard, n_shards, writer.layer_table(tokens, acts, "float16")
            )
    conversations = pa.Table.from_pylist(
        [
            {"conversation_id": c, "topic": "t", "messages": [], "attempts": [], "model": "synthetic"}
            for c in range(n_conv)
        ],
        schema=schema.CONVERSATIONS_SCHEMA,
    )
    writer.write_shard(root, schema.CONVERSATIONS, 0, 1, conversations)
    rows = {schema.CONVERSATIONS: n_conv, schema.TOKENS: n_tokens}
    rows |= {schema.layer_config(L): n_tokens for L in range(layers)}
    prov = provenance.make_provenance(
        model={"id": "synthetic-bench", "n_layers": layers, "d_model": D_MODEL},
        layers=list(range(layers)),
        dtype="float16",
        seed=seed,
        generation={
            "strategy": "synthetic",
            "rounds": ROUNDS,
            "description": "benchmark data",
            "prompts": {},
        },
        counts={"conversations": n_conv, "dropped": [], "tokens": n_tokens, "rows": rows},
    )
    writer.finalize(root, prov)
    return root


class _CodeAt(importlib.abc.MetaPathFinder):
    """Imports turnphase's packages from another checkout (the layout pyproject.toml maps)."""

    PACKAGES = {"turnphase.builders": "builders", "turnphase.analysis": "analysis"}

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, name, path=None, target=None):
        if name not in self.PACKAGES:
            return None
        folder = self.root / self.PACKAGES[name]
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(dataset: str, out: str, streaming: bool, code: str | None, workers: int | None) -> None:
    """One measured run of the real command; prints wall time and this process's peak RSS as JSON
    (with `workers`: on a local Dask cluster started here, and each worker's peak RSS)."""
    if code:
        sys.meta_path.insert(0, _CodeAt(Path(code)))
    from turnphase.builders.cli import main

    argv = ["analyze", dataset, "--out", out, *(["--streaming"] if streaming else [])]
    if workers is None:
        start = time.perf_counter()
        rc = main(argv)
        wall, extra = time.perf_counter() - start, {}
    else:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            start = time.perf_counter()
            rc = main([*argv, "--scheduler", cluster.scheduler_address])
            wall = time.perf_counter() - start
            extra = {"worker_peak_mb": sorted(client.run(peak_mb).values())}
    if rc != 0:
        raise SystemExit(rc)
    print(json.dumps({"wall_s": wall, "peak_mb": peak_mb(), **extra}))


def measure(
    dataset: Path, work: Path, streaming: bool, code: Path | None = None, workers: int | None = None
) -> dict:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        env = os.environ | {"HF_DATASETS_CACHE": str(Path(tmp) / "cache"), "TQDM_DISABLE": "1"}
        mode = ["--streaming"] if streaming else []
        mode += ["--code", str(code)] if code else []
        mode += ["--workers", str(workers)] if workers else []
        cmd = [sys.executable, __file__, "--child", str(dataset), "--out", str(Path(tmp) / "report"), *mode]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"benchmark run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "turnphase-bench")
    p.add_argument("--sizes", default="1,4,16", help="multiples of the default dataset size")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--code", help=argparse.SUPPRESS)
    p.add_argument("--compare-ref", help="also time the analysis code of this git commit on the same data")
    p.add_argument("--modes", default="memory,streaming", help="in-process modes to time: memory, streaming")
    p.add_argument("--workers", help="also time local Dask clusters of these sizes (1,2) on the largest data")
    args = p.parse_args()
    if args.child:
        child(args.child, args.out, args.streaming, args.code, int(args.workers) if args.workers else None)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [{"memory": False, "streaming": True}[m] for m in args.modes.split(",") if m]
    results = []
    for size in sizes:
        ds = write_dataset(args.work / f"data-{size}x-{args.layers}layers", size, args.layers)
        n_tokens = provenance.read_provenance(ds)["counts"]["tokens"]
        for streaming in modes:
            r = measure(ds, args.work, streaming) | {"size": size, "tokens": n_tokens, "streaming": streaming}
            results.append(r)
            mode = "streaming" if streaming else "in memory"
            print(
                f"{size:>3}x {n_tokens:>9} tokens  {mode:<10} {r['wall_s']:8.1f} s  {r['peak_mb']:8.0f} MB",
                flush=True,
            )
    base = {m: next(r for r in results if r["size"] == sizes[0] and r["streaming"] == m) for m in modes}
    for r in results:
        b = base[r["streaming"]]
        r["time_ratio"], r["peak_ratio"] = r["wall_s"] / b["wall_s"], r["peak_mb"] / b["peak_mb"]
    print(f"\nratios to {sizes[0]}x (same mode):")
    for r in results:
        mode = "streaming" if r["streaming"] else "in memory"
        print(
            f"{r['size']:>3}x  {mode:<10} time x{r['time_ratio']:5.2f}  peak memory x{r['peak_ratio']:5.2f}"
        )
    if args.workers:
        results += cluster_runs(args, sizes[-1], [int(w) for w in args.workers.split(",")])
    (args.work / "bench_analysis.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.compare_ref:
        compare(args, sizes[0], results)
    print(f"results: {args.work / 'bench_analysis.json'}")


def cluster_runs(args: argparse.Namespace, size: int, counts: list[int]) -> list[dict]:
    """The largest data on local Dask clusters of `counts` workers, measured in this run."""
    ds = args.work / f"data-{size}x-{args.layers}layers"
    print(f"\nlocal Dask cluster on the {size}x data (one thread per worker):")
    runs = []
    for n in counts:
        r = measure(ds, args.work, False, workers=n) | {"size": size, "workers": n}
        runs.append(r)
        per_worker = ", ".join(f"{m:.0f}" for m in r["worker_peak_mb"])
        print(
            f"{n} worker(s) {r['wall_s']:8.1f} s  time x{r['wall_s'] / runs[0]['wall_s']:4.2f} of "
            f"{counts[0]}  client peak {r['peak_mb']:6.0f} MB  worker peaks {per_worker} MB",
            flush=True,
        )
    return runs


def compare(args: argparse.Namespace, size: int, results: list[dict]) -> None:
    """New / old wall time on the first size's data, both measured now."""
    repo = Path(__file__).resolve().parent.parent
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", args.compare_ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    code = args.work / f"code-{sha[:10]}"
    if not code.exists():
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(code), sha], check=True)
    ds = args.work / f"data-{size}x-{args.layers}layers"
    print(f"\nnew / old ({args.compare_ref}) on the {size}x data, measured in this run:")
    for new in [r for r in results if r["size"] == size and "workers" not in r]:
        streaming = new["streaming"]
        old = measure(ds, args.work, streaming, code)
        mode = "streaming" if streaming else "in memory"
        print(
            f"{mode:<10} new {new['wall_s']:6.1f} s  old {old['wall_s']:6.1f} s  "
            f"time x{new['wall_s'] / old['wall_s']:4.2f}  peak memory x{new['peak_mb'] / old['peak_mb']:4.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
