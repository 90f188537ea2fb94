"""Training throughput (images/s) and peak memory per baseline, through the engine.

Each case runs the real :func:`spuraug.engine.fit` loop with the method's own sampling
and objective for a few steps on synthetic in-memory images (so data loading does not
dominate): ERM, GroupDRO (balanced sampling + online group weights), JTT stage 2
(upsampled error set), and DFR (its cost is embedding the validation set, then the
L1 logistic regressions). Backbones: the toy CNN at 64 px and ResNet-50 at 224 px
(random weights, no download). ``extra_info`` follows docs/harness.md (``stage``,
``method``, ``images``) plus ``model`` and ``peak_mem_mb`` (GPU: allocator peak of the
case; CPU: the peak resident set of the whole pytest process so far, so it only grows).

Run: ``make throughput`` or
``.venv/bin/python -m pytest bench/test_train_throughput.py --benchmark-enable --benchmark-only
--benchmark-json out.json``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from baselines.dfr import fit_final_head
from baselines.groupdro import GroupDROObjective
from baselines.jtt import upsampled_indices
from spuraug import engine
from spuraug.models import ToyCNN, build_model

DEVICE = engine.resolve_device(None)
ON_GPU = DEVICE.type == "cuda"
#: (model, image size, batch, steps per round): small on CPU so ResNet-50 cases stay < ~60 s
CASES = {
    "toy_cnn": (64, 256 if ON_GPU else 64, 8 if ON_GPU else 4),
    "resnet50": (224, 64 if ON_GPU else 4, 8 if ON_GPU else 1),
}


class SyntheticImages(Dataset):
    """Random images with y, a and index, held in memory (group sizes as Waterbirds' 95%)."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = (torch.rand(n, generator=g) < 0.3).long().numpy()
        flip = torch.rand(n, generator=g).numpy() < 0.05
        self.a = np.where(flip, 1 - self.y, self.y)
        self.g = 2 * self.y + self.a

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), int(self.a[i]), i


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ToyCNN(2, width=16) if name == "toy_cnn" else build_model("resnet50", 2, pretrained=False)


def _params(model_name: str):
    marks = [pytest.mark.slow] if model_name == "resnet50" and not ON_GPU else []
    return [pytest.param(model_name, m, marks=marks, id=f"{model_name}-{m}") for m in ("erm", "groupdro", "jtt", "dfr")]


@pytest.mark.parametrize("model_name, method", _params("toy_cnn") + _params("resnet50"))
def test_train_throughput(benchmark, model_name: str, method: str) -> None:
    size, batch, steps = CASES[model_name]
    n = batch * steps
    data = SyntheticImages(n, size)
    model = _model(model_name)
    opt = engine.build_optimizer(model.parameters(), "sgd", 1e-3, 1e-4)
    objective: engine.Objective | None = None
    if method == "groupdro":
        source = engine.TrainSource(data, batch, weights=engine.group_balanced_weights(data.g, 4), num_samples=n)
        objective = GroupDROObjective(4, 2, 0.01, np.bincount(data.g, minlength=4))
    elif method == "jtt":
        errors = np.flatnonzero(data.y != data.a)
        idx = upsampled_indices(n, errors, 20)[:n]  # fixed work per round
        source = engine.TrainSource(data, batch, indices=np.random.default_rng(0).permutation(idx))
    else:
        source = engine.TrainSource(data, batch)

    if method == "dfr":
        def run() -> None:
            z = engine.predict(model, data, DEVICE, batch_size=batch, features=True)
            fit_final_head(z, data.y, data.g, 4, 0.1, repeats=2, rng=np.random.default_rng(0))
    else:
        def run() -> None:
            engine.fit(model, {"train": source}, opt, 1, objective=objective, device=DEVICE, progress=False)

    if ON_GPU:
        torch.cuda.reset_peak_memory_stats(DEVICE)  # per case on GPU; on CPU: the process's peak RSS
    benchmark.extra_info.update(stage="train", method=method, model=model_name, images=n, image_size=size,
                                batch_size=batch, device=str(DEVICE))
    benchmark.pedantic(run, rounds=2 if model_name == "resnet50" else 3, iterations=1,
                       warmup_rounds=0 if model_name == "resnet50" and not ON_GPU else 1)
    benchmark.extra_info["peak_mem_mb"] = round(engine.peak_memory_mb(DEVICE), 1)
