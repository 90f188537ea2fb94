"""MetaShift cat/dog (Liang & Zou 2022) in the version of DISC (Wu et al. 2023), used by DDB.

Layout (the ``MetaDatasetCatDog`` folder of DISC's ``metashifts.zip``)::

    <data-dir>/metashifts/MetaDatasetCatDog/     (or <data-dir>/MetaDatasetCatDog/)
        train/cat/cat(sofa)/*.jpg   train/cat/cat(bed)/*.jpg
        train/dog/dog(bench)/*.jpg  train/dog/dog(bike)/*.jpg
        test/cat/cat(shelf)/*.jpg   test/dog/dog(shelf)/*.jpg

Classes: cat = 0, dog = 1. The spurious attribute ``a`` is the context the image was
collected in, one value per folder: sofa = 0, bed = 1, bench = 2, bike = 3, shelf = 4,
so ``g = y * 5 + a`` names (class, context) exactly: training has DISC's four groups
cat/sofa, cat/bed, dog/bench, dog/bike (cat always in an indoor cat context, dog always
in an outdoor dog context), validation and test the two groups cat/shelf and dog/shelf.
The other groups are empty; the metrics skip empty groups.

Validation is ``floor(val_fraction * n)`` images of the shelf pool (DISC: 15%), the
rest is test. The draw ranks the pool's relative paths (``cat/cat(shelf)/x.jpg``) by
SHA-256 of ``f"{val_seed}:{path}"`` and takes the first ones, so it is the same on every
machine (DISC drew with scikit-learn over ``os.listdir`` order, which is not).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from spuraug.data.base import SPLITS, DataError, DatasetInfo, Transform
from spuraug.data.layout import ImageFileDataset, find_dataset_root, list_images, stable_rank

CLASSES: tuple[str, ...] = ("cat", "dog")
CONTEXTS: tuple[str, ...] = ("sofa", "bed", "bench", "bike", "shelf")
#: (class, context) folders of each part, as in DISC's MetaDatasetCatDog.
TRAIN_FOLDERS: tuple[tuple[str, str], ...] = (("cat", "sofa"), ("cat", "bed"), ("dog", "bench"), ("dog", "bike"))
TEST_FOLDERS: tuple[tuple[str, str], ...] = (("cat", "shelf"), ("dog", "shelf"))
#: DISC: ``train_test_split(..., test_size=0.85)`` over the test pool.
DEFAULT_VAL_FRACTION = 0.15

SOURCE = (
    "DISC's MetaShift cat/dog archive metashifts.zip (Wu et al. 2023, github.com/Wuyxin/DISC, "
    "disc/download_datasets.py: https://drive.google.com/uc?id=1WySOxBRkxAUlSokgZrC-0JaWZwcG5UMT; "
    "also linked by LISA, github.com/huaxiuyao/LISA: "
    "https://drive.google.com/file/d/1Fr2HxUOL3_QUDHU5B3MMH7dgFu_u_gJ_), unzipped under --data-dir so that "
    "metashifts/MetaDatasetCatDog/ (or MetaDatasetCatDog/) holds train/ and test/; see docs/datasets.md"
)

INFO = DatasetInfo(
    name="metashift",
    class_names=CLASSES,
    attribute_names=CONTEXTS,
    # No authoritative per-group counts of this version are published (docs/datasets.md).
    published_counts={},
    source=SOURCE,
    folder_names=("MetaDatasetCatDog", "metashifts/MetaDatasetCatDog", "metashift/MetaDatasetCatDog"),
)

EXPECTED = (
    "a folder MetaDatasetCatDog/ with train/cat/cat(sofa), train/cat/cat(bed), train/dog/dog(bench), "
    "train/dog/dog(bike), test/cat/cat(shelf), test/dog/dog(shelf), each holding .jpg images"
)


def find_root(data_dir: Path) -> Path:
    """The MetaDatasetCatDog folder below (or at) ``data_dir``."""
    return find_dataset_root(Path(data_dir), INFO, ["train/cat", "test/cat"], EXPECTED)


def _collect(root: Path, part: str, folders: tuple[tuple[str, str], ...]) -> tuple[list[str], list[int], list[int]]:
    files, y, a = [], [], []
    for cls, context in folders:
        rel = f"{cls}/{cls}({context})"
        folder = root / part / rel
        if not folder.is_dir():
            raise DataError(
                f"metashift: missing folder {folder} (the {cls} images in the {context} context)\n"
                f"  expected layout: {EXPECTED}\n  where the data comes from: {SOURCE}"
            )
        names = list_images(folder)
        if not names:
            raise DataError(f"metashift: no images (.jpg/.jpeg/.png) in {folder}\n  where the data comes from: {SOURCE}")
        files += [f"{part}/{rel}/{n}" for n in names]
        y += [CLASSES.index(cls)] * len(names)
        a += [CONTEXTS.index(context)] * len(names)
    return files, y, a


def val_positions(pool_files: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of the test pool drawn for validation (see the module docstring).

    ``pool_files`` are paths relative to the ``test/`` folder.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    n_val = math.floor(val_fraction * len(pool_files) + 1e-9)
    return np.sort(stable_rank(pool_files, seed)[:n_val])


def load(
    split: str,
    data_dir: Path,
    transform: Transform | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_seed: int = 0,
) -> ImageFileDataset:
    """Split ``split`` of MetaShift cat/dog from ``data_dir`` (validation drawn from the test pool)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = find_root(data_dir)
    if split == "train":
        files, y, a = _collect(root, "train", TRAIN_FOLDERS)
        return ImageFileDataset(INFO, split, root, np.array(files, dtype=object), np.array(y), np.array(a), transform)
    files, y, a = _collect(root, "test", TEST_FOLDERS)
    in_val = np.zeros(len(files), dtype=bool)
    in_val[val_positions([f.removeprefix("test/") for f in files], val_fraction, val_seed)] = True
    keep = in_val if split == "val" else ~in_val
    return ImageFileDataset(
        INFO, split, root, np.array(files, dtype=object)[keep], np.array(y)[keep], np.array(a)[keep], transform
    )
