"""`turnphase analyze SOURCE --out REPORT_DIR`: the study's probes, PCA/Fourier and figures, against
a structure baseline and three nulls, with the tests that tell a clock from a switch.

turnphase analyze data/smollm2 --out report                       # all layers, in memory
turnphase analyze USER/turnphase-smollm2 --out report --streaming # a Hub dataset, streamed
turnphase analyze data/smollm2 --out report --layers 13,17 --split token --seed 1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from turnphase.analysis.config import AnalysisConfig
from turnphase.builders.errors import TurnphaseError


def _layers(text: str) -> list[int]:
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, not {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = AnalysisConfig(source="")
    p.add_argument("source", help="dataset folder written by `turnphase build`, or a Hub dataset id")
    p.add_argument("--revision", help="Hub branch, tag or commit to read (Hub ids only)")
    p.add_argument("--out", type=Path, required=True, help="report folder to write (refused if not empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument(
        "--layers", type=_layers, help="comma-separated layers (default: every layer in the dataset)"
    )
    p.add_argument("--streaming", action="store_true", help="stream shards; memory does not grow with tokens")
    p.add_argument(
        "--split",
        choices=["conversation", "token"],
        default=d.split,
        help="folds of whole conversations (default) or of random tokens, as the study did",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="folds, null permutations, bootstrap (default 0)")
    p.add_argument(
        "--phase-scheme",
        choices=["phase", "phase_round"],
        default=d.phase_scheme,
        help="primary label scheme: per turn as in the study (default), or linear across the round; "
        "the other is reported beside it",
    )
    p.add_argument(
        "--include-template",
        action="store_true",
        help="analyse chat-template markup tokens too (default: left out and counted; they sit at the phase extremes)",
    )
    p.add_argument(
        "--folds", type=int, default=d.folds, help="cross-fitting folds, each held out once (default 5)"
    )
    p.add_argument(
        "--n-pcs", type=int, default=d.n_pcs, help="top PCs searched for the study's best pair (default 16)"
    )
    p.add_argument(
        "--fourier-pcs",
        type=int,
        default=d.fourier_pcs,
        help="whitened PCs the once-per-round Fourier plane spans (default 64)",
    )
    p.add_argument(
        "--bootstrap", type=int, default=d.n_bootstrap, help="bootstrap resamples for 95%% intervals"
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="activation rows per step (memory only)"
    )


def config_from(args: argparse.Namespace) -> AnalysisConfig:
    try:
        return AnalysisConfig(
            source=args.source,
            revision=args.revision,
            layers=args.layers,
            streaming=args.streaming,
            split=args.split,
            seed=args.seed,
            phase_scheme=args.phase_scheme,
            exclude_template=not args.include_template,
            folds=args.folds,
            n_pcs=args.n_pcs,
            fourier_pcs=args.fourier_pcs,
            n_bootstrap=args.bootstrap,
            batch_size=args.batch_size,
        )
    except ValueError as e:
        raise TurnphaseError(str(e)) from e


def run(args: argparse.Namespace) -> int:
    # datasets imports torch, when installed, as soon as it streams (to share a counter with
    # DataLoader workers): seconds and a few hundred MB for nothing here. Set before datasets loads.
    os.environ.setdefault("USE_TORCH", "0")
    from turnphase.analysis.report import analyze

    analyze(config_from(args), args.out, overwrite=args.overwrite)
    return 0
