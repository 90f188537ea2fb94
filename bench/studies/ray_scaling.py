"""``python -m bench.studies.ray_scaling``: DDB generation throughput on the toy world, local engine vs
Ray with 1 and 2 workers, plus the per-shard overheads of the Ray engine (docs/scaleout.md).

    python -m bench.studies.ray_scaling [--k 24] [--resolution 64] [--steps 10] [--batch 2]
        [--workers 1 2] [--out results/studies/ray_scaling/ray_scaling.json]

Models: the tiny inpainting/CLIPSeg models of tests/tiny_models.py (random weights, built
into a temporary folder), because the toy zoo (spuraug/toyworld/zoo) is not committed.
The serial stages (inversion, sources, segmentation) run once, locally; then the inpaint
stage runs from scratch with each engine. Measured per configuration: wall time, images/s,
the engine's start-up (Ray connection + actors + first shard's pipeline load). Measured
once: Ray start-up, actor start-up (a worker that loads nothing, and one that imports
torch + diffusers), pipeline load in one process (imports already done), and the round trip of a no-op shard (per-shard Ray overhead). The machine's load
(``os.getloadavg``) is recorded before and after: on a shared machine it moves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from spuraug.ddb.config import ddb_config
from spuraug.ddb.engines import LocalEngine, RayEngine, WorkerSpec, connect_ray
from spuraug.ddb.pipeline import Stages
from spuraug.ddb.scaleout import InpaintWorker, inpaint_sharded
from spuraug.models import build_model


class _Noop:
    """A worker that loads nothing: measures actor start-up and shard round trips."""

    def __init__(self) -> None:
        pass

    def run(self, payload) -> dict:
        return {}


class _Imports:
    """A worker that only imports the generation stack (torch, diffusers): a fresh actor's fixed cost."""

    def __init__(self) -> None:
        # deferred: this actor measures the cost of importing the generation stack in a fresh
        # worker process, so the imports must happen here, inside the actor
        from diffusers import StableDiffusionInpaintPipeline  # noqa: F401

        import spuraug.ddb.scaleout  # noqa: F401

    def run(self, payload) -> dict:
        return {}


def _stages(models: dict, runs: Path, args, engine: str = "local", workers: int = 0):

    torch.manual_seed(0)
    cfg = ddb_config({
        "invert": {"model": str(models["sd9"]), "resolution": 16, "max_train_steps": 1, "n_images": 2,
                   "initializer_token": "digit", "noun": "digit"},
        "sources": {"k": [args.k, args.k]},
        "segment": {"backend": "clipseg", "clipseg": str(models["clipseg"]), "clipseg_threshold": 0.0,
                    "prompt": "digit"},
        "inpaint": {"model": str(models["sd9"]), "resolution": args.resolution, "num_inference_steps": args.steps,
                    "batch_size": args.batch, "prompt": "a photo of a {token} digit", "engine": engine,
                    "workers": workers},
    })
    return Stages("toy", 0, cfg, runs_dir=runs, dataset_options={"n_train": args.n_train, "n_val": 80, "n_test": 80},
                  device="cpu", classifier=build_model("toy_cnn", 2, pretrained=False))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(args) -> dict:
    import ray  # deferred: optional dependency (extra 'ray')

    from tests import tiny_models as tiny  # deferred: test models (tests/), from a checkout

    torch.set_num_threads(1)  # as each Ray actor (OMP_NUM_THREADS=1)
    root = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    started_ray = not ray.is_initialized()
    out: dict = {"load_before": os.getloadavg()}
    try:
        models = {"sd9": tiny.save_stable_diffusion(root / "sd9", in_channels=9, image_size=16),
                  "clipseg": tiny.save_clipseg(root / "clipseg")}
        runs = root / "runs"
        st = _stages(models, runs, args)
        serial = {}
        _, serial["invert_s"] = _timed(st.invert)
        _, serial["sources_s"] = _timed(st.sources)
        _, serial["segment_s"] = _timed(st.segment)
        plan = st.plan()
        embeds = st.embeddings()
        out_dir = st.inpaint_artifact().path
        n = len(plan)
        out["samples"] = n
        out["serial_stages_s"] = serial

        # per-shard overheads
        _, out["ray_init_s"] = _timed(lambda: connect_ray(num_cpus=os.cpu_count(), log_to_driver=False))
        # deferred: needs ray, an optional extra (this study runs only with it)
        from spuraug.ddb.engines import _RayWorker

        t0 = time.perf_counter()
        a = ray.remote(_RayWorker).options(num_cpus=0.5).remote(WorkerSpec(_Noop), {})
        ray.get(a.ping.remote())
        out["actor_startup_s"] = time.perf_counter() - t0
        payload = [torch.zeros(3, 64, 64).numpy() for _ in range(args.batch * 2)]  # a shard of 64 px sources
        ray.get(a.run.remote(payload))
        reps = 20
        _, dt = _timed(lambda: [ray.get(a.run.remote(payload)) for _ in range(reps)])
        out["noop_shard_roundtrip_s"] = dt / reps
        ray.kill(a)
        t0 = time.perf_counter()
        b = ray.remote(_RayWorker).options(num_cpus=0.5).remote(WorkerSpec(_Imports), {})
        ray.get(b.ping.remote())
        out["actor_startup_with_imports_s"] = time.perf_counter() - t0
        ray.kill(b)
        cfg = st.cfg.inpaint
        _, out["pipeline_load_s"] = _timed(lambda: InpaintWorker(cfg, {k: str(v) for k, v in embeds.items()},
                                                                 st.tokens(), str(out_dir), "cpu"))

        runs_out = []
        configs = [("local", 1)] + [("ray", w) for w in args.workers]
        for name, w in configs:
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            engine = LocalEngine() if name == "local" else RayEngine(workers=w)
            load0 = os.getloadavg()
            (table, report), wall = _timed(lambda e=engine: inpaint_sharded(st, plan, embeds, out_dir, engine=e))
            assert len(table) == n, (name, w, len(table))
            done_s = report.get("shard_done_s") or []
            size = report.get("shard_size") or 1
            # steady state: samples of every shard but the first over the time between first and last shard
            steady = (n - size) / (done_s[-1] - done_s[0]) if len(done_s) > 1 and done_s[-1] > done_s[0] else None
            runs_out.append({"engine": name, "workers": w, "wall_time_s": wall, "images_per_s": n / wall,
                             "steady_images_per_s": steady, "engine_startup_s": report.get("startup_s"),
                             "actors_ready_s": report.get("actors_ready_s"), "shard_done_s": done_s,
                             "shards": report.get("shards"), "shard_size": size, "load_1min_before": load0[0]})
            print(f"{name} x{w}: {n} images in {wall:.1f} s = {n / wall:.2f} images/s, steady state "
                  f"{steady or float('nan'):.2f} images/s (workers ready {report.get('actors_ready_s') or 0:.1f} s, "
                  f"load {load0[0]:.1f})", flush=True)
        out["runs"] = runs_out
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.ray_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=24, help="sources per class (samples = 2k)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="results/studies/ray_scaling/ray_scaling.json")
    args = p.parse_args(argv)
    t0 = time.time()
    res = measure(args)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = None
    res.update({
        "command": " ".join([sys.executable, "-m", "bench.studies.ray_scaling", *(argv if argv is not None else sys.argv[1:])]),
        "models": "tiny (tests/tiny_models.py, random weights); toy zoo not committed",
        "settings": vars(args), "git": sha, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "total_s": time.time() - t0,
    })
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
