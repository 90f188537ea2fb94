"""Stage 2b: repaint each source's object as the OTHER class with Stable Diffusion inpainting.

For a source of class ``i`` the mask region is regenerated with the prompt
``"a photo of a <j> bird"`` (the learned token of the other class ``j`` loaded with
``load_textual_inversion``); the background, the spurious context of class ``i``'s
majority, is kept: the pipeline's output is pasted into the source outside the mask
(``paste_back``), so those pixels are the source's own, not their VAE reconstruction.

Each sample's seed is derived from its id (source id and target class), never from its
position in a run, and batches are fixed chunks of a fixed plan, so a run killed at
any point and resumed writes exactly the images an uninterrupted run writes. Each image
and its JSON record are written atomically (image first, record last: a record means a
finished sample).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from spuraug import atomic
from spuraug.ddb import hub
from spuraug.ddb.artifacts import read_json, safe_name, write_json_sorted
from spuraug.ddb.config import ATTENTION_BACKENDS, InpaintConfig
from spuraug.ddb.invert import mask_image
from spuraug.engine import resolve_device

_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
}


def sample_seed(base_seed: int, source_id: str, target_class: int) -> int:
    """The generator seed of one sample: a hash of (base seed, source id, target class)."""
    digest = hashlib.sha256(f"{int(base_seed)}|{source_id}|{int(target_class)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_id(source_id: str, target_class: int) -> str:
    return f"{safe_name(source_id)}__to{int(target_class)}"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
            "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[name]


def load_inpaint_pipeline(
    cfg: InpaintConfig, embeddings: dict[str, Path] | None = None, device: torch.device | str = "auto"
):
    """The inpainting pipeline of ``cfg.model`` with the learned tokens loaded, SDPA attention."""
    import diffusers  # deferred: heavy optional model library, only the DDB stages need it
    from diffusers import (
        StableDiffusionInpaintPipeline,  # deferred: heavy optional model library, only the DDB stages need it
    )

    device = resolve_device(device if device != "auto" else cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pipe = hub.load(StableDiffusionInpaintPipeline, cfg.model, revision=cfg.revision, dtype=dtype,
                    safety_checker=None, requires_safety_checker=False)
    if pipe.unet.config.in_channels != 9:
        raise ValueError(f"{cfg.model}: the inpainting UNet must take 9 input channels, found {pipe.unet.config.in_channels}")
    for token, path in (embeddings or {}).items():
        pipe.load_textual_inversion(str(path), token=token)
    if cfg.scheduler != "default":
        cls = getattr(diffusers, _SCHEDULERS[cfg.scheduler])
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)  # speed_up gives the UNet SDPA attention (torch scaled_dot_product_attention)
    pipe.unet = speed_up(pipe.unet, channels_last=cfg.channels_last, fuse_qkv=cfg.fuse_qkv,
                         attention=cfg.attention, compile=cfg.compile, compile_mode=cfg.compile_mode)
    return pipe


def _sdpa_order(first: str) -> list:

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if first not in names:
        raise ValueError(f"inpaint.attention: {first!r} is not one of {ATTENTION_BACKENDS}")
    if first == "math":  # the reference kernel alone (fallbacks would never be reached by choice)
        return [SDPBackend.MATH]
    return [names[first]] + [b for k, b in names.items() if k != first]


@functools.cache
def _backend_processor_class(base: type, first: str) -> type:
    """``base`` (an SDPA attention processor class) calling attention inside ``sdpa_kernel``."""

    order = _sdpa_order(first)

    def __call__(self, *args, **kwargs):
        with sdpa_kernel(order, set_priority=len(order) > 1):
            return base.__call__(self, *args, **kwargs)

    return type(f"{base.__name__}_{first}", (base,), {"__call__": __call__, "backend": first})


def speed_up(unet, *, channels_last: bool = False, fuse_qkv: bool = False, attention: str = "auto",
             compile: bool = False, compile_mode: str = "default"):
    """Set the UNet's speed options; returns the module to call (compiled when ``compile``).

    Applies to an uncompiled UNet and can be called again on it to switch options: each
    call starts from SDPA attention (``AttnProcessor2_0``), unfused projections and the
    contiguous layout. The weights are the same either way: fusion concatenates the
    projection matrices, channels-last changes the layout, ``attention`` the SDPA kernel
    tried first, compilation the kernels.
    """
    from diffusers.models.attention_processor import (
        AttnProcessor2_0,  # deferred: heavy optional model library, only the DDB stages need it
    )

    if hasattr(unet, "_orig_mod"):
        raise ValueError("speed_up: pass the uncompiled UNet (this one is already torch.compile'd)")
    order = _sdpa_order(attention) if attention != "auto" else None  # a bad name fails before any change
    if getattr(unet, "spuraug_fused_qkv", False):
        unet.unfuse_qkv_projections()
    unet.set_attn_processor(AttnProcessor2_0())
    unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if fuse_qkv:
        unet.fuse_qkv_projections()
    unet.spuraug_fused_qkv = fuse_qkv
    if order is not None:
        unet.set_attn_processor({k: _backend_processor_class(type(p), attention)()
                                 for k, p in unet.attn_processors.items()})
    return torch.compile(unet, mode=compile_mode, dynamic=False) if compile else unet


@dataclass
class Source:
    """One image to repaint."""

    source_id: str
    position: int
    source_class: int
    rank: int
    load_image: Callable[[], Image.Image]
    mask_file: Path


@dataclass
class Plan:
    sample_id: str
    source: Source
    target_class: int
    seed: int


def make_plan(sources: Sequence[Source], n_classes: int, base_seed: int) -> list[Plan]:
    """Every (source, other class) pair, ordered by (source class, rank)."""
    plan = []
    for s in sorted(sources, key=lambda s: (s.source_class, s.rank, s.source_id)):
        for j in range(n_classes):
            if j != s.source_class:
                plan.append(Plan(sample_id(s.source_id, j), s, j, sample_seed(base_seed, s.source_id, j)))
    return plan


def _read_mask(path: Path, size: tuple[int, int], dilation: int, mode: str = "mask") -> Image.Image:
    with Image.open(path) as im:
        return region_from_mask(im.convert("L"), size, dilation, mode)


def region_from_mask(mask: Image.Image | np.ndarray, size: tuple[int, int], dilation: int = 0,
                     mode: str = "mask") -> Image.Image:
    """The region inpainting repaints for an object ``mask`` (bool array or L image), at
    ``size`` (W, H): the mask itself or its bounding box (``mode``), grown by ``dilation`` px;
    an L image of 0/255."""
    m = mask_image(mask)
    if m.size != size:
        m = m.resize(size, Image.Resampling.NEAREST)
    if mode == "box":
        box = m.point(lambda v: 255 if v > 127 else 0).getbbox()
        m = Image.new("L", m.size, 0)
        if box is not None:
            m.paste(255, box)
    if dilation > 0:
        m = m.filter(ImageFilter.MaxFilter(2 * dilation + 1))
    return m.point(lambda v: 255 if v > 127 else 0)


def edited_region(mask_file: Path, cfg: InpaintConfig) -> Image.Image:
    """The region the inpainting stage repainted for a source, at the mask file's size
    (the object mask, or its box with ``mask_mode: box``, dilated by ``mask_dilation``)."""
    with Image.open(mask_file) as im:
        size = im.size
    return _read_mask(Path(mask_file), size, cfg.mask_dilation, cfg.mask_mode)


def paste_back(source: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` inside ``mask``, ``source`` outside it (all at the source's size)."""
    if generated.size != source.size:
        generated = generated.resize(source.size, Image.Resampling.BICUBIC)
    m = np.asarray(mask) > 127
    out = np.where(m[..., None], np.asarray(generated.convert("RGB")), np.asarray(source.convert("RGB")))
    return Image.fromarray(out.astype(np.uint8))


