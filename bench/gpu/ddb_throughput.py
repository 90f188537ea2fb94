"""Inpainting throughput of DDB on the real Stable Diffusion 2 architectures (random weights).

Standalone (no pytest): builds the SD2 inpainting UNet (9 input channels), the SD2 VAE
and the OpenCLIP ViT-H text encoder from their published configs with random weights
(no download: speed does not depend on the weights), then measures

- images/s of the inpainting pipeline at 512 px for each batch size (bf16, SDPA);
- the FLOPs of one image (torch.utils.flop_counter.FlopCounterMode over one call);
- the bf16 matrix-product ceiling of the same GPU (large square matmuls);

- the UNet alone (its FLOPs per sample, samples/s at the pipeline's UNet batch) under each
  speed variant (``--variants``: memory format, fused q/k/v projections, torch.compile;
  ``spuraug.ddb.inpaint.speed_up``), so one GPU run says which option pays;

and prints / writes JSON with achieved TFLOP/s = FLOPs per image x images/s and its
ratio to the ceiling; the pipeline is timed with the best UNet variant
(``--pipeline-variant``). Every phase is time-bounded (``--time-budget``) and prints
progress. ``--smoke`` runs tiny configs on CPU in seconds (tested by the suite).

    python -m bench.gpu.ddb_throughput --out gpu_ddb.json            # on a CUDA machine
    python -m bench.gpu.ddb_throughput --smoke --out /tmp/smoke.json  # anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from spuraug.atomic import write_json
from spuraug.ddb import inpaint as stage
from spuraug.ddb.config import InpaintConfig
from spuraug.ddb.inpaint import speed_up
from spuraug.toyworld.tokenizer import build_clip_tokenizer

# The published configs (stabilityai/stable-diffusion-2-inpainting, unet/config.json etc.).
SD2_UNET = dict(
    sample_size=64, in_channels=9, out_channels=4, layers_per_block=2, center_input_sample=False,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    downsample_padding=1, mid_block_scale_factor=1,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
OPENCLIP_VIT_H_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
)
SD2_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000, prediction_type="epsilon",
)

# Tiny versions for --smoke (same code path, CPU in seconds).
SMOKE_UNET = dict(
    sample_size=8, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4), cross_attention_dim=32, use_linear_projection=True, norm_num_groups=32,
)
SMOKE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
)
SMOKE_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, hidden_act="gelu", projection_dim=32)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipeline(smoke: bool, device: torch.device, dtype: torch.dtype):
    """StableDiffusionInpaintPipeline with the SD2 architectures (or tiny ones), random weights, SDPA."""
    from diffusers import (  # deferred: heavy optional model library, only the DDB stages need it
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from diffusers.models.attention_processor import (
        AttnProcessor2_0,  # deferred: heavy optional model library, only the DDB stages need it
    )


    torch.manual_seed(0)
    tok, text = build_text_encoder(smoke, device)
    with torch.device(device):
        unet = UNet2DConditionModel(**(SMOKE_UNET if smoke else SD2_UNET))
        vae = AutoencoderKL(**(SMOKE_VAE if smoke else SD2_VAE))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(**SD2_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe = pipe.to(device=device, dtype=dtype)
    speed_up(pipe.unet)  # plain SDPA UNet; its layout and kernels are measured variants (see unet_variants)
    if device.type == "cuda":
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    n_params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("unet", "vae", "text_encoder")}
    return pipe, n_params


def build_text_encoder(smoke: bool, device: torch.device):
    """A project-written CLIP tokenizer (no download; speed depends on the 77-token length only)
    and the OpenCLIP ViT-H text encoder of SD2 (or a tiny one), random weights."""
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        CLIPTextConfig,
        CLIPTextModel,
    )

    tok = build_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok", PROMPT_WORDS, model_max_length=77)
    cfg = dict(SMOKE_TEXT if smoke else OPENCLIP_VIT_H_TEXT)
    cfg.setdefault("vocab_size", max(len(tok), 64))
    cfg.update(bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1)
    with torch.device(device):
        return tok, CLIPTextModel(CLIPTextConfig(**cfg))


def random_images(n: int, size: int, seed: int = 0) -> list:
    """``n`` uniform-noise RGB images of ``size`` x ``size`` pixels (speed does not depend on content)."""

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def center_mask(size: int):
    """A mask of the central half (in each direction) of a ``size`` x ``size`` image."""

    m = np.zeros((size, size), np.uint8)
    m[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return Image.fromarray(m)


#: The prompt of every call; its words are single tokens of the project-written tokenizer.
PROMPT = "a photo of a <class-1> bird"
PROMPT_WORDS = ["a", "photo", "of", "bird"]


def inputs(batch: int, res: int):
    return [PROMPT] * batch, random_images(1, res) * batch, [center_mask(res)] * batch


def call(pipe, batch: int, res: int, steps: int, guidance: float) -> None:
    prompts, images, masks = inputs(batch, res)
    gens = [torch.Generator().manual_seed(k) for k in range(batch)]
    pipe(prompt=prompts, image=images, mask_image=masks, height=res, width=res, num_inference_steps=steps,
         guidance_scale=guidance, generator=gens, output_type="pil")


def count_flops(pipe, res: int, steps: int, guidance: float) -> float:
    """FLOPs of one image (one pipeline call with batch 1)."""

    def one_image():
        with torch.inference_mode():
            call(pipe, 1, res, steps, guidance)

    return flops_of(one_image)[0]


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: totals only. The tracker's hooks fail
    on SAM under no_grad and inside captum's autograd.grad ("A leaf node was passed to
    _will_engine_execute_node"); the per-module split is not needed here."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def flops_of(fn) -> tuple[float, dict]:
    """FLOPs of ``fn()`` (forward and, where it runs one, backward) by FlopCounterMode's formulas,
    attention counted (:func:`countable_attention`); the total and its split by op."""

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter, countable_attention():
        fn()
    by_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def countable_attention():
    """Attention through the math kernel while counting: FlopCounterMode has formulas for the
    CUDA SDPA kernels and for the math kernel's matrix products, none for CPU's flash kernel."""

    return sdpa_kernel([SDPBackend.MATH])


def matmul_ceiling(device: torch.device, dtype: torch.dtype, deadline: Deadline, smoke: bool) -> dict:
    """Best TFLOP/s of large square matrix products in ``dtype`` on ``device``."""
    sizes = (256, 512) if smoke else (4096, 8192, 16384)
    best = {"tflops": 0.0}
    for n in sizes:
        if deadline.left() < 5:
            break
        if best["tflops"] and 13 * 2 * n**3 / (best["tflops"] * 1e12) > deadline.left():
            log(f"matmul {n}x{n}: skipped (13 products at the last rate would pass the time limit)")
            break
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            for _ in range(10):
                a @ b
            reps += 10
            sync(device)
            dt = time.perf_counter() - t0
            if dt > (0.2 if smoke else 2.0) or deadline.left() < 2:
                break
        tflops = 2 * n**3 * reps / dt / 1e12
        log(f"matmul {n}x{n} {dtype}: {tflops:.1f} TFLOP/s")
        if tflops > best["tflops"]:
            best = {"tflops": tflops, "n": n}
        del a, b
    return best


def timed_calls(fn, device: torch.device, min_time: float, deadline: Deadline, warmup: int = 1):
    """``warmup`` untimed calls, then calls of ``fn`` until ``min_time`` seconds have passed
    (at least one; fewer when the next would pass the deadline). Returns (calls, seconds,
    warm-up seconds); peak GPU memory is reset after the warm-up."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_time or deadline.left() < dt / calls + 2:
            return calls, dt, warm


