"""The oracle generator of the toy benchmark (``ddb.inpaint.backend: oracle``).

DDB's learned generator (textual inversion + the toy zoo's inpainting model) and the rest
of its pipeline (sources, masks, pruning, gamma-weighted retraining) fail or succeed
together. The oracle makes the edit the generator is asked for, exactly, with the toy's
own renderer, so the pipeline can be measured apart from the generator (issue 18 item 4):

1. the source's digit is erased: its exact object mask (the toy dataset's ground truth,
   grown by :data:`ERASE_GROW` px to take the anti-aliased rim) is filled from the
   surrounding background by diffusion (:func:`fill_from_surroundings`);
2. the target class's digit is drawn with :func:`spuraug.toyworld.render.render_object_alpha`
   and :func:`~spuraug.toyworld.render.compose`: a handwriting instance of the ``"world"``
   part (disjoint from the benchmark's, as the toy world corpus), angle, stroke and colour
   drawn by :func:`~spuraug.toyworld.render.sample_pose`, centred on the edit region and
   sized to fit in it (:func:`fit_pose`).

Only pixels inside the edit region change: it is the region the diffusers backend repaints
(the segment stage's mask, or its box with ``inpaint.mask_mode: box``, grown by
``inpaint.mask_dilation``), which is also the region pruning reads attributions in. A part
of the source's digit the segmenter missed outside that region stays, as it would with a
learned generator (the record counts those pixels: ``object_pixels_outside_region``).

Everything is a function of the sample's seed (:func:`spuraug.ddb.inpaint.sample_seed`): the
same source, target class and base seed give the same pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from spuraug.ddb.config import InpaintConfig
from spuraug.ddb.inpaint import Plan, _read_mask, write_sample
from spuraug.toyworld.render import (
    ObjectPose,
    compose,
    digit_instances,
    object_box,
    render_object_alpha,
    sample_pose,
)

#: Bumped when an oracle edit's pixels change (it is part of the inpaint stage's key).
ORACLE_VERSION = 1
#: Pixels the exact object mask (alpha > 0.5) is grown by before erasing: the renderer's
#: anti-aliased rim (0 < alpha <= 0.5) lies within about one pixel of it.
ERASE_GROW = 2
#: Smoothing sweeps after the hole is filled ring by ring.
SMOOTH_SWEEPS = 20
#: The drawn digit is shrunk (1 px a step) until at most this share of its alpha lies
#: outside the edit region; what still lies outside is cut off. Never below half the start.
OUTSIDE_TOLERANCE = 0.02

_CROSS = ndimage.generate_binary_structure(2, 1)


def oracle_share(base_seed: int, source_id: str, target_class: int) -> float:
    """A number in [0, 1) fixed by (base seed, source id, target class): the sample is made
    by the oracle when it is below ``inpaint.oracle_mix``. It hashes other text than the
    sample's generator seed, so which samples are chosen does not follow their draws."""
    digest = hashlib.sha256(f"oracle-mix|{int(base_seed)}|{source_id}|{int(target_class)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def split_plan(plan: Sequence, oracle_mix: float, base_seed: int) -> tuple[list, list]:
    """The planned samples the oracle makes and those the learned pipeline makes (each in
    plan order): a sample goes to the oracle when its :func:`oracle_share` is below
    ``oracle_mix``, so a smaller mix picks a subset of a larger one's samples."""
    oracle, learned = [], []
    for p in plan:
        (oracle if oracle_share(base_seed, p.source.source_id, p.target_class) < oracle_mix else learned).append(p)
    return oracle, learned


def fill_from_surroundings(image: np.ndarray, hole: np.ndarray, sweeps: int = SMOOTH_SWEEPS) -> np.ndarray:
    """``image`` (H, W, 3) with the ``hole`` pixels filled from the rest: ring by ring from
    the hole's rim inward, each pixel the mean of its already-known 4-neighbours, then
    ``sweeps`` Jacobi sweeps of the 4-neighbour average inside the hole (a diffusion fill:
    smooth, and on the toy's smooth backgrounds close to the colours around). Returns float32
    in the image's value range; pixels outside ``hole`` are unchanged."""
    out = np.asarray(image, dtype=np.float32).copy()
    hole = np.asarray(hole, bool).copy()
    if not hole.any():
        return out
    if hole.all():
        raise ValueError("fill_from_surroundings: the hole covers the whole image; nothing to fill from")
    known = ~hole
    kernel = _CROSS.astype(np.float32)
    kernel[1, 1] = 0
    todo = hole.copy()
    while todo.any():
        count = ndimage.convolve(known.astype(np.float32), kernel, mode="constant")
        ring = todo & (count > 0)
        sums = np.stack([ndimage.convolve(out[..., c] * known, kernel, mode="constant") for c in range(out.shape[-1])], -1)
        out[ring] = sums[ring] / count[ring][:, None]
        known = known | ring
        todo = todo & ~ring
    for _ in range(sweeps):
        count = ndimage.convolve(np.ones(hole.shape, np.float32), kernel, mode="constant")
        avg = np.stack([ndimage.convolve(out[..., c], kernel, mode="constant") for c in range(out.shape[-1])], -1)
        out[hole] = avg[hole] / count[hole][:, None]
    return out


def fit_pose(instance: int, pose: ObjectPose, region: np.ndarray) -> tuple[ObjectPose, np.ndarray]:
    """``pose`` centred on ``region``'s bounding box and sized to it: the glyph's square side
    starts at the box's larger side and shrinks until at most :data:`OUTSIDE_TOLERANCE` of the
    drawn alpha falls outside ``region`` (never below half the start). Returns the pose and
    its alpha map cut to the region."""
    size = region.shape[0]
    box = object_box(region)
    if box is None:
        raise ValueError("fit_pose: the edit region is empty")
    rows, cols = box
    cy, cx = (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2
    start = max(rows.stop - rows.start, cols.stop - cols.start)
    side = start
    while True:
        fitted = replace(pose, size=int(side), cx=int(cx), cy=int(cy))
        alpha = render_object_alpha(instance, fitted, size)
        total = float(alpha.sum())
        outside = float(alpha[~region].sum())
        if total == 0 or outside <= OUTSIDE_TOLERANCE * total or side <= max(2, start // 2):
            return fitted, alpha * region
        side -= 1


def oracle_edit(source: np.ndarray, object_mask: np.ndarray, region: np.ndarray, target_digit: int,
                seed: int) -> tuple[np.ndarray, dict]:
    """The oracle's edit of one toy image: ``source`` (H, W, 3 uint8) with its digit
    (``object_mask``, the exact mask) erased and ``target_digit`` drawn, changing only pixels
    inside ``region`` (bool, H x W). Returns the edited uint8 image and a record of what was
    drawn (instance, pose, colour, erased pixels, object pixels outside the region)."""
    source = np.asarray(source)
    object_mask = np.asarray(object_mask, bool)
    region = np.asarray(region, bool)
    if source.shape[:2] != region.shape or object_mask.shape != region.shape:
        raise ValueError(f"oracle_edit: image {source.shape[:2]}, object mask {object_mask.shape} and region "
                         f"{region.shape} differ in size")
    erase = ndimage.binary_dilation(object_mask, _CROSS, iterations=ERASE_GROW) & region
    background = fill_from_surroundings(source, erase) / 255.0
    rng = np.random.default_rng(int(seed))
    pool = digit_instances(int(target_digit), "world")
    instance = int(pool[rng.integers(len(pool))])
    pose, alpha = fit_pose(instance, sample_pose(rng, region.shape[0]), region)
    drawn = compose(background, alpha, pose.color)
    out = np.where(region[..., None], drawn, source).astype(np.uint8)
    info = {"oracle_digit": int(target_digit), "oracle_instance": instance, "oracle_size": pose.size,
            "oracle_angle": round(pose.angle, 3), "oracle_stroke": pose.stroke,
            "oracle_color": [round(c, 4) for c in pose.color], "oracle_center": [pose.cx, pose.cy],
            "erased_pixels": int(erase.sum()), "object_pixels_outside_region": int((object_mask & ~region).sum())}
    return out, info


def oracle_inpaint(plan: Sequence[Plan], cfg: InpaintConfig, out_dir: Path, object_mask: Callable[[int], np.ndarray],
                   target_digits: Sequence[int], on_written: Callable[[str], None] | None = None) -> int:
    """Make every planned sample not yet on disk with :func:`oracle_edit`, into the same files
    and records as the learned path (:func:`spuraug.ddb.inpaint.write_sample`): the edit
    region is the one the learned path repaints (the source's mask file, ``cfg.mask_mode``,
    ``cfg.mask_dilation``), ``object_mask(position)`` the source's exact mask,
    ``target_digits[c]`` the digit of class ``c``. Returns how many samples were made."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    made = 0
    for p in tqdm(plan, desc="inpaint (oracle)", unit="img", dynamic_ncols=True):
        if (out_dir / "images" / f"{p.sample_id}.json").is_file():
            continue
        src = p.source.load_image().convert("RGB")
        region = np.asarray(_read_mask(p.source.mask_file, src.size, cfg.mask_dilation, cfg.mask_mode)) > 127
        edited, info = oracle_edit(np.asarray(src), object_mask(p.source.position), region,
                                   target_digits[p.target_class], p.seed)
        write_sample(out_dir, p, Image.fromarray(edited), cfg, {"generator": "oracle", **info})
        made += 1
        if on_written is not None:
            on_written(p.sample_id)
    return made
