"""``spuraug data check`` and ``spuraug data fetch``."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from spuraug.data.base import SPLITS, DataError, SpuriousDataset, open_rgb
from spuraug.data.registry import dataset_names, get_dataset, get_spec


def check_dataset(name: str, data_dir: str | None = None, deep: bool = False, **options) -> dict[str, SpuriousDataset]:
    """Load every split, verify every referenced file exists (and decodes, if ``deep``).

    Raises :class:`DataError` naming the first problem found, with the data's source.
    """
    spec = get_spec(name)
    splits: dict[str, SpuriousDataset] = {}
    for split in SPLITS:
        try:
            ds = get_dataset(name, split, data_dir=data_dir, transform=None, **options)
        except DataError as e:
            if "where the data comes from" in str(e):  # the loader already said it
                raise
            raise DataError(f"{e}\n  where the data comes from: {spec.info.source}") from e
        splits[split] = ds
        missing = []
        paths = [ds.image_path(i) for i in range(len(ds))]
        for p in paths:
            if p is not None and not p.is_file():
                missing.append(p)
        if missing:
            shown = "\n    ".join(str(p) for p in missing[:5])
            raise DataError(
                f"{name} {split}: {len(missing)} of {len(ds)} image files are missing, e.g.\n    {shown}\n"
                f"  where the data comes from: {spec.info.source}"
            )
        if deep:
            for i in tqdm(range(len(ds)), desc=f"decoding {split}", unit="img", file=sys.stderr):
                p = paths[i]
                if p is not None:
                    open_rgb(p)
                else:
                    ds.load_image(i)
    return splits


def format_counts(name: str, splits: dict[str, SpuriousDataset]) -> tuple[str, bool]:
    """A table of examples per split and group, and whether it equals the published counts."""
    info = get_spec(name).info
    header = f"{'split':<6} " + " ".join(f"{g:>22}" for g in info.group_names) + f" {'total':>8}"
    lines = [header]
    matches = True
    for split, ds in splits.items():
        counts = ds.group_counts()
        lines.append(f"{split:<6} " + " ".join(f"{int(c):>22}" for c in counts) + f" {int(counts.sum()):>8}")
        published = info.published_counts.get(split)
        if published is not None and tuple(int(c) for c in counts) != tuple(published):
            matches = False
            lines.append(f"{'':<6} " + " ".join(f"{int(c):>22}" for c in published) + "   (published)")
    return "\n".join(lines), matches


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
    from spuraug.data import fetch

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
