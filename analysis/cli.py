"""`turnphase analyze SOURCE --out REPORT_DIR`: the study's probes, PCA/Fourier and figures, against
a structure baseline and three nulls, with the tests that tell a clock from a switch.

turnphase analyze data/smollm2 --out report                       # all layers, in memory
turnphase analyze USER/turnphase-smollm2 --out report --streaming # a Hub dataset, streamed
turnphase analyze data/smollm2 --out report --layers 13,17 --split token --seed 1
turnphase analyze data/big --out report --workers 4                # a local Dask cluster (cluster.py)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from turnphase.analysis.config import FIGURE_FORMATS, AnalysisConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = AnalysisConfig(source="")
    p.add_argument("source", help="dataset folder written by `turnphase build`, or a Hub dataset id")
    p.add_argument("--revision", help="Hub branch, tag or commit to read (Hub ids only)")
    p.add_argument("--out", type=Path, required=True, help="report folder to write (refused if not empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument(
        "--layers", default="all", help="layers to analyse: all (the dataset's), 13-24, 13,17 or 2,5-7"
    )
    p.add_argument("--streaming", action="store_true", help="stream shards; memory does not grow with tokens")
    p.add_argument(
        "--split",
        choices=["conversation", "token"],
        default=d.split,
        help="folds of whole conversations, or of random tokens as the study did",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="folds, null permutations, bootstrap")
    p.add_argument(
        "--phase-scheme",
        choices=["phase", "phase_round"],
        default=d.phase_scheme,
        help="primary label scheme: per turn as in the study, or linear across the round; "
        "the other is reported beside it",
    )
    p.add_argument(
        "--include-template",
        action="store_true",
        help="analyse chat-template markup tokens too (otherwise left out and counted; they sit at the "
        "phase extremes)",
    )
    p.add_argument("--folds", type=int, default=d.folds, help="cross-fitting folds, each held out once")
    p.add_argument("--n-pcs", type=int, default=d.n_pcs, help="top PCs searched for the study's best pair")
    p.add_argument(
        "--fourier-pcs",
        type=int,
        default=d.fourier_pcs,
        help="whitened PCs the once-per-round Fourier plane spans",
    )
    p.add_argument(
        "--bootstrap",
        dest="n_bootstrap",
        type=int,
        default=d.n_bootstrap,
        help="bootstrap resamples for 95%% intervals",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="activation rows per step (memory only)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=int, help="run both passes on a local Dask cluster of this many processes"
    )
    where.add_argument("--scheduler", help="run both passes on this Dask scheduler (e.g. tcp://HOST:8786)")
    add_figure_arguments(p)


def add_figure_arguments(p: argparse.ArgumentParser) -> None:
    """--figure-format and --dpi, as analyze, steer and compare take them (AnalysisConfig's defaults)."""
    d = AnalysisConfig
    p.add_argument(
        "--figure-format",
        choices=FIGURE_FORMATS,
        default=d.figure_format,
        help="file format of the figures (pdf and svg keep text as vectors)",
    )
    p.add_argument("--dpi", type=int, default=d.dpi, help="resolution of PNGs and of scatters in PDF/SVG")


def config_from(args: argparse.Namespace) -> AnalysisConfig:
    """The config; a bad value raises ConfigError naming its field (the CLI shows the flag)."""
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
        n_bootstrap=args.n_bootstrap,
        batch_size=args.batch_size,
        workers=args.workers,
        scheduler=args.scheduler,
        figure_format=args.figure_format,
        dpi=args.dpi,
    )


def run(args: argparse.Namespace) -> int:
    # datasets imports torch, when installed, as soon as it streams (to share a counter with
    # DataLoader workers): seconds and a few hundred MB for nothing here. Set before datasets loads.
    os.environ.setdefault("USE_TORCH", "0")
    from turnphase.analysis.report import analyze

    analyze(config_from(args), args.out, overwrite=args.overwrite)
    return 0
