"""Scale-out on Ray (docs/scaleout.md): the DDB inpaint and prune stages sharded over
Ray actors give the local engine's outputs, and a worker lost mid-shard loses nothing.

One local Ray (2 CPUs, no dashboard) serves the whole module; tiny diffusion/CLIPSeg
models (tests/tiny_models.py) on the small toy benchmark.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")

import tiny_models as tiny  # noqa: E402

from spuraug.ddb.config import ddb_config  # noqa: E402
from spuraug.ddb.engines import LocalEngine, RayEngine, Shard, WorkerSpec  # noqa: E402
from spuraug.ddb.pipeline import Stages  # noqa: E402
from spuraug.ddb.scaleout import FaultInjection, inpaint_sharded  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def local_ray():
    from spuraug.ddb.engines import connect_ray

    started = not ray.is_initialized()
    connect_ray(num_cpus=2, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scaleout_models")
    return {"sd9": tiny.save_stable_diffusion(root / "sd9", in_channels=9, image_size=16),
            "clipseg": tiny.save_clipseg(root / "clipseg")}


def _stages(models, runs: Path, engine: str = "local", workers: int = 0) -> Stages:
    from spuraug.models import build_model

    torch.manual_seed(0)
    classifier = build_model("toy_cnn", 2, pretrained=False)
    cfg = ddb_config({
        "invert": {"model": str(models["sd9"]), "resolution": 16, "max_train_steps": 1, "n_images": 2,
                   "initializer_token": "digit", "noun": "digit"},
        "sources": {"k": [4, 4]},
        "segment": {"backend": "clipseg", "clipseg": str(models["clipseg"]), "clipseg_threshold": 0.0,
                    "prompt": "digit"},
        "inpaint": {"model": str(models["sd9"]), "resolution": 16, "num_inference_steps": 2, "batch_size": 2,
                    "prompt": "a photo of a {token} digit", "engine": engine, "workers": workers},
        "prune": {"n_steps": 4, "batch_size": 2, "engine": engine, "workers": workers},
    })
    return Stages("toy", 0, cfg, runs_dir=runs, dataset_options={"n_train": 200, "n_val": 80, "n_test": 80},
                  device="cpu", classifier=classifier)


def _outputs(folder: Path) -> dict[str, object]:
    """Every file of an inpaint artifact's images/ folder: pixels for images, records for JSON."""
    out = {}
    for f in sorted((folder / "images").iterdir()):
        if f.suffix == ".png":
            out[f.name] = np.asarray(Image.open(f))
        else:  # the mask path differs only by the runs folder
            rec = json.loads(f.read_text())
            rec["mask"] = rec["mask"].split("ddb_artifacts", 1)[1]
            out[f.name] = rec
    return out


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".png"):
            assert np.array_equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


