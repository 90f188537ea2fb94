"""DDB generation, the reference code's loop against our staged pipeline; ResNet-50 training and its loader.

One command for a GPU session (docs/harness.md, "GPU speed"; finishes within ``--time-budget``,
default 12 minutes)::

    python -m bench.gpu.reference_loop            # -> results/gpu/<date>_<device>/reference_loop.json
    python -m bench.gpu.reference_loop --smoke --out /tmp/smoke.json   # tiny models on CPU, seconds

**generate** (random weights, no download; speed does not depend on the weights):

- *reference*: ``generate_and_prune`` of ArianYp/DDB ``generate.py`` rebuilt step by step, per
  batch of 32 (its ``DataLoader(batch_size=32)``): LangSAM-style segmentation of the batch
  (Grounding DINO box + SAM mask; the configured models, ``spuraug.ddb.segment.GroundedSAM``),
  the fp16 ``StableDiffusionInpaintPipeline`` on the masked images at its default 512 px
  (50 steps, guidance 7.5), captum ``IntegratedGradients`` over the whole batch (its defaults:
  50 steps, no internal batching, convergence delta returned), then one softmax forward pass
  per image; on the reference's 224-px inputs and train transform.
- *staged*: our stages on the same images, each over all images in its own batches:
  segmentation (``segment.batch_size``), inpainting with our dtype and UNet speed options
  (``spuraug.ddb.inpaint.speed_up``; ``--staged-variant``, batch ``--inpaint-batch``),
  pruning (``spuraug.ddb.prune.score_samples``, IG internal batch 64). Artifact writing is left
  out of both.

images/s of each end to end (segment + inpaint + prune) and ``ratio`` = staged / reference
(issue 21's goal: >= 2 per GPU); each stage's own images/s is kept for ``make plan``.

**train**: ResNet-50 training steps on synthetic tensors (bf16 autocast, channels-last,
``torch.compile`` on/off; ``bench.train_throughput.bare_loop``); the JPEG loader alone over a
Waterbirds-format folder of 256-px JPEGs (``--data-dir`` or generated), once with the engine's
DataLoader (CPU decode + the train transform, ``loader.num_workers: auto``) and once with
the files' bytes decoded on the GPU (``torchvision.io.decode_jpeg(device="cuda")``, the crop,
flip and normalisation on the GPU); then the real path (``engine.fit`` with the CPU loader).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.transforms import v2

from bench.train_throughput import bare_loop, real_loop, write_waterbirds_like
from spuraug import atomic, engine
from spuraug.config import load_config
from spuraug.data.registry import get_dataset
from spuraug.data.transforms import IMAGENET_MEAN, IMAGENET_STD, waterbirds_transform
from spuraug.ddb import prune, segment
from spuraug.ddb.config import InpaintConfig, SegmentConfig
from spuraug.ddb.inpaint import speed_up

#: Where the builders live: the GPU benches' real architectures, and the tiny test models of
#: the smoke mode (tests/, imported only when the smoke mode runs, from a checkout).
DDB_BENCH = ("bench.gpu.ddb_throughput",)
STAGE_BENCH = ("bench.gpu.stage_throughput",)
TINY = ("tests.tiny_models",)


def _find(modules: tuple[str, ...], name: str):
    """``name`` from the first of ``modules`` that has it."""
    for m in modules:
        try:
            mod = importlib.import_module(m)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise ImportError(f"none of {', '.join(modules)} defines {name}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# --------------------------------------------------------------------------- models


def build_segmenter(smoke: bool, device: torch.device):

    root = Path(tempfile.mkdtemp(prefix="ref_segment_"))
    if smoke:
        det = _find(TINY, "save_grounding_dino")(root / "gdino")
        sam = _find(TINY, "save_sam")(root / "sam")
    else:
        det = _find(STAGE_BENCH, "save_grounding_dino_tiny")(root / "gdino")
        sam = _find(STAGE_BENCH, "save_sam_vit_base")(root / "sam")
    # thresholds 0: random weights still give boxes, so SAM runs on every image as with a real object
    cfg = SegmentConfig(detector=str(det), sam=str(sam), box_threshold=0.0, text_threshold=0.0)
    return segment.GroundedSAM(cfg, device)


def build_pipe(smoke: bool, device: torch.device, dtype: torch.dtype):
    pipe, _ = _find(DDB_BENCH, "build_pipeline")(smoke, device, dtype)
    return pipe


def build_classifier(smoke: bool, device: torch.device) -> torch.nn.Module:

    torch.manual_seed(0)
    net = (torchvision.models.resnet18 if smoke else torchvision.models.resnet50)(num_classes=2)
    return net.to(device).eval()


def random_images(n: int, size: int, seed: int = 0) -> list:
    return _find(DDB_BENCH, "random_images")(n, size, seed)


# --------------------------------------------------------------------------- the reference loop


def reference_batch(images: list, seg, pipe, clf, transform, cfg: dict, device: torch.device) -> int:
    """One batch of ArianYp/DDB generate.py's ``generate_and_prune``; returns the images processed."""
    from captum.attr import IntegratedGradients  # deferred: heavy, only attribution needs it

    masks, indices = [], []
    for idx, (mask, _score) in enumerate(seg(images, cfg["mask_prompt"])):  # lang_sam.predict(images, prompts)
        if mask is not None:
            m = torch.from_numpy(mask[None].astype("float32")).to(device)
            m[m != 0] = 1
            masks.append(m)
            indices.append(idx)
    if not masks:
        return 0
    images = [images[i] for i in indices]
    masks_t = torch.stack(masks)
    baseline = torch.stack([transform(img) for img in images]).to(device)
    new_images = pipe(prompt=[cfg["prompt"]] * len(images), image=images, mask_image=masks_t,
                      num_inference_steps=cfg["steps"], guidance_scale=cfg["guidance"],
                      height=cfg["resolution"], width=cfg["resolution"]).images
    processed = torch.stack([transform(img) for img in new_images]).to(device)
    ig = IntegratedGradients(clf)
    try:  # the reference's call: every step of every image in one pass
        attributions, _ = ig.attribute(processed, baseline, target=cfg["class_label"], return_convergence_delta=True,
                                       internal_batch_size=cfg.get("ig_internal_batch"))
    except torch.cuda.OutOfMemoryError:
        # batch x 50 steps of ResNet-50 at 224 px need ~100 GiB of activations; where the GPU has
        # less, the reference cannot run as written: measure it with captum's chunking instead
        torch.cuda.empty_cache()
        cfg["ig_internal_batch"] = 256
        cfg["note"] = "IG of the whole batch in one pass ran out of GPU memory: internal_batch_size=256"
        attributions, _ = ig.attribute(processed, baseline, target=cfg["class_label"], return_convergence_delta=True,
                                       internal_batch_size=cfg["ig_internal_batch"])
    size = processed.shape[-2:]
    masks_resized = torch.stack([F.interpolate(m.unsqueeze(0).float(), size=size, mode="nearest").squeeze(0)
                                 for m in masks_t])
    kept = 0
    for i, (attr, mask) in enumerate(zip(attributions, masks_resized)):
        score = (attr.cpu() * mask.cpu()).sum()
        logits = F.softmax(clf(processed[i].unsqueeze(0)), dim=1)
        kept += int(bool(score > cfg["threshold"]) and bool(logits[0, cfg["class_label"]] < cfg["mean_softmax"]))
    return len(images)


