"""Backbones: torchvision's ResNet-50 for the real datasets, a small CNN for the toy.

Every model exposes ``features(x)`` (the penultimate embedding, used by DFR) and a
linear head ``fc`` (re-initialised by DDB's retraining stage).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.hub import get_dir
from torchvision.models import ResNet50_Weights, resnet50

from spuraug.toyworld.zoo import resolve_model_id
from spuraug.weights import network_allowed

MODEL_NAMES = ("resnet50", "toy_cnn")


class ToyCNN(nn.Module):
    """A four-block CNN sized for two CPU cores and 64x64 images (~0.1 M parameters)."""

    #: Channels-last on the CPU too (spuraug.engine.use_channels_last): measured 1.37x faster per
    #: training step and ~3x faster in evaluation on 2 cores (docs/measurements.md, 2026-12-03).
    cpu_channels_last = True

    def __init__(self, n_classes: int = 2, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(
            block(3, width // 2), block(width // 2, width), block(width, width * 2),
            block(width * 2, width * 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = width * 2
        self.fc = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ResNet50(nn.Module):
    """torchvision ResNet-50 with a new ``n_classes`` head."""

    #: Train and evaluate in channels-last memory on the CPU too (spuraug.engine.use_channels_last):
    #: faster there, measured in docs/harness.md ("CPU training speed").
    cpu_channels_last = True

    def __init__(self, n_classes: int = 2, pretrained: bool = True, weights_path: str | None = None) -> None:
        super().__init__()

        net = resnet50(weights=None)
        if weights_path is not None or pretrained:
            net.load_state_dict(load_imagenet_resnet50_state(weights_path))
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.body = net
        self.fc = nn.Linear(self.feature_dim, n_classes)
        self._weights_enum = ResNet50_Weights.IMAGENET1K_V1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class WeightsMissingError(RuntimeError):
    """Pretrained weights are not on this machine."""


def load_imagenet_resnet50_state(weights_path: str | os.PathLike | None = None) -> dict:
    """The ImageNet ResNet-50 state dict (torchvision's IMAGENET1K_V1, as in the papers).

    Looks at ``weights_path`` first, then torchvision's own cache
    (``$TORCH_HOME/hub/checkpoints``). It downloads only where the network is allowed
    (``HF_HUB_OFFLINE``/``SPURAUG_OFFLINE`` unset); otherwise the error names the file
    and where to put it.
    """

    weights = ResNet50_Weights.IMAGENET1K_V1
    filename = os.path.basename(weights.url)
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsMissingError(f"--weights {path}: no such file (expected a ResNet-50 state dict)")
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = Path(get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)

    if not network_allowed():  # loading stays offline unless asked (`make weights` downloads)
        raise WeightsMissingError(
            f"ImageNet ResNet-50 weights not found: expected {cached}. Download {weights.url} "
            f"on a machine with network (or run `make weights`) and copy it there, "
            "or pass --weights PATH."
        )
    return weights.get_state_dict(progress=True)


def load_toy_backbone_state(weights: str | os.PathLike | None, width: int) -> dict:
    """The pretrained body of a :class:`ToyCNN` (every parameter but the head ``fc``).

    ``weights`` is a folder written by :func:`spuraug.toyworld.backbone.save_backbone`
    (``config.json`` + ``model.safetensors``, e.g. by ``python -m bench.studies.toy_pretrained_erm``,
    which pretrains one on the world corpus: the toy's stand-in for ImageNet weights) or a
    ``.safetensors``/``.pt`` state-dict file. The error names what is missing or which
    width does not match.
    """
    if weights is None:
        raise WeightsMissingError(
            "model.pretrained is true for toy_cnn but model.weights is not set: give a pretrained toy "
            "backbone folder (python -m bench.studies.toy_pretrained_erm writes one) or set model.pretrained: false"
        )
    try:  # "spuraug/toy-backbone": the toy zoo's folder (make toy-zoo)
        path = Path(resolve_model_id(str(weights)))
    except (FileNotFoundError, ValueError) as e:
        raise WeightsMissingError(f"model.weights: {e}") from None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise WeightsMissingError(f"{path}: no config.json (expected a toy backbone folder with model.safetensors)")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("architecture") != "ToyCNN" or int(cfg.get("width", -1)) != width:
            raise WeightsMissingError(
                f"{cfg_file}: architecture {cfg.get('architecture')!r} width {cfg.get('width')!r} "
                f"does not fit model toy_cnn width {width}"
            )
        path = path / "model.safetensors"
    if not path.is_file():
        raise WeightsMissingError(f"model.weights {weights}: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # deferred: only checkpoint loading of DDB weights needs it

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in ToyCNN(2, width).state_dict().items() if not k.startswith("fc.")}
    if {k: v.shape for k, v in state.items()} != expected:
        raise WeightsMissingError(
            f"{path}: not the body of a toy_cnn of width {width} (missing {sorted(set(expected) - set(state))[:3]}, "
            f"unexpected {sorted(set(state) - set(expected))[:3]}, or other shapes)"
        )
    return state


def build_model(name: str, n_classes: int, pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """A backbone by name: ``resnet50`` (ImageNet-pretrained) or ``toy_cnn``."""
    if name == "resnet50":
        return ResNet50(n_classes, pretrained=pretrained, weights_path=weights_path)
    if name == "toy_cnn":
        return ToyCNN(n_classes)
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
