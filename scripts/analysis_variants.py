"""The common analysis variants of one dataset, streamed, side by side: our conversation folds, the
study's token-level folds, the whole-round phase scheme as the primary one, and template tokens in.

    .venv/bin/python scripts/analysis_variants.py data/smollm2 --out report/variants

Writes one report folder per variant under --out and prints, per layer and variant, the verdict,
the trig probe's held-out R^2 (largest null) and the held-out Fourier-plane wheel's circular r.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.split import NULLS
from turnphase.builders.errors import TurnphaseError

VARIANTS = {
    "conversation": {"split": "conversation"},
    "token": {"split": "token"},
    "phase_round": {"split": "conversation", "phase_scheme": "phase_round"},
    "with_template": {"split": "conversation", "exclude_template": False},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="dataset folder or Hub dataset id")
    p.add_argument("--out", type=Path, required=True, help="parent folder for the variants' reports")
    p.add_argument("--layers", help="comma-separated layers (default: all in the dataset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("USE_TORCH", "0")  # datasets would import torch to stream; see analysis/cli.py
    from turnphase.analysis.report import analyze

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    reports = {}
    try:
        for name, options in VARIANTS.items():
            config = AnalysisConfig(args.source, layers=layers, streaming=True, seed=args.seed, **options)
            reports[name] = analyze(config, args.out / name, verbose=False).report
            print(f"{name}: {args.out / name}/report.json", flush=True)
    except TurnphaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"\n{'layer':>5}  "
        + "  ".join(f"{name + ': verdict, trig R2 (null), wheel r':>46}" for name in reports)
    )
    for layer in next(iter(reports.values()))["layers"]:
        cells = []
        for report in reports.values():
            e = report["layers"][layer]
            trig = e["probes"][report["phase_scheme"]]["trig"]["acts"]
            null = max(trig[n]["r2"] for n in NULLS)
            wheel = e["planes"]["fourier"]["real"]["circcorr"]["value"]
            cells.append(f"{e['verdict']['verdict']}, {trig['real']['r2']:.3f} ({null:.3f}), {wheel:.3f}")
        print(f"{layer:>5}  " + "  ".join(f"{c:>46}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
