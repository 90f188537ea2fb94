"""Stage 4: retrain the ERM network on the original training data plus the kept samples.

From the ERM weights of the same seed, the head is re-initialised (Xavier uniform,
bias 0, as the public ``train.py``'s ``weight_init``) and the WHOLE network is trained
with Adam on one shuffled set made of the training split and the kept generated images
(the public code's ``ConcatDataset``), minimising

    L = L_train + sum_c gamma_c * L_gen(set c)

where each term is the mean cross-entropy over the batch's examples of that kind (an
empty term is 0). Set ``c`` is chosen by ``retrain.gamma_by``: ``source`` (default) puts
an edit in the set of its SOURCE class, as the public ``train.py`` does (it writes the
source class as the label of ``metadata_cls<i>.csv`` and weighs gamma1 = 6 on the edits
made from class-0 sources, gamma2 = 10 on those from class-1 sources); ``label`` keys it by
the label the edit is trained with (the new class under ``inpaint.label: new``), which
moves each weight to the other set. Model selection: validation worst-group accuracy. Everything runs on
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

from spuraug.data.base import batch_transform, open_rgb
from spuraug.engine import Batch, Objective


class GeneratedDataset(torch.utils.data.Dataset):
    """Generated images with their labels; yields ``(x, y, -1, index)`` (attribute unknown)."""

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], transform: Callable | None = None) -> None:
        if len(files) != len(labels):
            raise ValueError("files and labels differ in length")
        self.files = [Path(f) for f in files]
        self.y = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self._arrays: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> Image.Image:
        return open_rgb(self.files[i])

    def __getitem__(self, i: int):
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), int(self.y[i]), -1, int(i)

    def image_batch(self, indices) -> np.ndarray | None:
        """The decoded images (kept in memory after the first read) when the transform has a
        batched form and they share one size; None otherwise."""
        if getattr(self.transform, "batch", None) is None:
            return None
        if self._arrays is None:
            arrays = [np.asarray(self.load_image(i)) for i in range(len(self))]
            if len({a.shape for a in arrays}) > 1:
                return None
            self._arrays = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
        return self._arrays[np.asarray(indices, dtype=np.int64)]

    def __getitems__(self, indices) -> list:
        x = batch_transform(self.transform, self, indices)
        if x is None:
            return [self[i] for i in indices]
        return [(x[k], int(self.y[i]), -1, int(i)) for k, i in enumerate(indices)]


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

    def __getitems__(self, indices) -> list:
        # One batched transform over both parts, in the batch's order (so the random crops
        # are drawn as example-by-example would draw them), when both parts share one transform.
        t, g = getattr(self.train, "transform", None), self.generated.transform
        same = getattr(t, "batch", None) is not None and t is g
        idx = np.asarray(indices, dtype=np.int64)
        is_gen = idx >= self.n_train
        images = None
        if same and hasattr(self.train, "image_batch"):
            a_img = self.train.image_batch(idx[~is_gen])
            b_img = self.generated.image_batch(idx[is_gen] - self.n_train)
            if a_img is not None and b_img is not None and (not len(b_img) or a_img.shape[1:] == b_img.shape[1:]):
                images = np.empty((len(idx), *a_img.shape[1:]), np.uint8)
                images[~is_gen], images[is_gen] = a_img, b_img
        if images is None:
            return [self[int(i)] for i in idx]
        x = t.batch(images)
        out = []
        for k, i in enumerate(idx):
            if is_gen[k]:
                out.append((x[k], int(self.generated.y[i - self.n_train]), -1, int(i)))
            else:
                out.append((x[k], int(self.train.y[i]), int(self.train.a[i]), int(i)))
        return out


class DDBObjective(Objective):
    """``mean(loss | original) + sum_c gamma[c] * mean(loss | generated, key c)``.

    ``keys[k]`` is the gamma set of generated example ``k`` (its position after the
    training split): its source class for ``retrain.gamma_by: source`` (the public
    ``train.py``: gamma1 for edits of class-0 sources, gamma2 for class-1 sources), or
    ``None`` to key by the batch's label (``gamma_by: label``). A term without examples
    in the batch contributes 0 there instead of NaN.
    """

    def __init__(self, n_train: int, gamma: Sequence[float], keys: Sequence[int] | None = None) -> None:
        self.n_train = int(n_train)
        self.gamma = [float(g) for g in gamma]
        self.keys = None if keys is None else torch.tensor(np.asarray(keys, dtype=np.int64))  # a copy: keys may be a read-only view
        self._sums = np.zeros(1 + len(self.gamma))
        self._counts = np.zeros(1 + len(self.gamma))

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        gen = batch.index >= self.n_train
        terms = []
        orig = ~gen
        if orig.any():
            terms.append(losses[orig].mean())
        if self.keys is None:
            key = batch.y
        else:
            keys = self.keys.to(batch.index.device)
            key = torch.full_like(batch.y, -1)
            key[gen] = keys[batch.index[gen] - self.n_train]
        for c, g in enumerate(self.gamma):
            sel = gen & (key == c)
            if sel.any():
                terms.append(g * losses[sel].mean())
                self._counts[1 + c] += int(sel.sum())
        self._counts[0] += int(orig.sum())
        if not terms:
            return losses.sum() * 0.0
        return torch.stack(terms).sum()

    def log(self) -> dict:
        out = {"original_seen": int(self._counts[0])}
        out.update({f"generated_set{c}_seen": int(self._counts[1 + c]) for c in range(len(self.gamma))})
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
