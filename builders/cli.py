"""The `turnphase` command.

    turnphase build --out data/smollm2            # topics -> conversations -> activations -> dataset
    turnphase validate data/smollm2               # exit 0, or 1 with one line per problem
    turnphase analyze data/smollm2 --out report   # probes, control, PCA/Fourier, figures, report.json
    turnphase steer data/smollm2 --report report --layers 19 --out steer   # the causal test
    turnphase push data/smollm2 USER/turnphase-smollm2-135m-instruct

Each subcommand lives in the module that does the work, as `add_arguments(parser)` and
`run(args) -> exit code`; modules are imported only when their subcommand runs, so `analyze`
never loads torch and `build` never loads the analysis code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from turnphase.builders.errors import TurnphaseError, one_line

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
}


def _command_module(argv: list[str]):
    name = next((a for a in argv if not a.startswith("-")), None)
    return (name, importlib.import_module(COMMANDS[name][0])) if name in COMMANDS else (name, None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="turnphase", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    name, module = _command_module(argv)
    for cmd, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(cmd, help=help_text, description=help_text)
        if cmd == name:
            module.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except TurnphaseError as e:
        print(f"turnphase {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or device error no step turned into a TurnphaseError
        where = f" ({e.filename})" if e.filename else ""
        print(f"turnphase {args.command}: error: {e.strerror or one_line(e)}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"turnphase {args.command}: error: out of memory; see --help for smaller settings",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"turnphase {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
