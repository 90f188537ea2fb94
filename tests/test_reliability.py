"""No run lost, no wrong number written (issue 20): --force without loss, run locks, honest
time over attempts, damaged files, offline loading, and a chaos-bench smoke run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spuraug.runs import read_metrics, run_dir, run_method

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(small_toy):
    return {
        "dataset_options": {"n_train": small_toy.n_train, "n_val": small_toy.n_val, "n_test": small_toy.n_test,
                            "correlation": small_toy.correlation},
        "model.width": 8, "model.pretrained": False, "erm.epochs": 2, "erm.batch_size": 64, "erm.lr": 0.05,
    }


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------- 1. --force


def test_force_never_loses_the_finished_run(tmp_path, tiny, capsys):
    """Issue 20 item 1: finish; --force with a bad value (fails); the plain command; --force."""
    from spuraug.config import ConfigError

    first = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    d = run_dir(tmp_path, "toy", "erm", 0)
    with pytest.raises((ConfigError, ValueError)):
        run_method("toy", "erm", 0, runs_dir=tmp_path, overrides={**tiny, "erm.epochs": -3}, force=True,
                   progress=False)
    # the finished run is back in place (or was never moved)
    assert (d / "done").is_file() and json.loads((d / "result.json").read_text())["test"] == first["test"]
    again = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    assert again["test"] == first["test"]
    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, force=True, progress=False)
    prev = d.with_name(".seed0.previous")
    assert (prev / "done").is_file() and json.loads((prev / "result.json").read_text())["test"] == first["test"]
    assert (d / "done").is_file()


def test_forced_run_failing_before_it_starts_restores_the_previous_one(tmp_path, tiny, monkeypatch, capsys):
    from spuraug.methods import get_method

    first = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    d = run_dir(tmp_path, "toy", "erm", 0)

    def boom(self, ctx):
        raise RuntimeError("failed before training")

    monkeypatch.setattr(get_method("erm"), "run", boom)
    with pytest.raises(RuntimeError):
        run_method("toy", "erm", 0, runs_dir=tmp_path, overrides={**tiny, "erm.lr": 0.01}, force=True,
                   progress=False)
    assert "previous run is restored" in capsys.readouterr().err
    assert json.loads((d / "result.json").read_text())["test"] == first["test"]
    assert not d.with_name(".seed0.previous").exists()


def test_killed_forced_run_never_replaces_the_finished_backup(tmp_path, tiny, capsys):
    """A forced run killed after config.json: the next command restores the finished run; an
    unfinished folder moved aside never replaces a finished .previous."""
    first = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    d = run_dir(tmp_path, "toy", "erm", 0)
    prev = d.with_name(".seed0.previous")
    os.replace(d, prev)  # what --force did before it was killed
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"config_hash": "other"}))
    again = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    assert again["test"] == first["test"] and "restored" in capsys.readouterr().err
    # an unfinished run of another config, forced away, goes beside the finished backup
    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, force=True, progress=False)
    (d / "done").unlink()
    (d / "metrics.jsonl").write_text("")  # started, not finished
    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides={**tiny, "erm.epochs": 1}, force=True, progress=False)
    assert (prev / "done").is_file() and d.with_name(".seed0.unfinished").is_dir()


# ---------------------------------------------------------------------------- 2. time over attempts


def test_run_wall_time_counts_a_killed_attempt(tmp_path, tiny):
    d = run_dir(tmp_path, "toy", "erm", 0)
    d.mkdir(parents=True)
    # what a SIGKILLed attempt leaves: its heartbeat (attempts.json), no result
    (d / "attempts.json").write_text(json.dumps([{"started": "x", "seconds": 1000.0}]))
    result = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    attempts = json.loads((d / "attempts.json").read_text())
    assert len(attempts) == 2 and attempts[0]["seconds"] == 1000.0
    assert result["wall_time_s"] == pytest.approx(sum(a["seconds"] for a in attempts))


def test_attempt_clock_survives_sigkill(tmp_path):
    path = tmp_path / "attempts.json"
    code = ("import time,sys; from spuraug.ddb.artifacts import AttemptClock\n"
            f"c = AttemptClock({str(path)!r}, interval=0.1).__enter__(); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], env=_env())
    try:
        for _ in range(600):  # until a heartbeat beyond the first write has landed
            time.sleep(0.1)
            if path.is_file() and (json.loads(path.read_text() or "[]") or [{}])[-1].get("seconds", 0) > 0:
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    first = json.loads(path.read_text())
    assert len(first) == 1 and first[0]["seconds"] > 0
    from spuraug.ddb.artifacts import AttemptClock

    with AttemptClock(path) as clock:
        pass
    assert len(clock.attempts) == 2 and clock.total_seconds >= first[0]["seconds"]


def test_stage_throughput_counts_every_attempt(tmp_path):
    """A stage interrupted once: images/s = outputs / (every attempt's seconds)."""
    from spuraug.ddb.artifacts import Artifact, timed

    art = Artifact(tmp_path, "prune", {"k": 1})
    art.prepare()
    with pytest.raises(KeyboardInterrupt), timed(art):
        raise KeyboardInterrupt
    # a killed attempt's heartbeat: 50 s
    attempts = json.loads((art.path / "attempts.json").read_text())
    attempts.append({"started": "x", "seconds": 50.0})
    (art.path / "attempts.json").write_text(json.dumps(attempts))
    with timed(art) as t:
        (art.path / "scores.csv").write_text("a\n1\n")
    assert t["attempts"] == 3 and t["wall_time_s"] >= 50.0
    art.finish({"images_per_s": 100 / t["wall_time_s"], "wall_time_s": t["wall_time_s"]})
    m = art.manifest()
    assert m["wall_time_s"] == pytest.approx(t["wall_time_s"]) and m["images_per_s"] <= 2.0
    assert m["files"] == {"scores.csv": 4}


# ---------------------------------------------------------------------------- 3. locks


def test_second_process_waits_for_the_run_lock_and_trains_nothing(tmp_path, tiny):
    """Two processes on one run: one trains, the other waits, then finds it done."""
    from spuraug.runs import lock_path, run_lock

    code = ("import json,sys; from spuraug.runs import run_method; "
            f"run_method('toy','erm',0,runs_dir={str(tmp_path)!r},overrides=json.loads(sys.argv[1]),progress=False)")
    d = run_dir(tmp_path, "toy", "erm", 0)
    heads = []
    with run_lock(d):  # held until both processes block on it, so they really overlap
        procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(tiny)], env=_env(),
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:  # read each one's stderr up to its "waiting" line (or to its end, if it died)
            lines = []
            for line in p.stderr:
                lines.append(line)
                if "waiting for it to finish" in line:
                    break
            heads.append("".join(lines))
    errs = [h + p.communicate(timeout=600)[1] for h, p in zip(heads, procs)]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all("waiting for it to finish" in h for h in heads), heads
    lines = read_metrics(d)
    assert [ln["epoch"] for ln in lines] == [1, 2]  # no epoch twice
    assert len(json.loads((d / "attempts.json").read_text())) == 1  # trained once
    assert lock_path(d).is_file()


