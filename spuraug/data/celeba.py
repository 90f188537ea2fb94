"""CelebA (Liu et al. 2015) as the spurious-correlation benchmark of Sagawa et al. 2020:
label ``y`` = Blond_Hair, spurious attribute ``a`` = Male.

Three metadata formats are read, from one dataset folder (``--data-dir`` itself or
``<data-dir>/celeba``, ``celebA_v1.0`` (WILDS), ``CelebA``, ``celeba-dataset``):

- the original distribution: ``list_attr_celeba.txt`` (line 1 the number of images,
  line 2 the 40 attribute names, then ``000001.jpg -1  1 ...``) and
  ``list_eval_partition.txt`` (``000001.jpg 0``, 0/1/2 = train/val/test);
- the CSV variants of Kaggle and WILDS: ``list_attr_celeba.csv`` (``image_id`` then the
  40 attributes, -1/1) and ``list_eval_partition.csv`` (``image_id,partition``);
- ``celeba_split.csv`` of the DaC/DDB code (``image_id, Blond_Hair, Male, split``).

Attribute values may be -1/1 or 0/1. Images are in ``img_align_celeba/``, or in
``img_align_celeba/img_align_celeba/`` as the Kaggle zip unpacks.

Option ``balance_train`` (DDB's CelebA protocol) keeps every training image of the
minority class and a seeded subsample of the majority class of the same size (see
:func:`balanced_indices`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from spuraug.data.base import SPLITS, DataError, DatasetInfo, Transform
from spuraug.data.layout import (
    ImageFileDataset,
    find_dataset_root,
    integer_column,
    read_csv,
    require_columns,
    stable_rank,
    string_column,
)

TARGET = "Blond_Hair"
SPURIOUS = "Male"
ATTR_TXT, ATTR_CSV = "list_attr_celeba.txt", "list_attr_celeba.csv"
PARTITION_TXT, PARTITION_CSV = "list_eval_partition.txt", "list_eval_partition.csv"
SPLIT_CSV = "celeba_split.csv"
IMAGE_FOLDER = "img_align_celeba"

SOURCE = (
    "CelebA's official distribution, http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
    "(Google Drive folder 'Img/img_align_celeba.zip' and 'Eval/list_eval_partition.txt', "
    "'Anno/list_attr_celeba.txt'); or Kaggle's jessicali9530/celeba-dataset (CSV files); or the "
    "WILDS package's copy (python -c \"import wilds; wilds.get_dataset('celebA', root_dir=DATA_DIR, "
    "download=True)\" -> DATA_DIR/celebA_v1.0); see docs/datasets.md"
)

INFO = DatasetInfo(
    name="celeba",
    class_names=("not blond", "blond"),
    attribute_names=("female", "male"),
    # The official split with Sagawa et al. 2020's y and a (docs/datasets.md): groups (y, a) = (0,0), (0,1), (1,0), (1,1).
    published_counts={
        "train": (71629, 66874, 22880, 1387),
        "val": (8535, 8276, 2874, 182),
        "test": (9767, 7535, 2480, 180),
    },
    source=SOURCE,
    folder_names=("celeba", "celebA_v1.0", "CelebA", "celeba-dataset"),
)

EXPECTED = (
    f"a folder with {IMAGE_FOLDER}/ and either {ATTR_TXT} + {PARTITION_TXT} (original), "
    f"{ATTR_CSV} + {PARTITION_CSV} (Kaggle/WILDS) or {SPLIT_CSV} (DaC/DDB)"
)


def find_root(data_dir: Path) -> Path:
    """The CelebA folder below (or at) ``data_dir``."""
    markers = [PARTITION_TXT, PARTITION_CSV, SPLIT_CSV, ATTR_TXT, ATTR_CSV]
    return find_dataset_root(Path(data_dir), INFO, markers, EXPECTED)


def image_folder(root: Path) -> Path:
    """``img_align_celeba/img_align_celeba`` (Kaggle zip) if present, else ``img_align_celeba``."""
    nested = root / IMAGE_FOLDER / IMAGE_FOLDER
    folder = nested if nested.is_dir() else root / IMAGE_FOLDER
    if not folder.is_dir():
        raise DataError(
            f"celeba: missing image folder {folder} (the aligned 178x218 JPEGs of img_align_celeba.zip)\n"
            f"  where the data comes from: {SOURCE}"
        )
    return folder


def _binary(df: pd.DataFrame, column: str, path: Path, first_line: int) -> np.ndarray:
    """A -1/1 or 0/1 attribute column as 0/1."""
    v = integer_column(df, column, (-1, 0, 1), path, first_line)
    if (v == -1).any() and (v == 0).any():
        i = int(np.flatnonzero(v == 0)[0])
        raise DataError(
            f"{path}: column {column!r}, line {first_line + i}: value 0 in a column that also holds -1 "
            "(expected -1/1 or 0/1 throughout)"
        )
    return (v == 1).astype(np.int64)


def _read_attr_txt(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, encoding="utf-8", errors="replace") as f:
        count_line = f.readline().strip()
        names = f.readline().split()
        first_row = f.readline().split()
    try:
        declared = int(count_line)
    except ValueError as e:
        raise DataError(f"{path}: line 1 should be the number of images, found {count_line[:40]!r}") from e
    for col in (TARGET, SPURIOUS):
        if col not in names:
            raise DataError(f"{path}: line 2 (attribute names) lacks {col!r}")
    if first_row and len(first_row) != len(names) + 1:
        raise DataError(
            f"{path}: line 3 has {len(first_row)} fields but line 2 names {len(names)} attributes "
            f"(expected the image name plus one value per attribute)"
        )
    # sep=r"\s+" runs on pandas' C parser (timing: bench/test_real_metadata_loading.py).
    df = read_csv(
        path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names], dtype=str,
        usecols=["image_id", TARGET, SPURIOUS],
    )
    if len(df) != declared:
        raise DataError(f"{path}: line 1 declares {declared} images but the file lists {len(df)} (truncated?)")
    first = 3
    return (
        string_column(df, "image_id", path, first),
        _binary(df, TARGET, path, first),
        _binary(df, SPURIOUS, path, first),
    )


def _read_attr_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = read_csv(path, dtype=str, usecols=lambda c: c in ("image_id", TARGET, SPURIOUS))
    require_columns(df, ("image_id", TARGET, SPURIOUS), path)
    return string_column(df, "image_id", path, 2), _binary(df, TARGET, path, 2), _binary(df, SPURIOUS, path, 2)


def _read_partition(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".txt":
        df = read_csv(path, sep=r"\s+", header=None, names=["image_id", "partition"], dtype=str)
        first = 1
    else:
        df = read_csv(path, dtype=str)
        require_columns(df, ("image_id", "partition"), path)
        first = 2
    return string_column(df, "image_id", path, first), integer_column(df, "partition", (0, 1, 2), path, first)


def _stamp(paths: list[Path]) -> tuple:
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


@lru_cache(maxsize=4)
def _read_metadata(root: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, y, a, split code) of every image; cached per file set and mtime."""
    del stamp  # part of the cache key only
    root_p = Path(root)
    attr_path = next((root_p / n for n in (ATTR_CSV, ATTR_TXT) if (root_p / n).is_file()), None)
    part_path = next((root_p / n for n in (PARTITION_CSV, PARTITION_TXT) if (root_p / n).is_file()), None)
    split_path = root_p / SPLIT_CSV
    if attr_path is None or part_path is None:
        if split_path.is_file():
            df = read_csv(split_path, dtype=str)
            require_columns(df, ("image_id", TARGET, SPURIOUS, "split"), split_path)
            return (
                string_column(df, "image_id", split_path, 2),
                _binary(df, TARGET, split_path, 2),
                _binary(df, SPURIOUS, split_path, 2),
                integer_column(df, "split", (0, 1, 2), split_path, 2),
            )
        missing = f"{ATTR_TXT} (or {ATTR_CSV})" if attr_path is None else f"{PARTITION_TXT} (or {PARTITION_CSV})"
        raise DataError(f"celeba: missing metadata file {root_p / missing}\n  where the data comes from: {SOURCE}")
    ids, y, a = (_read_attr_csv if attr_path.suffix == ".csv" else _read_attr_txt)(attr_path)
    part_ids, part = _read_partition(part_path)
    if len(part_ids) != len(ids) or not np.array_equal(part_ids, ids):
        lookup = pd.Series(part, index=part_ids)
        if lookup.index.has_duplicates:
            dup = lookup.index[lookup.index.duplicated()][0]
            raise DataError(f"{part_path}: image {dup!r} is listed twice")
        aligned = lookup.reindex(ids)
        if aligned.isna().any():
            missing_id = ids[int(np.flatnonzero(aligned.isna().to_numpy())[0])]
            raise DataError(f"{attr_path} lists image {missing_id!r} but {part_path} does not")
        part = aligned.to_numpy(dtype=np.int64)
    return ids, y, a, part


