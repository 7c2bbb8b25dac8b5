"""The same analysis under several fold seeds: how much the headline numbers move with the split.

    .venv/bin/python scripts/analysis_seeds.py data/smollm2 --seeds 0,1,2 --layers 13,19,24 --out report/seeds

Each seed draws other conversation folds and other null permutations (`turnphase analyze --seed`);
one report folder per seed under --out. Prints, per layer, each seed's verdict and the range
across seeds of the trig probe's R^2, its partial R^2 over the structure baseline, the cross-role
transfer and the held-out Fourier-plane wheel's circular r.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from turnphase.analysis.config import AnalysisConfig
from turnphase.builders.errors import TurnphaseError


def headline(report: dict, layer: str) -> dict[str, float]:
    e = report["layers"][layer]
    trig = e["probes"][report["phase_scheme"]]["trig"]
    return {
        "trig R2": trig["acts"]["real"]["r2"],
        "trig partial R2": trig["partial_r2_over_structure"]["real"]["value"],
        "transfer r": e["rotation"]["transfer"]["real"]["mean"]["value"],
        "wheel r": e["planes"]["fourier"]["real"]["circcorr"]["value"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="dataset folder or Hub dataset id")
    p.add_argument("--out", type=Path, required=True, help="parent folder for the seeds' reports")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fold seeds")
    p.add_argument("--layers", help="comma-separated layers (default: all in the dataset)")
    args = p.parse_args()
    os.environ.setdefault("USE_TORCH", "0")  # datasets would import torch to stream; see analysis/cli.py
    from turnphase.analysis.report import analyze

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    reports = {}
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            config = AnalysisConfig(args.source, layers=layers, seed=seed)
            reports[seed] = analyze(config, args.out / f"seed{seed}", verbose=False).report
            print(f"seed {seed}: {args.out / f'seed{seed}'}/report.json", flush=True)
    except TurnphaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for layer in next(iter(reports.values()))["layers"]:
        verdicts = ", ".join(r["layers"][layer]["verdict"]["verdict"] for r in reports.values())
        rows = [headline(r, layer) for r in reports.values()]
        spread = "  ".join(
            f"{k} {min(r[k] for r in rows):.3f}..{max(r[k] for r in rows):.3f}" for k in rows[0]
        )
        print(f"layer {layer}: verdicts {verdicts}; {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
