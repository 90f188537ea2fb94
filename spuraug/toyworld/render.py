"""The renderer shared by the toy benchmark and the toy world corpus.

An image is a foreground *object* (a handwritten digit from the scikit-learn digits
corpus, so shapes vary the way handwriting does) drawn with a random pose, scale,
stroke width and colour over a procedurally textured *background*. The renderer
returns the RGB image and the exact object mask, so segmentation and "pixels outside
the mask" checks have ground truth.

Everything is a pure function of a ``numpy.random.Generator``: same seed, same pixels.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits

IMAGE_SIZE = 64

#: Background kinds and the words the world's captions use for them. ``water`` and
#: ``land`` are the two spurious contexts of the toy benchmark (as in Waterbirds).
BACKGROUNDS: tuple[str, ...] = ("land", "water", "sand", "snow", "sky", "brick")

#: Object kinds: the ten digits, named the way captions name them.
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)


#: Colour words for an object's hue: eight 45-degree hue bins, each centred on its word's
#: hue (red at 0 degrees, orange at 45, ..., pink at 315). Object colours are bright and
#: saturated (see :func:`sample_pose`), so the hue names them well.
COLOR_WORDS: tuple[str, ...] = ("red", "orange", "lime", "green", "cyan", "blue", "purple", "pink")


def color_index(rgb) -> int:
    """Index into :data:`COLOR_WORDS` of the hue of ``rgb`` (three floats in [0, 1])."""

    hue = colorsys.rgb_to_hsv(*(float(c) for c in rgb))[0]
    return int(np.floor(hue * len(COLOR_WORDS) + 0.5)) % len(COLOR_WORDS)


@lru_cache(maxsize=1)
def _digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """All scikit-learn digits as float images in [0, 1] (N, 8, 8) and their labels."""

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_instances(digit: int, part: str) -> np.ndarray:
    """Indices into the digit bank for one digit kind.

    ``part`` splits the handwriting samples so that two corpora never share an
    instance: ``"benchmark"`` (even positions) and ``"world"`` (odd positions).
    """
    _, labels = _digit_bank()
    idx = np.flatnonzero(labels == digit)
    if part == "benchmark":
        return idx[0::2]
    if part == "world":
        return idx[1::2]
    if part == "all":
        return idx
    raise ValueError(f"unknown digit part {part!r}; expected 'benchmark', 'world' or 'all'")


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Band-limited noise in [0, 1] with feature size about ``scale`` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=scale, mode="wrap")
    field -= field.min()
    return field / max(float(field.max()), 1e-8)


def render_background(kind: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A textured background of ``kind`` as float32 RGB in [0, 1], shape (size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    n1 = _smooth_noise(rng, size, 2.0)
    n2 = _smooth_noise(rng, size, 6.0)
    if kind == "water":
        freq = rng.uniform(5, 9)
        phase = rng.uniform(0, 2 * np.pi)
        waves = 0.5 + 0.5 * np.sin(2 * np.pi * freq * yy + 3.0 * n2 + phase)
        base = np.array([0.10, 0.35, 0.70]) * rng.uniform(0.8, 1.15)
        img = base + waves[..., None] * np.array([0.15, 0.20, 0.22]) + 0.08 * n1[..., None]
    elif kind == "land":
        blobs = (n2 > rng.uniform(0.4, 0.6)).astype(np.float32)
        green = np.array([0.15, 0.45, 0.12]) * rng.uniform(0.8, 1.2)
        brown = np.array([0.40, 0.28, 0.12]) * rng.uniform(0.8, 1.2)
        img = blobs[..., None] * green + (1 - blobs[..., None]) * brown
        img = img + 0.18 * (n1[..., None] - 0.5)
    elif kind == "sand":
        img = np.array([0.85, 0.75, 0.50]) + 0.10 * (n1[..., None] - 0.5) + 0.06 * np.sin(
            2 * np.pi * 4 * (xx + 0.3 * yy) + 4 * n2
        )[..., None]
    elif kind == "snow":
        img = np.array([0.90, 0.92, 0.96]) + 0.08 * (n1[..., None] - 0.5) - 0.10 * n2[..., None]
    elif kind == "sky":
        grad = 1.0 - yy
        clouds = np.clip((n2 - 0.55) * 3, 0, 1)
        img = (
            np.array([0.45, 0.65, 0.95]) * (0.7 + 0.3 * grad[..., None])
            + clouds[..., None] * np.array([0.45, 0.30, 0.05])
        )
    elif kind == "brick":
        rows = np.floor(yy * 8)
        offset = (rows % 2) * 0.5 / 4
        mortar = ((yy * 8) % 1 < 0.12) | (((xx + offset) * 4) % 1 < 0.06)
        img = np.where(mortar[..., None], np.array([0.75, 0.72, 0.68]), np.array([0.60, 0.22, 0.15]))
        img = img + 0.10 * (n1[..., None] - 0.5)
    else:
        raise ValueError(f"unknown background kind {kind!r}; known: {', '.join(BACKGROUNDS)}")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ObjectPose:
    """How one object instance is drawn."""

    angle: float
    size: int
    cx: int
    cy: int
    stroke: int
    color: tuple[float, float, float]


def sample_pose(rng: np.random.Generator, size: int = IMAGE_SIZE) -> ObjectPose:
    obj = int(rng.integers(int(0.45 * size), int(0.66 * size) + 1))
    margin = obj // 2 + 1
    hue = rng.uniform(0, 1)
    # Bright, saturated colours that are never informative about the class.
    color = tuple(float(c) for c in _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.75, 1.0)))
    return ObjectPose(
        angle=float(rng.uniform(-25, 25)),
        size=obj,
        cx=int(rng.integers(margin, size - margin + 1)),
        cy=int(rng.integers(margin, size - margin + 1)),
        stroke=int(rng.integers(0, 3)),
        color=color,  # type: ignore[arg-type]
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def render_object_alpha(instance: int, pose: ObjectPose, size: int = IMAGE_SIZE) -> np.ndarray:
    """The object's soft alpha map in [0, 1], shape (size, size)."""
    glyph = _digit_bank()[0][instance]
    pil = Image.fromarray((glyph * 255).astype(np.uint8)).resize((pose.size, pose.size), Image.BICUBIC)
    pil = pil.rotate(pose.angle, resample=Image.BILINEAR, expand=False)
    alpha = np.asarray(pil, dtype=np.float32) / 255.0
    if pose.stroke:
        alpha = ndimage.grey_dilation(alpha, size=(pose.stroke + 1, pose.stroke + 1))
    alpha = np.clip((alpha - 0.25) * 2.5, 0.0, 1.0)
    canvas = np.zeros((size, size), dtype=np.float32)
    y0, x0 = pose.cy - pose.size // 2, pose.cx - pose.size // 2
    ys, xs = slice(max(y0, 0), min(y0 + pose.size, size)), slice(max(x0, 0), min(x0 + pose.size, size))
    canvas[ys, xs] = alpha[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return canvas


def compose(background: np.ndarray, alpha: np.ndarray, color: tuple[float, float, float]) -> np.ndarray:
    """Alpha-blend a flat-coloured object over a background; returns uint8 RGB."""
    shade = np.asarray(color, dtype=np.float32)
    img = background * (1 - alpha[..., None]) + shade * alpha[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def object_box(mask: np.ndarray, grow: int = 0) -> tuple[slice, slice] | None:
    """The (rows, cols) slices of ``mask``'s bounding box grown by ``grow`` px (clipped at
    the top/left; slicing clips the bottom/right), or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return (slice(max(int(ys.min()) - grow, 0), int(ys.max()) + 1 + grow),
            slice(max(int(xs.min()) - grow, 0), int(xs.max()) + 1 + grow))


def render_scene_with_pose(
    digit: int,
    background: str,
    rng: np.random.Generator,
    part: str = "benchmark",
    size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray, ObjectPose]:
    """:func:`render_scene` plus the object's pose (where, how large, which colour)."""
    pool = digit_instances(digit, part)
    instance = int(pool[rng.integers(len(pool))])
    pose = sample_pose(rng, size)
    alpha = render_object_alpha(instance, pose, size)
    img = compose(render_background(background, rng, size), alpha, pose.color)
    return img, alpha > 0.5, pose


def render_scene(
    digit: int,
    background: str,
    rng: np.random.Generator,
    part: str = "benchmark",
    size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8, (size, size, 3)) of ``digit`` on ``background`` and its bool mask."""
    img, mask, _ = render_scene_with_pose(digit, background, rng, part, size)
    return img, mask
