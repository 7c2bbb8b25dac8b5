"""What one `turnphase analyze` run does, as one typed config (the CLI parses straight into it).

Saved into `report.json` under `config`, so a report says how it was made.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

SplitKind = Literal["conversation", "token"]
PhaseScheme = Literal["phase", "phase_round"]
PHASE_SCHEMES: tuple[PhaseScheme, ...] = ("phase", "phase_round")


def default_alphas() -> list[float]:
    # Ridge penalties from negligible to dominant for activation Gram matrices of 10^3..10^6 tokens.
    return [float(a) for a in np.logspace(-2, 6, 17)]


@dataclass
class AnalysisConfig:
    # What to read
    source: str  # dataset folder or Hub dataset id
    revision: str | None = None  # Hub branch, tag or commit (Hub ids only)
    layers: list[int] | None = None  # None: every layer the dataset holds
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

    # Output
    batch_size: int = 4096  # activation rows per accumulation step: bounds memory, not results
    max_scatter: int = 3000  # points per scatter figure

    def __post_init__(self) -> None:
        if self.split not in ("conversation", "token"):
            raise ValueError(f"split must be 'conversation' or 'token', not {self.split!r}")
        if self.phase_scheme not in PHASE_SCHEMES:
            raise ValueError(f"phase scheme must be 'phase' or 'phase_round', not {self.phase_scheme!r}")
        if self.folds < 3:
            raise ValueError("at least 3 folds are needed: one held out, two to choose the ridge penalty on")
        if self.n_pcs < 2 or self.fourier_pcs < 2:
            raise ValueError("at least 2 principal components are needed for a plane")
        if self.grid < 8 or self.grid % 2:
            raise ValueError("the phase grid needs an even number of at least 8 points")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError("ridge penalties must be positive")
        if self.continuity_window < 1:
            raise ValueError("the continuity window needs at least 1 token")
        if self.batch_size < 1 or self.n_bootstrap < 1 or self.max_scatter < 1:
            raise ValueError("batch size, bootstrap resamples and scatter size must be positive")

    @property
    def other_scheme(self) -> PhaseScheme:
        return PHASE_SCHEMES[1 - PHASE_SCHEMES.index(self.phase_scheme)]

    def rng(self, purpose: str) -> np.random.Generator:
        """An independent seeded stream per purpose, so adding one draw never shifts another."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])

    def to_json(self) -> dict:
        return asdict(self)
