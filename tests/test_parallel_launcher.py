"""The local launcher's worker processes (bench.launch: local_parallelism, parallel_order,
LocalLauncher(workers=N)): same numbers as one run after another on the same thread count,
outcomes in submit order, a failing run does not lose the others."""

from __future__ import annotations

import json

import pytest

from bench import launch
from bench.launch import LocalLauncher, RunSpec, local_parallelism, parallel_order
from bench.sweep import run_sweep

#: Tiny ERM + DFR: small toy benchmark, one epoch; DFR reads the ERM runs (a dependency across workers).
TINY = {"dataset_options": {"n_train": 200, "n_val": 80, "n_test": 80},
        "erm": {"epochs": 1, "keep_epochs": []}, "dfr": {"final_repeats": 2}}


def test_local_parallelism_one_thread_per_run_without_gpu(monkeypatch):
    monkeypatch.setattr(launch, "usable_cpus", lambda: 4)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    assert local_parallelism("auto") == (4, 1)
    assert local_parallelism(None) == (4, 1)
    assert local_parallelism("auto", threads=2) == (2, 2)
    assert local_parallelism(2) == (2, 1)
    assert local_parallelism(1) == (1, 1)  # one after another, still one thread: the same numbers
    assert local_parallelism(1, threads=3) == (1, 3)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        local_parallelism(0)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: True)
    assert local_parallelism("auto") == (1, None)  # a GPU: one run at a time at torch's threads
    assert local_parallelism(2) == (2, None)


def test_sequential_launcher_restores_the_callers_thread_count(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(LocalLauncher, "_run_inprocess", staticmethod(lambda spec: seen.append(launch.torch.get_num_threads())))
    before = launch.torch.get_num_threads()
    la = LocalLauncher(log=lambda line: None, threads=1)
    la.submit(RunSpec("toy", "erm", 0, str(tmp_path)))
    assert [o.status for o in la.wait()] == ["done"]
    assert seen == [1] and launch.torch.get_num_threads() == before


def test_parallel_order_starts_erm_then_ddb():
    specs = [RunSpec("toy", m, s) for m in ("groupdro", "ddb", "erm", "dfr") for s in (0, 1)]
    order = [f"{specs[i].method}{specs[i].seed}" for i in parallel_order(specs)]
    assert order == ["erm0", "erm1", "ddb0", "ddb1", "groupdro0", "groupdro1", "dfr0", "dfr1"]


def _test_metrics(runs, method, seed):
    return json.loads((runs / "toy" / method / f"seed{seed}" / "result.json").read_text())


def test_two_workers_give_the_numbers_of_one_after_another(tmp_path):
    """Two worker processes on one thread each = the sequential sweep on one thread, bit for
    bit (DFR waits on its ERM run's lock in the other worker); outcomes in submit order."""
    seq, par = tmp_path / "seq", tmp_path / "par"
    logs: list[str] = []
    _, df_seq, out_seq = run_sweep("toy", ["erm", "dfr"], [0, 1], runs_dir=str(seq), results_dir=str(tmp_path / "r1"),
                                   overrides=TINY, log=lambda *a: None, workers=1, threads=1)
    vdir, df_par, out_par = run_sweep("toy", ["erm", "dfr"], [0, 1], runs_dir=str(par),
                                      results_dir=str(tmp_path / "r2"), overrides=TINY, log=logs.append,
                                      workers=2, threads=1)
    assert [o.status for o in out_seq] == [o.status for o in out_par] == ["done"] * 4
    assert [o.spec.label for o in out_par] == ["toy/erm/seed0", "toy/erm/seed1", "toy/dfr/seed0", "toy/dfr/seed1"]
    for m in ("erm", "dfr"):
        for s in (0, 1):
            a, b = _test_metrics(seq, m, s), _test_metrics(par, m, s)
            assert a["test"] == b["test"] and a["val"] == b["val"]
            assert a["torch_threads"] == b["torch_threads"] == 1
    assert any("4 run(s) on 2 worker processes, 1 torch thread(s) each" in line for line in logs)
    prov = json.loads((vdir / "provenance.json").read_text())
    assert prov["sweep"]["parallelism"] == {"workers": 2, "torch_threads_per_run": 1}
    assert set(prov["torch_threads"].values()) == {1}
    # a second parallel sweep skips every finished run
    _, _, again = run_sweep("toy", ["erm", "dfr"], [0, 1], runs_dir=str(par), results_dir=str(tmp_path / "r3"),
                            overrides=TINY, log=lambda *a: None, workers=2, threads=1)
    assert [o.status for o in again] == ["skipped"] * 4


def test_a_failing_run_in_a_worker_is_reported_and_the_others_finish(tmp_path):
    logs: list[str] = []
    la = LocalLauncher(log=logs.append, workers=2, threads=1, heartbeat_s=0.2)
    longer = {**TINY, "erm": {"epochs": 3, "keep_epochs": []}}  # a few seconds: several heartbeats while it runs
    la.submit(RunSpec("toy", "erm", 0, str(tmp_path), overrides=longer))
    # a real dataset whose folder is missing: the run raises in its worker
    la.submit(RunSpec("waterbirds", "erm", 0, str(tmp_path), data_dir=str(tmp_path / "no-data")))
    outcomes = la.wait()
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert "waterbirds" in outcomes[1].error.lower()
    assert any(line.startswith("[2/2] waterbirds/erm/seed0: FAILED") for line in logs)
    assert (tmp_path / "toy" / "erm" / "seed0" / "done").is_file()
    # while no run ends, a line every heartbeat says which runs a worker has begun (none before)
    beats = [line for line in logs if "finished; running" in line]
    assert beats and beats[0].endswith("running "), logs  # the workers are still starting
    assert any("running toy/erm/seed0" in line for line in beats), logs


def test_launcher_rejects_bad_worker_settings():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        LocalLauncher(workers=0)
    with pytest.raises(ValueError, match="only in mode 'inprocess'"):
        LocalLauncher(mode="subprocess", workers=2)
