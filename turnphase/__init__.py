"""turnphase: datasets of how chat models represent turn-taking, and their analysis.

    from turnphase import BuildConfig, build, AnalysisConfig, analyze

    provenance = build(BuildConfig("data/small", n_conversations=4, rounds=2, layers="13-15"))
    result = analyze(AnalysisConfig("data/small"))          # nothing written; result.report
    analyze(AnalysisConfig("data/small"), "report/small")   # the report folder too
    steer(SteerConfig("data/small", "report/small", layers="14", out="steer/small"))
    problems = validate("data/small")                       # [] when valid

Config errors are `ConfigError`s naming the field (`err.field`); every expected failure is a
`TurnphaseError` with a one-line message. Progress and results go to `logging` (the `turnphase`
logger); the `turnphase` command is the same functions. Importing this package is cheap: each
name loads its module (and torch, for build and steer) when first used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version

__version__ = version("turnphase")

# public name -> module that defines it
_EXPORTS = {
    "BuildConfig": "turnphase.builders.config",
    "build": "turnphase.builders.build",
    "validate": "turnphase.builders.validate",
    "push_folder": "turnphase.builders.push",
    "AnalysisConfig": "turnphase.analysis.config",
    "AnalysisResult": "turnphase.analysis.report",
    "analyze": "turnphase.analysis.report",
    "SteerConfig": "turnphase.steering.config",
    "steer": "turnphase.steering.run",
    "ConfigError": "turnphase.builders.errors",
    "TurnphaseError": "turnphase.builders.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'turnphase' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
