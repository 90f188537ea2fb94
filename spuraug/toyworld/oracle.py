"""The oracle: a classifier trained on the balanced toy world that reads, for any 64x64
image, which digit kind (0-9) it shows and on which background kind.

It measures the stages of DDB on the toy benchmark (is the generated object the intended
digit? is the background still the source's?). It is trained on world images and, for
half of each batch, on their reconstructions through the zoo's VAE, so the slight blur
of generated images does not throw it off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from spuraug.engine import train_steps
from spuraug.toyworld.render import BACKGROUNDS, IMAGE_SIZE
from spuraug.toyworld.zoo import resolve_model_id

ORACLE_MODEL_ID = "spuraug/toy-oracle"


class WorldOracle(nn.Module):
    """A small CNN with two heads: ``digit`` (10 kinds) and ``background`` (len(BACKGROUNDS))."""

    def __init__(self, width: int = 32, n_backgrounds: int = len(BACKGROUNDS)) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

        w = width
        self.body = nn.Sequential(
            nn.AvgPool2d(2),  # 32x32 is enough to read a digit, and 4x cheaper
            block(3, w, 1), block(w, w, 1),
            block(w, 2 * w, 2), block(2 * w, 2 * w, 1),  # 16x16
            block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1),  # 8x8
            block(4 * w, 4 * w, 2),  # 4x4: the receptive field covers a whole digit
        )
        # Max pooling finds a digit's parts wherever they are; mean pooling reads the background.
        self.digit = nn.Linear(8 * w, 10)
        self.background = nn.Linear(8 * w, n_backgrounds)
        self.width = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` float (N, 3, 64, 64) in [-1, 1] -> (digit logits, background logits)."""
        f = self.body(x)
        h = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.digit(h), self.background(h)


def as_uint8_batch(images) -> np.ndarray:
    """uint8 (N, 64, 64, 3) from a uint8/float array (N, H, W, 3), one image, or a list of PIL images.

    Images of another size are resized to 64x64 (bilinear). Floats are taken as [0, 1].
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        arrs = []
        for im in images:
            if isinstance(im, Image.Image):
                im = im.convert("RGB")
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                arrs.append(np.asarray(im, dtype=np.uint8))
            else:
                arrs.append(as_uint8_batch(np.asarray(im)[None])[0])
        return np.stack(arrs) if arrs else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    if arr.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
                        for a in arr])
    return arr


def _to_input(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def predict(oracle: WorldOracle, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (digit kind 0-9, background index into BACKGROUNDS) for each image.

    ``images``: uint8 array (N, H, W, 3), float array in [0, 1], or a list of PIL images.
    """
    arr = as_uint8_batch(images)
    oracle.eval()
    device = next(oracle.parameters()).device
    digits, bgs = [], []
    for j in range(0, len(arr), batch_size):
        d, b = oracle(_to_input(arr[j : j + batch_size]).to(device))
        digits.append(d.argmax(1).cpu().numpy())
        bgs.append(b.argmax(1).cpu().numpy())
    if not digits:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(digits), np.concatenate(bgs)


def _blur_half(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian-blur a random half of the batch (sigma 0.5-1.5 px): decoded latents are soft."""
    sigma = float(rng.uniform(0.5, 1.5))
    r = np.arange(-3, 4)
    k = torch.tensor(np.exp(-(r**2) / (2 * sigma**2)), dtype=x.dtype)
    k = k / k.sum()
    blurred = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).repeat(3, 1, 1, 1), groups=3)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).repeat(3, 1, 1, 1),
                       groups=3)
    pick = torch.from_numpy(rng.random(len(x)) < 0.5).view(-1, 1, 1, 1)
    return torch.where(pick, blurred, x)


def train_oracle(world, recipe, work: Path | None = None, vae=None, progress: bool = True) -> WorldOracle:
    """Train the oracle on ``world`` (see :class:`spuraug.toyworld.recipe.ZooRecipe` for knobs).

    Half of each batch is blurred; with ``vae``, half is replaced by its VAE reconstruction.
    """
    torch.manual_seed(recipe.seed + 2)
    model = WorldOracle()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.oracle_lr, weight_decay=5e-4)
    recon = None
    if vae is not None:
        # Reconstruct the corpus once (cheaper than per batch).
        with torch.no_grad():
            recon = torch.cat([
                vae.decode(vae.encode(_to_input(world.images[j : j + 64])).latent_dist.mean).sample.clamp(-1, 1)
                for j in tqdm(range(0, len(world), 64), desc="oracle: VAE reconstructions", disable=not progress)
            ])

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([recipe.seed, 2, step])
        idx = rng.integers(0, len(world), size=recipe.oracle_batch)
        x = _to_input(world.images[idx])
        if recon is not None:
            half = len(idx) // 2
            x[:half] = recon[idx[:half]]
        # Small shifts: generated objects are not always where world objects are.
        dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        x = _blur_half(x, rng)
        d, b = model(x)
        return F.cross_entropy(d, torch.from_numpy(world.digits[idx])) + F.cross_entropy(
            b, torch.from_numpy(world.backgrounds[idx])
        )

    from diffusers.optimization import (
        get_cosine_schedule_with_warmup,  # deferred: heavy optional model library
    )

    model.train()
    train_steps(step_loss, opt, recipe.oracle_steps, desc="oracle", progress=progress,
                lr_scheduler=get_cosine_schedule_with_warmup(opt, 0, recipe.oracle_steps))
    return model.eval()


def save_oracle(model: WorldOracle, folder: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` to ``folder``."""
    from safetensors.torch import save_file  # deferred: only checkpoint loading of DDB weights needs it

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "WorldOracle", "width": model.width, "digits": list(range(10)),
         "backgrounds": list(BACKGROUNDS), "image_size": IMAGE_SIZE, "input_range": [-1, 1]}, indent=2))


def load_oracle(model_id_or_folder: str | Path = ORACLE_MODEL_ID, device: str | torch.device = "cpu") -> WorldOracle:
    """The oracle saved in the zoo (``"spuraug/toy-oracle"``) or in a folder, in eval mode."""
    from safetensors.torch import load_file  # deferred: only checkpoint loading of DDB weights needs it


    folder = Path(resolve_model_id(str(model_id_or_folder)))
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"no oracle config at {cfg_path}; run `make toy-zoo`")
    cfg = json.loads(cfg_path.read_text())
    model = WorldOracle(width=int(cfg["width"]), n_backgrounds=len(cfg["backgrounds"]))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(device).eval()
