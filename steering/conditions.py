"""The conditions of one steering run: the phase directions and planes, their nulls, random controls.

    add     probe/linear (u: the linear probe's direction, toward a later phase) at +-a;
            the scrambled null's linear probe at +-a; random unit directions at a
    rotate  plane/trig and plane/fourier at +-theta (+: toward a later phase, the end of the turn);
            the scrambled null's trig plane at +-theta; random planes at theta
    ablate  the linear direction, the trig and the Fourier plane (to the training mean); random
            directions and random planes

A random control's sign or orientation means nothing (u and -u are equally likely), so one set of
random draws at each magnitude is the control for both signs. Every condition in a `family` is
compared with that family's random draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turnphase.analysis.directions import FoldDirections
from turnphase.steering.config import PLANES, SteerConfig
from turnphase.steering.edits import Ablate, Add, Rotate, plane_basis, random_directions, random_planes, unit


@dataclass
class Condition:
    name: str  # "add probe/linear +0.1", "rotate plane/trig -45", "random add 0.1 #3", ...
    kind: str  # add, rotate, ablate
    target: str  # probe/linear, plane/trig, plane/fourier, scrambled/..., random/direction, random/plane
    strength: float  # a (add), degrees (rotate), 0 (ablate)
    family: str  # the random family it is compared with: "add 0.1", "rotate 45", "ablate plane", ...
    edit: object

    @property
    def is_random(self) -> bool:
        return self.target.startswith("random/")


def _signed(x: float) -> str:
    return f"{x:+g}"


def conditions(found: FoldDirections, d_model: int, config: SteerConfig, layer: int) -> list[Condition]:
    real, null = found.readouts["real"], found.readouts["scrambled"]
    mean = torch.from_numpy(found.mean).float()
    u = {
        "probe/linear": unit(real["probe/linear"].weight),
        "scrambled/probe/linear": unit(null["probe/linear"].weight),
    }
    planes = {f"plane/{p}": plane_basis(real[f"plane/{p}"].weight, real[f"plane/{p}"].bias) for p in PLANES}
    planes["scrambled/plane/trig"] = plane_basis(null["plane/trig"].weight, null["plane/trig"].bias)
    seed = config.seed * 1000 + layer
    dirs, basis = (
        random_directions(config.n_random, d_model, seed),
        random_planes(config.n_random, d_model, seed),
    )

    out = []
    for a in config.add:
        for target, v in u.items():
            out += [
                Condition(f"add {target} {_signed(s * a)}", "add", target, s * a, f"add {a:g}", Add(v, s * a))
                for s in (1, -1)
            ]
        out += [
            Condition(f"random add {a:g} #{i}", "add", "random/direction", a, f"add {a:g}", Add(v, a))
            for i, v in enumerate(dirs)
        ]
    for theta in config.rotate:
        for target, (q, c) in planes.items():
            out += [
                Condition(
                    f"rotate {target} {_signed(s * theta)}",
                    "rotate",
                    target,
                    s * theta,
                    f"rotate {theta:g}",
                    Rotate(q, c, s * theta),
                )
                for s in (1, -1)
            ]
        out += [
            Condition(
                f"random rotate {theta:g} #{i}",
                "rotate",
                "random/plane",
                theta,
                f"rotate {theta:g}",
                Rotate(q, q.T @ mean, theta),
            )
            for i, q in enumerate(basis)
        ]
    out.append(
        Condition(
            "ablate probe/linear",
            "ablate",
            "probe/linear",
            0.0,
            "ablate direction",
            Ablate(u["probe/linear"][:, None], mean),
        )
    )
    for p in PLANES:
        out.append(
            Condition(
                f"ablate plane/{p}",
                "ablate",
                f"plane/{p}",
                0.0,
                "ablate plane",
                Ablate(planes[f"plane/{p}"][0], mean),
            )
        )
    out += [
        Condition(
            f"random ablate direction #{i}",
            "ablate",
            "random/direction",
            0.0,
            "ablate direction",
            Ablate(v[:, None], mean),
        )
        for i, v in enumerate(dirs)
    ]
    out += [
        Condition(f"random ablate plane #{i}", "ablate", "random/plane", 0.0, "ablate plane", Ablate(q, mean))
        for i, q in enumerate(basis)
    ]
    return out
