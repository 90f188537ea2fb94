"""bench.plan: the numbers come from the configs, the image counts and the recorded rates."""

from __future__ import annotations

import json

import pytest

from bench import plan as P


def _bench_file(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"datetime": "2026-12-01T00:00:00", "benchmarks": [
        {"name": name, "stats": {"mean": mean}, "extra_info": extra} for name, mean, extra in rows]}))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    # GPU: ResNet-50 training 512 images in 0.5 s (1024 img/s), embedding 512 in 0.25 s (2048 img/s)
    _bench_file(root / "gpu" / "x_gpu" / "train_gpu.json", [
        ("erm", 0.5, {"stage": "train", "method": "erm", "model": "resnet50", "images": 512, "device": "cuda",
                      "peak_mem_mb": 3000.0, "batch_size": 64}),
        ("dfr", 0.25, {"stage": "train", "method": "dfr", "model": "resnet50", "images": 512, "device": "cuda"}),
        ("toy", 0.01, {"stage": "train", "method": "erm", "model": "toy_cnn", "images": 512, "device": "cuda"}),
    ])
    (root / "gpu" / "x_gpu" / "gpu_ddb.json").write_text(json.dumps({
        "device": "NVIDIA H200", "flops_per_image": 1.0, "steps": 50, "resolution": 512, "time": "2026-12-01",
        "batches": [{"batch_size": 8, "images_per_s": 2.0, "peak_mem_mb": 6000.0},
                    {"batch_size": 32, "images_per_s": 4.0, "peak_mem_mb": 19000.0}]}))
    (root / "throughput" / "cpu-2c").mkdir(parents=True)
    (root / "throughput" / "cpu-2c" / "stages.json").write_text(json.dumps({"device": "cpu", "stages": [
        {"stage": "invert", "images_per_s": 1.0, "resolution": 512},
        {"stage": "segment", "images_per_s": 0.5, "resolution": 448},
        {"stage": "prune", "images_per_s": 0.25, "resolution": 224}]}))
    return root


def _row(plan, method, stage):
    (row,) = [r for r in plan["rows"] if r["method"] == method and r["stage"] == stage]
    return row


def test_plan_derives_every_number_from_configs_counts_and_records(results):
    from spuraug.config import load_config

    plan = P.make_plan("waterbirds", results, counts="train=1000,val=100,test=200", seeds=3)
    epochs = load_config("waterbirds", "erm")["hparams"]["epochs"]
    erm = _row(plan, "erm", "train")
    assert erm["images"] == epochs * 1000 and erm["rate"]["device"] == "gpu"
    assert erm["hours"] == pytest.approx(epochs * 1000 / 1024 / 3600)
    assert _row(plan, "erm", "train eval")["hours"] == pytest.approx(epochs * 300 / 2048 / 3600)
    ddb = load_config("waterbirds", "ddb")["hparams"]
    k = sum(ddb["sources"]["k"])
    inpaint = _row(plan, "ddb", "inpaint")
    assert inpaint["images"] == k and inpaint["hours"] == pytest.approx(k / 4.0 / 3600)  # the best batch
    assert _row(plan, "ddb", "segment")["rate"]["device"] == "cpu"
    inv = ddb["invert"]
    assert _row(plan, "ddb", "invert")["images"] == 2 * inv["max_train_steps"] * inv["gradient_accumulation_steps"]
    assert plan["complete"]
    assert plan["total_hours"] == pytest.approx(3 * sum(r["hours"] for r in plan["rows"]))
    assert plan["methods"]["ddb"]["peak_mem_mb"] == 19000.0
    text = P.format_plan(plan)
    assert "| erm | train |" in text and "cpu (CPU record)" in text and "Assumptions:" in text


def test_changing_a_record_changes_the_plan(results):
    before = P.make_plan("waterbirds", results, counts="train=1000,val=100,test=200")
    path = results / "gpu" / "x_gpu" / "gpu_ddb.json"
    data = json.loads(path.read_text())
    data["batches"][1]["images_per_s"] = 8.0  # twice as fast
    path.write_text(json.dumps(data))
    after = P.make_plan("waterbirds", results, counts="train=1000,val=100,test=200")
    assert _row(after, "ddb", "inpaint")["hours"] == pytest.approx(_row(before, "ddb", "inpaint")["hours"] / 2)
    assert _row(after, "erm", "train")["hours"] == _row(before, "erm", "train")["hours"]
    # without the GPU training record, the CPU train_loop record is used and marked as such
    (results / "gpu" / "x_gpu" / "train_gpu.json").unlink()
    loop = results / "throughput" / "cpu-2c" / "train_loop" / "t.json"
    loop.parent.mkdir(parents=True)
    loop.write_text(json.dumps({"model": "resnet50", "device": "cpu", "batch_size": 108, "jemalloc": "x",
                                "real": [{"images_per_s": 10.0, "peak_rss_mb": 9000.0, "workers": 1}]}))
    cpu = P.make_plan("waterbirds", results, counts="train=1000,val=100,test=200")
    erm = _row(cpu, "erm", "train")
    assert erm["rate"]["device"] == "cpu" and erm["hours"] == pytest.approx(erm["images"] / 10.0 / 3600)
    # no inference record: assumed EMBED_PER_TRAIN x the training rate, and said so
    assert _row(cpu, "erm", "train eval")["rate"]["images_per_s"] == pytest.approx(10.0 * P.EMBED_PER_TRAIN)
    assert any("no inference record" in a for a in cpu["assumptions"])


def test_missing_counts_and_records_give_lower_bounds(tmp_path, capsys):
    plan = P.make_plan("metashift", tmp_path / "empty", data_dir=str(tmp_path / "nodata"))
    assert plan["image_counts"] is None and not plan["complete"]
    assert _row(plan, "erm", "train")["hours"] is None
    from spuraug.config import load_config

    k = sum(load_config("metashift", "ddb")["hparams"]["sources"]["k"])
    assert _row(plan, "ddb", "segment")["images"] == k and _row(plan, "ddb", "segment")["hours"] is None
    assert P.main(["--dataset", "metashift", "--results-dir", str(tmp_path / "r"), "--data-dir",
                   str(tmp_path / "nodata")]) == 0
    out = capsys.readouterr().out
    assert "n/a" in out and ">= " in out
    assert (tmp_path / "r" / "plan" / "metashift.md").is_file()
    assert json.loads((tmp_path / "r" / "plan" / "metashift.json").read_text())["dataset"] == "metashift"
