"""A pretrained toy backbone: the toy's stand-in for ImageNet weights (used by an ablation).

The paper's ERM model starts from an ImageNet-pretrained ResNet-50, which already knows
what birds look like. The toy config trains its :class:`~spuraug.models.ToyCNN` from
scratch and ends on the background shortcut (worst-group accuracy 0). :func:`pretrain_backbone`
trains the same ToyCNN to name the digit kind (0-9) of world-corpus images (every digit on
every background, balanced, drawn from handwriting instances disjoint from the benchmark's),
so that an ERM model can start from digit features, as ResNet-50 starts from object features.
``python -m bench.studies.toy_pretrained_erm`` measures what that changes (docs/toyworld.md).

The training is deterministic (one generator per step) and checkpoints every
``checkpoint_every`` steps, so an interrupted run resumes and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spuraug import atomic
from spuraug.engine import ResumePoint, train_steps
from spuraug.models import ToyCNN
from spuraug.toyworld.render import BACKGROUNDS
from spuraug.toyworld.world import World, WorldConfig, generate_world


@dataclass(frozen=True)
class BackboneRecipe:
    """How the toy backbone is pretrained (all values tuned here, none from a paper)."""

    width: int = 16  # the toy config's model.width
    steps: int = 3000
    batch: int = 64
    lr: float = 0.05  # SGD momentum 0.9, cosine decay: the toy ERM's optimiser
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: The oracle's draw of the world (150 per digit x background, 9000 images).
    world: WorldConfig = WorldConfig(n_per_kind=150, seed=0)
    seed: int = 0
    checkpoint_every: int = 500
    #: Loss weight of a second task, naming the background kind (6 kinds), next to the digit
    #: kind. ImageNet features encode scenes as well as objects (the reason a linear head on
    #: them picks up Waterbirds' background, and the reason DFR can re-weight them); a backbone
    #: taught digits alone is background-blind, and ERM from it reached worst-group 85-87 on
    #: the toy, outside the Waterbirds regime (docs/toyworld.md, "Calibration"). 0 = digits only.
    background_weight: float = 0.0

    @classmethod
    def short(cls) -> BackboneRecipe:
        """A few-step recipe through the same code (for tests; quality is not the point)."""
        return cls(steps=4, batch=8, world=WorldConfig(n_per_kind=2, seed=0), checkpoint_every=2)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("checkpoint_every")  # resumability only, no effect on the weights
        return json.loads(json.dumps(d))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]


def n_outputs(recipe: BackboneRecipe) -> int:
    """The pretraining head's width: 10 digit kinds, then the background kinds if taught."""
    return 10 + (len(BACKGROUNDS) if recipe.background_weight else 0)