#: Speed variants of the UNet: "+"-joined options of spuraug.ddb.inpaint.speed_up.
VARIANT_OPTIONS = {"cl": "channels_last", "qkv": "fuse_qkv", "compile": "compile"}
#: Attention options: the SDPA kernel tried first (inpaint.attention).
VARIANT_ATTENTION = ("cudnn", "flash", "efficient", "math")


DEFAULT_VARIANTS = "eager,cl,cl+qkv,cl+qkv+cudnn,best+compile"


def parse_variant(name: str) -> dict:
    """``"cl+qkv+cudnn+compile"`` -> speed_up keyword arguments; ``"eager"`` = none of them."""
    opts: dict = {v: False for v in VARIANT_OPTIONS.values()}
    opts["attention"] = "auto"
    for part in name.split("+"):
        if part == "eager":
            continue
        if part in VARIANT_ATTENTION:
            opts["attention"] = part
        elif part in VARIANT_OPTIONS:
            opts[VARIANT_OPTIONS[part]] = True
        else:
            raise ValueError(f"--variants: unknown option {part!r} in {name!r}; expected eager or +-joined "
                             f"{', '.join([*VARIANT_OPTIONS, *VARIANT_ATTENTION])} (best+... = the best so far plus ...)")
    return opts


def resolve_variant(name: str, rows: list[dict]) -> str:
    """``best+compile`` -> the best variant timed so far (by ratio) plus ``compile``."""
    if not name.startswith("best"):
        return name
    timed = [r for r in rows if r.get("ratio_to_ceiling") is not None]
    best = max(timed, key=lambda r: r["ratio_to_ceiling"])["variant"] if timed else "eager"
    rest = [p for p in name.split("+")[1:] if p not in best.split("+")]
    return "+".join([best, *rest])


