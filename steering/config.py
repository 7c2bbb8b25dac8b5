"""What one `turnphase steer` run does, as one typed config (the CLI parses straight into it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from turnphase.analysis.config import AnalysisConfig, FigureFormat, check_figure_options
from turnphase.builders.conversations import GenerationSettings
from turnphase.builders.errors import ConfigError
from turnphase.builders.layers import Spec, parse_layers
from turnphase.steering.confirm import Hypothesis

Setting = Literal["start", "mid"]
SETTINGS: tuple[Setting, ...] = ("start", "mid")
Centre = Literal["readout", "mean"]
CENTRES: tuple[Centre, ...] = ("readout", "mean")
# Where the edit is while next_user is read: on the last prompt token and the turn, as while the turn
# was written ("turn": what the steered turn left in the context), or also on the chat template's end
# of turn and header after it ("all": as steering that stays on would be; the header's own state is
# then edited too)
NextUserEdit = Literal["turn", "all"]
NEXT_USER_EDITS: tuple[NextUserEdit, ...] = ("turn", "all")
PHASE_PLANES = ("trig", "fourier")  # the planes rotated and ablated (directions.py plane/<name>)
MIN_RANDOM = 2  # below this no spread; 20 or more for the reported runs (the default)
ALL_FOLDS = "all"  # config.fold: every fold's held-out prompts, each with its own fold's directions


def parse_fold(value: str | int) -> int | str:
    """config.fold (--fold): an analysis fold (0, 1, ...) or "all" (cross-fitted)."""
    if value == ALL_FOLDS:
        return ALL_FOLDS
    try:
        fold = int(value)
    except (TypeError, ValueError):
        fold = -1
    if fold < 0 or isinstance(value, bool | float):
        raise ConfigError("fold", f"takes a fold number (0 or more) or {ALL_FOLDS!r}, not {value!r}")
    return fold


def contrast_name(kind: str, target: str, a: float) -> str:
    """The name of an edit's sign contrast at strength a: "add probe/linear ±0.5",
    "rotate plane/fourier ±90"."""
    return f"{kind} {target} ±{a:g}"


def same_both_ways(theta: float) -> bool:
    """A turn by +theta is the turn by -theta (a half turn, a whole one): it has no sign contrast."""
    return theta % 180 == 0


def contrast_parts(name: str) -> list[str] | None:
    """The two conditions a sign contrast's name stands for (+a, -a); None for a condition's name."""
    head, sign, a = name.rpartition(" ±")
    return [f"{head} +{a}", f"{head} -{a}"] if sign else None


def _same_both_ways(contrast: str) -> bool:
    """A rotation's sign contrast ("rotate plane/trig ±180") at an angle that is one edit both ways."""
    try:
        return same_both_ways(float(contrast.rpartition("±")[2]))
    except ValueError:  # not a number: no condition has that name (refused when the conditions are made)
        return False


def numbers(name: str, values, kind=float) -> list:
    """Each value as `kind`, or ConfigError naming the field."""
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(
            name, f"takes numbers separated by commas, not {','.join(map(str, values))!r}"
        ) from None