def _batch(world: World, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """World images in [-1, 1] (the toy transform's range), shifted by up to 4 px as the
    toy benchmark's training transform does (reflect padding, one random crop per batch).
    Not :meth:`spuraug.data.transforms.ToyTransform.batch`: that one draws from torch's global
    generator, this one from the step's own ``rng``, so a resumed pretraining draws exactly
    what an uninterrupted one would."""
    x = torch.from_numpy(np.ascontiguousarray(world.images[idx])).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = (int(v) for v in rng.integers(0, 9, size=2))
    return x[:, :, dy : dy + 64, dx : dx + 64]


def pretrain_backbone(recipe: BackboneRecipe = BackboneRecipe(), work: str | Path | None = None,
                      progress: bool = True, cache_dir: str | None = None) -> ToyCNN:
    """A ToyCNN with a 10-way digit head trained on the world corpus (checkpoints in ``work``)."""
    world = generate_world(recipe.world, cache_dir=cache_dir)
    torch.manual_seed(recipe.seed)
    model = ToyCNN(n_outputs(recipe), width=recipe.width)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([recipe.seed, 11, step])
        idx = rng.integers(0, len(world), size=recipe.batch)
        logits = model(_batch(world, idx, rng))
        loss = F.cross_entropy(logits[:, :10], torch.from_numpy(world.digits[idx]))
        if recipe.background_weight:
            loss = loss + recipe.background_weight * F.cross_entropy(
                logits[:, 10:], torch.from_numpy(world.backgrounds[idx].astype(np.int64)))
        return loss

    def restore(state: dict) -> None:
        if state.get("recipe") == recipe.to_json():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
        else:  # another recipe's checkpoint: start over
            state["step"] = 0

    from diffusers.optimization import (
        get_cosine_schedule_with_warmup,  # deferred: heavy optional model library
    )

    model.train()
    train_steps(step_loss, opt, recipe.steps, lr_scheduler=get_cosine_schedule_with_warmup(opt, 0, recipe.steps),
                resume=ResumePoint(Path(work) / "checkpoint.pt") if work is not None else None, restore=restore,
                state=lambda done: {"recipe": recipe.to_json(), "step": done, "model": model.state_dict(),
                                    "opt": opt.state_dict()},
                save_every_steps=recipe.checkpoint_every, desc="toy backbone: pretrain on the world's digits",
                progress=progress)
    return model.eval()


@torch.no_grad()
def digit_accuracy(model: ToyCNN, world: World, batch: int = 512) -> float:
    """Share of ``world``'s images whose digit kind the backbone's 10-way head names."""
    model.eval()
    correct = 0
    for j in range(0, len(world), batch):
        x = torch.from_numpy(world.images[j : j + batch].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
        correct += int((model(x)[:, :10].argmax(1).numpy() == world.digits[j : j + batch]).sum())
    return correct / max(len(world), 1)


def save_backbone(model: ToyCNN, folder: str | Path, recipe: BackboneRecipe, **facts) -> Path:
    """``config.json`` + ``model.safetensors`` (the format ``model.weights`` of a toy_cnn
    config loads, :func:`spuraug.models.load_toy_backbone_state`)."""
    from safetensors.torch import save_file  # deferred: only checkpoint loading of DDB weights needs it

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    atomic.write_json(folder / "config.json",
        {"architecture": "ToyCNN", "width": recipe.width, "n_classes": n_outputs(recipe),
         "classes": list(range(10)) + (list(BACKGROUNDS) if recipe.background_weight else []),
         "input_range": [-1, 1], "recipe": recipe.to_json(), "recipe_key": recipe.key(), **facts})
    return folder


BACKBONE_DIR = "toy-backbone"
#: The held-out draw of the world the zoo's backbone is scored on (instances disjoint from
#: the pretraining draw's seed; digit kinds as in the world).
HELDOUT_WORLD = WorldConfig(n_per_kind=20, seed=1)


def build_backbone(out_dir: str | Path, recipe: BackboneRecipe = BackboneRecipe(), work_dir: str | Path | None = None,
                   progress: bool = True, force: bool = False, cache_dir: str | None = None) -> dict:
    """Train the zoo's pretrained toy backbone into ``out_dir/toy-backbone`` (``make toy-zoo``).

    Skipped when ``out_dir/manifest.json`` already records this recipe under ``"backbone"``
    and the folder's files still have their recorded hashes (unless ``force``). The
    pretraining checkpoints to ``work_dir`` and resumes from it. Returns the manifest entry
    (also written into the zoo manifest, next to the other parts' entries)."""

    from spuraug.toyworld.recipe import file_hashes  # deferred: recipe imports diffusers-heavy zoo code

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    old = manifest.get("backbone") or {}
    if (not force and old.get("recipe") == recipe.to_json()
            and old.get("files") == file_hashes(out_dir, (BACKBONE_DIR,))):
        if progress:
            print(f"toy backbone in {out_dir / BACKBONE_DIR} is up to date (recipe {recipe.key()}); nothing to train")
        return old
    work = Path(work_dir) if work_dir is not None else Path("build") / "toy-zoo" / f"backbone-{recipe.key()}"
    t = time.time()
    model = pretrain_backbone(recipe, work=work, progress=progress, cache_dir=cache_dir)
    train_s = round(time.time() - t, 1)
    acc = digit_accuracy(model, generate_world(HELDOUT_WORLD, cache_dir=cache_dir))
    save_backbone(model, out_dir / BACKBONE_DIR, recipe, heldout_world=asdict(HELDOUT_WORLD),
                  heldout_digit_accuracy=round(acc, 4))
    entry = {"recipe": recipe.to_json(), "recipe_key": recipe.key(), "train_s": train_s,
             "heldout_digit_accuracy": round(acc, 4), "files": file_hashes(out_dir, (BACKBONE_DIR,))}
    manifest["backbone"] = entry
    manifest.setdefault("models", {})["spuraug/toy-backbone"] = BACKBONE_DIR
    atomic.write_json(manifest_path, manifest)
    return entry