def unet_flops_per_sample(unet, res: int, device: torch.device, dtype: torch.dtype) -> tuple[float, dict]:
    """FLOPs of one UNet forward on one latent sample, and their split by op."""
    args = unet_inputs(unet, 1, res, device, dtype)

    def forward():
        with torch.inference_mode():
            unet(*args, return_dict=False)

    return flops_of(forward)


def unet_inputs(unet, n: int, res: int, device: torch.device, dtype: torch.dtype):
    """What the inpainting pipeline passes the UNet: 9-channel latents, a timestep, text states."""
    g = torch.Generator(device="cpu").manual_seed(0)
    lat = res // 8
    c = unet.config
    x = torch.randn(n, c.in_channels, lat, lat, generator=g).to(device, dtype)
    text = torch.randn(n, 77, c.cross_attention_dim, generator=g).to(device, dtype)
    return x, torch.tensor(500, device=device), text


def unet_variants(base_unet, names: list[str], n: int, res: int, device: torch.device,
                  dtype: torch.dtype, flops: float, ceiling: float, deadline: Deadline, min_time: float,
                  compile_mode: str) -> tuple[list[dict], dict]:
    """samples/s of the UNet alone under each variant; returns the rows and the callables."""

    rows, fns = [], {}
    args = unet_inputs(base_unet, n, res, device, dtype)
    for name in names:
        name = resolve_variant(name, rows)
        if name in fns:
            continue
        opts = parse_variant(name)
        if deadline.left() < (60 if opts["compile"] and min_time > 1 else 5):
            log(f"UNet {name}: skipped (time budget)")
            continue
        fn = speed_up(base_unet, compile_mode=compile_mode, **opts)
        try:
            with torch.inference_mode():  # 2 warm-up calls: cuDNN choices, compilation on the first
                calls, dt, warm = timed_calls(lambda fn=fn: fn(*args, return_dict=False), device, min_time, deadline, 2)
        except torch.cuda.OutOfMemoryError:
            log(f"UNet {name}: out of memory")
            torch.cuda.empty_cache()
            rows.append({"variant": name, "error": "out of memory"})
            continue
        sps = n * calls / dt
        tflops = flops * sps / 1e12
        row = {"variant": name, **opts, "unet_batch": n, "samples_per_s": sps, "calls": calls, "seconds": dt,
               "warmup_s": warm, "achieved_tflops": tflops, "ratio_to_ceiling": tflops / ceiling if ceiling else None}
        log(f"UNet {name} (batch {n}): {sps:.2f} samples/s, {tflops:.1f} TFLOP/s = "
            f"{100 * (row['ratio_to_ceiling'] or 0):.1f}% of the ceiling (warm-up {warm:.1f} s)")
        rows.append(row)
        fns[name] = fn
    speed_up(base_unet)  # back to the plain UNet; the caller picks a variant
    return rows, fns


def measure(pipe, batch: int, res: int, steps: int, guidance: float, device: torch.device,
            deadline: Deadline, min_time: float) -> dict | None:
    if deadline.left() < 10 and min_time > 1:
        log(f"batch {batch}: skipped (time budget)")
        return None
    try:
        with torch.inference_mode():  # one warm-up call (kernels, allocator)
            calls, dt, _ = timed_calls(lambda: call(pipe, batch, res, steps, guidance), device, min_time, deadline)
    except torch.cuda.OutOfMemoryError:
        log(f"batch {batch}: out of memory")
        torch.cuda.empty_cache()
        return {"batch_size": batch, "error": "out of memory"}
    ips = batch * calls / dt
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    log(f"batch {batch}: {ips:.3f} images/s ({calls} calls, {dt:.1f} s)")
    return {"batch_size": batch, "images_per_s": ips, "calls": calls, "seconds": dt, "peak_mem_mb": peak}


