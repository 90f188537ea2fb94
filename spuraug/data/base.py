"""What every dataset of the suite is: metadata arrays plus image access.

Following WILDS, a dataset split is arrays of metadata (label ``y``, spurious
attribute ``a``) plus a way to load image ``i``. The group of an example is
``g = y * n_attributes + a``; this module is the one place that knows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SPLITS: tuple[str, ...] = ("train", "val", "test")


class DataError(RuntimeError):
    """Missing, incomplete or corrupt data. The message names the path and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: its names, its source, its published counts."""

    name: str
    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    #: Published per-split group counts, ``{split: [n_g for g in groups]}`` (docs/datasets.md).
    published_counts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Human-readable origin of the data: where to download it by hand.
    source: str = ""
    #: Folder names the loader accepts below ``--data-dir``.
    folder_names: tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_attributes(self) -> int:
        return len(self.attribute_names)

    @property
    def n_groups(self) -> int:
        return self.n_classes * self.n_attributes

    def group_name(self, g: int) -> str:
        y, a = divmod(int(g), self.n_attributes)
        return f"{self.class_names[y]} / {self.attribute_names[a]}"

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(self.group_name(g) for g in range(self.n_groups))


def group_index(y: np.ndarray | int, a: np.ndarray | int, n_attributes: int) -> np.ndarray | int:
    """The group id ``g = y * n_attributes + a``."""
    return y * n_attributes + a


Transform = Callable[[Image.Image], torch.Tensor]


class SpuriousDataset(torch.utils.data.Dataset):
    """One split of a dataset with a spurious attribute.

    ``__getitem__`` returns ``(x, y, a, index)``: the transformed image, the label,
    the spurious attribute and the example's position in this split (methods such as
    JTT and DDB address examples by it).
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        y: np.ndarray,
        a: np.ndarray,
        transform: Transform | None = None,
        ids: list[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.info = info
        self.split = split
        self.y = np.asarray(y, dtype=np.int64)
        self.a = np.asarray(a, dtype=np.int64)
        if self.y.shape != self.a.shape:
            raise ValueError("y and a must have the same length")
        self.transform = transform
        self.ids = ids if ids is not None else [str(i) for i in range(len(self.y))]

    # -- metadata -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def n_classes(self) -> int:
        return self.info.n_classes

    @property
    def n_attributes(self) -> int:
        return self.info.n_attributes

    @property
    def n_groups(self) -> int:
        return self.info.n_groups

    @property
    def g(self) -> np.ndarray:
        return group_index(self.y, self.a, self.n_attributes)  # type: ignore[return-value]

    def group_counts(self) -> np.ndarray:
        return np.bincount(self.g, minlength=self.n_groups)

    def has_masks(self) -> bool:
        return False

    def mask(self, i: int) -> np.ndarray:
        raise NotImplementedError(f"dataset {self.name!r} has no object masks")

    # -- images -------------------------------------------------------------------
    def load_image(self, i: int) -> Image.Image:
        """The untransformed RGB image of example ``i``."""
        raise NotImplementedError

    def image_path(self, i: int) -> Path | None:
        """The file of example ``i`` when images live on disk."""
        return None

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, int, int, int]:
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else img
        return x, int(self.y[i]), int(self.a[i]), int(i)

    def image_batch(self, indices) -> np.ndarray | None:
        """uint8 (N, H, W, 3) of these examples when the images are held in memory, else None."""
        return None

    def __getitems__(self, indices) -> list:
        # The DataLoader's batched fetch: one transform call for the whole batch where the
        # transform can (``transform.batch``), else example by example. Same result.
        x = batch_transform(self.transform, self, indices)
        if x is None:
            return [self[i] for i in indices]
        return [(x[k], int(self.y[i]), int(self.a[i]), int(i)) for k, i in enumerate(indices)]

    def subset(self, indices: np.ndarray) -> SpuriousDataset:
        """A view on some examples; positions are renumbered from 0."""
        return _Subset(self, np.asarray(indices, dtype=np.int64))


def batch_transform(transform: Callable | None, dataset, indices) -> torch.Tensor | None:
    """``transform.batch(dataset.image_batch(indices))`` when the transform has a batched form
    (:class:`spuraug.data.transforms.ToyTransform`) and the dataset holds its images in
    memory; None otherwise (the caller then transforms example by example)."""
    fn = getattr(transform, "batch", None)
    if fn is None or len(indices) == 0:
        return None
    images = dataset.image_batch(indices)
    return None if images is None else fn(images)


class _Subset(SpuriousDataset):
    def __init__(self, parent: SpuriousDataset, indices: np.ndarray) -> None:
        super().__init__(
            parent.info,
            parent.split,
            parent.y[indices],
            parent.a[indices],
            parent.transform,
            [parent.ids[i] for i in indices],
        )
        self.parent = parent
        self.indices = indices

    def load_image(self, i: int) -> Image.Image:
        return self.parent.load_image(int(self.indices[i]))

    def image_batch(self, indices) -> np.ndarray | None:
        return self.parent.image_batch(self.indices[np.asarray(indices, dtype=np.int64)])

    def image_path(self, i: int) -> Path | None:
        return self.parent.image_path(int(self.indices[i]))

    def has_masks(self) -> bool:
        return self.parent.has_masks()

    def mask(self, i: int) -> np.ndarray:
        return self.parent.mask(int(self.indices[i]))


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB, naming the file if it is missing or corrupt."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"image file missing: {path}") from e
    except OSError as e:
        raise DataError(f"image file cannot be decoded: {path} ({e})") from e
