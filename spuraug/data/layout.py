"""Shared pieces of the real-dataset loaders: finding a dataset's folder, reading and
validating metadata tables, images addressed by file, and a machine-independent draw.

Every error here is a :class:`~spuraug.data.base.DataError` that names the file, and for
table contents the column, the line and the offending value.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from spuraug.data.base import DataError, DatasetInfo, SpuriousDataset, Transform, open_rgb

#: File suffixes taken as images when a dataset is a folder tree (MetaShift).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")


def find_dataset_root(data_dir: Path, info: DatasetInfo, markers: Sequence[str], expected: str) -> Path:
    """The folder holding ``info``'s dataset: ``data_dir`` itself or ``data_dir/<name>``
    for a name in ``info.folder_names``, whichever first contains one of ``markers``
    (paths relative to the dataset folder).

    Raises :class:`DataError` listing every folder looked at, what was expected there
    and where the data comes from.
    """
    data_dir = Path(data_dir)
    candidates = [data_dir] + [data_dir / name for name in info.folder_names]
    for folder in candidates:
        if any((folder / m).exists() for m in markers):
            return folder
    looked = "\n    ".join(str(c) for c in candidates)
    raise DataError(
        f"{info.name}: dataset not found; looked for {' or '.join(markers)} in\n    {looked}\n"
        f"  expected layout: {expected}\n"
        f"  where the data comes from: {info.source}\n"
        f"  (`spuraug data fetch --dataset {info.name} --data-dir {data_dir}` downloads it on a machine with network)"
    )


def require_file(path: Path, info: DatasetInfo, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DataError` naming it, ``what`` it should be
    and the data's source."""
    if not path.is_file():
        raise DataError(
            f"{info.name}: missing {what}: {path}\n  where the data comes from: {info.source}"
        )
    return path


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    """A :class:`DataError` naming the file and every missing column."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(str(c)) for c in df.columns[:12])}{' ...' if len(df.columns) > 12 else ''}"
        )


def integer_column(
    df: pd.DataFrame, column: str, allowed: Sequence[int], path: Path, first_line: int
) -> np.ndarray:
    """Column ``column`` as int64, every value in ``allowed``.

    ``first_line`` is the file line number of the table's first data row, so the error
    for a bad value names ``path``, ``column``, the line and the value.
    """
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce")
    ok = values.isin(list(allowed)).to_numpy()
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError(
            f"{path}: column {column!r}, line {first_line + i}: value {raw.iloc[i]!r} is not one of "
            f"{', '.join(str(v) for v in allowed)}"
        )
    return values.to_numpy(dtype=np.int64)


def string_column(df: pd.DataFrame, column: str, path: Path, first_line: int) -> np.ndarray:
    """Column ``column`` as an array of non-empty strings (error names file, column, line)."""
    raw = df[column]
    bad = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {column!r}, line {first_line + i}: empty value")
    return raw.astype(str).to_numpy()


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` with parse errors turned into a :class:`DataError` naming the file."""
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as a table ({e})") from e


def stable_rank(names: Sequence[str], seed: int) -> np.ndarray:
    """Positions of ``names`` ordered by SHA-256 of ``f"{seed}:{name}"``.

    A draw that takes the first ``k`` of this order depends only on the names and the
    seed: not on the machine, the file-system order or the numpy version.
    """
    keys = [hashlib.sha256(f"{seed}:{n}".encode()).hexdigest() for n in names]
    return np.array(sorted(range(len(names)), key=keys.__getitem__), dtype=np.int64)


def list_images(folder: Path) -> list[str]:
    """Sorted names of the image files directly in ``folder`` (hidden files skipped)."""
    with os.scandir(folder) as it:
        return sorted(
            e.name
            for e in it
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
        )


class ImageFileDataset(SpuriousDataset):
    """A split whose images are files below ``root``, named by ``files`` (relative paths).

    ``ids`` are the relative paths, so an example can be found on disk from its id.
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        root: Path,
        files: np.ndarray,
        y: np.ndarray,
        a: np.ndarray,
        transform: Transform | None = None,
    ) -> None:
        files = np.asarray(files, dtype=object)
        super().__init__(info, split, y, a, transform, ids=[str(f) for f in files])
        self.root = Path(root)
        self.files = files

    def image_path(self, i: int) -> Path:
        return self.root / str(self.files[i])

    def load_image(self, i: int) -> Image.Image:
        return open_rgb(self.image_path(i))