def run_reference(images: list, seg, clf, pipe, transform, cfg: dict, batch: int, device: torch.device) -> dict:
    sync(device)
    t0 = time.perf_counter()
    done = 0
    for start in range(0, len(images), batch):
        done += reference_batch(images[start:start + batch], seg, pipe, clf, transform, cfg, device)
    sync(device)
    dt = time.perf_counter() - t0
    return {"images": done, "seconds": dt, "images_per_s": done / dt, "batch_size": batch,
            "dtype": str(pipe.unet.dtype), "ig_internal_batch_size": cfg.get("ig_internal_batch"),
            "note": cfg.get("note", "")}


# --------------------------------------------------------------------------- our stages


def run_staged(images: list, seg, clf, pipe, cfg: dict, seg_batch: int, inpaint_batch: int,
               device: torch.device) -> dict:

    stages: dict[str, dict] = {}

    def timed(name: str, fn) -> list:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        dt = time.perf_counter() - t
        stages[name] = {"seconds": dt, "images_per_s": len(images) / dt,
                        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
        return out

    def segment_all():
        out = []
        for s in range(0, len(images), seg_batch):
            out += seg(images[s:s + seg_batch], cfg["mask_prompt"])
        return out


    found = timed("segment", segment_all)
    masks = [Image.fromarray((m if m is not None else torch.ones(images[0].size[::-1]).numpy() > 0)
                             .astype("uint8") * 255) for m, _ in found]

    def inpaint_all():
        out = []
        for s in range(0, len(images), inpaint_batch):
            chunk = images[s:s + inpaint_batch]
            gens = [torch.Generator().manual_seed(s + k) for k in range(len(chunk))]
            out += pipe(prompt=[cfg["prompt"]] * len(chunk), image=chunk, mask_image=masks[s:s + inpaint_batch],
                        height=cfg["resolution"], width=cfg["resolution"], num_inference_steps=cfg["steps"],
                        guidance_scale=cfg["guidance"], generator=gens).images
        return out

    edited = timed("inpaint", inpaint_all)
    tf = waterbirds_transform(False, cfg["classifier_resolution"])

    def prune_all():
        out = []
        for s in range(0, len(images), cfg["prune_batch"]):
            n = len(images[s:s + cfg["prune_batch"]])
            out += prune.score_samples(clf, edited[s:s + n], images[s:s + n], masks[s:s + n], [0] * n, [1] * n, tf,
                                       n_steps=50, internal_batch_size=64, device=device)
        return out

    timed("prune", prune_all)
    total = sum(s["seconds"] for s in stages.values())
    return {"images": len(images), "seconds": total, "images_per_s": len(images) / total, "stages": stages,
            "segment_batch": seg_batch, "inpaint_batch": inpaint_batch, "dtype": str(pipe.unet.dtype)}


def part_generate(args, device: torch.device, budget: Budget) -> dict:

    smoke = args.smoke
    n = args.images
    res = 64 if smoke else 512
    cfg = {"mask_prompt": "bird.", "prompt": "a photo of a <class-1> bird", "steps": args.steps, "guidance": 7.5,
           "resolution": res, "class_label": 1, "threshold": 0.3, "mean_softmax": 0.5,
           "classifier_resolution": 64 if smoke else 224, "prune_batch": args.prune_batch}
    images = random_images(n, 64 if smoke else 224)  # the reference passes its 224-px training tensors
    log(f"generate: building the models ({'tiny' if smoke else 'Grounding DINO tiny, SAM ViT-B, SD2, ResNet-50'}) ...")
    seg = build_segmenter(smoke, device)
    clf = build_classifier(smoke, device)
    ref_dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = build_pipe(smoke, device, ref_dtype)
    pipe.set_progress_bar_config(disable=True)
    ref_tf = waterbirds_transform(True, cfg["classifier_resolution"])
    out: dict = {"images": n, "steps": args.steps, "resolution": res}
    log("generate: the reference loop (warm-up on one full batch, then timed) ...")
    run_reference(images[:args.ref_batch], seg, clf, pipe, ref_tf, cfg, args.ref_batch, device)  # a full batch: OOM shows here
    out["reference"] = run_reference(images, seg, clf, pipe, ref_tf, cfg, args.ref_batch, device)
    log(f"generate: reference {out['reference']['images_per_s']:.3f} img/s; time left {budget.left():.0f} s")
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ours = InpaintConfig()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.staged_dtype]
    pipe = build_pipe(smoke, device, dtype if device.type == "cuda" else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    opts = {o: True for o in args.staged_variant.split("+") if o and o != "eager"}
    unknown = set(opts) - {"channels_last", "fuse_qkv", "compile"}
    if unknown:
        raise SystemExit(f"--staged-variant: unknown option(s) {sorted(unknown)}; use channels_last, fuse_qkv, compile")
    pipe.unet = speed_up(pipe.unet, **opts, compile_mode=ours.compile_mode)
    log(f"generate: our stages ({args.staged_variant}, {dtype}); warm-up ...")
    run_staged(images[:min(n, args.inpaint_batch)], seg, clf, pipe, cfg, args.seg_batch, args.inpaint_batch, device)
    out["staged"] = run_staged(images, seg, clf, pipe, cfg, args.seg_batch, args.inpaint_batch, device)
    out["staged"]["variant"] = args.staged_variant
    out["ratio"] = out["staged"]["images_per_s"] / out["reference"]["images_per_s"]
    out["goal_ratio"] = 2.0
    log(f"generate: staged {out['staged']['images_per_s']:.3f} img/s, ratio {out['ratio']:.2f}")
    return out


# --------------------------------------------------------------------------- training and the loader


class JpegBytes(torch.utils.data.Dataset):
    """The files of a dataset split as undecoded bytes (uint8 tensors), with labels."""

    def __init__(self, dataset) -> None:
        self.paths = [dataset.image_path(i) for i in range(len(dataset))]
        self.y = dataset.y

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        data = Path(self.paths[i]).read_bytes()  # a plain tensor: it crosses from the worker like any other
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(self.y[i])


def _collate_bytes(items):
    return [b for b, _ in items], torch.tensor([y for _, y in items])


def gpu_decode_batch(data: list[torch.Tensor], device: torch.device, size: int = 224) -> torch.Tensor:
    """Decode JPEG bytes on ``device`` and apply the Waterbirds train transform there
    (random resized crop 0.7-1.0, flip, ImageNet normalisation); float (N, 3, size, size)."""


    imgs = decode_jpeg(data, device=device)
    crop = v2.Compose([v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.75, 4 / 3), antialias=True),
                       v2.RandomHorizontalFlip()])
    x = torch.stack([crop(im) for im in imgs]).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def loader_rate(loader, batches: int, to_device, device: torch.device) -> dict:
    it = iter(loader)
    first = next(it)  # workers start
    to_device(first)
    sync(device)
    t0, n, k = time.perf_counter(), 0, 0
    for b in it:
        to_device(b)
        n += len(b[1])
        k += 1
        if k >= batches:
            break
    sync(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt if dt > 0 else None, "images": n, "seconds": dt}


