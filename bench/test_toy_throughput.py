"""Throughput of the toy benchmark's building blocks (``make throughput``).

extra_info follows the convention of docs/harness.md: ``stage``, ``method`` and
``images`` per round.
"""

from __future__ import annotations

import numpy as np
import torch

from spuraug.models import build_model
from spuraug.toyworld.render import render_scene

BATCH = 64


def test_toy_render(benchmark):
    """Rendering toy scenes (data stage of the toy benchmark)."""
    rng = np.random.default_rng(0)

    def render():
        for i in range(BATCH):
            render_scene((3, 8)[i % 2], ("land", "water")[i // 2 % 2], rng)

    benchmark.extra_info.update(stage="data", method="toy", images=BATCH)
    benchmark.pedantic(render, rounds=3, iterations=1, warmup_rounds=1)


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("toy_cnn", 2)


def test_toy_cnn_train_step(benchmark):
    """One SGD step of the toy CNN on a batch of 64 (the train stage of every toy method)."""
    model = _toy_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 3, 64, 64)
    y = torch.randint(0, 2, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    benchmark.extra_info.update(stage="train", method="toy_cnn", images=BATCH)
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)


def test_toy_cnn_eval(benchmark):
    """Inference of the toy CNN on a batch of 256 (the eval stage)."""
    model = _toy_model().eval()
    x = torch.randn(4 * BATCH, 3, 64, 64)

    def infer():
        with torch.no_grad():
            model(x)

    benchmark.extra_info.update(stage="eval", method="toy_cnn", images=4 * BATCH)
    benchmark.pedantic(infer, rounds=5, iterations=1, warmup_rounds=1)