def inpaint(
    pipe,
    plan: Sequence[Plan],
    tokens: Sequence[str],
    cfg: InpaintConfig,
    out_dir: Path,
    on_written: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Generate every planned sample not yet on disk; returns the table of all samples.

    Writes ``images/<sample id>.png`` and then ``images/<sample id>.json``. Batches are
    the fixed chunks ``plan[k*B:(k+1)*B]``; a chunk with any missing sample is computed
    whole and only the missing samples are written, so outputs do not depend on where
    a previous run stopped. ``on_written(sample_id)`` is called after each record.
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    done = {p.sample_id for p in plan if (img_dir / f"{p.sample_id}.json").is_file()}
    bs = max(1, int(cfg.batch_size))
    pbar = tqdm(total=len(plan), initial=len(done), desc="inpaint", unit="img", dynamic_ncols=True)
    try:
        for start in range(0, len(plan), bs):
            chunk = list(plan[start : start + bs])
            if all(p.sample_id in done for p in chunk):
                continue
            sources = [p.source.load_image().convert("RGB") for p in chunk]
            masks_full = [_read_mask(p.source.mask_file, im.size, cfg.mask_dilation, cfg.mask_mode)
                          for p, im in zip(chunk, sources)]
            r = int(cfg.resolution)
            images = [im.resize((r, r), Image.Resampling.BICUBIC) for im in sources]
            masks = [m.resize((r, r), Image.Resampling.NEAREST) for m in masks_full]
            prompts = [cfg.prompt.format(token=tokens[p.target_class]) for p in chunk]
            gens = [torch.Generator().manual_seed(p.seed) for p in chunk]
            kwargs = {}
            if cfg.negative_prompt:
                kwargs["negative_prompt"] = [cfg.negative_prompt] * len(chunk)
            result = pipe(prompt=prompts, image=images, mask_image=masks, height=r, width=r,
                          num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                          strength=cfg.strength, generator=gens, output_type="pil", **kwargs).images
            for p, src, mfull, gen_img, prompt in zip(chunk, sources, masks_full, result, prompts):
                if p.sample_id in done:
                    continue
                final = paste_back(src, gen_img, mfull) if cfg.paste_back else gen_img.resize(src.size, Image.Resampling.BICUBIC)
                write_sample(out_dir, p, final, cfg, {
                    "generator": "diffusers", "prompt": prompt, "negative_prompt": cfg.negative_prompt,
                    "num_inference_steps": cfg.num_inference_steps, "guidance_scale": cfg.guidance_scale,
                    "strength": cfg.strength, "resolution": r, "paste_back": cfg.paste_back})
                done.add(p.sample_id)
                pbar.update(1)
                if on_written is not None:
                    on_written(p.sample_id)
    finally:
        pbar.close()
    return samples_table(out_dir, plan)


def write_sample(out_dir: Path, p: Plan, image: Image.Image, cfg: InpaintConfig, extra: dict) -> None:
    """Write one generated sample: ``images/<sample id>.png``, then its record
    ``images/<sample id>.json`` (the fields every sample has, plus its generator's ``extra``);
    the record last, so a record means a finished sample."""
    out_dir = Path(out_dir)
    img_path = out_dir / "images" / f"{p.sample_id}.png"
    atomic.save_image(img_path, image)
    label = p.target_class if cfg.label == "new" else p.source.source_class
    record = {
        "sample_id": p.sample_id, "file": str(img_path.relative_to(out_dir)),
        "source_id": p.source.source_id, "source_position": p.source.position,
        "source_class": p.source.source_class, "source_rank": p.source.rank,
        "target_class": p.target_class, "label": label, "seed": p.seed, "mask": str(p.source.mask_file),
        "mask_dilation": cfg.mask_dilation, "mask_mode": cfg.mask_mode, **extra,
    }
    write_json_sorted(img_path.with_suffix(".json"), record)


def samples_table(out_dir: Path, plan: Sequence[Plan]) -> pd.DataFrame:
    """The records of the planned samples that exist, in plan order."""
    rows = []
    for p in plan:
        rec = Path(out_dir) / "images" / f"{p.sample_id}.json"
        if rec.is_file():
            rows.append(read_json(rec))
    return pd.DataFrame(rows)
