"""What one `turnphase analyze` run does, as one typed config (the CLI parses straight into it).

Saved into `report.json` under `config`, so a report says how it was made.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from turnphase.builders.errors import ConfigError
from turnphase.builders.layers import parse_layers

SplitKind = Literal["conversation", "token"]
PhaseScheme = Literal["phase", "phase_round"]
PHASE_SCHEMES: tuple[PhaseScheme, ...] = ("phase", "phase_round")
FigureFormat = Literal["png", "pdf", "svg"]
FIGURE_FORMATS: tuple[FigureFormat, ...] = ("png", "pdf", "svg")


def check_figure_options(figure_format: str, dpi: int) -> None:
    """The figure options of analyze and steer, checked alike."""
    if figure_format not in FIGURE_FORMATS:
        raise ConfigError("figure_format", f"use one of {', '.join(FIGURE_FORMATS)}, not {figure_format!r}")
    if not 30 <= dpi <= 1200:
        raise ConfigError("dpi", f"must be between 30 and 1200, not {dpi}")


def default_alphas() -> list[float]:
    # Ridge penalties from negligible to dominant for activation Gram matrices of 10^3..10^6 tokens.
    return [float(a) for a in np.logspace(-2, 6, 17)]


@dataclass
class AnalysisConfig:
    # What to read
    source: str  # dataset folder or Hub dataset id
    revision: str | None = None  # Hub branch, tag or commit (Hub ids only)
    layers: list[int] | str | None = None  # None, auto, all: every layer the dataset holds; 13-24, 13,17
    streaming: bool = False  # stream shards instead of loading the layer into memory

    # Which tokens and labels
    phase_scheme: PhaseScheme = "phase"  # the primary scheme; the other is reported beside it
    exclude_template: bool = True  # chat-template markup sits at the phase extremes: counted, not analysed

    # Cross-fitting and nulls
    split: SplitKind = "conversation"  # fold unit: whole conversations, or tokens as the study did
    folds: int = 5  # every fold is held out once; penalties are chosen by CV on the other folds
    seed: int = 0  # folds, null permutations, bootstrap and figure subsamples
    alphas: list[float] = field(default_factory=default_alphas)
    n_bootstrap: int = 1000  # resamples of conversations for the 95% intervals

    # PCA + Fourier
    n_pcs: int = 16  # top principal components searched for the study's best pair
    fourier_pcs: int = 64  # whitened principal components the once-per-round Fourier plane spans
    grid: int = 64  # uniform phase points each round is resampled onto
    continuity_window: int = 3  # tokens each side of a cut, for the turn-boundary continuity test

    # Where the passes run (cluster.py): this process, a local Dask cluster, or a running scheduler
    workers: int | None = None  # worker processes of a local Dask cluster
    scheduler: str | None = None  # address of a Dask scheduler, e.g. tcp://10.0.0.5:8786

    # Output
    batch_size: int = 4096  # activation rows per accumulation step: bounds memory, not results
    max_scatter: int = 3000  # points per scatter figure
    figure_format: FigureFormat = "png"  # pdf and svg keep text and lines as vectors (scatters stay raster)
    dpi: int = 150  # pixels per inch of PNGs and of the rasterised scatters in PDF/SVG

    def __post_init__(self) -> None:
        if self.layers is not None:  # the one layer grammar; auto/all: every layer the dataset holds
            parsed = parse_layers(self.layers)
            self.layers = None if parsed in ("auto", "all") else parsed
        if self.split not in ("conversation", "token"):
            raise ConfigError("split", f"must be 'conversation' or 'token', not {self.split!r}")
        if self.phase_scheme not in PHASE_SCHEMES:
            raise ConfigError("phase_scheme", f"must be 'phase' or 'phase_round', not {self.phase_scheme!r}")
        if self.folds < 3:
            raise ConfigError(
                "folds", "at least 3 are needed: one held out, two to choose the ridge penalty on"
            )
        for name in ("n_pcs", "fourier_pcs"):
            if getattr(self, name) < 2:
                raise ConfigError(name, "at least 2 principal components are needed for a plane")
        if self.grid < 8 or self.grid % 2:
            raise ConfigError("grid", "the phase grid needs an even number of at least 8 points")
        if not self.alphas or min(self.alphas) <= 0:
            raise ConfigError("alphas", "ridge penalties must be positive")
        if self.continuity_window < 1:
            raise ConfigError("continuity_window", "needs at least 1 token")
        if self.workers is not None and self.scheduler is not None:
            raise ConfigError("workers", "give --workers (a local cluster) or --scheduler, not both")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers", "must be at least 1")
        for name in ("batch_size", "n_bootstrap", "max_scatter"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.figure_format not in FIGURE_FORMATS:
            raise ConfigError(
                "figure_format", f"use one of {', '.join(FIGURE_FORMATS)}, not {self.figure_format!r}"
            )
        if not 30 <= self.dpi <= 1200:
            raise ConfigError("dpi", f"must be between 30 and 1200, not {self.dpi}")

    @property
    def other_scheme(self) -> PhaseScheme:
        return PHASE_SCHEMES[1 - PHASE_SCHEMES.index(self.phase_scheme)]

    def rng(self, purpose: str) -> np.random.Generator:
        """An independent seeded stream per purpose, so adding one draw never shifts another."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])

    def to_json(self) -> dict:
        return asdict(self)