@pytest.fixture(scope="module")
def local_run(models, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray actors (OMP_NUM_THREADS=1)
    try:
        runs = tmp_path_factory.mktemp("local_runs")
        st = _stages(models, runs)
        table = st.prune()
    finally:
        torch.set_num_threads(n)
    return st, table


def _copy_upstream(local_run, dst: Path) -> Path:
    """The local run's folder without its inpaint/prune artifacts (inversion, sources, masks reused)."""
    src = Path(local_run[0].runs_dir)
    shutil.copytree(src, dst)
    for stage in ("inpaint", "prune"):
        for d in (dst / "toy" / "ddb_artifacts" / "seed0").glob(f"{stage}-*"):
            shutil.rmtree(d)
    return dst


def test_ray_engine_matches_local_outputs(local_ray, local_run, models, tmp_path):
    st_local, table_local = local_run
    st = _stages(models, _copy_upstream(local_run, tmp_path / "runs"), engine="ray", workers=2)
    table = st.prune()
    inp_local, inp = st_local.inpaint_artifact(), st.inpaint_artifact()
    assert inp.key == inp_local.key  # the engine is not part of what the samples depend on
    ref = _outputs(inp_local.path)
    assert len(ref) == 2 * 8  # 8 samples (4 sources per class, one other class each): png + json
    _same(ref, _outputs(inp.path))
    m = inp.manifest()
    assert m["engine"]["engine"] == "ray" and m["engine"]["workers"] == 2 and m["engine"]["shards"] == 2
    assert m["engine"]["num_cpus_per_worker"] == 0.5
    # pruning: one score file per sample, the same numbers as the local stage
    prune_dir = st.prune_artifact().path
    assert sorted(p.stem for p in (prune_dir / "scores").glob("*.json")) == sorted(table_local.sample_id)
    cols = ["p", "psi", "p_target", "rho_raw", "attr_total", "logit_delta", "mask_area"]
    assert list(table.sample_id) == list(table_local.sample_id)
    np.testing.assert_allclose(table[cols].to_numpy(float), table_local[cols].to_numpy(float), rtol=1e-5, atol=1e-6)
    assert list(table.keep) == list(table_local.keep)


def _fresh_inpaint(models, local_run, tmp_path) -> tuple[Stages, list, dict, Path]:
    st = _stages(models, _copy_upstream(local_run, tmp_path / "runs"))
    plan = st.plan()
    embeds = st.embeddings()
    return st, plan, embeds, st.inpaint_artifact().path


def _no_partials(folder: Path) -> None:
    names = [p.name for p in (folder / "images").iterdir()]
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    pngs = {n[:-4] for n in names if n.endswith(".png")}
    jsons = {n[:-5] for n in names if n.endswith(".json")}
    assert pngs == jsons


@pytest.mark.slow
def test_worker_exiting_mid_shard_is_retried_without_loss_or_duplicates(local_ray, local_run, models, tmp_path):
    st, plan, embeds, out = _fresh_inpaint(models, local_run, tmp_path)
    marker = tmp_path / "fault.marker"
    engine = RayEngine(workers=2, max_retries=2)
    # the first worker to write its first sample exits: that batch's second sample is unwritten
    table, report = inpaint_sharded(st, plan, embeds, out, engine=engine,
                                    fault=FaultInjection(after_samples=1, marker=str(marker), action="exit"))
    assert marker.is_file() and report["retries"] == 1 and report["shards"] == 2
    assert len(table) == 8 and table.sample_id.is_unique
    _no_partials(out)
    _same(_outputs(local_run[0].inpaint_artifact().path), _outputs(out))


@pytest.mark.slow
def test_actor_killed_mid_shard_is_retried_without_loss_or_duplicates(local_ray, local_run, models, tmp_path):
    st, plan, embeds, out = _fresh_inpaint(models, local_run, tmp_path)
    marker = tmp_path / "fault.marker"
    engine = RayEngine(workers=1, max_retries=2, actor_name_prefix=f"scaleout-test-{time.time_ns()}")
    killed = []

    def killer():  # the worker stops after 3 samples (mid-shard, mid-batch); kill it from outside
        # Kill only once the worker has hung: on a loaded machine loading the pipeline can take
        # minutes, and an actor killed before the marker left its retry to hang with no killer.
        deadline = time.time() + 1200
        while not marker.is_file() and time.time() < deadline:
            time.sleep(0.2)
        if marker.is_file():
            ray.kill(ray.get_actor(f"{engine.actor_name_prefix}-0"))
            killed.append(True)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    table, report = inpaint_sharded(st, plan, embeds, out, engine=engine,
                                    fault=FaultInjection(after_samples=3, marker=str(marker), action="hang"))
    t.join(5)
    assert killed and report["retries"] == 1
    assert len(table) == 8 and table.sample_id.is_unique
    _no_partials(out)
    _same(_outputs(local_run[0].inpaint_artifact().path), _outputs(out))


class _Echo:
    """A worker for the engine interface alone: writes ``<sample>.txt`` once."""

    def __init__(self, out_dir: str) -> None:
        self.out = Path(out_dir)

    def run(self, ids: list[str]) -> dict[str, str]:
        res = {}
        for s in ids:
            f = self.out / f"{s}.txt"
            if not f.is_file():
                f.write_text(s)
            res[s] = str(f)
        return res


def test_engines_share_one_interface_and_skip_complete_shards(local_ray, tmp_path):
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in workers
    out = {}
    for name, engine in (("local", LocalEngine()), ("ray", RayEngine(workers=2))):
        d = tmp_path / name
        d.mkdir()
        (d / "s0.txt").write_text("s0")
        (d / "s1.txt").write_text("s1")
        shards = [Shard(i, tuple(ids), (lambda ids=ids: list(ids)),
                        (lambda ids=ids, d=d: all((d / f"{s}.txt").is_file() for s in ids)))
                  for i, ids in enumerate([["s0", "s1"], ["s2", "s3"], ["s4"]])]
        got = engine.map(WorkerSpec(_Echo, {"out_dir": str(d)}), shards)
        out[name] = {k: Path(v).name for k, v in got.items()}
        assert engine.last_report.shards == 2 and engine.last_report.shards_skipped == 1
        assert sorted(p.name for p in d.iterdir()) == [f"s{i}.txt" for i in range(5)]
    assert out["local"] == out["ray"] == {f"s{i}": f"s{i}.txt" for i in range(2, 5)}


def test_engine_option_is_checked_and_not_in_artifact_keys(models, tmp_path):
    with pytest.raises(ValueError, match="inpaint.engine"):
        ddb_config({"inpaint": {"engine": "dask"}})
    a, b = _stages(models, tmp_path / "a"), _stages(models, tmp_path / "a", engine="ray", workers=3)
    assert a.invert_artifact().key == b.invert_artifact().key
    assert a.cfg.inpaint.engine == "local" and b.cfg.prune.workers == 3


# ------------------------------------------------------------------ the sweep's Ray launcher
def test_ray_launcher_runs_a_tiny_sweep_into_a_version_folder(local_ray, tmp_path):
    from bench.sweep import run_sweep

    runs, results = tmp_path / "runs", tmp_path / "results"
    overrides = {"dataset_options": {"n_train": 200, "n_val": 80, "n_test": 80}, "erm": {"epochs": 1}}
    logs: list[str] = []
    out, df, outcomes = run_sweep("toy", ["erm", "no-such-method"], [0], runs_dir=str(runs),
                                  results_dir=str(results), overrides=overrides, launcher="ray", log=logs.append)
    status = {o.spec.method: o.status for o in outcomes}
    assert status == {"erm": "done", "no-such-method": "failed"}  # a failing run does not sink the sweep
    assert (runs / "toy" / "erm" / "seed0" / "done").is_file()
    assert out is not None and out.parent == results / "toy"
    assert [json.loads(line)["method"] for line in (out / "runs.jsonl").read_text().splitlines()] == ["erm"]
    prov = json.loads((out / "provenance.json").read_text())
    assert [o["status"] for o in prov["sweep"]["outcomes"]] == ["done", "failed"]
    assert len(df) == 1


def test_ray_launcher_resource_requests():
    from bench.launch import RayLauncher, RunSpec, make_launcher

    la = make_launcher("ray")
    assert isinstance(la, RayLauncher)
    gpu, cpu = {"CPU": 16.0, "GPU": 4.0}, {"CPU": 2.0}
    assert la.resources(RunSpec("waterbirds", "erm", 0), gpu) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert la.resources(RunSpec("toy", "erm", 0), gpu)["num_gpus"] == 0.0
    assert la.resources(RunSpec("waterbirds", "erm", 0), cpu) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert RayLauncher(num_cpus=0.5).resources(RunSpec("toy", "erm", 0), cpu)["num_cpus"] == 0.5
    spec = RayLauncher.absolute(RunSpec("toy", "erm", 0, runs_dir="runs", config_file="x.yaml"))
    assert Path(spec.runs_dir).is_absolute() and Path(spec.config_file).is_absolute() and spec.data_dir is None


def test_cli_engine_option_sets_both_sharded_stages():
    import argparse

    from spuraug.ddb import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["ddb", "run", "--dataset", "toy", "--engine", "ray", "--workers", "4"])
    ov = commands.overrides_from_args(args)
    assert ov["ddb"]["inpaint"]["engine"] == ov["ddb"]["prune"]["engine"] == "ray"
    assert ov["ddb"]["inpaint"]["workers"] == ov["ddb"]["prune"]["workers"] == 4
    plain = commands.overrides_from_args(parser.parse_args(["ddb", "inpaint", "--dataset", "toy"]))
    assert "engine" not in str(plain)
    with pytest.raises(SystemExit):
        parser.parse_args(["ddb", "invert", "--dataset", "toy", "--engine", "ray"])  # not a sharded stage


