"""The toy benchmark: Waterbirds in miniature, generated offline from a seed.

Two classes of handwritten digit (scikit-learn's digits, so each class varies like
handwriting does, plus random pose, scale, stroke and colour) on two background kinds.
As in Waterbirds, class 0 goes with ``land`` and class 1 with ``water`` in 95% of the
training images, while validation and test are balanced within each class. The
background is far easier to read than the digit's shape, so ERM takes the shortcut.

Images are 64x64 RGB with exact object masks. Generation takes a few seconds and is
cached in memory per (config, split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from spuraug.data.base import DatasetInfo, SpuriousDataset
from spuraug.toyworld.render import DIGIT_WORDS, IMAGE_SIZE, render_scene


@dataclass(frozen=True)
class ToyConfig:
    """Knobs of the toy benchmark. The defaults are the benchmark; tests shrink it."""

    digits: tuple[int, int] = (3, 8)
    backgrounds: tuple[str, str] = ("land", "water")
    n_train: int = 2400
    n_val: int = 600
    n_test: int = 1200
    #: Share of class 0 in training (Waterbirds: 77% landbirds).
    class0_share: float = 0.7
    #: P(a = y | y) in training: the spurious correlation.
    correlation: float = 0.95
    seed: int = 0


def toy_info(config: ToyConfig = ToyConfig()) -> DatasetInfo:
    return DatasetInfo(
        name="toy",
        class_names=tuple(DIGIT_WORDS[d] for d in config.digits),
        attribute_names=tuple(config.backgrounds),
        published_counts={s: split_group_counts(config, s) for s in ("train", "val", "test")},
        source="generated offline by spuraug (spuraug/data/toy.py); nothing to download",
    )


def split_group_counts(config: ToyConfig, split: str) -> tuple[int, int, int, int]:
    """Examples per group (y, a) = (0,0), (0,1), (1,0), (1,1) in ``split``."""
    if split == "train":
        n0 = round(config.n_train * config.class0_share)
        n1 = config.n_train - n0
        maj0, maj1 = round(n0 * config.correlation), round(n1 * config.correlation)
        return (maj0, n0 - maj0, n1 - maj1, maj1)
    n = config.n_val if split == "val" else config.n_test
    # Balanced within each class; classes as in training (val/test of Waterbirds keep
    # the class prior and balance the places).
    n0 = round(n * config.class0_share)
    n1 = n - n0
    return (n0 - n0 // 2, n0 // 2, n1 - n1 // 2, n1 // 2)


@lru_cache(maxsize=16)
def _generate(config: ToyConfig, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    counts = split_group_counts(config, split)
    rng = np.random.default_rng([config.seed, ("train", "val", "test").index(split), 7919])
    y = np.repeat([0, 0, 1, 1], counts)
    a = np.repeat([0, 1, 0, 1], counts)
    order = rng.permutation(len(y))
    y, a = y[order], a[order]
    images = np.empty((len(y), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    masks = np.empty((len(y), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for i in range(len(y)):
        images[i], masks[i] = render_scene(
            config.digits[y[i]], config.backgrounds[a[i]], rng, part="benchmark"
        )
    for arr in (images, masks, y, a):
        arr.setflags(write=False)
    return images, masks, y, a


class ToyDataset(SpuriousDataset):
    """One split of the toy benchmark, held in memory."""

    def __init__(self, split: str, config: ToyConfig = ToyConfig(), transform=None) -> None:
        images, masks, y, a = _generate(config, split)
        super().__init__(toy_info(config), split, y, a, transform)
        self.config = config
        self.images = images
        self.masks = masks

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def image_batch(self, indices) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]

    def has_masks(self) -> bool:
        return True

    def mask(self, i: int) -> np.ndarray:
        return self.masks[i]

    def describe(self) -> dict:
        return asdict(self.config)
