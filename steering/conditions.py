"""The conditions of one steering run: the phase directions and planes, their nulls, random controls.

    add     probe/linear (u: the linear probe's direction, toward a later phase) at +-a;
            the scrambled null's linear probe at +-a; random unit directions at a
    rotate  plane/trig and plane/fourier at +-theta (+: toward a later phase, the end of the turn);
            the scrambled null's trig plane at +-theta; random planes at theta
    ablate  the linear direction, the trig and the Fourier plane, the scrambled null's direction;
            random directions and random planes
    matched (config.matched_controls) for each rotation and ablation above: random directions, each
            moving h at every position as far as that condition's edit does (edits.Matched). A random
            plane holds less of h than a phase plane, so its rotation or ablation is a smaller edit;
            these controls separate "this plane" from "this much change". A rotation by -theta
            moves h exactly as far as the one by +theta, so the two share one family
            ("matched rotate plane/trig ±90", drawn with the +theta edit)
    sign    (config.sign_controls) the random draws at the other sign. An add's: the random
            directions of each `add a` family again at -a: a pair
            (+u, -u) per draw, so each added direction's sign contrast, its effect at +a minus at
            -a, can be read against the random directions' (run.py `sign_contrasts`). One sign of
            a random draw stands for the other as a control of a single condition, but a
            direction's two signs also differ by chance; a phase direction should push the turn
            one way at +a and the other at -a by more than that. A rotation's: the random planes of
            each `rotate theta` family again at -theta (each plane's +theta minus -theta), and,
            where a rotation by -theta has size-matched draws, those draws again along -u
            (`mirrored`): with the +theta rotation's draws along u they make a random direction's
            two signs, each moving h as far as the rotation does (a turn moves h as far either
            way). A clock hand turned toward the end of the turn should end it sooner than one
            turned back, by more than a plane's or a direction's two signs differ by chance. None
            at a half or whole turn, the same edit both ways
    offset  (config.offset_controls, rotations about the readout's zero) for each phase plane and
            angle: the random planes, each turned by that angle about a point as far from the
            training mean (in that plane, at a random angle) as the phase plane's readout zero is
            from it, so that a position at the mean moves exactly as far as under the phase plane's
            rotation (a turn about a point far off the data is nearly a push of the data by a fixed
            vector; the size-matched draws take an edit's size, these its form too). One family
            serves both signs, as a random plane turned by -theta is one turned by +theta

A phase plane turns about the point its readout reads as zero (config.rotate_about "readout"), so
+theta moves its phase estimate forward at every position; or, with "mean", about the fold's
training mean (its projection on the plane), as a random plane, which has no readout, and the
scrambled null's trig plane, whose readout reads nothing (fitted to shuffled labels), always do.
Every ablation sets the component to the training mean's. How large each edit is in the end
(|edit(h) - h| / |h|) is measured (measures.py `edit_size`). A random control's sign or orientation
means nothing (u and -u are equally likely), so one set of random draws at each magnitude is the
control for both signs. Every condition in a `family` is compared with that family's random draws.
The random directions and planes are drawn once per layer (seeded by the run's seed and the layer)
and shared: the same directions at every strength and sign, for ablation and as the size-matched
controls, in every setting. The families are therefore paired, not independent nulls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turnphase.analysis.directions import FoldDirections
from turnphase.builders.errors import ConfigError
from turnphase.steering.config import PHASE_PLANES, SteerConfig, contrast_name, same_both_ways
from turnphase.steering.confirm import OWN_CONTROLS
from turnphase.steering.edits import (
    Ablate,
    Add,
    Matched,
    Readout,
    Rotate,
    plane_basis,
    random_directions,
    random_offsets,
    random_planes,
    unit,
)


@dataclass
class Condition:
    name: str  # "add probe/linear +0.1", "rotate plane/trig -90", "random add 0.1 #3", ...
    kind: str  # add, rotate, ablate
    # probe/linear, plane/trig, plane/fourier, scrambled/...; a draw: random/direction, random/plane,
    # random/matched, random/offset-plane
    target: str
    strength: float  # a (add), degrees (rotate), 0 (ablate)
    family: str  # the random family it is compared with: "add 0.1", "rotate 90", "ablate plane", ...
    edit: object
    # its size-matched random family, if any: "matched ablate plane/trig", "matched rotate
    # plane/trig ±90" (a rotation's two signs share it)
    matched: str | None = None
    # (an add or a rotation, with sign controls) the family of its random draws at the other sign:
    # "add -<a>", "rotate -<theta>"
    opposite: str | None = None
    # (a rotation by -theta, with sign and size-matched controls) its size-matched draws along -u,
    # the other sign of the shared ones ("mirrored matched rotate plane/trig ±90")
    mirrored: str | None = None
    offset: str | None = None  # (a phase plane's rotation) its offset planes' family, if any
    index: int = 0  # its place among all the run's conditions (seeds its bootstrap), filtered or not

    @property
    def is_random(self) -> bool:
        return self.target.startswith("random/")


def conditions(
    found: FoldDirections, d_model: int, config: SteerConfig, layer: int, setting: str | None = None
) -> list[Condition]:
    """Every condition of the run at this layer, or those `config` chooses for `setting`."""
    real, null = found.readouts["real"], found.readouts["scrambled"]
    mean = torch.from_numpy(found.mean).float()
    directions = {
        "probe/linear": unit(real["probe/linear"].weight),
        "scrambled/probe/linear": unit(null["probe/linear"].weight),
    }
    fitted = {f"plane/{p}": real[f"plane/{p}"] for p in PHASE_PLANES} | {
        "scrambled/plane/trig": null["plane/trig"]
    }
    planes = {target: plane_basis(r.weight) for target, r in fitted.items()}
    readouts = {target: Readout.of(planes[target], r.weight, r.bias) for target, r in fitted.items()}
    # a phase plane turns about its readout's zero; the scrambled null's readout was fitted to
    # shuffled labels and reads nothing, so its zero is arbitrary (at SmolLM2's layer 19 about 80
    # units from the training mean, several in-plane sd): it turns about the mean, as a random plane does
    centres = {
        target: readouts[target].zero()
        if config.rotate_about == "readout" and not target.startswith("scrambled/")
        else q.T @ mean
        for target, q in planes.items()
    }
    seed = config.seed * 1000 + layer
    random_u = random_directions(config.n_random, d_model, seed)
    random_q = random_planes(config.n_random, d_model, seed)

    out = []
    for a in config.add:
        family = f"add {a:g}"
        opposite = f"add {-a:g}" if config.sign_controls else None
        for target, u in directions.items():
            out += [
                Condition(
                    f"add {target} {s * a:+g}", "add", target, s * a, family, Add(u, s * a), opposite=opposite
                )
                for s in (1, -1)
            ]
        out += [
            Condition(f"random add {a:g} #{i}", "add", "random/direction", a, family, Add(u, a))
            for i, u in enumerate(random_u)
        ]
    for theta in config.rotate:
        family = f"rotate {theta:g}"
        opposite = f"rotate {-theta:g}" if config.sign_controls and not same_both_ways(theta) else None
        for target, q in planes.items():
            out += [
                Condition(
                    f"rotate {target} {s * theta:+g}",
                    "rotate",
                    target,
                    s * theta,
                    family,
                    Rotate(q, centres[target], s * theta, readouts[target]),
                    opposite=opposite,
                )
                for s in (1, -1)
            ]
        out += [
            Condition(
                f"random rotate {theta:g} #{i}",
                "rotate",
                "random/plane",
                theta,
                family,
                Rotate(q, q.T @ mean, theta),
            )
            for i, q in enumerate(random_q)
        ]
    for target, u in directions.items():
        out.append(
            Condition(f"ablate {target}", "ablate", target, 0.0, "ablate direction", Ablate(u[:, None], mean))
        )
    for p in PHASE_PLANES:
        target = f"plane/{p}"
        out.append(
            Condition(f"ablate {target}", "ablate", target, 0.0, "ablate plane", Ablate(planes[target], mean))
        )
    out += [
        Condition(
            f"random ablate direction #{i}",
            "ablate",
            "random/direction",
            0.0,
            "ablate direction",
            Ablate(u[:, None], mean),
        )
        for i, u in enumerate(random_u)
    ]
    out += [
        Condition(f"random ablate plane #{i}", "ablate", "random/plane", 0.0, "ablate plane", Ablate(q, mean))
        for i, q in enumerate(random_q)
    ]
    if config.matched_controls:
        drawn = set()
        for cond in [c for c in out if not c.is_random and c.kind in ("rotate", "ablate")]:
            cond.matched = f"matched {shared_name(cond)}"
            if cond.matched in drawn:  # -theta: the +theta rotation's draws move h as far
                continue
            drawn.add(cond.matched)
            out += [
                Condition(
                    f"random {cond.matched} #{i}",
                    cond.kind,
                    "random/matched",
                    cond.strength,
                    cond.matched,
                    Matched(cond.edit, u),
                )
                for i, u in enumerate(random_u)
            ]
    if config.sign_controls:  # last, so that every other condition keeps its place (its seeds)
        for a in config.add:
            opposite = f"add {-a:g}"
            out += [
                Condition(f"random {opposite} #{i}", "add", "random/direction", -a, opposite, Add(u, -a))
                for i, u in enumerate(random_u)
            ]
        for theta in [t for t in config.rotate if not same_both_ways(t)]:
            opposite = f"rotate {-theta:g}"
            out += [
                Condition(
                    f"random {opposite} #{i}",
                    "rotate",
                    "random/plane",
                    -theta,
                    opposite,
                    Rotate(q, q.T @ mean, -theta),
                )
                for i, q in enumerate(random_q)
            ]
        for cond in [c for c in out if c.opposite and c.kind == "rotate" and c.matched and c.strength < 0]:
            cond.mirrored = f"mirrored {cond.matched}"
            out += [
                Condition(
                    f"random {cond.mirrored} #{i}",
                    "rotate",
                    "random/matched",
                    cond.strength,
                    cond.mirrored,
                    Matched(cond.edit, -u),
                )
                for i, u in enumerate(random_u)
            ]
    if config.offset_controls:  # last again: the other conditions keep their places
        offsets = random_offsets(config.n_random, seed)
        for theta in config.rotate:
            for target in [f"plane/{p}" for p in PHASE_PLANES]:
                family = f"offset rotate {target} {theta:g}"
                for cond in out:
                    if cond.kind == "rotate" and cond.target == target and abs(cond.strength) == theta:
                        cond.offset = family
                far = float(torch.linalg.norm(centres[target] - planes[target].T @ mean))
                out += [
                    Condition(
                        f"random {family} #{i}",
                        "rotate",
                        "random/offset-plane",
                        theta,
                        family,
                        Rotate(q, q.T @ mean + far * w, theta),
                    )
                    for i, (q, w) in enumerate(zip(random_q, offsets, strict=True))
                ]
    for i, cond in enumerate(out):
        cond.index = i
    names = config.chosen_names(setting)
    return out if names is None else select(out, names, "confirm" if config.confirm else "only")


def shared_name(cond: Condition) -> str:
    """The name a condition's size-matched family is made from: a rotation's two signs move h
    equally far at every position (|(R(theta) - I) c| = 2 |sin(theta / 2)| |c|), so they share
    one family ("rotate plane/trig ±90"); an ablation's is its own name."""
    if cond.kind == "rotate":
        return contrast_name(cond.kind, cond.target, abs(cond.strength))
    return cond.name


def select(out: list[Condition], names: list[str], field: str = "only") -> list[Condition]:
    """The named conditions and the random draws they are compared with (their families)."""
    real = {c.name: c for c in out if not c.is_random}
    if missing := [n for n in names if n not in real]:
        raise ConfigError(field, f"no condition named {missing[0]!r}; the conditions are: {', '.join(real)}")
    named = [real[n] for n in names]
    keep = {id(c) for c in named}
    # the draws at the other sign only where both signs of an edit run (its sign contrast needs them)
    signs = {(c.kind, c.target, c.strength) for c in named}
    paired = [c for c in named if c.opposite and (c.kind, c.target, -c.strength) in signs]
    families = (
        {c.family for c in named}
        | {getattr(c, own) for c in named for own in OWN_CONTROLS if getattr(c, own)}
        | {c.opposite for c in paired}
        | {c.mirrored for c in paired if c.mirrored}
    )
    return [c for c in out if id(c) in keep or (c.is_random and c.family in families)]
