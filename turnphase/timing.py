"""Elapsed seconds per stage: an analysis's (report.json's and steer.json's `timings`, summary.md)
and a build's generation (`BatchedChat.clock`, provenance's `generation.timing.stages`).

    clock = Stopwatch()
    with clock.stage("fits"):
        ...
        with clock.stage("read_activations"):   # nested: these seconds leave "fits"
            ...
    clock.seconds   # {"fits": 1.2, "read_activations": 0.4}: each second counted once

Stages nest and time is exclusive (every second goes to the innermost open stage), so reading a
streamed batch inside a pass counts as reading, not as the pass, and the stages add up to the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter


class Stopwatch:
    def __init__(self) -> None:
        self.started = perf_counter()
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []
        self._since = self.started

    def _charge(self, now: float) -> None:
        if self._open:
            name = self._open[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._since
        self._since = now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.leave()

    def enter(self, name: str) -> None:
        """Open a stage, as `stage` does, where no `with` can hold it (a callback's calls)."""
        self._charge(perf_counter())
        self._open.append(name)

    def leave(self) -> None:
        """Close the innermost open stage."""
        self._charge(perf_counter())
        self._open.pop()

    def elapsed(self) -> float:
        return perf_counter() - self.started


def time_line(timings: dict) -> str:
    """`{total, stages}` (report.json's and steer.json's `timings`) as one line."""
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings["stages"].items())
    return f"took {timings['total']:.1f} s: {stages}"