def test_second_sweep_on_the_same_runs_folder_skips(tmp_path, capsys):
    from filelock import FileLock

    from bench.sweep import main, sweep_lock_path

    lock = FileLock(str(sweep_lock_path(tmp_path / "runs", "toy")))
    with lock:
        rc = main(["--dataset", "toy", "--methods", "erm", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
                   "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert rc == 0 and "another sweep" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs" / "toy" / "erm").exists()


# ---------------------------------------------------------------------------- 4. damaged files


def test_dfr_on_a_truncated_erm_checkpoint_names_the_file(tmp_path, tiny, capsys):
    from spuraug.runs import DamagedRunError

    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    ckpt = run_dir(tmp_path, "toy", "erm", 0) / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(DamagedRunError) as e:
        run_method("toy", "dfr", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    msg = str(e.value)
    assert str(ckpt) in msg and "--method erm" in msg and "--force" in msg and "\n" not in msg


def test_dfr_cli_on_truncated_checkpoint_is_one_line_exit_2(tmp_path, tiny, capsys):
    from spuraug.cli import main

    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    ckpt = run_dir(tmp_path, "toy", "erm", 0) / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    sets = [f"dataset_options.{k}={v}" for k, v in tiny["dataset_options"].items()]
    sets += [f"{k}={v}" for k, v in tiny.items() if k != "dataset_options"]
    argv = ["train", "--dataset", "toy", "--method", "dfr", "--out", str(tmp_path)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert "Traceback" not in err and len(errors) == 1 and "last.pt" in errors[0]


def test_damaged_stage_file_is_redone(tmp_path, capsys):
    from spuraug.ddb import artifacts
    from spuraug.ddb.artifacts import Artifact

    art = Artifact(tmp_path, "inpaint", {"k": 1})
    art.prepare()
    (art.path / "images").mkdir()
    (art.path / "images" / "a.png").write_bytes(b"x" * 100)
    (art.path / "images" / "a.json").write_text("{}")
    (art.path / "images" / "b.png").write_bytes(b"y" * 100)
    art.finish({"wall_time_s": 1.0})
    artifacts._VERIFIED.clear()
    assert art.done
    (art.path / "images" / "a.png").write_bytes(b"x" * 10)  # truncated
    artifacts._VERIFIED.clear()
    assert not art.done
    assert "images/a.png" in capsys.readouterr().err
    assert not (art.path / "images" / "a.json").exists()  # its sidecar goes too: the sample is redone
    assert (art.path / "images" / "b.png").is_file() and not (art.path / "done").exists()
    # a torn manifest: unfinished, redone
    art.finish({"wall_time_s": 1.0})
    (art.path / "manifest.json").write_text('{"files": {"ima')
    artifacts._VERIFIED.clear()
    assert not art.done


def test_torn_prune_partial_is_dropped(tmp_path, capsys):
    import pandas as pd

    from spuraug.ddb.pipeline import _read_partial

    samples = pd.DataFrame({"sample_id": ["s1", "s2"]})
    good = tmp_path / "scores.partial.csv"
    good.write_text("sample_id,source_id,p\ns1,a,0.5\n")
    assert list(_read_partial(good, samples).sample_id) == ["s1"]
    good.write_text("sample_id,source_id,p\ns1,a,0.5\ns2,\x00\x00")
    assert _read_partial(good, samples) is None and "torn" in capsys.readouterr().err and not good.exists()


# ---------------------------------------------------------------------------- 6. network


def test_loading_without_offline_variables_fails_fast_in_one_line(tmp_path):
    """HF_HUB_OFFLINE unset and no network: a loading command does not retry the hub; it names
    the model id and `make weights` in one line (exit 2). The timeout is the hang check."""
    env = {k: v for k, v in _env().items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SPURAUG_OFFLINE", "SPURAUG_ONLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    model = "nosuch-org/nosuch-diffusion-model"
    cli = "import sys; from spuraug.cli import main; sys.exit(main())"  # what the `spuraug` script runs
    p = subprocess.run([sys.executable, "-c", cli, "ddb", "invert", "--dataset", "toy", "--out",
                        str(tmp_path / "runs"), "--invert-model", model, "--set", "invert.resolution=16"],
                       env=env, capture_output=True, text=True, timeout=240)
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(err) == 1 and model in err[0] and "make weights" in err[0], p.stderr[-2000:]


def test_network_allowed_only_when_asked(monkeypatch):
    from spuraug.weights import network_allowed

    for v in ("HF_HUB_OFFLINE", "SPURAUG_OFFLINE", "SPURAUG_ONLINE"):
        monkeypatch.delenv(v, raising=False)
    assert not network_allowed()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert network_allowed()
    monkeypatch.setenv("SPURAUG_OFFLINE", "1")
    assert not network_allowed()
    monkeypatch.delenv("SPURAUG_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("SPURAUG_ONLINE", "1")
    assert network_allowed()


# ---------------------------------------------------------------------------- chaos bench


def test_chaos_compare_finds_lost_duplicated_and_changed_files(tmp_path):
    from bench.chaos import compare

    ref, got = tmp_path / "ref", tmp_path / "got"
    for root in (ref, got):
        d = root / "toy" / "erm" / "seed0"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"test": {"avg_acc": 1.0}, "wall_time_s": 1.0,
                                                  "path": str(root.resolve() / "toy")}))
        (d / "metrics.jsonl").write_text('{"epoch": 1, "step_time_s": 1}\n{"epoch": 2, "step_time_s": 1}\n')
        (d / "best.pt").write_bytes(b"\x00\x01")
    c = compare(ref, got)["erm"]
    assert (c["files"], c["identical"], c["lost"], c["duplicated"], c["metrics_equal"]) == (3, 3, 0, 0, True)
    d = got / "toy" / "erm" / "seed0"
    (d / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 1}\n{"epoch": 2}\n')
    (d / "best.pt").unlink()
    (d / "result.json").write_text(json.dumps({"test": {"avg_acc": 0.5}, "wall_time_s": 2.0}))
    (d / ".x.tmp").write_text("")
    c = compare(ref, got)["erm"]
    assert (c["lost"], c["duplicated"], c["identical"], c["metrics_equal"], c["tmp_leftovers"]) == (1, 1, 0, False, 1)


def test_chaos_bench_smoke_one_kill(tmp_path):
    """One SIGKILL during ERM training, resumed: nothing lost or duplicated, all identical."""
    from bench.chaos import main

    rc = main(["--dataset", "toy", "--kills", "1", "--targets", "erm", "--seed", "1", "--work", str(tmp_path / "w"),
               "--out", str(tmp_path / "out")])
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    t = report["total"]
    assert rc == 0, report
    assert t["files"] >= 5 and t["lost"] == 0 and t["duplicated"] == 0 and t["identical"] == t["files"]
    assert [r["target"] for r in report["rows"]] == ["erm"] and report["planned_kills"] == {"erm": 1}


def test_torn_inversion_checkpoint_restarts_the_token(tmp_path, capsys, one_thread):
    """A finished invert stage whose embedding file was truncated and whose checkpoint is torn:
    one line each, the token is trained again and comes out the same."""
    import tiny_models as tiny_m
    import yaml

    from spuraug.config import load_config
    from spuraug.ddb import artifacts
    from spuraug.ddb.method import config_from_hparams
    from spuraug.ddb.pipeline import Stages

    sd = tiny_m.save_stable_diffusion(tmp_path / "sd9", in_channels=9, image_size=16)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "dataset_options": {"n_train": 200, "n_val": 80, "n_test": 80},
        "model": {"name": "toy_cnn", "width": 8, "pretrained": False},
        "ddb": {"invert": {"model": str(sd), "resolution": 16, "max_train_steps": 4, "checkpoint_every": 2,
                           "n_images": 2, "initializer_token": "digit", "noun": "digit"}},
    }))
    resolved = load_config("toy", "ddb", cfg_file)
    cfg = config_from_hparams(resolved["hparams"], where="test")
    stages = Stages("toy", 0, cfg, runs_dir=tmp_path / "runs", dataset_options=resolved["dataset_options"],
                    device="cpu")
    art = stages.invert()
    emb = art.path / "class0" / "learned_embeds.safetensors"
    good = emb.read_bytes()
    emb.write_bytes(good[: len(good) // 2])
    (art.path / "class0" / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    artifacts._VERIFIED.clear()
    capsys.readouterr()
    art = stages.invert()
    err = capsys.readouterr().err
    assert "class0/learned_embeds.safetensors" in err and "checkpoint.pt: unreadable" in err
    assert art.done and emb.read_bytes() == good
