"""DDB's inpaint and prune stages sharded over an engine (``ddb.inpaint.engine: ray``).

The stage code (:class:`spuraug.ddb.pipeline.Stages`) calls :func:`inpaint_sharded` or
:func:`prune_sharded` when the stage's ``engine`` option is not ``local``. Both cut the
stage's fixed plan into shards aligned with its batches (``batch_size * shard_batches``
samples), send each shard's inputs (source images as arrays, plan records) to workers
that each hold one pipeline, and write one output per sample id:

* inpaint: ``images/<sample id>.png`` then ``images/<sample id>.json`` (the same files,
  bytes and records as the local engine: per-sample seeds come from the sample id and
  batches are the same chunks of the plan);
* prune: ``scores/<sample id>.json`` (one row of the score table), assembled into
  ``scores.csv`` in plan order.

Workers resolve relative paths against the driver's working directory (the runs folder
must be on a filesystem every worker sees; see docs/scaleout.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from spuraug.ddb.artifacts import read_json, safe_name, write_json_sorted
from spuraug.ddb.engines import Engine, Shard, WorkerSpec, chunk, make_engine
from spuraug.ddb.inpaint import Plan, Source, edited_region, inpaint, load_inpaint_pipeline, samples_table
from spuraug.ddb.prune import TABLE_COLUMNS, score_samples
from spuraug.ddb.sources import psi

#: Shards hold this many of the stage's batches (retry granularity vs per-shard overhead).
SHARD_BATCHES = 2


@dataclass
class ArrayImage:
    """A picklable image loader: the source image's pixels travel with the shard."""

    pixels: np.ndarray

    def __call__(self) -> Image.Image:
        return Image.fromarray(self.pixels)

    @classmethod
    def of(cls, image: Image.Image) -> ArrayImage:
        return cls(np.asarray(image.convert("RGB")).copy())


@dataclass
class FaultInjection:
    """Test hook: after ``after_samples`` outputs, the worker process exits (``"exit"``) or
    stops and waits to be killed (``"hang"``). ``marker`` (a file) makes it happen once."""

    after_samples: int
    marker: str
    action: str = "exit"

    def hit(self, count: int) -> None:
        if count < self.after_samples:
            return
        try:  # created exclusively: of workers reaching the fault at once, only one fires
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        if self.action == "exit":
            os._exit(17)
        while True:  # "hang": the test kills this actor with ray.kill
            time.sleep(0.5)


def _worker_device(device: str) -> str:
    # A Ray actor sees only the GPU it was given (CUDA_VISIBLE_DEVICES), as "cuda".
    return "cuda" if str(device).startswith("cuda") else str(device)


def _enter(base_dir: str | None) -> None:
    if base_dir and os.path.isdir(base_dir) and os.getcwd() != base_dir:
        os.chdir(base_dir)


class InpaintWorker:
    """Holds one inpainting pipeline; ``run(plan items)`` writes the missing samples."""

    def __init__(self, cfg: Any, embeddings: dict[str, str], tokens: list[str], out_dir: str, device: str,
                 base_dir: str | None = None, fault: FaultInjection | None = None, threads: int | None = None) -> None:
        _enter(base_dir)
        if threads:

            torch.set_num_threads(int(threads))

        self.cfg, self.tokens, self.out_dir, self.fault = cfg, list(tokens), Path(out_dir), fault
        self.pipe = load_inpaint_pipeline(cfg, {k: Path(v) for k, v in embeddings.items()}, _worker_device(device))
        self.count = 0

    def _written(self, sample_id: str) -> None:
        self.count += 1
        if self.fault is not None:
            self.fault.hit(self.count)

    def run(self, plan: list) -> dict[str, str]:

        inpaint(self.pipe, plan, self.tokens, self.cfg, self.out_dir, on_written=self._written)
        return {p.sample_id: str(self.out_dir / "images" / f"{p.sample_id}.png") for p in plan}


def _engine(cfg: Any, engine: Engine | str | None) -> Engine:
    if isinstance(engine, Engine):
        return engine
    return make_engine(engine or cfg.engine, workers=getattr(cfg, "workers", 0) or None)


