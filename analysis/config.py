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
    phase_scheme: PhaseScheme = "phase"  # the study's per-turn scheme, or linear across the round
    exclude_template: bool = False  # drop chat-template markup tokens from every analysis

    # Split and control
    split: SplitKind = "conversation"  # held-out unit: whole conversations, or tokens as the study did
    test_fraction: float = 0.2
    cv_folds: int = 5  # folds of the training part, for choosing the ridge penalty
    seed: int = 0  # split, scrambled permutation, bootstrap and figure subsamples
    alphas: list[float] = field(default_factory=default_alphas)
    n_bootstrap: int = 1000  # resamples of test conversations for the 95% intervals

    # PCA + Fourier
    n_pcs: int = 16  # principal components kept for the Fourier analysis
    grid: int = 64  # uniform phase points each round is resampled onto

    # Output
    batch_size: int = 4096  # activation rows per accumulation step: bounds memory, not results
    max_scatter: int = 3000  # points per scatter figure

    def __post_init__(self) -> None:
        if self.split not in ("conversation", "token"):
            raise ValueError(f"split must be 'conversation' or 'token', not {self.split!r}")
        if self.phase_scheme not in ("phase", "phase_round"):
            raise ValueError(f"phase scheme must be 'phase' or 'phase_round', not {self.phase_scheme!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError("test fraction must lie strictly between 0 and 1")
        if self.cv_folds < 2:
            raise ValueError("at least 2 cross-validation folds are needed to choose a ridge penalty")
        if self.n_pcs < 2:
            raise ValueError("at least 2 principal components are needed for a pair")
        if self.grid < 4 or self.grid % 2:
            raise ValueError("the phase grid needs an even number of at least 4 points")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError("ridge penalties must be positive")
        if self.batch_size < 1 or self.n_bootstrap < 1 or self.max_scatter < 1:
            raise ValueError("batch size, bootstrap resamples and scatter size must be positive")

    @property
    def n_parts(self) -> int:
        """CV folds of the training part, then the test part."""
        return self.cv_folds + 1

    @property
    def test_part(self) -> int:
        return self.cv_folds

    def rng(self, purpose: str) -> np.random.Generator:
        """An independent seeded stream per purpose, so adding one draw never shifts another."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])

    def to_json(self) -> dict:
        return asdict(self)
