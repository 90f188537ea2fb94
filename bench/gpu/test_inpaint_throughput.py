"""pytest-benchmark of DDB inpainting on the real SD2 architectures (random weights) on a GPU.

The same pipeline, inputs and FLOP count as ``bench/gpu/ddb_throughput.py`` (which also
times the UNet's speed variants under a time budget); here each batch size is one
pytest-benchmark record, so ``make throughput`` on a GPU machine files them with the
other benchmarks in ``results/throughput/<machine-id>/``. ``extra_info`` holds the FLOPs
per image, the bf16 matmul ceiling measured on the same GPU and the achieved ratio to it
(the goal is at least 0.5).

Skipped without CUDA. ``SPURAUG_GPU_BENCH_SMOKE=1`` runs it on CPU with the tiny configs
(to check the code path); ``SPURAUG_UNET_VARIANT`` picks the UNet's speed variant (default
``eager``; see ``bench.gpu.ddb_throughput.parse_variant``).
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.gpu import ddb_throughput as g
from spuraug.ddb.inpaint import speed_up

SMOKE = os.environ.get("SPURAUG_GPU_BENCH_SMOKE") == "1"
if not SMOKE and not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (SPURAUG_GPU_BENCH_SMOKE=1: tiny configs on CPU)", allow_module_level=True)

DEVICE = torch.device("cpu" if SMOKE else "cuda")
DTYPE = torch.float32 if SMOKE else torch.bfloat16
RES, STEPS, GUIDANCE = (32, 2, 7.5) if SMOKE else (512, 50, 7.5)
BATCHES = (1, 2) if SMOKE else (1, 8, 32)


@pytest.fixture(scope="module")
def setup():

    if DEVICE.type == "cuda":
        torch.backends.cudnn.benchmark = True
    pipe, _ = g.build_pipeline(SMOKE, DEVICE, DTYPE)
    flops = g.count_flops(pipe, RES, STEPS, GUIDANCE)
    variant = os.environ.get("SPURAUG_UNET_VARIANT", "eager")
    pipe.unet = speed_up(pipe.unet, **g.parse_variant(variant))
    ceiling = g.matmul_ceiling(DEVICE, DTYPE, g.Deadline(60.0), SMOKE)["tflops"]
    return {"pipe": pipe, "flops": flops, "ceiling": ceiling, "variant": variant}


@pytest.mark.parametrize("batch", BATCHES)
def test_ddb_inpaint_sd2(benchmark, setup, batch):
    """One pipeline call on ``batch`` images: SD2 inpainting architectures, 50 steps, guidance 7.5."""

    def run():
        with torch.inference_mode():
            g.call(setup["pipe"], batch, RES, STEPS, GUIDANCE)
        g.sync(DEVICE)

    benchmark.extra_info.update(stage=f"inpaint_sd2_{RES}px_b{batch}", method="ddb", images=batch,
                                flops_per_image=setup["flops"], matmul_ceiling_tflops=setup["ceiling"],
                                dtype=str(DTYPE), unet_variant=setup["variant"], smoke=SMOKE)
    benchmark.pedantic(run, rounds=1 if SMOKE else 3, iterations=1, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    achieved = setup["flops"] * batch / mean / 1e12
    benchmark.extra_info.update(achieved_tflops=achieved, ratio_to_ceiling=achieved / setup["ceiling"])
