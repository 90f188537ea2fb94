"""Waterbirds (Sagawa et al. 2020): CUB birds pasted on Places backgrounds.

Layout (the ``waterbird_complete95_forest2water2`` tarball, or WILDS' ``waterbirds_v1.0``)::

    <data-dir>/waterbird_complete95_forest2water2/
        metadata.csv        img_id,img_filename,y,split,place,place_filename
        001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
        ...

``y`` = 1 for a waterbird, ``split`` 0/1/2 = train/val/test, ``place`` = 1 for a water
background; the spurious attribute is ``a = place``. ``--data-dir`` may also point
straight at the folder holding ``metadata.csv``.
"""

from __future__ import annotations

from pathlib import Path

from spuraug.data.base import SPLITS, DatasetInfo, Transform
from spuraug.data.layout import (
    ImageFileDataset,
    find_dataset_root,
    integer_column,
    read_csv,
    require_columns,
    string_column,
)

METADATA_FILE = "metadata.csv"
COLUMNS: tuple[str, ...] = ("img_id", "img_filename", "y", "split", "place", "place_filename")

SOURCE = (
    "the Waterbirds tarball of Sagawa et al. (group_DRO): "
    "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz "
    "(mirror: https://downloads.cs.stanford.edu/nlp/data/dro/waterbird_complete95_forest2water2.tar.gz), "
    "unpacked under --data-dir; or the WILDS package's copy "
    "(python -c \"import wilds; wilds.get_dataset('waterbirds', root_dir=DATA_DIR, download=True)\" "
    "-> DATA_DIR/waterbirds_v1.0); see docs/datasets.md"
)

INFO = DatasetInfo(
    name="waterbirds",
    class_names=("landbird", "waterbird"),
    attribute_names=("land", "water"),
    # Sagawa et al. 2020's released dataset (docs/datasets.md): groups (y, place) = (0,0), (0,1), (1,0), (1,1).
    published_counts={
        "train": (3498, 184, 56, 1057),
        "val": (467, 466, 133, 133),
        "test": (2255, 2255, 642, 642),
    },
    source=SOURCE,
    folder_names=("waterbird_complete95_forest2water2", "waterbirds_v1.0"),
)

EXPECTED = (
    "a folder waterbird_complete95_forest2water2/ (or waterbirds_v1.0/) holding metadata.csv "
    f"({','.join(COLUMNS)}) and the bird image folders it names"
)


def find_root(data_dir: Path) -> Path:
    """The Waterbirds folder below (or at) ``data_dir``."""
    return find_dataset_root(Path(data_dir), INFO, [METADATA_FILE], EXPECTED)


def load(split: str, data_dir: Path, transform: Transform | None = None) -> ImageFileDataset:
    """Split ``split`` of Waterbirds from ``data_dir`` (metadata validated, images not opened)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = find_root(data_dir)
    path = root / METADATA_FILE
    df = read_csv(path, dtype=str, keep_default_na=False)
    require_columns(df, COLUMNS, path)
    first_line = 2  # line 1 is the header
    files = string_column(df, "img_filename", path, first_line)
    y = integer_column(df, "y", (0, 1), path, first_line)
    split_code = integer_column(df, "split", (0, 1, 2), path, first_line)
    place = integer_column(df, "place", (0, 1), path, first_line)
    keep = split_code == SPLITS.index(split)
    return ImageFileDataset(INFO, split, root, files[keep], y[keep], place[keep], transform)
