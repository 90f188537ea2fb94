"""Image transforms of the papers (method.md, "Stage 0").

Waterbirds and MetaShift: train = RandomResizedCrop(224, scale 0.7-1.0) + horizontal
flip; eval = resize to 256, centre-crop 224. CelebA: eval = centre-crop 178, resize
224; train = the same crop followed by the random resized crop and flip. All with the
ImageNet normalisation the pretrained ResNet-50 expects.
"""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def waterbirds_transform(train: bool, resolution: int = 224) -> T.Compose:
    """The Waterbirds / MetaShift transform (resize 256 + centre-crop 224 for eval)."""
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(resolution, scale=(0.7, 1.0), ratio=(0.75, 4 / 3)),
                T.RandomHorizontalFlip(),
                _normalize(),
            ]
        )
    return T.Compose(
        [T.Resize(int(resolution * 256 / 224)), T.CenterCrop(resolution), _normalize()]
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


def toy_transform(train: bool) -> T.Compose:
    """The toy benchmark's transform: a small random shift when training, no flips
    (a mirrored digit is a different glyph); per-channel normalisation to [-1, 1]."""
    steps: list = [T.RandomCrop(64, padding=4, padding_mode="reflect")] if train else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
