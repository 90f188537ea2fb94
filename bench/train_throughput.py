"""``python -m bench.train_throughput``: the training loop as users run it, against the bare loop.

    python -m bench.train_throughput --dataset waterbirds --data-dir DIR --batch-size 108 --steps 6 \
        [--workers N|auto ...] [--channels-last auto|on|off] [--model resnet50|toy_cnn]

1. **real**: the dataset class of ``--dataset`` on ``--data-dir`` (any folder in the real
   format), its train transform, the engine's DataLoader and :func:`spuraug.engine.fit` with
   the config's optimiser (``spuraug/configs/<dataset>.yaml``, ERM section) and batch size
   ``--batch-size``; once per ``--workers`` value (item 3 of issue 21: the rate and peak RSS of
   each loader configuration);
2. **bare**: the same model, batch and optimiser on one synthetic in-memory batch: forward,
   cross-entropy, backward, step; nothing else.

The rate of each is images / wall time over ``--steps`` steps after ``--warmup`` steps (default
3: the real path's first steps also start its loader worker and grow the allocator; its wall time
includes waiting for the loader). The peak RSS is the largest sum of
the resident sets of this process and all its children (the loader workers), sampled every
0.1 s with psutil, per phase. One JSON line goes to stdout and the record to
``results/throughput/<machine-id>/train_loop/<time>.json`` (``--out`` overrides); ``ratio`` =
real / bare (issue 21's goal: >= 0.9 with jemalloc and channels-last). Whether jemalloc is
preloaded (``make train-throughput`` does it) is part of the record.

``--make-data DIR [--n-train N]`` first writes a Waterbirds-format folder of 256-px JPEGs
(random smooth textures: decoding costs what a photo of that size costs) and measures on it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.provenance import machine_id
from spuraug import atomic, engine
from spuraug.config import load_config
from spuraug.data.registry import get_dataset
from spuraug.doctor import jemalloc_loaded
from spuraug.models import ToyCNN, build_model

GOAL_RATIO = 0.9


# --------------------------------------------------------------------------- data


def write_waterbirds_like(root: str | os.PathLike, n_train: int = 864, n_val: int = 16, n_test: int = 16,
                          size: int = 256, seed: int = 0, quality: int = 90) -> Path:
    """A Waterbirds-format folder (``metadata.csv`` with the real columns, bird folders of JPEGs)
    of ``size``-px images; returns the folder holding ``metadata.csv``."""

    root = Path(root) / "waterbird_complete95_forest2water2"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    img_id = 0
    for split_code, n in enumerate((n_train, n_val, n_test)):
        for _ in range(n):
            img_id += 1
            y, place = int(rng.integers(2)), int(rng.integers(2))
            folder = "045.Northern_Fulmar" if y else "094.White_breasted_Nuthatch"
            rel = f"{folder}/img_{img_id:05d}.jpg"
            path = root / rel
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
                img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
                fine = np.asarray(img, dtype=np.int16) + rng.integers(-24, 25, (size, size, 3))
                Image.fromarray(fine.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)
            scene = "/o/ocean/00002178.jpg" if place else "/b/bamboo_forest/00000001.jpg"
            rows.append(f"{img_id},{rel},{y},{split_code},{place},{scene}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


# --------------------------------------------------------------------------- memory


class PeakRSS:
    """Largest sum of the resident sets of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def tree_rss() -> int:
        import psutil  # deferred: optional, not a dependency

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.tree_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.tree_rss())

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def jemalloc_active() -> str | None:

    return jemalloc_loaded()


# --------------------------------------------------------------------------- the two loops


class _Enough(Exception):
    """Raised from the step callback once the measured steps are done."""


def build(model_name: str, n_classes: int, width: int = 8) -> torch.nn.Module:

    torch.manual_seed(0)
    if model_name == "toy_cnn":
        return ToyCNN(n_classes, width=width)
    return build_model(model_name, n_classes, pretrained=False)  # random weights: speed does not depend on them


