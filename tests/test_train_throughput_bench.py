"""bench.train_throughput on tiny folders in the real formats (smoke: toy CNN, a few steps)."""

from __future__ import annotations

import json

import pytest

from bench import train_throughput as tt
from tests.real_fixtures import make_celeba


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # --threads 1 must not leak into the tests that follow


def _run(capsys, *argv):
    record = tt.main(list(argv))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and json.loads(lines[0]) == json.loads(json.dumps(record))
    return record


@pytest.mark.slow
def test_real_path_and_bare_loop_on_a_waterbirds_folder(tmp_path, capsys):
    root = tt.write_waterbirds_like(tmp_path / "data", n_train=10, n_val=2, n_test=2, size=40)
    assert (root / "metadata.csv").read_text().count("\n") == 15
    out = tmp_path / "rec.json"
    rec = _run(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path / "data"), "--batch-size", "4",
               "--steps", "2", "--warmup", "1", "--workers", "0", "1", "--model", "toy_cnn", "--threads", "1",
               "--out", str(out), "--note", "smoke")
    assert json.loads(out.read_text()) == rec
    assert rec["n_train"] == 10 and rec["image_size"] == 224 and rec["model"] == "toy_cnn"
    assert [r["workers"] for r in rec["real"]] == [0, 1]
    for r in rec["real"]:
        assert r["images_per_s"] > 0 and len(r["step_s"]) == 2 and r["peak_rss_mb"] > 0
        assert r["ratio"] == pytest.approx(r["images_per_s"] / rec["bare"]["images_per_s"])
        assert r["epochs"] == 2  # 3 steps of 4 from 10 images (drop_last): two epochs
    best = max(rec["real"], key=lambda r: r["images_per_s"])
    assert rec["ratio"] == best["ratio"] and rec["images_per_s"] == best["images_per_s"]
    assert len(rec["bare"]["step_s"]) == 2 and rec["bare"]["peak_rss_mb"] > 0
    assert rec["jemalloc"] == tt.jemalloc_active()


def test_any_folder_in_the_real_format_and_workers_auto(tmp_path, capsys, monkeypatch):
    make_celeba(tmp_path, "kaggle")
    monkeypatch.setattr(tt.engine.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    rec = _run(capsys, "--dataset", "celeba", "--data-dir", str(tmp_path), "--batch-size", "3", "--steps", "1",
               "--warmup", "0", "--workers", "auto", "--model", "toy_cnn", "--threads", "1", "--no-bare", "--no-write",
               "--channels-last", "on")
    assert rec["dataset"] == "celeba" and rec["n_train"] == 12 and rec["bare"] is None and rec["ratio"] is None
    (row,) = rec["real"]
    assert row["workers_setting"] == "auto" and row["workers"] == 2 and row["channels_last"] is True


def test_peak_rss_counts_child_processes():
    import subprocess
    import sys
    import time

    base = tt.PeakRSS.tree_rss()
    child = subprocess.Popen([sys.executable, "-c", "b = bytearray(200 * 2**20); import time; time.sleep(30)"])
    try:
        deadline = time.time() + 20
        while tt.PeakRSS.tree_rss() < base + 150 * 2**20 and time.time() < deadline:
            time.sleep(0.1)
        assert tt.PeakRSS.tree_rss() >= base + 150 * 2**20
    finally:
        child.kill()
        child.wait()
