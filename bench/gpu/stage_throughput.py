"""Throughput of DDB's other GPU stages on the real architectures (random weights).

The companion of ``bench/gpu/ddb_throughput.py`` (inpainting): images/s, FLOPs per image
(``torch.utils.flop_counter.FlopCounterMode``) and achieved TFLOP/s against the bf16
matrix-product ceiling of the same GPU, for

- ``invert``: textual inversion through ``spuraug.ddb.invert.train_token`` on the SD2-base
  architectures (4-channel UNet, SD2 VAE, OpenCLIP ViT-H text encoder), 512 px, the
  published recipe's batch 1 x accumulation 4 per optimizer step (``--invert-fused``: the
  four micro-batches as one pass, ``invert.fuse_accumulation``); backward included;
- ``segment``: Grounding DINO (the tiny config: Swin-T, BERT-base) + SAM (ViT-B, the
  configured ``facebook/sam-vit-base``) through ``spuraug.ddb.segment.GroundedSAM``, saved with
  ``save_pretrained`` and loaded by folder like the real ids;
- ``prune``: Integrated Gradients (50 steps, captum internal batch 64) on a ResNet-50 at
  224 px through ``spuraug.ddb.prune.score_samples``.

Each stage runs as the stage code runs it (its dtype, its batching), so the ratio says
what the stage achieves, not what the architecture could. Every phase is time-bounded
and prints progress; ``--smoke`` runs tiny configs on CPU in seconds (tested).

    python -m bench.gpu.stage_throughput --out gpu_stages.json          # on a CUDA machine
    python -m bench.gpu.stage_throughput --smoke --out /tmp/stages.json  # anywhere
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from bench.gpu.ddb_throughput import (
    SD2_SCHEDULER,
    SD2_UNET,
    SD2_VAE,
    SMOKE_UNET,
    SMOKE_VAE,
    Deadline,
    build_text_encoder,
    center_mask,
    flops_of,
    log,
    matmul_ceiling,
    random_images,
    timed_calls,
    write_json,
)
from spuraug.data.transforms import waterbirds_transform
from spuraug.ddb import invert, prune, segment
from spuraug.ddb.config import InvertConfig, SegmentConfig

STAGES = ("invert", "segment", "prune")


def _timed(fn, images_per_call: int, device: torch.device, min_time: float, deadline: Deadline) -> dict:
    calls, dt, warm = timed_calls(fn, device, min_time, deadline)
    return {"images_per_s": images_per_call * calls / dt, "calls": calls, "seconds": dt, "warmup_s": warm,
            "images_per_call": images_per_call}


def invert_stage(smoke: bool, device: torch.device, min_time: float, deadline: Deadline, fused: bool,
                 res: int | None = None) -> dict:
    from diffusers import (  # deferred: heavy optional model library, only the DDB stages need it
        AutoencoderKL,
        DDPMScheduler,
        UNet2DConditionModel,
    )


    torch.manual_seed(0)
    tok, text = build_text_encoder(smoke, device)  # add_tokens grows its embedding for the new token
    unet_cfg = {**(SMOKE_UNET if smoke else SD2_UNET), "in_channels": 4}  # SD2-base: 4 latent channels
    with torch.device(device):
        comps = invert.SDComponents(
            tokenizer=tok, text_encoder=text, vae=AutoencoderKL(**(SMOKE_VAE if smoke else SD2_VAE)),
            unet=UNet2DConditionModel(**unet_cfg),
            noise_scheduler=DDPMScheduler(**{k: v for k, v in SD2_SCHEDULER.items() if k != "set_alpha_to_one"}),
        )
    ids = invert.add_tokens(comps, ["<class-0>"], "bird")
    res = res or (32 if smoke else 512)
    images = random_images(8, res)
    base = InvertConfig(model="(built in memory)", resolution=res, checkpoint_every=10**9, fuse_accumulation=fused)
    per_step = base.train_batch_size * base.gradient_accumulation_steps
    work = Path(tempfile.mkdtemp(prefix="ddb_invert_"))
    folders = itertools.count()

    def run(steps: int) -> None:
        # a fresh folder each call: train_token resumes from a checkpoint it finds
        invert.train_token(comps, images, "<class-0>", ids[0], dataclasses.replace(base, max_train_steps=steps),
                           work / str(next(folders)), device=device, desc="invert (bench)")

    log("invert: counting the FLOPs of one optimizer step ...")
    flops = flops_of(lambda: run(1))[0] / per_step
    steps = 2 if smoke else 8
    r = _timed(lambda: run(steps), steps * per_step, device, min_time, deadline)
    return {"stage": "invert", "flops_per_image": flops, "resolution": res, "fuse_accumulation": fused,
            "images_per_optimizer_step": per_step, "optimizer_steps_per_call": steps,
            "dtype": "bf16 UNet/VAE, fp32 text encoder" if device.type == "cuda" else "fp32", **r}


def segment_stage(smoke: bool, device: torch.device, min_time: float, deadline: Deadline, batch: int) -> dict:

    root = Path(tempfile.mkdtemp(prefix="ddb_segment_"))
    if smoke:
        # the tiny test models, only in --smoke mode (run from a checkout: tests/ is not installed)
        from tests.tiny_models import (  # deferred: test-only model builders, smoke modes only
            save_grounding_dino,
            save_sam,
        )

        det, sam = save_grounding_dino(root / "gdino"), save_sam(root / "sam")
    else:
        det, sam = save_grounding_dino_tiny(root / "gdino"), save_sam_vit_base(root / "sam")
    # thresholds 0: random weights still give boxes, so SAM runs on every image as with a real object
    cfg = SegmentConfig(detector=str(det), sam=str(sam), box_threshold=0.0, text_threshold=0.0)
    seg = segment.GroundedSAM(cfg, device)
    res = 64 if smoke else 448
    images = random_images(batch, res)
    log("segment: counting the FLOPs of one image ...")
    flops = flops_of(lambda: seg(images[:1], "bird"))[0]
    r = _timed(lambda: seg(images, "bird"), batch, device, min_time, deadline)
    return {"stage": "segment", "flops_per_image": flops, "resolution": res, "batch_size": batch,
            "models": "Grounding DINO tiny config + SAM ViT-B config" if not smoke else "tiny", "dtype": "fp32", **r,
            "note": "FlopCounterMode has no formula for deformable attention (grid_sample): not counted"}


def write_bert_vocab(folder: Path, words) -> Path:
    """A BERT WordPiece ``vocab.txt`` written here (no download): the special tokens, ``words``
    and every printable ASCII character alone and as a ``##`` continuation."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)]
    vocab = specials + list(dict.fromkeys(list(words) + chars + ["##" + c for c in chars]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder / "vocab.txt"


def save_grounding_dino_tiny(folder: Path) -> Path:
    """GroundingDinoConfig's defaults are IDEA-Research/grounding-dino-tiny's (Swin-T, BERT-base,
    900 queries, 6+6 layers); the processor's image sizes are that model's (800 / 1333)."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )  # deferred: heavy model library, only the DDB stages need it

    torch.manual_seed(0)
    tok = BertTokenizer(vocab_file=str(write_bert_vocab(folder / "_vocab", ["a", "photo", "of", "bird"])),
                        model_max_length=256)
    GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok).save_pretrained(folder)
    return folder


def save_sam_vit_base(folder: Path) -> Path:
    """SamConfig's defaults are facebook/sam-vit-base's (ViT-B, 1024 px)."""
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        SamConfig,
        SamImageProcessor,
        SamModel,
        SamProcessor,
    )

    torch.manual_seed(0)
    SamModel(SamConfig()).save_pretrained(folder)
    SamProcessor(image_processor=SamImageProcessor()).save_pretrained(folder)
    return folder


def prune_stage(smoke: bool, device: torch.device, min_time: float, deadline: Deadline, batch: int) -> dict:


    torch.manual_seed(0)
    model = (torchvision.models.resnet18 if smoke else torchvision.models.resnet50)(num_classes=2).to(device).eval()
    res = 64 if smoke else 224
    edited, orig, masks = random_images(batch, 256, 1), random_images(batch, 256, 2), [center_mask(256)] * batch
    tf = waterbirds_transform(False, res)

    def run(n: int) -> None:
        prune.score_samples(model, edited[:n], orig[:n], masks[:n], [0] * n, [1] * n, tf, n_steps=50,
                            internal_batch_size=64, device=device)

    log("prune: counting the FLOPs of one image ...")
    flops = flops_of(lambda: run(1))[0]
    r = _timed(lambda: run(batch), batch, device, min_time, deadline)
    return {"stage": "prune", "flops_per_image": flops, "resolution": res, "model": "resnet18" if smoke else "resnet50",
            "ig_steps": 50, "internal_batch_size": 64, "dtype": "fp32", **r}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configs on CPU (seconds)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--invert-fused", action="store_true", help="invert.fuse_accumulation: one pass per optimizer step")
    ap.add_argument("--invert-resolution", type=int, default=None, help="pixels (default 512, the recipe's; smoke 32)")
    ap.add_argument("--segment-batch", type=int, default=8)
    ap.add_argument("--prune-batch", type=int, default=None, help="images per call (default 16; smoke 2)")
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per stage (default 15; smoke 0)")
    ap.add_argument("--time-budget", type=float, default=300.0, help="stop measuring after this many seconds")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = ap.parse_args(argv)
    stages = args.stages.split(",")
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"--stages: unknown stage {s!r}; expected {', '.join(STAGES)}")

    deadline = Deadline(args.time_budget)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    min_time = args.min_time if args.min_time is not None else (0.0 if args.smoke else 15.0)
    if args.smoke:
        torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict = {
        "what": "DDB invert/segment/prune throughput, real architectures with random weights"
                + (" (SMOKE: tiny configs)" if args.smoke else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    ceiling = matmul_ceiling(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                             Deadline(min(60.0, max(deadline.left() * 0.1, 5.0))), args.smoke)
    report["matmul_ceiling_tflops"] = ceiling["tflops"]
    report["matmul_ceiling_dtype"] = "bf16" if device.type == "cuda" else "fp32"
    report["stages"] = []
    for s in stages:
        if deadline.left() < (5 if args.smoke else 30):
            log(f"{s}: skipped (time budget)")
            continue
        t0 = time.perf_counter()
        try:
            if s == "invert":
                r = invert_stage(args.smoke, device, min_time, deadline, args.invert_fused, args.invert_resolution)
            elif s == "segment":
                r = segment_stage(args.smoke, device, min_time, deadline, args.segment_batch)
            else:
                r = prune_stage(args.smoke, device, min_time, deadline, args.prune_batch or (2 if args.smoke else 16))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            r = {"stage": s, "error": "out of memory"}
        if "images_per_s" in r:
            r["achieved_tflops"] = r["flops_per_image"] * r["images_per_s"] / 1e12
            r["ratio_to_ceiling"] = r["achieved_tflops"] / ceiling["tflops"] if ceiling["tflops"] else None
            log(f"{s}: {r['images_per_s']:.2f} images/s, {r['flops_per_image'] / 1e12:.3f} TFLOP per image, "
                f"{r['achieved_tflops']:.1f} TFLOP/s = {100 * (r['ratio_to_ceiling'] or 0):.1f}% of the ceiling")
        r["wall_s"] = time.perf_counter() - t0
        report["stages"].append(r)
        if args.out:  # keep what is measured even if a later stage is cut off
            write_json(args.out, report)
    if args.out:
        write_json(args.out, report)
        log(f"wrote {args.out}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
