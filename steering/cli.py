"""`turnphase steer`: the causal test. Steer the dataset's model along the phase directions an
analysis found, against random directions, and measure how its assistant turns end."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from turnphase.analysis.cli import add_figure_arguments
from turnphase.steering.config import CENTRES, NEXT_USER_EDITS, SETTINGS, SteerConfig
from turnphase.steering.measures import OUTCOMES


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SteerConfig("", "", [0])
    p.add_argument("dataset", help="dataset folder or Hub id (prompts, and the model's identity)")
    p.add_argument(
        "--report", required=True, help="`turnphase analyze` output folder (directions.safetensors)"
    )
    p.add_argument(
        "--layers",
        required=True,
        help="layers to steer: 19, 17,19, 17-19, or all (the report's); ~40 min each",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for steer.json, turns.parquet, figures and summary.txt",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--model", default=None, help="default: the dataset's model, from its provenance")
    p.add_argument(
        "--force", action="store_true", help="steer a model whose weights differ from the dataset's"
    )
    p.add_argument("--revision", default=None, help="the dataset's Hub branch, tag or commit")
    p.add_argument(
        "--fold",
        type=str,
        default=d.fold,
        help="analysis fold: its directions, its held-out prompts; or all: every fold's held-out prompts, "
        "each steered with its own fold's directions (cross-fitted; raise --prompts to use them)",
    )
    p.add_argument(
        "--settings",
        type=_list,
        default=d.settings,
        help=f"prompts, any of {','.join(SETTINGS)}: at the start of each assistant turn, or partway into it",
    )
    p.add_argument(
        "--cut",
        type=float,
        default=d.cut,
        help="share of the assistant turn kept in `mid` prompts",
    )
    p.add_argument(
        "--prompts",
        dest="max_prompts",
        type=int,
        default=d.max_prompts,
        help="prompts per setting",
    )
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="token budget of a turn")
    p.add_argument("--add", type=_list, default=d.add, help="a grid, each used with both signs")
    p.add_argument("--rotate", type=_list, default=d.rotate, help="angle grid in degrees, both ways")
    p.add_argument(
        "--rotate-about",
        choices=CENTRES,
        default=d.rotate_about,
        help="the point a phase plane turns about: where its readout reads zero (default), or the "
        "training mean (steer_version 1: every run before the README's 'Rotations about the readout's zero')",
    )
    p.add_argument(
        "--next-user-edit",
        choices=NEXT_USER_EDITS,
        default=d.next_user_edit,
        help="where the edit is when next_user is read: on the turn only, as it was written (default), "
        "or also on the template's end of turn and header after it, as steering that stays on would be",
    )
    p.add_argument(
        "--random",
        dest="n_random",
        type=int,
        default=d.n_random,
        help="random directions and planes per strength",
    )
    p.add_argument(
        "--matched-controls",
        action="store_true",
        help="also, per rotation and ablation, random directions moving h as far as that edit does",
    )
    p.add_argument(
        "--offset-controls",
        action="store_true",
        help="also, per phase plane turned about its readout's zero, random planes turned by the same "
        "angle about a point as far from the training mean",
    )
    p.add_argument(
        "--sign-controls",
        action="store_true",
        help="also the random draws at the other sign, and each edit run at both signs' contrast (+a minus -a, "
        "+theta minus -theta) against theirs",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        default=d.only,
        help='run only these conditions ("rotate plane/trig +90", "ablate plane/fourier", ...) and their controls',
    )
    p.add_argument(
        "--confirm",
        nargs=4,
        action="append",
        metavar=("SETTING", "CONDITION", "MEASURE", "DIRECTION"),
        help='a hypothesis fixed before the run, e.g. --confirm start "ablate plane/trig" length lower '
        f"(MEASURE: {', '.join(OUTCOMES)}; DIRECTION: lower, higher), or on a sign contrast, "
        '"add probe/linear ±0.5" or "rotate plane/fourier ±90" (+-90); repeat for more; runs only '
        "these, with size-matched controls (and offset ones with --offset-controls), each at --alpha / "
        "(hypotheses x layers)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help="family-wise level of the --confirm tests (Bonferroni)",
    )
    p.add_argument(
        "--kl-tokens",
        type=int,
        default=d.kl_tokens,
        help="positions of unsteered text for the KL",
    )
    p.add_argument(
        "--bootstrap",
        dest="n_bootstrap",
        type=int,
        default=d.n_bootstrap,
        help="resamples for the intervals",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="sampling, prompt sample and random draws")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts per generate call")
    add_figure_arguments(p)


def config_from(args: argparse.Namespace) -> SteerConfig:
    """The config; a bad value raises ConfigError naming its field (the CLI shows the flag)."""
    # every option's dest is the SteerConfig field it sets (the dataset is positional)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SteerConfig) if hasattr(args, f.name)}
    return SteerConfig(**given)


def run(args: argparse.Namespace) -> int:
    from turnphase.steering.run import steer

    steer(config_from(args))
    return 0
