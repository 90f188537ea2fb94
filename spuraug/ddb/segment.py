"""Stage 2a: the causal object's mask from a text prompt.

Default backend "grounded_sam" is the LangSAM recipe of the paper through transformers,
with LangSAM's own models (luca-medeiros/lang-segment-anything, which the public DDB code
imports: Grounding DINO base and SAM 2.1 hiera-small): Grounding DINO
(``IDEA-Research/grounding-dino-base``) finds boxes for the prompt (``"bird."``), SAM 2.1
(``facebook/sam2.1-hiera-small``, transformers' ``Sam2Model``) turns the chosen box into a
mask (single-mask output, binarised). SAM v1 checkpoints (``facebook/sam-vit-base``, the
earlier default) and ``IDEA-Research/grounding-dino-tiny`` still load: the SAM class is
chosen from the checkpoint's ``model_type``. "clipseg" (``CIDAS/clipseg-rd64-refined``) thresholds
CLIPSeg's heat map instead. Masks are saved as ``masks/<source id>.png`` (0/255) next to
``masks/<source id>.json`` (found, score, area); a source where nothing is found gets
only the JSON and is skipped by inpainting, as in the public code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from spuraug import atomic
from spuraug.ddb import hub
from spuraug.ddb.artifacts import read_json, safe_name, write_json_sorted
from spuraug.ddb.config import SegmentConfig
from spuraug.engine import resolve_device

#: ``segmenter(images, prompt) -> [(mask bool[H, W] or None, score)]``
Segmenter = Callable[[list[Image.Image], str], list[tuple[np.ndarray | None, float]]]


class GroundedSAM:
    """Grounding DINO box + SAM mask (LangSAM), both through transformers."""

    def __init__(self, cfg: SegmentConfig, device: torch.device | str = "cpu") -> None:
        from transformers import (
            AutoConfig,
            AutoProcessor,
            GroundingDinoForObjectDetection,
            Sam2Model,
            Sam2Processor,
            SamModel,
            SamProcessor,
        )  # deferred: heavy model library, only the DDB stages need it

        self.cfg = cfg
        self.device = resolve_device(device)
        self.det_processor = hub.load(AutoProcessor, cfg.detector, revision=cfg.revision)
        self.detector = hub.load(GroundingDinoForObjectDetection, cfg.detector, revision=cfg.revision).eval().to(self.device)
        self.sam2 = hub.load(AutoConfig, cfg.sam, revision=cfg.revision).model_type == "sam2"
        proc_cls, model_cls = (Sam2Processor, Sam2Model) if self.sam2 else (SamProcessor, SamModel)
        self.sam_processor = hub.load(proc_cls, cfg.sam, revision=cfg.revision)
        self.sam = hub.load(model_cls, cfg.sam, revision=cfg.revision).eval().to(self.device)

    @torch.no_grad()
    def boxes(self, images: list[Image.Image], prompt: str) -> list[tuple[list[float] | None, float]]:
        text = prompt.lower().strip()
        if not text.endswith("."):
            text += "."  # Grounding DINO expects "category." phrases
        inputs = self.det_processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        out = self.detector(**inputs)
        results = self.det_processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=self.cfg.box_threshold, text_threshold=self.cfg.text_threshold,
            target_sizes=[(im.height, im.width) for im in images],
        )
        chosen: list[tuple[list[float] | None, float]] = []
        for r in results:
            scores = r["scores"]
            if len(scores) == 0:
                chosen.append((None, 0.0))
                continue
            k = int(torch.argmax(scores)) if self.cfg.box_choice == "top_score" else 0
            chosen.append(([float(v) for v in r["boxes"][k].tolist()], float(scores[k])))
        return chosen

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompt: str) -> list[tuple[np.ndarray | None, float]]:
        boxes = self.boxes(images, prompt)
        out: list[tuple[np.ndarray | None, float]] = [(None, s) for _, s in boxes]
        hit = [i for i, (b, _) in enumerate(boxes) if b is not None]
        if not hit:
            return out
        imgs = [images[i] for i in hit]
        inputs = self.sam_processor(images=imgs, input_boxes=[[boxes[i][0]] for i in hit], return_tensors="pt")
        pixel = inputs["pixel_values"].to(self.device, self.sam.dtype)
        pred = self.sam(pixel_values=pixel, input_boxes=inputs["input_boxes"].to(self.device, self.sam.dtype),
                        multimask_output=False)
        if self.sam2:  # SAM 2 resizes to a square without padding: only the original sizes are needed
            masks = self.sam_processor.post_process_masks(pred.pred_masks.float().cpu(), inputs["original_sizes"],
                                                          binarize=True)
        else:
            masks = self.sam_processor.post_process_masks(
                pred.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=True
            )
        for j, i in enumerate(hit):
            out[i] = (masks[j][0, 0].numpy().astype(bool), boxes[i][1])  # first box, its one mask
        return out


class CLIPSegSegmenter:
    """CLIPSeg heat map thresholded at ``clipseg_threshold``."""

    def __init__(self, cfg: SegmentConfig, device: torch.device | str = "cpu") -> None:
        from transformers import (  # deferred: heavy model library, only the DDB stages need it
            CLIPSegForImageSegmentation,
            CLIPSegProcessor,
        )

        self.cfg = cfg
        self.device = resolve_device(device)
        self.processor = hub.load(CLIPSegProcessor, cfg.clipseg, revision=cfg.revision)
        self.model = hub.load(CLIPSegForImageSegmentation, cfg.clipseg, revision=cfg.revision).eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompt: str) -> list[tuple[np.ndarray | None, float]]:
        text = prompt.strip().rstrip(".")
        inputs = self.processor(text=[text] * len(images), images=images, padding=True, return_tensors="pt")
        logits = self.model(**inputs.to(self.device)).logits
        if logits.dim() == 2:
            logits = logits[None]
        heat = logits.float().sigmoid()[:, None]
        out: list[tuple[np.ndarray | None, float]] = []
        for k, im in enumerate(images):
            h = torch.nn.functional.interpolate(heat[k : k + 1], size=(im.height, im.width), mode="bilinear",
                                                align_corners=False)[0, 0].cpu()
            mask = (h > self.cfg.clipseg_threshold).numpy()
            out.append((mask if mask.any() else None, float(h.max())))
        return out


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of ``mask`` with its holes filled."""

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))