@dataclass
class SteerConfig:
    # What to read
    dataset: str  # dataset folder or Hub id: prompts and the model's identity
    report: str  # `turnphase analyze` output folder (or its directions.safetensors)
    layers: Spec | str  # the one layer grammar (builders/layers.py); auto/all: the report's layers
    revision: str | None = None  # the dataset's Hub branch, tag or commit
    model: str | None = None  # None: the dataset's model, from its provenance
    force: bool = False  # steer a model whose weights hash differs from the dataset's

    # Prompts: held-out conversations of one analysis fold, at the start of each assistant turn
    # (`start`) and cut partway into it (`mid`, after `cut` of its tokens); ALL_FOLDS: every fold's,
    # each prompt steered with the directions of the fold that held its conversation out
    # (cross-fitted: up to folds x as many prompts, none seen by the directions that steer it)
    fold: int | str = 0
    settings: list[Setting] = field(default_factory=lambda: list(SETTINGS))
    cut: float = 0.5
    max_prompts: int = 16  # per setting, a seeded sample when there are more

    # Generation (sampling as the build's assistant turns)
    max_new_tokens: int = 48  # a turn's budget: decoding is the cost of every condition
    temperature: float = GenerationSettings.temperature
    top_p: float = GenerationSettings.top_p
    seed: int = 0
    batch_size: int = 64  # prompts per generate call (sampling is seeded per call, so it is part of the run)

    # Interventions: each magnitude with both signs / directions
    add: list[float] = field(default_factory=lambda: [0.05, 0.2])  # a, in units of |h|
    rotate: list[float] = field(default_factory=lambda: [90.0])  # degrees
    # The point a phase plane turns about: where its readout reads zero (its phase estimate's centre:
    # +theta moves the estimate forward everywhere), or the training mean's projection (the only
    # centre in steer_version 1; the readout reads it as the mean target, not zero, so some positions
    # barely turn). Random planes and the scrambled null's turn about the training mean either way.
    rotate_about: Centre = "readout"
    n_random: int = 20  # random directions and planes per strength
    # Also a size-matched control for each rotation and ablation: n_random random directions, each
    # moving h, position by position, as far as that condition's edit does (conditions.py)
    matched_controls: bool = False
    # Also random draws at the other sign, and each edit's sign contrast: an added direction's effect
    # at +a minus at -a against the random directions' (+u minus -u), a plane's at +theta minus at
    # -theta against the random planes' and (with matched_controls) the size-matched directions'
    # two signs: does the edit's sign matter more than a random one's does (conditions.py)
    sign_controls: bool = False
    # Also, for each phase plane turned about its readout's zero, n_random random planes turned by
    # the same angle about a point as far from the training mean (conditions.py)
    offset_controls: bool = False
    only: list[str] | None = None  # run only these conditions (names), and the draws they are compared with
    # Confirmatory tests (confirm.py): hypotheses fixed before the run, each at alpha / (hypotheses x layers);
    # they choose the settings and conditions run, and turn the size-matched controls on (and the sign
    # controls, for a hypothesis on a sign contrast: "add probe/linear ±0.5")
    confirm: list[Hypothesis] | None = None
    alpha: float = 0.05  # the confirmatory tests' family-wise level
    kl_tokens: int = 32  # positions of the unsteered text the KL divergence is averaged over
    next_user_edit: NextUserEdit = "turn"  # NEXT_USER_EDITS: where the edit is when next_user is read
    n_bootstrap: int = 1000

    out: Path | None = None
    overwrite: bool = False
    figure_format: FigureFormat = AnalysisConfig.figure_format
    dpi: int = AnalysisConfig.dpi

    def __post_init__(self) -> None:
        self.add, self.rotate = numbers("add", self.add), numbers("rotate", self.rotate)
        for name in ("add", "rotate"):
            grid = getattr(self, name)
            if not grid or any(not math.isfinite(a) or a <= 0 for a in grid):
                raise ConfigError(name, "give positive numbers (each is used with both signs)")
        self.layers = parse_layers(self.layers)  # auto/all: every layer of the report
        if self.rotate_about not in CENTRES:
            raise ConfigError("rotate_about", f"choose from {', '.join(CENTRES)}")
        if self.offset_controls and self.rotate_about != "readout":
            raise ConfigError(
                "offset_controls", "are for planes turned about their readout's zero (--rotate-about readout)"
            )
        if self.next_user_edit not in NEXT_USER_EDITS:
            raise ConfigError("next_user_edit", f"choose from {', '.join(NEXT_USER_EDITS)}")
        if not self.settings or any(s not in SETTINGS for s in self.settings):
            raise ConfigError("settings", f"choose from {', '.join(SETTINGS)}")
        self.fold = parse_fold(self.fold)
        if not 0 < self.cut < 1:
            raise ConfigError("cut", "must be between 0 and 1 (the share of the assistant turn kept)")
        if self.only is not None and not self.only:
            raise ConfigError("only", "name at least one condition")
        if not 0 < self.alpha < 1:
            raise ConfigError("alpha", f"must be between 0 and 1, got {self.alpha}")
        if self.confirm is not None:
            if not self.confirm:
                raise ConfigError("confirm", "name at least one hypothesis")
            if self.only is not None:
                raise ConfigError("only", "--only and --confirm both choose the conditions run; give one")
            self.confirm = [Hypothesis.of(h, self.settings) for h in self.confirm]
            if len(set(self.confirm)) < len(self.confirm):
                raise ConfigError("confirm", "names a hypothesis twice")
            self.settings = [s for s in SETTINGS if any(h.setting == s for h in self.confirm)]
            self.matched_controls = True
            contrasts = [h.condition for h in self.confirm if contrast_parts(h.condition)]
            if bad := [c for c in contrasts if not c.startswith(("add ", "rotate "))]:
                raise ConfigError(
                    "confirm",
                    f"{bad[0]!r}: a sign contrast (±) is of an added direction or a rotated plane, "
                    "'add TARGET ±a' or 'rotate TARGET ±theta'",
                )
            if same := [c for c in contrasts if c.startswith("rotate ") and _same_both_ways(c)]:
                raise ConfigError(
                    "confirm",
                    f"{same[0]!r}: a turn by +theta is here the turn by -theta; nothing to contrast",
                )
            self.sign_controls = self.sign_controls or bool(contrasts)
        if self.n_random < MIN_RANDOM:
            raise ConfigError("n_random", f"must be at least {MIN_RANDOM} (20 or more for a reported result)")
        for name in ("max_prompts", "max_new_tokens", "kl_tokens", "n_bootstrap", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if not 0 < self.temperature <= 5:
            raise ConfigError("temperature", "must be in (0, 5]")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", "must be in (0, 1]")
        check_figure_options(self.figure_format, self.dpi)

    def chosen_names(self, setting: str | None = None) -> list[str] | None:
        """The conditions to run in a setting, or in any (None: all of them)."""
        if self.confirm is None:
            return self.only
        named = [h.condition for h in self.confirm if setting in (None, h.setting)]
        return list(dict.fromkeys(n for name in named for n in contrast_parts(name) or [name]))

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
