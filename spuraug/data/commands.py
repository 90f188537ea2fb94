"""``spuraug data check`` and ``spuraug data fetch``."""

from __future__ import annotations

import argparse
import sys

from spuraug.data import fetch
from spuraug.data.check import check_dataset, format_counts
from spuraug.data.registry import dataset_names


def _check(args: argparse.Namespace) -> int:
    options = {}
    if getattr(args, "balance_train", False):
        options["balance_train"] = True
    splits = check_dataset(args.dataset, args.data_dir, deep=args.deep, **options)
    table, matches = format_counts(args.dataset, splits)
    print(f"dataset {args.dataset}: {'images decoded' if args.deep else 'files present'}; examples per split and group")
    print(table)
    if not matches:
        print(
            f"counts differ from the published ones for {args.dataset}: the copy is incomplete or a "
            "different version (see README, 'Preparing the real datasets')",
            file=sys.stderr,
        )
        return 0 if args.partial else 1
    return 0


def _fetch(args: argparse.Namespace) -> int:

    return fetch.fetch(args.dataset, args.data_dir)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check or fetch datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    c = dsub.add_parser("check", help="validate a dataset's layout and print examples per split and group")
    c.add_argument("--dataset", required=True, choices=dataset_names())
    c.add_argument("--data-dir", default=None, help="folder holding the dataset (default $SPURAUG_DATA_DIR or ./data)")
    c.add_argument("--deep", action="store_true", help="also decode every image")
    c.add_argument("--partial", action="store_true", help="accept counts that differ from the published ones")
    c.set_defaults(handler=_check)
    f = dsub.add_parser("fetch", help="download a dataset from its documented sources (needs network)")
    f.add_argument("--dataset", required=True, choices=[n for n in dataset_names() if n != "toy"] or None)
    f.add_argument("--data-dir", required=True)
    f.set_defaults(handler=_fetch)
