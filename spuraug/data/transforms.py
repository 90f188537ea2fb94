"""Image transforms of the papers (the ERM stage of DDB and the baselines, reference code below).

Waterbirds and MetaShift: train = RandomResizedCrop(224, scale 0.7-1.0) + horizontal
flip; eval = resize to 256x256 (both sides: the aspect ratio is NOT kept) then centre-crop
224, as kohpangwei/group_DRO ``data/cub_dataset.py`` ``get_transform_cub``
(``transforms.Resize((int(target_resolution[0]*scale), int(target_resolution[1]*scale)))``,
scale 256/224), PolinaKirichenko/deep_feature_reweighting ``wb_data.py`` and the DISC
MetaShift loaders do. CelebA: eval = centre-crop 178, resize
224; train = the same crop followed by the random resized crop and flip. All with the
ImageNet normalisation the pretrained ResNet-50 expects.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def waterbirds_transform(train: bool, resolution: int = 224) -> T.Compose:
    """The Waterbirds / MetaShift transform (eval: squash to 256x256, centre-crop 224)."""
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(resolution, scale=(0.7, 1.0), ratio=(0.75, 4 / 3)),
                T.RandomHorizontalFlip(),
                _normalize(),
            ]
        )
    return T.Compose(
        [T.Resize((int(resolution * 256 / 224),) * 2), T.CenterCrop(resolution), _normalize()]
    )


def celeba_transform(train: bool, resolution: int = 224) -> T.Compose:
    """The CelebA transform (centre-crop 178, resize 224)."""
    if train:
        return T.Compose(
            [
                T.CenterCrop(178),
                T.RandomResizedCrop(resolution, scale=(0.7, 1.0), ratio=(1.0, 4 / 3)),
                T.RandomHorizontalFlip(),
                _normalize(),
            ]
        )
    return T.Compose([T.CenterCrop(178), T.Resize(resolution), _normalize()])


class ToyTransform:
    """The toy benchmark's transform: a small random shift when training (reflect-pad 4,
    random 64x64 crop), no flips (a mirrored digit is a different glyph); per-channel
    normalisation to [-1, 1].

    Called on a PIL image it is the torchvision pipeline. :meth:`batch` transforms a
    whole uint8 batch at once with the same values and the same draws from torch's
    global generator, in the same order, as calling it on each image in turn (the
    in-memory toy datasets use it through ``__getitems__``: a toy run is ~2x faster on
    2 cores, and bit-identical).
    """

    PAD = 4
    SIZE = 64

    def __init__(self, train: bool) -> None:
        self.train = bool(train)
        steps: list = [T.RandomCrop(self.SIZE, padding=self.PAD, padding_mode="reflect")] if train else []
        self.compose = T.Compose(steps + [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])

    def __call__(self, img):
        return self.compose(img)

    def __repr__(self) -> str:
        return f"ToyTransform(train={self.train})"

    def batch(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, 64, 64, 3) -> float (N, 3, 64, 64), as ``[self(PIL image) for ...]``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.SIZE, self.SIZE, 3) or images.dtype != np.uint8:
            raise ValueError(f"ToyTransform.batch wants uint8 (N, {self.SIZE}, {self.SIZE}, 3), "
                             f"got {images.dtype} {images.shape}")
        if self.train:
            p = self.PAD
            padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            shape = torch.empty(3, *padded.shape[1:3])  # only its size is read
            crops = np.empty_like(images)
            for k in range(len(images)):  # one draw per image, in order, as RandomCrop does
                i, j, h, w = T.RandomCrop.get_params(shape, (self.SIZE, self.SIZE))
                crops[k] = padded[k, i : i + h, j : j + w]
            images = crops
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().float().div(255)
        return x.sub_(0.5).div_(0.5)


def toy_transform(train: bool) -> ToyTransform:
    """The toy benchmark's transform (:class:`ToyTransform`)."""
    return ToyTransform(train)
