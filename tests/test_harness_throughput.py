"""The throughput runner (bench.throughput): images/s convention, saved runs, ratios."""

from __future__ import annotations

import json

import pytest

from bench import throughput
from bench.throughput import compare_runs, images_per_s, previous_run, summarize_benchmarks


def _bench(name, mean, **extra):
    return {"name": name, "group": None, "stats": {"mean": mean}, "extra_info": extra}


def test_images_per_s_convention():
    assert images_per_s(_bench("a", 0.5, images=64)) == pytest.approx(128.0)
    assert images_per_s(_bench("b", 0.5, images=64, images_per_s=10.0)) == 10.0  # measured value wins
    assert images_per_s(_bench("c", 0.5)) is None
    rows = summarize_benchmarks({"benchmarks": [_bench("a", 0.25, images=8, stage="train", method="erm")]})
    assert rows == [{"name": "a", "stage": "train", "method": "erm", "images_per_s": 32.0, "mean_s": 0.25}]


def test_ratio_to_previous_run(tmp_path):
    for stamp in ("20260101T000000", "20260102T000000", "20260103T000000"):
        (tmp_path / f"{stamp}.json").write_text("{}")
    current = tmp_path / "20260103T000000.json"
    assert previous_run(tmp_path, current).name == "20260102T000000.json"
    assert previous_run(tmp_path, tmp_path / "20260101T000000.json") is None
    now = [{"name": "a", "images_per_s": 30.0}, {"name": "new", "images_per_s": 5.0}]
    before = [{"name": "a", "images_per_s": 20.0}]
    rows = compare_runs(now, before)
    assert rows[0]["ratio"] == pytest.approx(1.5) and rows[1]["ratio"] is None


def test_suite_runs_saves_json_and_compares(tmp_path, capsys):
    """Two real pytest-benchmark runs of a tiny benchmark: JSON saved per machine, ratio printed."""
    bench_file = tmp_path / "bench_tiny.py"
    bench_file.write_text(
        "def test_tiny(benchmark):\n"
        "    benchmark.extra_info.update(stage='data', method='tiny', images=100)\n"
        "    benchmark.pedantic(lambda: sum(range(1000)), rounds=3, iterations=1)\n")
    args = ["--results-dir", str(tmp_path / "results"), "--machine-id", "testbox", str(bench_file)]
    assert throughput.main(args) == 0
    first = capsys.readouterr().out
    assert "none saved yet" in first
    saved = sorted((tmp_path / "results" / "throughput" / "testbox").glob("*.json"))
    assert len(saved) == 1
    data = json.loads(saved[0].read_text())
    assert data["benchmarks"][0]["extra_info"]["images"] == 100
    # the second run must get a later file name (timestamps have 1 s resolution)
    saved[0].rename(saved[0].with_name("20000101T000000.json"))
    assert throughput.main(args) == 0
    second = capsys.readouterr().out
    assert "20000101T000000.json" in second
    line = next(ln for ln in second.splitlines() if ln.startswith("data ") and "test_tiny" in ln)
    ratio = float(line.split()[4])
    assert ratio > 0