def inpaint_sharded(stages: Any, plan: list, embeddings: dict[str, Path], out_dir: Path,
                    engine: Engine | str | None = None, shard_batches: int = SHARD_BATCHES,
                    fault: FaultInjection | None = None, threads: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Generate every planned sample not yet on disk on ``engine``; returns (samples table, engine report).

    The table is :func:`spuraug.ddb.inpaint.samples_table` of the whole plan, as the local
    stage returns it.
    """

    cfg = stages.cfg.inpaint
    eng = _engine(cfg, engine)
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    size = max(1, int(cfg.batch_size)) * max(1, int(shard_batches))

    def payload(items):
        # Source images travel as pixels: a worker needs no dataset, only the shared runs folder.
        cache: dict[str, ArrayImage] = {}
        out = []
        for p in items:
            s = p.source
            if s.source_id not in cache:
                cache[s.source_id] = ArrayImage.of(s.load_image())
            src = Source(s.source_id, s.position, s.source_class, s.rank, cache[s.source_id], s.mask_file)
            out.append(Plan(p.sample_id, src, p.target_class, p.seed))
        return out

    shards = []
    for i, items in chunk(list(plan), size):
        ids = tuple(p.sample_id for p in items)
        shards.append(Shard(i, ids, (lambda items=items: payload(items)),
                            (lambda ids=ids: all((img_dir / f"{s}.json").is_file() for s in ids))))
    spec = WorkerSpec("spuraug.ddb.scaleout:InpaintWorker", {
        "cfg": cfg, "embeddings": {k: str(v) for k, v in embeddings.items()}, "tokens": stages.tokens(),
        "out_dir": str(out_dir), "device": str(stages.device), "base_dir": os.getcwd(), "fault": fault,
        "threads": threads,
    })

    done0 = sum(1 for p in plan if (img_dir / f"{p.sample_id}.json").is_file())
    with tqdm(total=len(plan), initial=done0, desc=f"inpaint ({eng.name})", unit="img", dynamic_ncols=True) as bar:
        eng.map(spec, shards, on_shard_done=lambda shard, written: bar.update(len(written)))
    report = eng.last_report.to_json() if eng.last_report else {"engine": eng.name}
    report["shard_size"] = size
    return samples_table(out_dir, plan), report


class PruneWorker:
    """Holds the ERM classifier; ``run(rows)`` scores the missing samples, one JSON per sample id."""

    def __init__(self, model: Any, transform: Any, psi: dict, cfg: Any, inpaint_dir: str, out_dir: str,
                 device: str, base_dir: str | None = None, fault: FaultInjection | None = None,
                 threads: int | None = None, mask_dir: str | None = None, inpaint_cfg: Any = None) -> None:
        _enter(base_dir)
        if threads:

            torch.set_num_threads(int(threads))
        self.model, self.transform, self.psi, self.cfg = model, transform, psi, cfg
        self.inpaint_dir, self.out_dir = Path(inpaint_dir), Path(out_dir)
        self.mask_dir = Path(mask_dir) if mask_dir else None
        self.inpaint_cfg = inpaint_cfg
        self.device, self.fault, self.count = _worker_device(device), fault, 0
        self.model.eval().to(self.device)

    def _region(self, mask_file: Path, edited_region: Any) -> Image.Image:
        # The region the inpainting repainted (object mask, or its box with mask_mode: box), as the
        # local prune stage scores it.
        if self.inpaint_cfg is None:
            return Image.open(mask_file).convert("L")
        return edited_region(mask_file, self.inpaint_cfg)

    def run(self, rows: list[tuple[dict, ArrayImage]]) -> dict[str, str]:

        def mask_file(r: dict) -> Path:  # the segment artifact's mask, as the local stage reads it
            return self.mask_dir / f"{safe_name(str(r['source_id']))}.png" if self.mask_dir else Path(r["mask"])

        cfg = self.cfg
        out = {}
        bs = max(1, int(cfg.batch_size))
        for start in range(0, len(rows), bs):
            batch = rows[start:start + bs]
            files = [self.out_dir / f"{r['sample_id']}.json" for r, _ in batch]
            if all(f.is_file() for f in files):
                out.update({r["sample_id"]: str(f) for (r, _), f in zip(batch, files)})
                continue
            tgt = [int(r["target_class"]) if cfg.ig_target == "new" else int(r["source_class"]) for r, _ in batch]
            scores = score_samples(
                self.model, [Image.open(self.inpaint_dir / r["file"]).convert("RGB") for r, _ in batch],
                [orig() for _, orig in batch], [self._region(mask_file(r), edited_region) for r, _ in batch],
                [int(r["source_class"]) for r, _ in batch], tgt, self.transform, n_steps=cfg.n_steps,
                internal_batch_size=cfg.internal_batch_size, device=self.device,
            )
            for (r, _), f, s in zip(batch, files, scores):
                out[r["sample_id"]] = str(f)
                if f.is_file():
                    continue
                row = {"sample_id": r["sample_id"], "source_id": r["source_id"],
                       "source_class": int(r["source_class"]), "target_class": int(r["target_class"]),
                       "label": int(r["label"]), "psi": float(self.psi[int(r["source_class"])]), **s}
                write_json_sorted(f, row)
                self.count += 1
                if self.fault is not None:
                    self.fault.hit(self.count)
        return out


def prune_sharded(stages: Any, samples: pd.DataFrame, sources: pd.DataFrame, out_dir: Path,
                  inpaint_dir: Path, engine: Engine | str | None = None, shard_batches: int = SHARD_BATCHES,
                  fault: FaultInjection | None = None, threads: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Score every generated sample on ``engine`` (``<out_dir>/scores/<sample id>.json``);
    returns (score table of :data:`spuraug.ddb.prune.TABLE_COLUMNS` in ``samples`` order, engine report)."""

    cfg = stages.cfg.prune
    eng = _engine(cfg, engine)
    score_dir = Path(out_dir) / "scores"
    score_dir.mkdir(parents=True, exist_ok=True)
    pos = dict(zip(sources.source_id.astype(str), sources.position))
    records = samples.to_dict("records")
    size = max(1, int(cfg.batch_size)) * max(1, int(shard_batches))

    def payload(rows):
        return [(r, ArrayImage.of(stages.source_image(int(pos[str(r["source_id"])])))) for r in rows]

    shards = []
    for i, rows in chunk(records, size):
        ids = tuple(str(r["sample_id"]) for r in rows)
        shards.append(Shard(i, ids, (lambda rows=rows: payload(rows)),
                            (lambda ids=ids: all((score_dir / f"{s}.json").is_file() for s in ids))))
    model, _ = stages.erm()
    spec = WorkerSpec("spuraug.ddb.scaleout:PruneWorker", {
        "model": model, "transform": stages.eval_transform, "psi": {int(k): float(v) for k, v in psi(sources).items()},
        "cfg": cfg, "inpaint_dir": str(inpaint_dir), "out_dir": str(score_dir), "device": str(stages.device),
        "base_dir": os.getcwd(), "fault": fault, "threads": threads,
        "mask_dir": str(stages.segment_artifact().path / "masks"), "inpaint_cfg": stages.cfg.inpaint,
    })

    done0 = sum(1 for r in records if (score_dir / f"{r['sample_id']}.json").is_file())
    with tqdm(total=len(records), initial=done0, desc=f"prune ({eng.name})", unit="img", dynamic_ncols=True) as bar:
        eng.map(spec, shards, on_shard_done=lambda shard, written: bar.update(len(written)))
    rows = [read_json(score_dir / f"{r['sample_id']}.json") for r in records]
    report = eng.last_report.to_json() if eng.last_report else {"engine": eng.name}
    report["shard_size"] = size
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS)), report


def engine_summary(report: dict | None, cfg: Any) -> dict:
    """The ``engine`` entry of a stage manifest."""
    return report or {"engine": getattr(cfg, "engine", "local"), "workers": 1}


__all__ = ["ArrayImage", "FaultInjection", "InpaintWorker", "PruneWorker", "inpaint_sharded", "prune_sharded",
           "engine_summary"]
