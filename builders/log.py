"""Logging and progress bars: the CLI's one set-up, and bars that follow it.

Every module logs to `logging.getLogger(__name__)`, under the `turnphase` logger. The CLI shows
INFO on stdout (results, summaries: pipeable) and warnings and errors on stderr; `-q` keeps only
warnings and errors and hides progress bars, `-v` adds DEBUG lines with times and module names.
Python users configure `logging` as they like; bars show unless the `turnphase` logger is set
above INFO.
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

ROOT = "turnphase"


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _Std(logging.StreamHandler):
    """A handler on sys.stdout or sys.stderr as they are when a record is written (so a replaced
    stream, as under pytest's capture, is followed rather than kept)."""

    def __init__(self, name: str):
        self.name_ = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(verbosity: int = 0) -> None:
    """-1: quiet (warnings and errors), 0: INFO, 1 or more: DEBUG with times."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    fmt = "%(message)s" if verbosity < 1 else "%(asctime)s %(name)s %(levelname)s: %(message)s"
    out, err = _Std("stdout"), _Std("stderr")
    out.addFilter(_Below(logging.WARNING))
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    logger = logging.getLogger(ROOT)
    logger.handlers[:] = [out, err]
    logger.setLevel(level)
    logger.propagate = False
    # Third-party progress bars (datasets' "Generating train split", transformers' weight loading,
    # Hub downloads) off unless -v: through their own switches where they are loaded already, and
    # their environment variables for when they load later. transformers' GGUF de-quantising bar is
    # a plain tqdm with no switch: it shows (a minute of the 1.5B variant's load).
    if verbosity < 1:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for module, switch in _BAR_SWITCHES:
            if module in sys.modules:
                getattr(sys.modules[module], switch)()


_BAR_SWITCHES = (
    ("huggingface_hub.utils", "disable_progress_bars"),
    ("datasets.utils", "disable_progress_bars"),
    ("transformers.utils.logging", "disable_progress_bar"),
)


def quiet() -> bool:
    """True when the `turnphase` logger is set above INFO (`-q`)."""
    level = logging.getLogger(ROOT).level
    return level > logging.INFO


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar (on stderr), hidden with `-q`."""
    return tqdm(iterable, disable=quiet(), **kwargs)
