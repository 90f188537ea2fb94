"""The ``spuraug`` command line: argument parsing only.

Each area of the suite contributes its subcommands through a ``register(subparsers)``
function; the modules are listed in ``COMMAND_MODULES``. A command's handler returns
an exit code. Errors the user can fix (missing data or weights, a bad file) surface as
one clear line on stderr and exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Modules that add subcommands, in the order ``spuraug --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "spuraug.data.commands",
    "spuraug.scoring",
    "spuraug.weights",
    "spuraug.doctor",
    "spuraug.train_cli",
    "spuraug.ddb.commands",
)


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spuraug",
        description="Spurious-correlation benchmark suite: DDB beside ERM, GroupDRO, JTT and DFR.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from spuraug.data.base import DataError
    from spuraug.models import WeightsMissingError

    return (UserError, DataError, WeightsMissingError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except _user_error_types() as e:
        print(f"spuraug {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spuraug {args.command}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