def measure_stage(pipe, batch: int, res: int, steps: int, guidance: float, deadline: Deadline) -> dict | None:
    """images/s of the whole DDB inpaint stage (spuraug.ddb.inpaint.inpaint: paste-back, PNG + JSON writes)."""


    if deadline.left() < 30:
        log("stage: skipped (time budget)")
        return None
    work = Path(tempfile.mkdtemp(prefix="ddb_stage_"))
    _, images, masks = inputs(1, res)
    masks[0].save(work / "mask.png")
    n = 2 * batch
    srcs = [stage.Source(f"s{k}", k, k % 2, k, lambda im=images[0]: im, work / "mask.png") for k in range(n)]
    plan = stage.make_plan(srcs, 2, 0)
    cfg = InpaintConfig(model="(built in memory)", resolution=res, num_inference_steps=steps,
                        guidance_scale=guidance, batch_size=batch)
    t0 = time.perf_counter()
    with torch.inference_mode():
        stage.inpaint(pipe, plan, ["<class-0>", "<class-1>"], cfg, work / "out")
    dt = time.perf_counter() - t0
    ok = len(list((work / "out" / "images").glob("*.json"))) == n and np.isfinite(dt)
    log(f"stage (batch {batch}, {n} images incl. writes): {n / dt:.3f} images/s")
    return {"batch_size": batch, "images": n, "seconds": dt, "images_per_s": n / dt, "complete": bool(ok)}