def part_train(args, device: torch.device, budget: Budget) -> dict:

    smoke = args.smoke
    hp = dict(load_config("waterbirds", "erm")["hparams"])
    model = "toy_cnn" if smoke else "resnet50"
    batch = args.train_batch
    out: dict = {"model": model, "batch_size": batch}
    out["bare"] = {}
    for compiled in (False,) if smoke else (False, True):  # inductor on a CPU: minutes; the smoke skips it
        if budget.left() < 60 and not smoke:
            log("train: out of time")
            break
        log(f"train: bare loop, compile={compiled} ...")
        out["bare"]["compile" if compiled else "eager"] = bare_loop(
            model, 2, hp, batch, 224, args.train_steps, 3 if compiled else 1, True, device, compile=compiled)
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="wb256_")
        log(f"train: writing a Waterbirds-format folder of 256-px JPEGs to {data_dir} ...")
        write_waterbirds_like(data_dir, n_train=args.loader_images, n_val=2, n_test=2, size=64 if smoke else 256)
    train = get_dataset("waterbirds", "train", data_dir=data_dir, transform="train")
    workers = engine.resolve_num_workers(args.workers, device)
    batches = max(1, min(args.loader_batches, len(train) // batch - 1))
    log(f"train: loader alone, CPU decode, {workers} workers ...")
    cpu_loader = engine.make_loader(train, batch, device, num_workers=workers, drop_last=True,
                                    sampler=torch.utils.data.RandomSampler(train, generator=torch.Generator().manual_seed(0)))
    out["loader_cpu_decode"] = {"workers": workers, **loader_rate(
        cpu_loader, batches, lambda b: engine.to_device(b[0], device, True), device)}
    log(f"train: loader alone, GPU decode (torchvision.io.decode_jpeg on {device}) ...")
    raw = JpegBytes(train)
    gpu_loader = torch.utils.data.DataLoader(raw, batch_size=batch, shuffle=True, num_workers=min(workers, 4),
                                             collate_fn=_collate_bytes, drop_last=True,
                                             generator=torch.Generator().manual_seed(0))
    out["loader_gpu_decode"] = {"workers": min(workers, 4), **loader_rate(
        gpu_loader, batches, lambda b: gpu_decode_batch(b[0], device), device)}
    if budget.left() > 60 or smoke:
        log("train: the real path (engine.fit, CPU loader) ...")
        out["real"] = real_loop(train, model, hp, batch, args.train_steps, 1, workers, True, device)
        best = max(out["bare"].values(), key=lambda r: r["images_per_s"]) if out["bare"] else None
        if best:
            out["real"]["ratio_to_best_bare"] = out["real"]["images_per_s"] / best["images_per_s"]
    out["goal_images_per_s"] = 2500
    return out


# --------------------------------------------------------------------------- main


def train_in_subprocess(args, device: torch.device, budget: Budget, out: Path) -> dict | None:

    tmp = out.with_name(f".{out.stem}.train.json")
    cmd = [sys.executable, "-m", "bench.gpu.reference_loop", "--parts", "train", "--out", str(tmp),
           "--device", str(device), "--time-budget", str(max(1, int(budget.left()))),
           "--train-batch", str(args.train_batch), "--train-steps", str(args.train_steps),
           "--loader-images", str(args.loader_images), "--loader-batches", str(args.loader_batches),
           "--workers", str(args.workers)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    log("train: in a fresh process: " + " ".join(cmd[1:]))
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    if rc != 0 or not tmp.is_file():
        log(f"train: the process exited {rc}")
        return {"error": f"exit {rc}"}
    train = json.loads(tmp.read_text()).get("train")
    tmp.unlink()
    return train


def default_out(device: torch.device) -> Path:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("nvidia-", "")
    return Path("results") / "gpu" / f"{time.strftime('%Y-%m-%d')}_{slug}" / "reference_loop.json"


def write(path: Path, record: dict) -> None:

    atomic.write_json(path, record)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.reference_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU (seconds); what the tests run")
    p.add_argument("--parts", default="generate,train", help="generate, train or both (comma-separated)")
    p.add_argument("--device", default=None, help="default: cuda when present (cpu with --smoke)")
    p.add_argument("--images", type=int, default=None, help="images through each loop (default 64; smoke 4)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50, the pipeline's; smoke 2)")
    p.add_argument("--ref-batch", type=int, default=None, help="the reference loop's batch (default 32; smoke 2)")
    p.add_argument("--seg-batch", type=int, default=None, help="our segmentation batch (default segment.batch_size)")
    p.add_argument("--inpaint-batch", type=int, default=None, help="our inpainting batch (default 32; smoke 2)")
    p.add_argument("--prune-batch", type=int, default=None, help="our pruning batch (default 32; smoke 2)")
    p.add_argument("--staged-dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--staged-variant", default=None,
                   help="UNet speed options of our stage, '+'-joined: channels_last, fuse_qkv, compile; or eager "
                        "(default channels_last+fuse_qkv+compile; smoke: without compile)")
    p.add_argument("--train-batch", type=int, default=None, help="ResNet-50 batch (default 256; smoke 4)")
    p.add_argument("--train-steps", type=int, default=None, help="measured training steps (default 20; smoke 2)")
    p.add_argument("--data-dir", default=None, help="a Waterbirds-format folder (default: generate one in /tmp)")
    p.add_argument("--loader-images", type=int, default=None, help="images of the generated folder (default 6144)")
    p.add_argument("--loader-batches", type=int, default=None, help="batches timed per loader (default 20)")
    p.add_argument("--workers", default="auto", help="loader workers (default auto)")
    p.add_argument("--time-budget", type=float, default=720, help="seconds; later parts are skipped when spent")
    p.add_argument("--out", default=None, help="default results/gpu/<date>_<device>/reference_loop.json")
    args = p.parse_args(argv)
    if args.workers != "auto":
        args.workers = int(args.workers)

    s = args.smoke
    defaults = dict(images=4 if s else 64, steps=2 if s else 50, ref_batch=2 if s else 32,
                    seg_batch=2 if s else SegmentConfig().batch_size, inpaint_batch=2 if s else 32,
                    prune_batch=2 if s else 32, train_batch=4 if s else 256, train_steps=2 if s else 20,
                    loader_images=12 if s else 6144, loader_batches=2 if s else 20,
                    staged_variant="channels_last+fuse_qkv" if s else "channels_last+fuse_qkv+compile")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    device = torch.device(args.device or ("cpu" if s else ("cuda" if torch.cuda.is_available() else "cpu")))
    if device.type == "cpu" and not s:
        log("no CUDA device: the full configs on a CPU take hours; use --smoke for a check")
    budget = Budget(args.time_budget)
    out = Path(args.out) if args.out else default_out(device)
    record: dict = {
        "what": "DDB generation: reference loop (ArianYp/DDB generate.py) vs our stages; ResNet-50 training and loader",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "torch": torch.__version__, "smoke": s,
        "command": "python -m bench.gpu.reference_loop " + " ".join(sys.argv[1:] if argv is None else argv),
        "weights": "random (speed does not depend on them)",
    }
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if "generate" in parts:
        g = part_generate(args, device, budget)
        record.update({k: g[k] for k in ("reference", "staged", "ratio", "goal_ratio", "steps", "resolution")})
        record["batch_size"] = args.inpaint_batch
        write(out, record)
    if "train" in parts:
        if not (budget.left() > 90 or s):
            log("train: skipped, out of time")
        elif "generate" in parts:
            # a fresh process: loader workers forked after the generate part's threads (tokenizers,
            # OpenMP, tqdm) hung on a 2-core CPU machine (2026-12-03)
            record["train"] = train_in_subprocess(args, device, budget, out)
        else:
            record["train"] = part_train(args, device, budget)
        write(out, record)
    write(out, record)
    print(json.dumps(record))
    log(f"written {out}")
    return record


if __name__ == "__main__":  # pragma: no cover
    main()
