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

from spuraug.config import ConfigError
from spuraug.data.base import DataError
from spuraug.errors import UserError
from spuraug.models import WeightsMissingError

#: Modules that add subcommands, in the order ``spuraug --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "spuraug.data.commands",
    "spuraug.scoring",
    "spuraug.weights",
    "spuraug.doctor",
    "spuraug.train_cli",
    "spuraug.ddb.commands",
)


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
    # OSErrors a user's path causes (a file where a folder must be, a read-only folder)
    return (UserError, ConfigError, DataError, WeightsMissingError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, FileExistsError, PermissionError)


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
    # `python -m spuraug.cli`: run the main of the imported module `spuraug.cli`, not of
    # `__main__`, so that UserError is one class whichever way a command module imports it.
    from spuraug.cli import main as _main

    sys.exit(_main())
