"""Stage-quality measurements for DDB on the toy world, read by the world oracle.

- :func:`segmentation_iou`: how well predicted object masks match the true masks.
- :func:`composition_success`: the share of generated images whose object is the
  intended digit AND whose background is still the source image's background.
- :func:`composition_report`: the same with its two parts (digit rate, background rate).

Images may be a uint8 array (N, H, W, 3), a float array in [0, 1], or a list of PIL
images; digits are 0-9 (or their words, "eight"); backgrounds are indices into
:data:`~spuraug.toyworld.render.BACKGROUNDS` or their names ("water").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spuraug.toyworld.oracle import as_uint8_batch, load_oracle, predict
from spuraug.toyworld.render import BACKGROUNDS, DIGIT_WORDS, object_box


def _as_masks(masks, name: str) -> np.ndarray:
    if isinstance(masks, (list, tuple)):
        masks = np.stack([np.asarray(m) for m in masks]) if len(masks) else np.zeros((0, 1, 1))
    arr = np.asarray(masks)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) masks, got shape {arr.shape}")
    if arr.dtype != bool:
        # uint8 0/255 masks, {0, 1} masks and probabilities all threshold at half the max value.
        top = 255 if arr.dtype == np.uint8 and arr.max(initial=0) > 1 else 1
        arr = arr >= 0.5 * top
    return arr


def segmentation_iou(pred_masks, true_masks, per_image: bool = False) -> float | np.ndarray:
    """Mean intersection-over-union of predicted vs true object masks.

    Masks are (N, H, W) bool / {0, 1} / uint8 0-255 / probabilities (thresholded at 0.5),
    or lists of 2-D masks; shapes must match. An image where both masks are empty counts
    as IoU 1. With ``per_image`` the N IoUs are returned instead of their mean.
    """
    pred, true = _as_masks(pred_masks, "pred_masks"), _as_masks(true_masks, "true_masks")
    if pred.shape != true.shape:
        raise ValueError(f"pred_masks shape {pred.shape} differs from true_masks shape {true.shape}")
    inter = (pred & true).sum(axis=(1, 2)).astype(np.float64)
    union = (pred | true).sum(axis=(1, 2)).astype(np.float64)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if per_image:
        return iou
    if len(iou) == 0:
        raise ValueError("segmentation_iou needs at least one mask")
    return float(iou.mean())


def _as_index(values, n: int, names: Sequence[str], what: str) -> np.ndarray:
    if isinstance(values, (str, int, np.integer)):
        values = [values] * n
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in names:
                raise ValueError(f"unknown {what} {v!r}; known: {', '.join(names)}")
            out.append(names.index(v))
        else:
            if not 0 <= int(v) < len(names):
                raise ValueError(f"{what} index {v!r} out of range 0..{len(names) - 1}")
            out.append(int(v))
    arr = np.asarray(out, dtype=np.int64)
    if len(arr) != n:
        raise ValueError(f"got {len(arr)} {what} values for {n} images")
    return arr


def composition_report(images, intended_digit, source_background, oracle=None) -> dict:
    """Oracle readings of generated images: ``n``, ``digit_rate`` (object is the intended
    digit), ``background_rate`` (background is the source's) and ``success`` (both), as
    shares in [0, 1], plus the per-image predictions ``pred_digit`` / ``pred_background``.

    ``intended_digit`` / ``source_background``: one value for all images or one per image.
    ``oracle``: a :class:`~spuraug.toyworld.oracle.WorldOracle`; default: the zoo's.
    """

    arr = as_uint8_batch(images)
    n = len(arr)
    if n == 0:
        raise ValueError("composition_report needs at least one image")
    digits = _as_index(intended_digit, n, DIGIT_WORDS, "digit")
    backgrounds = _as_index(source_background, n, BACKGROUNDS, "background")
    if oracle is None:
        oracle = load_oracle()
    pred_d, pred_b = predict(oracle, arr)
    ok_d, ok_b = pred_d == digits, pred_b == backgrounds
    return {
        "n": n,
        "digit_rate": float(ok_d.mean()),
        "background_rate": float(ok_b.mean()),
        "success": float((ok_d & ok_b).mean()),
        "pred_digit": pred_d,
        "pred_background": pred_b,
    }


def composition_success(images, intended_digit, source_background, oracle=None) -> float:
    """Share of ``images`` whose object the oracle reads as ``intended_digit`` AND whose
    background it reads as ``source_background`` (see :func:`composition_report`)."""
    return composition_report(images, intended_digit, source_background, oracle)["success"]


def box_crops(arrays: np.ndarray, masks: np.ndarray, size: int = 8) -> np.ndarray:
    """Each (C, h, w) array cropped to its object's bounding box and resized to ``size`` x
    ``size`` (``masks`` at the images' resolution; arrays may be smaller, e.g. latents)."""

    masks = _as_masks(masks, "masks")
    scale = masks.shape[1] // arrays.shape[2]
    out = np.empty((len(arrays), arrays.shape[1], size, size), dtype=np.float32)
    for i, (a, m) in enumerate(zip(arrays, masks)):
        box = object_box(m)
        if box is None:
            raise ValueError(f"mask {i} is empty: no object box to crop")
        ys, xs = box
        crop = a[:, ys.start // scale : (ys.stop - 1) // scale + 1, xs.start // scale : (xs.stop - 1) // scale + 1]
        t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None]
        out[i] = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    return out


def variance_explained(values: np.ndarray, keys: np.ndarray) -> float:
    """Share of the total variance of ``values`` (N, ...) explained by the group means of
    ``keys`` (N,): between-group sum of squares over total sum of squares (eta squared).
    With few samples per group it is biased upwards (by about groups / N)."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    keys = np.asarray(keys)
    means = np.zeros_like(v)
    for k in np.unique(keys):
        means[keys == k] = v[keys == k].mean(axis=0)
    total = ((v - v.mean(axis=0)) ** 2).sum()
    return float(((means - v.mean(axis=0)) ** 2).sum() / total) if total > 0 else 0.0
