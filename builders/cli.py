"""The `turnphase` command: datasets of how a chat model represents turn-taking, and their analysis.

examples:
  turnphase build --out data/smollm2              # conversations -> phases -> activations -> dataset
  turnphase validate data/smollm2                 # exit 0, or 1 with one line per problem
  turnphase analyze data/smollm2 --out report     # probes, nulls, colour wheels, verdicts, figures
  turnphase steer data/smollm2 --report report --layers 19 --out steer   # the causal test
  turnphase push data/smollm2 USER/turnphase-smollm2-135m-instruct
  turnphase compare report/smollm2 report/qwen --out report/compare   # variants side by side

`turnphase COMMAND --help` shows each command's options and defaults. From Python:
`from turnphase import build, analyze, BuildConfig, AnalysisConfig`.

Each subcommand lives in the module that does the work, as `add_arguments(parser)` and
`run(args) -> exit code`; modules are imported only when their subcommand runs, so `analyze`
never loads torch and `build` never loads the analysis code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import version

from turnphase.builders import log
from turnphase.builders.errors import ConfigError, TurnphaseError, one_line

# subcommand -> (module, one-line help)
COMMANDS = {
    "build": ("turnphase.builders.build", "generate conversations and build a dataset folder"),
    "validate": ("turnphase.builders.validate", "check a dataset folder against its card and provenance"),
    "push": ("turnphase.builders.push", "upload a validated dataset folder to the Hugging Face Hub"),
    "analyze": (
        "turnphase.analysis.cli",
        "probes, baselines, nulls, colour wheels, rotation tests and a verdict",
    ),
    "steer": ("turnphase.steering.cli", "steer the model along the phase directions, against random ones"),
    "compare": (
        "turnphase.analysis.compare",
        "variants side by side: reports (and steering) by relative depth",
    ),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default in its help (unless it is off/none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        off = default is None or default is False or default is argparse.SUPPRESS or default == []
        if "%(default)" in text or off or not action.option_strings:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    g.add_argument("-v", "--verbose", action="count", help="debug lines, with times and module names")
    return p


def parser_for(argv: list[str]) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser; only the named subcommand's module is imported to add its options."""
    name = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="turnphase",
        description=__doc__.split("\n\nEach subcommand")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('turnphase')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {}
    for cmd, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            cmd, help=help_text, description=help_text, parents=[_common()], formatter_class=HelpFormatter
        )
        if cmd == name:
            mod = importlib.import_module(module)
            p.description = (mod.__doc__ or help_text).strip()
            mod.add_arguments(p)
        subparsers[cmd] = p
    return parser, subparsers


def _flag(parser: argparse.ArgumentParser, field: str) -> str:
    """The option that sets a config field (its dest), as the user typed it."""
    for action in parser._actions:
        if action.dest == field and action.option_strings:
            return max(action.option_strings, key=len)
    return field


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, subparsers = parser_for(argv)
    args = parser.parse_args(argv)
    log.setup(-1 if args.quiet else args.verbose or 0)
    module = importlib.import_module(COMMANDS[args.command][0])
    say = logging.getLogger("turnphase").error
    try:
        return int(module.run(args) or 0)
    except ConfigError as e:
        say(f"turnphase {args.command}: error: {_flag(subparsers[args.command], e.field)}: {e.message}")
        return 2
    except TurnphaseError as e:
        say(f"turnphase {args.command}: error: {e}")
        return 2
    except OSError as e:  # a file or device error no step turned into a TurnphaseError
        where = f" ({e.filename})" if e.filename else ""
        say(f"turnphase {args.command}: error: {e.strerror or one_line(e)}{where}")
        return 2
    except MemoryError:
        say(f"turnphase {args.command}: error: out of memory; see --help for smaller settings")
        return 2
    except KeyboardInterrupt:
        say(f"turnphase {args.command}: interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
