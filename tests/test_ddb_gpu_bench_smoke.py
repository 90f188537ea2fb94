"""bench/gpu/ddb_throughput.py must run end to end: its --smoke mode on CPU with tiny configs."""

import json

import torch


def test_gpu_throughput_script_smoke(tmp_path):
    from bench.gpu import ddb_throughput as g

    n = torch.get_num_threads()
    try:
        report = g.main(["--smoke", "--device", "cpu", "--batch-sizes", "1,2", "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(n)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["batches"] == report["batches"] and [b["batch_size"] for b in saved["batches"]] == [1, 2]
    assert report["flops_per_image"] > 0 and report["matmul_ceiling_tflops"] > 0
    for b in report["batches"]:
        assert b["images_per_s"] > 0
        assert b["achieved_tflops"] == report["flops_per_image"] * b["images_per_s"] / 1e12
    assert report["best_ratio_to_ceiling"] == max(b["ratio_to_ceiling"] for b in report["batches"])
    assert report["stage"]["complete"] and report["stage"]["images_per_s"] > 0
    assert sum(report["unet_flops_by_op"].values()) == report["unet_flops_per_sample"]
    rows = {r["variant"]: r for r in report["unet_variants"]}
    assert list(rows) == ["eager", "cl+qkv"] and rows["cl+qkv"]["fuse_qkv"] and not rows["eager"]["channels_last"]
    for r in rows.values():
        assert r["unet_batch"] == 4  # largest batch x 2 (classifier-free guidance)
        assert r["achieved_tflops"] == report["unet_flops_per_sample"] * r["samples_per_s"] / 1e12
    assert report["pipeline_variant"] == max(rows.values(), key=lambda r: r["ratio_to_ceiling"])["variant"]


def test_variant_names_are_checked():
    import pytest

    from bench.gpu import ddb_throughput as g

    assert g.parse_variant("eager") == {"channels_last": False, "fuse_qkv": False, "compile": False, "attention": "auto"}
    assert g.parse_variant("cl+cudnn+compile") == {"channels_last": True, "fuse_qkv": False, "compile": True,
                                                   "attention": "cudnn"}
    with pytest.raises(ValueError, match="'fused'"):
        g.parse_variant("cl+fused")
    rows = [{"variant": "eager", "ratio_to_ceiling": 0.3}, {"variant": "cl+qkv", "ratio_to_ceiling": 0.4},
            {"variant": "cl", "error": "out of memory"}]
    assert g.resolve_variant("best+compile", rows) == "cl+qkv+compile"
    assert g.resolve_variant("best+qkv", rows) == "cl+qkv" and g.resolve_variant("cl", rows) == "cl"
    assert g.resolve_variant("best+compile", rows[:1]) == "eager+compile"


def test_real_configs_are_the_published_sd2_ones():
    from bench.gpu import ddb_throughput as g

    u = g.SD2_UNET
    assert u["sample_size"] == 64 and u["in_channels"] == 9 and u["cross_attention_dim"] == 1024
    assert u["block_out_channels"] == (320, 640, 1280, 1280) and u["attention_head_dim"] == (5, 10, 20, 20)
    assert g.OPENCLIP_VIT_H_TEXT["num_hidden_layers"] == 23 and g.OPENCLIP_VIT_H_TEXT["hidden_size"] == 1024
    assert g.SD2_VAE["block_out_channels"] == (128, 256, 512, 512)


def test_attention_flops_are_counted_on_cpu():
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench.gpu import ddb_throughput as g

    q = torch.randn(1, 2, 64, 32)
    counter = FlopCounterMode(display=False)
    with counter, g.countable_attention():
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * 2 * 64 * 64 * 32  # QK^T and AV: 2 x (2 b h s s d)


def test_stage_throughput_script_smoke(tmp_path):
    """bench/gpu/stage_throughput.py (invert, segment, prune on the real architectures on a GPU)
    runs end to end on tiny configs: every stage timed, FLOPs counted, ratio derived."""
    from bench.gpu import stage_throughput as s

    n = torch.get_num_threads()
    try:
        report = s.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(n)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    rows = {r["stage"]: r for r in report["stages"]}
    assert list(rows) == ["invert", "segment", "prune"]
    for r in rows.values():
        assert r["flops_per_image"] > 0 and r["images_per_s"] > 0
        assert r["achieved_tflops"] == r["flops_per_image"] * r["images_per_s"] / 1e12
        assert r["ratio_to_ceiling"] == r["achieved_tflops"] / report["matmul_ceiling_tflops"]
    # one optimizer step = batch 1 x accumulation 4 (the published recipe); the backward pass
    # to the text embedding is counted: well over the UNet's forward FLOPs per image
    from diffusers import UNet2DConditionModel

    from bench.gpu import ddb_throughput as g

    assert rows["invert"]["images_per_optimizer_step"] == 4
    unet = UNet2DConditionModel(**{**g.SMOKE_UNET, "in_channels": 4})
    forward, _ = g.unet_flops_per_sample(unet, rows["invert"]["resolution"], torch.device("cpu"), torch.float32)
    assert rows["invert"]["flops_per_image"] > 1.5 * forward
    assert rows["prune"]["images_per_call"] == 2 and rows["segment"]["images_per_call"] == 8


def test_unet_variant_timings_survive_a_cut_off_pipeline_phase(tmp_path, monkeypatch):
    import pytest

    from bench.gpu import ddb_throughput as g

    def cut_off(*args, **kwargs):
        raise TimeoutError("killed at the time limit")

    monkeypatch.setattr(g, "measure", cut_off)
    n = torch.get_num_threads()
    try:
        with pytest.raises(TimeoutError):
            g.main(["--smoke", "--device", "cpu", "--variants", "eager", "--stage-batch", "0",
                    "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(n)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["variant"] for r in saved["unet_variants"]] == ["eager"] and saved["unet_variants"][0]["samples_per_s"] > 0


def test_count_only_counts_the_sd2_unet_on_the_meta_device(tmp_path):
    from bench.gpu import ddb_throughput as g

    r512 = g.main(["--count-only", "--out", str(tmp_path / "c.json")])
    r256 = g.count_only(256, None)
    assert json.loads((tmp_path / "c.json").read_text())["unet_flops_per_sample"] == r512["unet_flops_per_sample"]
    for r in (r512, r256):
        assert sum(r["unet_flops_by_op"].values()) == r["unet_flops_per_sample"]
        assert r["unet_flops_by_op"]["aten.convolution"] > 0 and r["unet_flops_by_op"]["aten.bmm"] > 0
    # 4x the pixels: convolutions and projections 4x, self-attention 16x
    ratio = r512["unet_flops_per_sample"] / r256["unet_flops_per_sample"]
    assert 4 < ratio < 16


def test_gpu_inpaint_pytest_benchmark_records_the_ratio(tmp_path):
    """bench/gpu/test_inpaint_throughput.py (skipped without CUDA) runs on CPU with the tiny
    configs and files one pytest-benchmark record per batch size with FLOPs and ratio."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "b.json"
    env = {**os.environ, "SPURAUG_GPU_BENCH_SMOKE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "bench/gpu/test_inpaint_throughput.py", "--benchmark-enable", "--benchmark-only",
                           f"--benchmark-json={out}"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = json.loads(out.read_text())["benchmarks"]
    assert [r["extra_info"]["images"] for r in records] == [1, 2]
    for r in records:
        e = r["extra_info"]
        assert e["method"] == "ddb" and e["stage"].startswith("inpaint_sd2_") and e["flops_per_image"] > 0
        assert e["achieved_tflops"] == e["flops_per_image"] * e["images"] / r["stats"]["mean"] / 1e12
        assert e["ratio_to_ceiling"] == e["achieved_tflops"] / e["matmul_ceiling_tflops"]