def metadata(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, y, a, split code 0/1/2) of every CelebA image in ``root``, validated."""
    files = [root / n for n in (ATTR_CSV, ATTR_TXT, PARTITION_CSV, PARTITION_TXT, SPLIT_CSV) if (root / n).is_file()]
    return _read_metadata(str(root), _stamp(files))


def balanced_indices(y: np.ndarray, names: np.ndarray, seed: int) -> np.ndarray:
    """DDB's class-balanced training subsample, machine-independent.

    Every example of the smallest class is kept; from each larger class, the examples
    whose names come first in :func:`~spuraug.data.layout.stable_rank` with ``seed``
    (SHA-256 of ``f"{seed}:{image_id}"``) are kept, as many as the smallest class has.
    Returns sorted positions.
    """
    classes, counts = np.unique(y, return_counts=True)
    n_min = int(counts.min())
    keep = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        if len(idx) > n_min:
            idx = idx[stable_rank([str(n) for n in names[idx]], seed)[:n_min]]
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def load(
    split: str,
    data_dir: Path,
    transform: Transform | None = None,
    balance_train: bool = False,
    balance_seed: int = 0,
) -> ImageFileDataset:
    """Split ``split`` of CelebA from ``data_dir``.

    ``balance_train`` subsamples the training split to equal class sizes as DDB did
    (:func:`balanced_indices` with ``balance_seed``); validation and test are never
    subsampled.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = find_root(data_dir)
    images = image_folder(root)
    ids, y, a, part = metadata(root)
    keep = np.flatnonzero(part == SPLITS.index(split))
    if balance_train and split == "train" and len(keep):
        keep = keep[balanced_indices(y[keep], ids[keep], balance_seed)]
    return ImageFileDataset(INFO, split, images, ids[keep], y[keep], a[keep], transform)
