"""Benchmark steered against unsteered batched generation; every ratio is measured within this run.

    .venv/bin/python scripts/bench_steer.py                              # data/smollm2 + report/smollm2
    .venv/bin/python scripts/bench_steer.py --prompts 16 --new-tokens 48 --repeats 3

Same prompts (the `mid` prompts `turnphase steer` uses, from the report's fold 0), same seeds, the
same cached prompt keys and values; each repeat runs every variant once, in turn:

    plain      transformers' generate alone (the reference a zero edit reproduces)
    nnsight    the same through nnsight's generate, no edit (the tracing overhead alone)
    add        h + a |h| u at the layer, every generated position (u the linear probe)
    rotate     the trig plane turned by 90 degrees

tokens/s = rows x decoding steps run / wall time (a step costs the same whether or not a row has
already ended). Target: steered / unsteered (plain) >= 0.8 for add and rotate.

Then the `next_user` measure's cost on top of `rotate`, read the two ways (same repeats, in turn):
by a second forward over each prompt's turn and header (`Steerer.next_user`), and off the keys and
values the generation left in its cache (`generate(..., next_user=True)`; its reading timed on its
own by wrapping `Steerer._next_user_cached`), with the largest difference between the two readings
(they must agree to float tolerance).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from turnphase.analysis.directions import Directions
from turnphase.analysis.source import DatasetSource
from turnphase.builders.model import load_model
from turnphase.steering.edits import Add, Rotate, plane_basis, unit
from turnphase.steering.generate import Generation, Steerer
from turnphase.steering.prompts import conversations, make_prompts

TARGET = 0.8


def steps_run(gen: Generation) -> int:
    return int((~np.isnan(gen.p_end)).sum(1).max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="data/smollm2")
    p.add_argument("--report", default="report/smollm2")
    p.add_argument("--layer", type=int, default=19)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    directions = Directions.load(args.report)
    src = DatasetSource.open(args.dataset)
    loaded = load_model(None, layers="all")
    chats = conversations(src, directions.held_out(0))
    prompts = make_prompts(loaded.tokenizer, chats, "mid", 0.5, args.prompts, 0)
    found = directions.layers[args.layer].folds[0].readouts["real"]
    mean = torch.from_numpy(directions.layers[args.layer].folds[0].mean).float()
    q = plane_basis(found["plane/trig"].weight)
    variants = {
        "plain": (None, True),
        "nnsight": (None, False),
        "add": (Add(unit(found["probe/linear"].weight), 0.05), False),
        "rotate": (Rotate(q, q.T @ mean, 90.0), False),
    }
    steerer = Steerer(
        loaded.model,
        loaded.tokenizer,
        [p.ids for p in prompts],
        args.layer,
        max_new_tokens=args.new_tokens,
        temperature=0.7,
        top_p=0.9,
    )
    rate: dict[str, list[float]] = {name: [] for name in variants}
    rotate = variants["rotate"][0]
    seconds: dict[str, list[float]] = {
        "rotate": [],
        "forward": [],
        "cache": [],
        "with forward": [],
        "with cache": [],
    }
    read_cached = steerer._next_user_cached

    def timed_read(*args):
        start = time.perf_counter()
        out = read_cached(*args)
        seconds["cache"].append(time.perf_counter() - start)
        return out

    steerer._next_user_cached = timed_read
    diff = 0.0
    for _ in range(args.repeats):
        for name, (edit, plain) in variants.items():
            start = time.perf_counter()
            gen = steerer.generate(edit, seed=0, plain=plain)
            took = time.perf_counter() - start
            rate[name].append(len(prompts) * steps_run(gen) / took)
            if name == "rotate":
                seconds["rotate"].append(took)
        start = time.perf_counter()
        gen = steerer.generate(rotate, seed=0)
        read = time.perf_counter()
        by_forward = steerer.next_user(rotate, gen)
        seconds["forward"].append(time.perf_counter() - read)
        seconds["with forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        cached = steerer.generate(rotate, seed=0, next_user=True).next_user
        seconds["with cache"].append(time.perf_counter() - start)
        diff = max(diff, float(np.abs(cached - by_forward).max()))
    med = {name: statistics.median(r) for name, r in rate.items()}
    print(
        f"{len(prompts)} prompts x up to {args.new_tokens} new tokens, layer {args.layer}, {args.repeats} repeats"
    )
    for name, r in med.items():
        print(f"  {name:<8} {r:7.1f} tokens/s   ({', '.join(f'{x:.1f}' for x in rate[name])})")
    worst = min(med["add"], med["rotate"]) / med["plain"]
    print(f"nnsight (no edit) / plain: {med['nnsight'] / med['plain']:.3f}")
    print(
        f"steered / unsteered: add {med['add'] / med['plain']:.3f}, rotate {med['rotate'] / med['plain']:.3f}"
    )
    print(f"target >= {TARGET}: {'met' if worst >= TARGET else 'MISSED'}")
    sec = {name: statistics.median(t) for name, t in seconds.items()}
    print(
        f"next_user after rotate: read by a second forward {sec['forward']:.2f} s, off the cache "
        f"{sec['cache']:.2f} s ({sec['forward'] / sec['cache']:.1f}x); generation alone {sec['rotate']:.2f} s"
    )
    print(
        f"  generation + next_user: {sec['with forward']:.2f} s vs {sec['with cache']:.2f} s "
        f"({sec['with forward'] / sec['with cache']:.2f}x); largest difference between the readings {diff:.1e} nats"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