@pytest.mark.slow
def test_ray_scaling_benchmark_smoke(local_ray, tmp_path):
    from bench.studies import ray_scaling

    out = tmp_path / "ray_scaling.json"
    assert ray_scaling.main(["--k", "2", "--resolution", "16", "--steps", "1", "--workers", "1",
                             "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["samples"] == 4 and [(r["engine"], r["workers"]) for r in res["runs"]] == [("local", 1), ("ray", 1)]
    assert all(r["images_per_s"] > 0 and r["shards"] == 1 for r in res["runs"])
    assert res["actor_startup_with_imports_s"] > res["actor_startup_s"] > 0 and res["noop_shard_roundtrip_s"] > 0
    assert len(res["load_before"]) == 3 and ray.is_initialized()  # the module's Ray is left running


def test_fault_injection_fires_once_even_when_workers_race(tmp_path, monkeypatch):
    # Two workers reaching the fault together must not both fire: the marker is created
    # exclusively, so the loser returns instead of exiting (a race made the exit test see 2 retries).
    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr("spuraug.ddb.scaleout.os._exit", fake_exit)
    marker = tmp_path / "fault.marker"
    fault = FaultInjection(after_samples=1, marker=str(marker), action="exit")
    fault.hit(0)
    assert not marker.exists()
    with pytest.raises(Exited):
        fault.hit(1)
    assert marker.read_text().isdigit()
    monkeypatch.setattr("spuraug.ddb.scaleout.os.path.exists", lambda p: False)  # the old check-then-write race
    fault.hit(2)  # returns: the marker exists, whatever a racing check saw