def count_only(res: int, out: str | None) -> dict:
    """FLOPs of one forward of the SD2 inpainting UNet on one sample, built on the meta device."""
    from diffusers import (
        UNet2DConditionModel,  # deferred: heavy optional model library, only the DDB stages need it
    )


    meta = torch.device("meta")
    with meta:
        unet = speed_up(UNet2DConditionModel(**SD2_UNET))
    flops, by_op = unet_flops_per_sample(unet, res, meta, torch.float32)
    report = {"what": "SD2 inpainting UNet, one forward on one latent sample (meta device)", "resolution": res,
              "unet_flops_per_sample": flops, "unet_flops_by_op": by_op,
              "command": " ".join([sys.executable, *sys.argv])}
    log(f"UNet at {res} px: {flops / 1e9:.1f} GFLOP per sample per step; " + ", ".join(
        f"{k} {100 * v / flops:.1f}%" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])))
    if out:
        write_json(out, report)
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configs on CPU (seconds)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,32; smoke 1,2)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default 512; smoke 32)")
    ap.add_argument("--steps", type=int, default=None,
                    help="denoising steps per image (default 50 = the paper's pipeline default; smoke 2)")
    ap.add_argument("--guidance-scale", type=float, default=7.5, help="7.5 (pipeline default) doubles the UNet batch")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--variants", default=None,
                    help="UNet speed variants timed alone, comma-separated, each eager or +-joined cl (channels-last), "
                         "qkv (fused projections), cudnn|flash|efficient|math (SDPA kernel first tried), compile; "
                         f"best+X = the best so far plus X (default {DEFAULT_VARIANTS}; smoke eager,cl+qkv)")
    ap.add_argument("--pipeline-variant", default="best",
                    help="UNet variant for the pipeline timings: best (highest UNet ratio) or a variant name")
    # max-autotune spent a whole 6-minute H200 budget autotuning (results/gpu/2026-11-28_h200/README.md)
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (default: inductor's default)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per batch size (default 20)")
    ap.add_argument("--time-budget", type=float, default=480.0, help="stop measuring after this many seconds")
    ap.add_argument("--stage-batch", type=int, default=None,
                    help="also time the whole DDB inpaint stage (writes included) at this batch size (default 8; 0 = skip)")
    ap.add_argument("--count-only", action="store_true",
                    help="only the SD2 inpainting UNet's FLOPs per sample and their split by op, on the meta device "
                         "(no weights, no GPU; seconds)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = ap.parse_args(argv)
    if args.count_only:
        return count_only(args.resolution or 512, args.out)

    deadline = Deadline(args.time_budget)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.smoke:
        dtype = torch.float32 if device.type == "cpu" else dtype
        torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is fastest
    res = args.resolution or (32 if args.smoke else 512)
    steps = args.steps or (2 if args.smoke else 50)
    sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.smoke else "1,8,32")).split(",")]
    min_time = args.min_time if args.min_time is not None else (0.0 if args.smoke else 20.0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    report: dict = {
        "what": "DDB inpainting throughput, SD2 architectures with random weights" + (" (SMOKE: tiny configs)" if args.smoke else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "dtype": str(dtype), "resolution": res, "steps": steps,
        "guidance_scale": args.guidance_scale, "attention": "SDPA (AttnProcessor2_0; kernel order per variant)", "compile_mode": args.compile_mode,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join([sys.executable, *sys.argv]),
    }
    log(f"building pipeline on {device} ({dtype}) ...")
    t0 = time.perf_counter()
    pipe, n_params = build_pipeline(args.smoke, device, dtype)
    report["parameters"] = n_params
    report["build_s"] = time.perf_counter() - t0
    log(f"built in {report['build_s']:.1f} s; parameters {n_params}")
    log("counting FLOPs of one image ...")
    flops = count_flops(pipe, res, steps, args.guidance_scale)
    report["flops_per_image"] = flops
    log(f"{flops / 1e12:.2f} TFLOP per image ({steps} steps, guidance {args.guidance_scale})")

    ceiling = matmul_ceiling(device, dtype, Deadline(min(60.0, max(deadline.left() * 0.15, 5.0))), args.smoke)
    report["matmul_ceiling_tflops"] = ceiling["tflops"]
    report["matmul_ceiling_n"] = ceiling.get("n")

    # The UNet alone, at the pipeline's UNet batch for the largest batch size (x2 with guidance).
    base_unet = pipe.unet
    names = (args.variants or ("eager,cl+qkv" if args.smoke else DEFAULT_VARIANTS)).split(",")
    for name in names:
        parse_variant(name.replace("best", "eager"))  # a typo fails here, before any timing
    unet_flops, by_op = unet_flops_per_sample(base_unet, res, device, dtype)
    n_unet = max(sizes) * (2 if args.guidance_scale > 1 else 1)
    report["unet_flops_per_sample"] = unet_flops
    report["unet_flops_by_op"] = by_op
    log("UNet FLOPs by op: " + ", ".join(f"{k} {100 * v / unet_flops:.1f}%" for k, v in
                                         sorted(by_op.items(), key=lambda kv: -kv[1])))
    log(f"UNet: {unet_flops / 1e9:.1f} GFLOP per sample per step; timing {', '.join(names)} at batch {n_unet}")
    report["unet_variants"], fns = unet_variants(
        base_unet, names, n_unet, res, device, dtype, unet_flops, ceiling["tflops"],
        Deadline(min(deadline.left() * 0.5, 240.0)), 1.0 if args.smoke else min(min_time, 5.0), args.compile_mode)
    if args.out:  # kept even if the pipeline timings are cut off
        write_json(args.out, report)
    timed = [r for r in report["unet_variants"] if r.get("ratio_to_ceiling") is not None]
    chosen = args.pipeline_variant
    if chosen == "best":
        chosen = max(timed, key=lambda r: r["ratio_to_ceiling"])["variant"] if timed else "eager"

    opts = parse_variant(chosen)
    unet = speed_up(base_unet, **{**opts, "compile": False})  # layout and fusion of the chosen variant
    if opts["compile"]:  # the compiled module of the UNet timing when there is one (no second compile)
        unet = fns[chosen] if chosen in fns else speed_up(base_unet, compile_mode=args.compile_mode, **opts)
    pipe.unet = unet
    report["pipeline_variant"] = chosen
    log(f"pipeline timed with the UNet variant {chosen}")

    results = []
    for b in sizes:
        r = measure(pipe, b, res, steps, args.guidance_scale, device, deadline, min_time)
        if r is None:
            continue
        if "images_per_s" in r:
            r["achieved_tflops"] = flops * r["images_per_s"] / 1e12
            r["ratio_to_ceiling"] = r["achieved_tflops"] / ceiling["tflops"] if ceiling["tflops"] else None
            log(f"batch {b}: {r['achieved_tflops']:.1f} TFLOP/s = {100 * (r['ratio_to_ceiling'] or 0):.1f}% of the "
                f"{report['dtype']} matmul ceiling")
        results.append(r)
        if args.out:  # keep what is measured even if a later batch size is cut off
            write_json(args.out, {**report, "batches": results})
    report["batches"] = results
    stage_batch = args.stage_batch if args.stage_batch is not None else (2 if args.smoke else 8)
    if stage_batch > 0:
        report["stage"] = measure_stage(pipe, stage_batch, res, steps, args.guidance_scale, deadline)
    ok = [r for r in results if r.get("ratio_to_ceiling") is not None]
    report["best_ratio_to_ceiling"] = max((r["ratio_to_ceiling"] for r in ok), default=None)
    report["goal_ratio"] = 0.5
    if args.out:
        write_json(args.out, report)
        log(f"wrote {args.out}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
