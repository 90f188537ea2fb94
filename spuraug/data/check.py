"""Checking a prepared dataset: every split loads, every file exists, the counts match.

Used by ``spuraug data check``, by ``spuraug data fetch`` after it unpacks, and by
``spuraug doctor``; it sits below all three so that none imports another for it.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from spuraug.data.base import SPLITS, DataError, SpuriousDataset, open_rgb
from spuraug.data.registry import get_dataset, get_spec


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
    """A table of examples per split and group, and whether it equals the published counts.
    For a dataset whose options change its facts (``DatasetSpec.info_for``: the toy's digits and
    backgrounds), groups are named, and counts compared, by the splits' own info."""
    spec = get_spec(name)
    info = next(iter(splits.values())).info if splits and spec.info_for is not None else spec.info
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
