"""Throughput of each DDB stage on CPU with tiny models (``make throughput``).

Models are built from configs (tests/tiny_models.py), saved and loaded through
spuraug.ddb.hub like the real ids. extra_info follows docs/harness.md: ``stage``,
``method`` = "ddb", ``images`` per round. The real SD2 architectures on a GPU are
measured by bench/gpu/ddb_throughput.py instead.
"""

from __future__ import annotations

import pytest
import torch

from bench.gpu.ddb_throughput import center_mask, random_images
from spuraug.data.transforms import toy_transform
from spuraug.ddb import inpaint, invert, prune, segment
from spuraug.ddb.config import InpaintConfig, InvertConfig, SegmentConfig
from spuraug.models import ToyCNN
from tests import tiny_models as tiny

RES = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread is fastest; restored for the other benchmarks."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddb_bench")
    return {
        "sd9": tiny.save_stable_diffusion(root / "sd9", 9, image_size=RES),
        "clipseg": tiny.save_clipseg(root / "clipseg"),
        "sam": tiny.save_sam(root / "sam"),
        "gdino": tiny.save_grounding_dino(root / "gdino"),
    }


def test_ddb_invert_step(benchmark, models, tmp_path):
    """Textual inversion: one optimizer step (batch 1 x accumulation 4 = 4 images)."""
    comps = invert.load_sd_components(str(models["sd9"]))
    ids = invert.add_tokens(comps, ["<c0>"], "digit")
    cfg = InvertConfig(resolution=RES, initializer_token="digit", noun="digit", max_train_steps=2)
    images = random_images(4, 64)
    counter = {"k": 0}

    def run():
        counter["k"] += 1
        invert.train_token(comps, images, "<c0>", ids[0], cfg, tmp_path / str(counter["k"]))

    benchmark.extra_info.update(stage="invert", method="ddb", images=cfg.max_train_steps * 4)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["grounded_sam", "clipseg"])
def test_ddb_segment(benchmark, models, backend):
    """Segmentation of a batch of 8 images (64 px)."""
    cfg = SegmentConfig(backend=backend, detector=str(models["gdino"]), sam=str(models["sam"]),
                        clipseg=str(models["clipseg"]), box_threshold=0.0, text_threshold=0.0)
    seg = segment.build_segmenter(cfg, "cpu")
    images = random_images(8, 64)
    benchmark.extra_info.update(stage=f"segment_{backend}", method="ddb", images=len(images))
    benchmark.pedantic(lambda: seg(images, "digit"), rounds=3, iterations=1, warmup_rounds=1)


def test_ddb_inpaint(benchmark, models, tmp_path):
    """Inpainting a batch of 4 at 32 px, 10 steps, guidance 7.5 (the whole stage: images + records)."""
    cfg = InpaintConfig(model=str(models["sd9"]), resolution=RES, num_inference_steps=10, batch_size=4,
                        prompt="a photo of a {token} digit")
    pipe = inpaint.load_inpaint_pipeline(cfg, None, "cpu")
    center_mask(64).save(tmp_path / "m.png")
    srcs = [inpaint.Source(f"s{k}", k, k % 2, k, lambda im=im: im, tmp_path / "m.png") for k, im in enumerate(random_images(4, 64))]
    plan = inpaint.make_plan(srcs, 2, 0)
    counter = {"k": 0}

    def run():
        counter["k"] += 1
        inpaint.inpaint(pipe, plan, ["<a>", "<b>"], cfg, tmp_path / f"out{counter['k']}")

    benchmark.extra_info.update(stage="inpaint", method="ddb", images=len(plan))
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


def test_ddb_prune_integrated_gradients(benchmark):
    """Pruning scores of 16 images: toy CNN, 64 px, IG with 50 steps, internal batch 64."""

    torch.manual_seed(0)
    model = ToyCNN(2).eval()
    edited, orig = random_images(16, 64), random_images(16, 64)[::-1]
    masks = [center_mask(64)] * 16

    def run():
        prune.score_samples(model, edited, orig, masks, [0] * 16, [1] * 16, toy_transform(False), n_steps=50,
                            internal_batch_size=64)

    benchmark.extra_info.update(stage="prune", method="ddb", images=16)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
