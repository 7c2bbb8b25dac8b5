"""Analyse a turnphase dataset by streaming its shards (memory stays flat whatever its size).

    .venv/bin/python scripts/analyze_streamed.py USER/turnphase-smollm2-135m-instruct --out report/smollm2
    .venv/bin/python scripts/analyze_streamed.py data/smollm2 --out report/smollm2 --layers 13,17,21

The same as `turnphase analyze SOURCE --out DIR --streaming`, for use from a checkout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from turnphase.analysis.config import AnalysisConfig
from turnphase.builders.errors import TurnphaseError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="dataset folder or Hub dataset id")
    p.add_argument("--out", type=Path, required=True, help="report folder (must not exist or be empty)")
    p.add_argument("--layers", help="comma-separated layers (default: all in the dataset)")
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("USE_TORCH", "0")  # datasets would import torch to stream; see analysis/cli.py
    from turnphase.analysis.report import analyze

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    config = AnalysisConfig(
        args.source, revision=args.revision, layers=layers, streaming=True, seed=args.seed
    )
    try:
        report = analyze(config, args.out).report
    except TurnphaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = report["summary"]["best_layer_by_fourier_circcorr"]
    print(f"colour wheel of the best layer: {args.out / f'layer{best}_color_wheel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
