"""Stage 4: retrain the ERM network on the original training data plus the kept samples.

From the ERM weights of the same seed, the head is re-initialised (Xavier uniform,
bias 0, as the public ``train.py``'s ``weight_init``) and the WHOLE network is trained
with Adam on one shuffled set made of the training split and the kept generated images
(the public code's ``ConcatDataset``), minimising

    L = L_train + sum_c gamma_c * L_gen(class c)

where each term is the mean cross-entropy over the batch's examples of that kind (an
empty term is 0). Model selection: validation worst-group accuracy. Everything runs on
:func:`spuraug.engine.fit`, so the run folder is the contract's (metrics.jsonl,
checkpoints/, result.json via :func:`spuraug.runs.run_method`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from spuraug.data.base import open_rgb
from spuraug.engine import Batch, Objective


class GeneratedDataset(torch.utils.data.Dataset):
    """Generated images with their labels; yields ``(x, y, -1, index)`` (attribute unknown)."""

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], transform: Callable | None = None) -> None:
        if len(files) != len(labels):
            raise ValueError("files and labels differ in length")
        self.files = [Path(f) for f in files]
        self.y = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> Image.Image:
        return open_rgb(self.files[i])

    def __getitem__(self, i: int):
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), int(self.y[i]), -1, int(i)


class AugmentedTrainSet(torch.utils.data.Dataset):
    """The training split followed by the generated samples; ``index`` is the position in
    this concatenation, so ``index >= n_train`` marks a generated example."""

    def __init__(self, train: torch.utils.data.Dataset, generated: GeneratedDataset) -> None:
        self.train = train
        self.generated = generated
        self.n_train = len(train)

    def __len__(self) -> int:
        return self.n_train + len(self.generated)

    def __getitem__(self, i: int):
        if i < self.n_train:
            x, y, a, _ = self.train[i]
            return x, y, a, i
        x, y, a, _ = self.generated[i - self.n_train]
        return x, y, a, i


class DDBObjective(Objective):
    """``mean(loss | original) + sum_c gamma[c] * mean(loss | generated, label c)``.

    The public ``train.py`` computes the same three means per batch (gamma1 for
    generated class 0, gamma2 for generated class 1); a term without examples in the
    batch contributes 0 there instead of NaN.
    """

    def __init__(self, n_train: int, gamma: Sequence[float]) -> None:
        self.n_train = int(n_train)
        self.gamma = [float(g) for g in gamma]
        self._sums = np.zeros(1 + len(self.gamma))
        self._counts = np.zeros(1 + len(self.gamma))

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        gen = batch.index >= self.n_train
        terms = []
        orig = ~gen
        if orig.any():
            terms.append(losses[orig].mean())
        for c, g in enumerate(self.gamma):
            sel = gen & (batch.y == c)
            if sel.any():
                terms.append(g * losses[sel].mean())
                self._counts[1 + c] += int(sel.sum())
        self._counts[0] += int(orig.sum())
        if not terms:
            return losses.sum() * 0.0
        return torch.stack(terms).sum()

    def log(self) -> dict:
        out = {"original_seen": int(self._counts[0])}
        out.update({f"generated_class{c}_seen": int(self._counts[1 + c]) for c in range(len(self.gamma))})
        self._counts[:] = 0
        return out


def reinit_head(model: nn.Module, seed: int) -> None:
    """Xavier-uniform weights and zero bias for ``model.fc`` (public train.py ``weight_init``)."""
    g = torch.Generator().manual_seed(int(seed))
    fc = model.fc
    with torch.no_grad():
        bound = float(np.sqrt(6.0 / (fc.in_features + fc.out_features)))
        fc.weight.copy_(torch.empty_like(fc.weight).uniform_(-bound, bound, generator=g))
        if fc.bias is not None:
            fc.bias.zero_()