def optimizer_for(model: torch.nn.Module, hp: dict) -> torch.optim.Optimizer:
    return engine.build_optimizer(model.parameters(), hp["optimizer"], hp["lr"], hp["weight_decay"], hp["momentum"])


def rate(stamps: list[float], batch: int) -> tuple[float, list[float]]:
    """images/s between the first and the last time stamp, and the step times."""
    steps = np.diff(stamps).tolist()
    return batch * len(steps) / (stamps[-1] - stamps[0]), [round(s, 3) for s in steps]


def real_loop(dataset, model_name: str, hp: dict, batch: int, steps: int, warmup: int, workers: int,
              channels_last: bool | None, device: torch.device) -> dict:
    """``engine.fit`` over the dataset's train split for ``warmup + steps`` steps (epochs repeat
    when the split is smaller); images/s over the last ``steps``."""
    model = build(model_name, dataset.n_classes)
    opt = optimizer_for(model, hp)
    source = engine.TrainSource(dataset, batch, drop_last=True)
    per_epoch = len(dataset) // batch
    if per_epoch < 1:
        raise SystemExit(f"train split has {len(dataset)} images, fewer than --batch-size {batch}")
    total = warmup + steps
    stamps: list[float] = []  # stamps[k]: the end of step k (stamps[0]: the start)

    def on_step(epoch: int, step: int) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) > total:
            raise _Enough

    epochs = -(-total // per_epoch)
    t0 = time.perf_counter()
    stamps.append(t0)
    with PeakRSS() as mem:
        try:
            engine.fit(model, {"train": source}, opt, epochs, seed=0, device=device, num_workers=workers,
                       progress=False, step_callback=on_step, channels_last=channels_last)
        except _Enough:
            pass
    images_per_s, step_s = rate(stamps[warmup:], batch)
    cl = engine.use_channels_last(model, device, channels_last)
    del model, opt
    gc.collect()
    return {"images_per_s": images_per_s, "step_s": step_s, "peak_rss_mb": mem.peak_mb,
            "wall_s": round(time.perf_counter() - t0, 2), "workers": workers, "channels_last": cl,
            "epochs": epochs}


def bare_loop(model_name: str, n_classes: int, hp: dict, batch: int, size: int, steps: int, warmup: int,
              channels_last: bool | None, device: torch.device, compile: bool = False) -> dict:
    """The same model, batch and optimiser on one synthetic batch: forward, loss, backward, step
    (bf16 autocast on CUDA, as the engine; ``compile``: the model through ``torch.compile``)."""
    model = build(model_name, n_classes)
    cl = engine.use_channels_last(model, device, channels_last)
    engine.prepare_model(model, device, cl)
    opt = optimizer_for(model, hp)
    net = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    x = x.to(device, memory_format=torch.channels_last if cl else torch.contiguous_format)
    y = torch.randint(0, n_classes, (batch,), generator=g).to(device)
    model.train()
    stamps = []
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        for k in range(warmup + steps + 1):
            if k >= warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                stamps.append(time.perf_counter())
            if k == warmup + steps:
                break
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    images_per_s, step_s = rate(stamps, batch)
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model, opt, net
    gc.collect()
    return {"images_per_s": images_per_s, "step_s": step_s, "peak_rss_mb": mem.peak_mb,
            "peak_gpu_mb": peak_gpu, "wall_s": round(time.perf_counter() - t0, 2), "channels_last": cl,
            "compile": compile}


# --------------------------------------------------------------------------- main


def _parse_workers(values: list[str] | None) -> list[int | str]:
    out: list[int | str] = []
    for v in values or ["config"]:
        out.append(v if v in ("auto", "config") else int(v))
    return out


def measure(args: argparse.Namespace) -> dict:

    device = engine.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_data:
        write_waterbirds_like(args.make_data, n_train=args.n_train)
        args.data_dir = args.make_data
    cfg = load_config(args.dataset, "erm")
    hp = dict(cfg["hparams"])
    model_name = args.model or cfg["model"]["name"]
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
    dataset = get_dataset(args.dataset, "train", data_dir=args.data_dir, transform="train",
                          **{k: v for k, v in cfg["dataset_options"].items()})
    size = int(dataset[0][0].shape[-1])
    runs = []
    for w in _parse_workers(args.workers):
        value = cfg["loader"]["num_workers"] if w == "config" else w
        n = engine.resolve_num_workers(value, device)
        row = real_loop(dataset, model_name, hp, args.batch_size, args.steps, args.warmup, n, channels_last, device)
        row["workers_setting"] = value
        runs.append(row)
        print(f"# real, workers {value} ({n}): {row['images_per_s']:.2f} img/s, peak RSS {row['peak_rss_mb']} MB",
              file=sys.stderr, flush=True)
    bare = None
    if not args.no_bare:
        bare = bare_loop(model_name, dataset.n_classes, hp, args.batch_size, size, args.steps, args.warmup,
                         channels_last, device)
        print(f"# bare: {bare['images_per_s']:.2f} img/s, peak RSS {bare['peak_rss_mb']} MB",
              file=sys.stderr, flush=True)
        for row in runs:
            row["ratio"] = row["images_per_s"] / bare["images_per_s"]
    best = max(runs, key=lambda r: r["images_per_s"])
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "what": "training throughput: the real data path (dataset, transform, loader, engine.fit) vs the bare loop",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_id(),
        "note": args.note,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": load,
        "torch": torch.__version__,
        "jemalloc": jemalloc_active(),
        "dataset": args.dataset,
        "data_dir": str(args.data_dir),
        "n_train": len(dataset),
        "image_size": size,
        "model": model_name,
        "weights": "random (speed does not depend on them)",
        "optimizer": {k: hp[k] for k in ("optimizer", "lr", "momentum", "weight_decay")},
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "real": runs,
        "bare": bare,
        "images_per_s": best["images_per_s"],
        "bare_images_per_s": bare["images_per_s"] if bare else None,
        "ratio": best.get("ratio"),
        "goal_ratio": GOAL_RATIO,
        "peak_rss_mb": best["peak_rss_mb"],
        "command": "python -m bench.train_throughput " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="waterbirds", help="waterbirds, celeba, metashift (any registered dataset)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset (default $SPURAUG_DATA_DIR or ./data)")
    p.add_argument("--batch-size", type=int, default=108)
    p.add_argument("--steps", type=int, default=6, help="measured steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps before each loop (default 3): the real path's first steps also start "
                        "its loader worker and grow the allocator (on 2 cores: 36.5, 35.0, 29.7 s, then 27-28 s; "
                        "docs/measurements.md 2026-12-03)")
    p.add_argument("--workers", nargs="+", metavar="N|auto",
                   help="loader workers; several values: one real-path run each (default: the config's loader.num_workers)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="auto: the engine's default (spuraug.engine.use_channels_last)")
    p.add_argument("--model", default=None, help="default: the config's model.name (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare loop")
    p.add_argument("--make-data", default=None, metavar="DIR",
                   help="write a Waterbirds-format folder of 256-px JPEGs to DIR first and measure on it")
    p.add_argument("--n-train", type=int, default=864, help="with --make-data: training images (default 864)")
    p.add_argument("--note", default="", help="free text kept in the record (e.g. 'shared machine')")
    p.add_argument("--out", default=None, help="record file (default results/throughput/<machine>/train_loop/<time>.json)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    args.argv = argv
    record = measure(args)
    print(json.dumps(record), flush=True)
    if not args.no_write:
        out = Path(args.out) if args.out else (
            Path("results") / "throughput" / record["machine"] / "train_loop" / (time.strftime("%Y%m%dT%H%M%S") + ".json"))
        atomic.write_json(out, record)
        print(f"# written {out}", file=sys.stderr)
    return record


if __name__ == "__main__":  # pragma: no cover
    main()
