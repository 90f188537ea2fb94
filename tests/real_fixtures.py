"""Tiny copies of the real datasets in their true on-disk formats (a few 8x8 JPEGs,
metadata with the real columns and realistic values), for the loader and fetch tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

# The 40 attributes of list_attr_celeba.txt, in the file's order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def jpeg_bytes(color: tuple[int, int, int] = (120, 80, 40), size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def write_image(path: Path, data: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else jpeg_bytes())


# -- Waterbirds ------------------------------------------------------------------------
# (y, place) of each group g = y * 2 + place, with a realistic bird folder and Places scene.
_WATERBIRD = ("045.Northern_Fulmar", "Northern_Fulmar")
_LANDBIRD = ("094.White_breasted_Nuthatch", "White_Breasted_Nuthatch")
_PLACES = {0: "/b/bamboo_forest/00000001.jpg", 1: "/o/ocean/00002178.jpg"}

#: Group counts per split of the default Waterbirds fixture: (0,0), (0,1), (1,0), (1,1).
WATERBIRDS_COUNTS = {"train": (4, 1, 1, 3), "val": (2, 2, 1, 1), "test": (2, 2, 2, 2)}


def make_waterbirds(
    data_dir: Path,
    counts: dict[str, tuple[int, ...]] = WATERBIRDS_COUNTS,
    folder: str | None = "waterbird_complete95_forest2water2",
) -> Path:
    """A Waterbirds folder with ``counts[split][g]`` images per group; returns its path."""
    root = data_dir / folder if folder else data_dir
    root.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes()
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    img_id = 0
    for split_code, split in enumerate(("train", "val", "test")):
        for g, n in enumerate(counts[split]):
            y, place = divmod(g, 2)
            bird_dir, bird = _WATERBIRD if y == 1 else _LANDBIRD
            for _ in range(n):
                img_id += 1
                rel = f"{bird_dir}/{bird}_{img_id:04d}_{100 + img_id}.jpg"
                write_image(root / rel, data)
                rows.append(f"{img_id},{rel},{y},{split_code},{place},{_PLACES[place]}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


# -- CelebA ----------------------------------------------------------------------------
#: (partition, Blond_Hair, Male) of the fixture's images, in file order.
CELEBA_ROWS = (
    [(0, 0, 0)] * 5 + [(0, 0, 1)] * 4 + [(0, 1, 0)] * 2 + [(0, 1, 1)] * 1
    + [(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    + [(2, 0, 0), (2, 0, 1), (2, 0, 1), (2, 1, 0), (2, 1, 1)]
)


def _attr_values(blond: int, male: int, i: int, zero_one: bool = False) -> list[int]:
    neg = 0 if zero_one else -1
    vals = [1 if (i + k) % 3 == 0 else neg for k in range(len(CELEBA_ATTRIBUTES))]
    vals[CELEBA_ATTRIBUTES.index("Blond_Hair")] = 1 if blond else neg
    vals[CELEBA_ATTRIBUTES.index("Male")] = 1 if male else neg
    return vals


def make_celeba(data_dir: Path, fmt: str = "original", folder: str = "celeba", rows=CELEBA_ROWS) -> Path:
    """A CelebA folder in format ``original`` (txt files), ``kaggle`` (CSV files, nested
    image folder), ``wilds`` (CSV files, flat image folder) or ``dac`` (celeba_split.csv)."""
    root = data_dir / folder
    images = root / "img_align_celeba"
    if fmt == "kaggle":
        images = images / "img_align_celeba"
    data = jpeg_bytes((200, 180, 160))
    names = [f"{i + 1:06d}.jpg" for i in range(len(rows))]
    for n in names:
        write_image(images / n, data)
    if fmt == "original":
        lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES) + " "]
        for i, (_, blond, male) in enumerate(rows):
            # The original file pads positive values with a second space.
            lines.append(names[i] + "".join(f"{v:3d}" if v > 0 else f" {v}" for v in _attr_values(blond, male, i)))
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{n} {r[0]}\n" for n, r in zip(names, rows)))
    elif fmt in ("kaggle", "wilds"):
        lines = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        for i, (_, blond, male) in enumerate(rows):
            lines.append(names[i] + "," + ",".join(str(v) for v in _attr_values(blond, male, i)))
        (root / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        (root / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{r[0]}\n" for n, r in zip(names, rows))
        )
    elif fmt == "dac":
        lines = ["image_id,Blond_Hair,Male,split"]
        lines += [f"{n},{blond},{male},{part}" for n, (part, blond, male) in zip(names, rows)]
        (root / "celeba_split.csv").write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(fmt)
    return root


# -- MetaShift (DISC cat/dog) ----------------------------------------------------------
METASHIFT_COUNTS = {
    ("train", "cat", "sofa"): 4,
    ("train", "cat", "bed"): 3,
    ("train", "dog", "bench"): 3,
    ("train", "dog", "bike"): 2,
    ("test", "cat", "shelf"): 20,
    ("test", "dog", "shelf"): 14,
}


def make_metashift(data_dir: Path, counts=METASHIFT_COUNTS, folder: str = "metashifts/MetaDatasetCatDog",
                   reverse: bool = False) -> Path:
    """DISC's MetaDatasetCatDog tree with Visual-Genome-like image ids as file names.
    ``reverse`` creates the files in the opposite order (file-system order differs)."""
    root = data_dir / folder
    data = jpeg_bytes((90, 140, 60))
    items = []
    for (part, cls, context), n in counts.items():
        for k in range(n):
            items.append(root / part / cls / f"{cls}({context})" / f"{2300000 + 37 * k + len(context)}.jpg")
    for p in reversed(items) if reverse else items:
        write_image(p, data)
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # junk that must be ignored
    return root