def build_segmenter(cfg: SegmentConfig, device: torch.device | str = "auto") -> Segmenter:
    """The configured backend, models loaded by id or folder through :mod:`spuraug.ddb.hub`."""
    if cfg.backend == "grounded_sam":
        seg: Segmenter = GroundedSAM(cfg, device)
    elif cfg.backend == "clipseg":
        seg = CLIPSegSegmenter(cfg, device)
    else:
        raise ValueError(f"ddb.segment.backend: unknown {cfg.backend!r}")
    if not cfg.clean:
        return seg

    def cleaned(images: list[Image.Image], prompt: str) -> list[tuple[np.ndarray | None, float]]:
        return [(clean_mask(m) if m is not None else None, s) for m, s in seg(images, prompt)]

    return cleaned


def mask_path(mask_dir: Path, source_id: str) -> Path:
    return Path(mask_dir) / f"{safe_name(source_id)}.png"


def load_mask(mask_dir: Path, source_id: str) -> np.ndarray | None:
    """The saved mask of ``source_id`` (bool array) or ``None`` where nothing was found."""
    p = mask_path(mask_dir, source_id)
    if not p.is_file():
        return None
    with Image.open(p) as im:
        return np.asarray(im.convert("L")) > 127


def segment_sources(
    items: Iterable[tuple[str, Callable[[], Image.Image]]],
    segmenter: Segmenter,
    prompt: str,
    mask_dir: Path,
    batch_size: int = 8,
    total: int | None = None,
) -> dict:
    """Segment every ``(source_id, load_image)``; resumable (sources with a JSON are skipped).

    Returns counts ``{"sources", "found", "not_found"}`` over all items (new and old).
    """
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    items = list(items)
    todo = [(sid, load) for sid, load in items if not (mask_dir / f"{safe_name(sid)}.json").is_file()]
    pbar = tqdm(total=total or len(items), initial=len(items) - len(todo), desc="segment", unit="img",
                dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = [load() for _, load in chunk]
            for (sid, _), im, (mask, score) in zip(chunk, images, segmenter(images, prompt)):
                meta = {"source_id": sid, "found": mask is not None, "score": score,
                        "area": float(mask.mean()) if mask is not None else 0.0, "size": [im.width, im.height]}
                if mask is not None:
                    atomic.save_image(mask_path(mask_dir, sid), Image.fromarray((mask * 255).astype(np.uint8)))
                write_json_sorted(mask_dir / f"{safe_name(sid)}.json", meta)
                pbar.update(1)
    finally:
        pbar.close()
    found = sum(bool(read_json(mask_dir / f"{safe_name(sid)}.json")["found"]) for sid, _ in items)
    return {"sources": len(items), "found": found, "not_found": len(items) - found}
