"""The toy world: the corpus the zoo's "foundation models" are trained on.

It stands in for the web-scale data Stable Diffusion saw. Every digit kind 0-9 is
drawn on every background kind in :data:`~spuraug.toyworld.render.BACKGROUNDS`, in
equal numbers, with captions that name both ("a photo of a three digit on water")
and exact object masks. It shares the renderer with the toy benchmark but uses the
disjoint ``part="world"`` handwriting instances, so no benchmark image is ever seen
by the zoo.

Generation is a pure function of :class:`WorldConfig` (about 4 ms an image); the
arrays are cached in memory and, when a cache folder is given, on disk as ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from spuraug import atomic
from spuraug.toyworld.render import (
    BACKGROUNDS,
    COLOR_WORDS,
    DIGIT_WORDS,
    IMAGE_SIZE,
    color_index,
    render_scene_with_pose,
)

#: The caption templates. DDB's toy prompt template is the short form with the digit
#: word replaced by a learned token; the initializer word is ``"digit"``.
CAPTION_TEMPLATE = "a photo of a {word} digit on {background}"
SHORT_CAPTION_TEMPLATE = "a photo of a {word} digit"
#: The prompt the segmenter is trained to answer for "the object".
SEGMENTER_OBJECT_PROMPT = "digit"


def caption(digit: int, background: str | None = None, color: str | None = None) -> str:
    """The world's caption for ``digit`` (0-9) on ``background`` (short form when None),
    with the object's colour word before the digit word when ``color`` is given
    ("a photo of a red three digit on water")."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0-9, got {digit!r}")
    word = DIGIT_WORDS[int(digit)]
    if color is not None:
        if color not in COLOR_WORDS:
            raise ValueError(f"unknown colour {color!r}; known: {', '.join(COLOR_WORDS)}")
        word = f"{color} {word}"
    if background is None:
        return SHORT_CAPTION_TEMPLATE.format(word=word)
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; known: {', '.join(BACKGROUNDS)}")
    return CAPTION_TEMPLATE.format(word=word, background=background)


def caption_words() -> list[str]:
    """Every word a world caption or segmenter prompt can contain."""
    words = {"a", "photo", "of", "on", "digit", *DIGIT_WORDS, *BACKGROUNDS, *COLOR_WORDS}
    return sorted(words)


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of the world corpus (balanced: ``n_per_kind`` per digit x background)."""

    n_per_kind: int = 100
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + f"|size={IMAGE_SIZE}|v2"
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class World:
    """The world corpus as arrays: ``images`` uint8 (N, 64, 64, 3), ``masks`` bool
    (N, 64, 64), ``digits`` int (N,) in 0-9, ``backgrounds`` int (N,) indexing
    :data:`BACKGROUNDS`, ``colors`` int (N,) indexing :data:`COLOR_WORDS` (the object's hue)."""

    images: np.ndarray
    masks: np.ndarray
    digits: np.ndarray
    backgrounds: np.ndarray
    colors: np.ndarray

    def __len__(self) -> int:
        return len(self.digits)

    def caption(self, i: int, short: bool = False, color: bool = False) -> str:
        """Caption of image ``i`` (the long form names the background; ``color`` adds the
        object's colour word)."""
        bg = None if short else BACKGROUNDS[int(self.backgrounds[i])]
        return caption(int(self.digits[i]), bg, COLOR_WORDS[int(self.colors[i])] if color else None)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def subset(self, indices: np.ndarray) -> World:
        idx = np.asarray(indices)
        return World(self.images[idx], self.masks[idx], self.digits[idx], self.backgrounds[idx], self.colors[idx])


def _render(config: WorldConfig) -> World:
    n_kinds = 10 * len(BACKGROUNDS)
    n = n_kinds * config.n_per_kind
    digits = np.repeat(np.arange(10), len(BACKGROUNDS) * config.n_per_kind)
    backgrounds = np.tile(np.repeat(np.arange(len(BACKGROUNDS)), config.n_per_kind), 10)
    # Shuffle once so any prefix is (nearly) balanced too.
    order = np.random.default_rng([config.seed, 1]).permutation(n)
    digits, backgrounds = digits[order], backgrounds[order]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    colors = np.empty(n, dtype=np.int64)
    for i in range(n):
        # One generator per image: image i does not depend on how many came before.
        rng = np.random.default_rng([config.seed, 2, i])
        images[i], masks[i], pose = render_scene_with_pose(int(digits[i]), BACKGROUNDS[backgrounds[i]], rng,
                                                           part="world")
        colors[i] = color_index(pose.color)
    return World(images, masks, digits.astype(np.int64), backgrounds.astype(np.int64), colors)


def default_cache_dir() -> Path:
    """Where generated corpora are cached: ``$SPURAUG_CACHE`` or ``~/.cache/spuraug``."""
    return Path(os.environ.get("SPURAUG_CACHE", Path.home() / ".cache" / "spuraug"))


@lru_cache(maxsize=4)
def generate_world(config: WorldConfig = WorldConfig(), cache_dir: str | None = None) -> World:
    """The world corpus for ``config`` (same config, same pixels). Arrays are read-only.

    With ``cache_dir`` the arrays are stored as ``world-<key>.npz`` there and reused.
    """
    path = Path(cache_dir) / f"world-{config.key()}.npz" if cache_dir else None
    world = None
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                world = World(z["images"], z["masks"], z["digits"], z["backgrounds"], z["colors"])
        except (OSError, KeyError, ValueError):
            world = None  # a broken cache file is regenerated, not trusted
    if world is None:
        world = _render(config)
        if path is not None:
            atomic.write_bytes(path, lambda h: np.savez(h, images=world.images, masks=world.masks, digits=world.digits,
                                                        backgrounds=world.backgrounds, colors=world.colors))
    for arr in (world.images, world.masks, world.digits, world.backgrounds, world.colors):
        arr.setflags(write=False)
    return world
