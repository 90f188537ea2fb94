"""The recipe that trains the toy model zoo on the toy world.

Stages, each cached in a work folder and resumable from its last checkpoint:

1. ``vae``      AutoencoderKL, 64x64x3 <-> 16x16x4 latents (L1 + MSE + tiny KL).
2. ``oracle``   the world classifier (digit kind and background kind), see :mod:`oracle`.
3. ``unet``     UNet2DConditionModel with 9 input channels (latents, mask, masked-image
                latents) trained jointly with a tiny CLIPTextModel on world captions, with
                caption dropout for classifier-free guidance, on a mix of object-shaped,
                dilated, box, random and full masks (full mask + blank masked image =
                text-to-image, which textual inversion trains through).
4. ``clipseg``  CLIPSegForImageSegmentation trained on world masks with text prompts
                ("digit", the digit's word, a background word -> the background region).

:func:`build_zoo` runs the stages and writes the library-format folders plus a
manifest (recipe, seeds, wall times, sha256 of every file).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from spuraug import atomic
from spuraug.engine import ResumePoint, train_steps
from spuraug.toyworld.oracle import save_oracle, train_oracle
from spuraug.toyworld.render import BACKGROUNDS, DIGIT_WORDS, IMAGE_SIZE, object_box
from spuraug.toyworld.tokenizer import build_clip_tokenizer, write_tokenizer_files
from spuraug.toyworld.world import (
    SEGMENTER_OBJECT_PROMPT,
    World,
    WorldConfig,
    caption_words,
    generate_world,
)

LATENT_SIZE = IMAGE_SIZE // 4
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


#: Fields of the digit-naming loss (added after recipe 0df563359312): a recipe with the loss off
#: is written without them.
DIGIT_LOSS_FIELDS = ("digit_loss_weight", "probe_steps", "digit_loss_max_t")


@dataclass(frozen=True)
class ZooRecipe:
    """Every knob of the zoo. The defaults are the committed zoo; tests shrink them."""

    world: WorldConfig = WorldConfig(n_per_kind=60, seed=0)
    seed: int = 0
    # Tokenizer / text encoder (shared by the inpainter and the segmenter's vocabulary).
    max_length: int = 32
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    # VAE.
    vae_channels: tuple[int, ...] = (16, 32, 32)
    #: 2000 steps, not 600: a bare round trip through the 600-step VAE kept the digit of only
    #: 70% of toy test images (eights 59%), which capped DDB's composition success; 2000 steps
    #: keep 92.5% (results/studies/toy_vae_probe/zoo_58660efb1898.json).
    vae_steps: int = 2000
    vae_batch: int = 32
    #: The VAE has no attention, so it trains on random crops (4x cheaper) and runs at 64x64.
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    # Oracle.
    oracle_steps: int = 1500
    oracle_batch: int = 64
    #: The oracle is a measuring instrument, not a foundation model: it trains on a larger
    #: draw of the world (same seed, ``oracle_world_per_kind`` per digit x background).
    oracle_world_per_kind: int = 150
    oracle_lr: float = 1.5e-3
    # UNet + text encoder.
    unet_channels: tuple[int, ...] = (32, 48, 64)
    unet_steps: int = 2400
    unet_batch: int = 48
    unet_lr: float = 1.5e-3
    #: Partial masks pre-drawn (and their masked-image latents pre-encoded) per world image.
    unet_masks_per_image: int = 3
    #: What the UNet predicts: "sample" (the clean latents, x0) learns to copy the unmasked
    #: region and to draw the text's digit far sooner than "epsilon" in a few hundred steps.
    prediction_type: str = "sample"
    #: Min-SNR-gamma loss weighting (Hang et al. 2023) for "epsilon"; 0 = plain MSE.
    min_snr_gamma: float = 0.0
    unet_ema_decay: float = 0.995
    caption_dropout: float = 0.1
    short_caption_share: float = 0.4
    #: Share of (non-empty) captions that name the object's colour ("a photo of a red three
    #: digit"). Off: naming the colour (recipe dec614d54763, 0.6) taught the UNet to paint
    #: the named colour but not the digit, and textual inversion then learned a colour (the
    #: class's majority background's) instead of a digit. What made the digit word steer was
    #: ``timestep_power`` and ``full_mask_loss_weight`` (docs/toyworld.md).
    color_caption_share: float = 0.0
    #: Share of each training-mask kind (full, dilated object, object box, random box,
    #: tight object); the rest of the probability mass is renormalised.
    mask_mix: tuple[float, ...] = (0.25, 0.05, 0.55, 0.05, 0.1)
    #: Extra loss weight on the latent cells the object covers (the loss is renormalised per
    #: image): the object is ~12% of an image and the background, easy to copy, would
    #: otherwise dominate the gradient.
    object_loss_weight: float = 4.0
    #: Training timesteps are drawn as ``999 * u ** timestep_power`` (u uniform): below 1,
    #: high noise levels are drawn more often. Which digit a box holds is decided at high
    #: noise (at low noise the noisy latents already show it), so this is where the digit
    #: word can lower the loss; uniform timesteps (1.0) spend most steps where text does not
    #: matter. In the spirit of P2 weighting (Choi et al. 2022). Its share in the committed
    #: recipe's gain is not isolated (docs/toyworld.md).
    timestep_power: float = 0.4
    #: Loss weight of the fully masked (text-to-image) samples relative to the partially
    #: masked ones. A fully masked sample must draw the whole image from text and noise; its
    #: error is several times a box sample's, and at full weight those gradients kept the
    #: UNet from ever starting to use the digit word (docs/toyworld.md, "what made the digit
    #: word steer").
    full_mask_loss_weight: float = 0.1
    #: Weight of the digit-naming loss: a small frozen CNN trained on the world's clean latents
    #: to name their digit (the "latent probe", ``probe_steps`` steps; not the oracle, which
    #: measures) reads the UNet's x0 prediction inside the mask (the source's latents outside),
    #: and its cross entropy against the caption's digit is added to the loss of every
    #: captioned sample. It rewards drawing the named digit, which the MSE barely does (the
    #: digit explains 0.34% of a box's latent variance). 0.1: the oracle reads the other
    #: class's digit in 83% of box repaints (28% without; 0.2 gave 61%, 0.4 39%);
    #: docs/toyworld.md "A generator that composes".
    digit_loss_weight: float = 0.1
    probe_steps: int = 800
    #: The digit-naming loss applies at timesteps below this (1000 = every timestep).
    digit_loss_max_t: int = 1000
    # CLIPSeg.
    seg_steps: int = 300
    seg_batch: int = 32
    seg_lr: float = 1e-3
    seg_patch: int = 4
    seg_hidden: int = 64
    seg_layers: int = 3
    # Inference defaults saved with the pipeline.
    inference_steps: int = 20

    def to_json(self) -> dict:
        d = asdict(self)
        d["world"] = asdict(self.world)
        if not self.digit_loss_weight:  # off: omitted, so recipes from before the field keep their key
            for name in DIGIT_LOSS_FIELDS:
                d.pop(name)
        return json.loads(json.dumps(d))  # tuples -> lists, as a manifest read back has them

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def short(cls) -> ZooRecipe:
        """A few-step, tiny recipe through the same code (for tests; quality is not the point)."""
        return cls(
            world=WorldConfig(n_per_kind=2, seed=0),
            vae_channels=(8, 16, 16),
            vae_steps=2,
            vae_batch=8,
            vae_crop=16,
            oracle_steps=2,
            oracle_batch=8,
            oracle_world_per_kind=2,
            unet_channels=(16, 32, 32),
            unet_steps=2,
            unet_batch=8,
            seg_steps=2,
            seg_batch=8,
            seg_hidden=32,
            seg_layers=2,
            text_hidden=32,
            inference_steps=2,
        )


# ---------------------------------------------------------------- components


def build_tokenizer(folder: Path, recipe: ZooRecipe):

    return build_clip_tokenizer(folder, caption_words(), model_max_length=recipe.max_length)


def _text_config_kwargs(tokenizer, recipe: ZooRecipe, hidden: int) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=recipe.text_heads,
        max_position_embeddings=recipe.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
    )


def build_text_encoder(tokenizer, recipe: ZooRecipe):
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        CLIPTextConfig,
        CLIPTextModel,
    )

    return CLIPTextModel(CLIPTextConfig(**_text_config_kwargs(tokenizer, recipe, recipe.text_hidden)))


def build_vae(recipe: ZooRecipe):
    from diffusers import AutoencoderKL  # deferred: heavy optional model library, only the DDB stages need it

    n = len(recipe.vae_channels)
    if 2 ** (n - 1) != IMAGE_SIZE // LATENT_SIZE:
        raise ValueError(f"vae_channels needs {int(math.log2(IMAGE_SIZE // LATENT_SIZE)) + 1} levels, got {n}")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=recipe.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def build_unet(recipe: ZooRecipe):
    from diffusers import (
        UNet2DConditionModel,  # deferred: heavy optional model library, only the DDB stages need it
    )

    ch = recipe.unet_channels
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(ch) - 1)
    up = ("CrossAttnUpBlock2D",) * (len(ch) - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=9,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=ch,
        layers_per_block=1,
        cross_attention_dim=recipe.text_hidden,
        attention_head_dim=8,
        norm_num_groups=min(16, ch[0]),
    )


def build_training_scheduler(prediction_type: str = "sample"):
    """Stable Diffusion's DDPM noise schedule (scaled linear betas) with ``prediction_type``."""
    from diffusers import DDPMScheduler  # deferred: heavy optional model library, only the DDB stages need it

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def build_clipseg(tokenizer, recipe: ZooRecipe):
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
    )

    h = recipe.seg_hidden
    text = _text_config_kwargs(tokenizer, recipe, h)
    vision = dict(
        hidden_size=h,
        intermediate_size=h * 2,
        num_hidden_layers=recipe.seg_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=recipe.seg_patch,
        projection_dim=h,
    )
    config = CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=h,
        extract_layers=list(range(recipe.seg_layers)),
        reduce_dim=32,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        use_complex_transposed_convolution=False,
    )
    return CLIPSegForImageSegmentation(config)


def build_clipseg_processor(tokenizer):
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)


# ---------------------------------------------------------------- data helpers


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (the VAE's range)."""
    # np.array copies: world arrays are read-only, and torch warns on non-writable memory.
    return torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0


def sample_training_masks(masks: np.ndarray, rng: np.random.Generator, mix: tuple[float, ...]) -> np.ndarray:
    """One inpainting mask (float32 0/1, (N, 64, 64)) per object mask, drawn from ``mix``.

    Kinds: full image; object dilated by 2-8 px; object bounding box grown by 0-6 px;
    a random box (may miss the object); the object nearly as is (dilation 0-1 px).
    """
    p = np.asarray(mix, dtype=np.float64)
    p = p / p.sum()
    n, size = masks.shape[0], masks.shape[1]
    out = np.zeros((n, size, size), dtype=np.float32)
    kinds = rng.choice(len(p), size=n, p=p)
    for i in range(n):
        m = masks[i]
        k = kinds[i]
        if k == 0:
            out[i] = 1.0
        elif k in (1, 4):
            r = int(rng.integers(2, 9)) if k == 1 else int(rng.integers(0, 2))
            out[i] = ndimage.binary_dilation(m, iterations=r) if r else m
        elif k == 2:
            box = object_box(m)
            if box is None:
                out[i] = 1.0
                continue
            g = rng.integers(0, 7, size=4)
            ys, xs = box
            out[i, max(ys.start - g[0], 0) : ys.stop + g[1], max(xs.start - g[2], 0) : xs.stop + g[3]] = 1
        else:
            h, w = rng.integers(size // 4, size * 3 // 4 + 1, size=2)
            y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            out[i, y0 : y0 + h, x0 : x0 + w] = 1
    return out


def _captions_for(world: World, idx: np.ndarray, rng: np.random.Generator, recipe: ZooRecipe) -> list[str]:
    out = []
    for i in idx:
        u = rng.random()
        if u < recipe.caption_dropout:
            out.append("")
        else:
            short = u < recipe.caption_dropout + recipe.short_caption_share
            out.append(world.caption(int(i), short=short, color=bool(rng.random() < recipe.color_caption_share)))
    return out


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length, as the diffusers pipelines do."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# ---------------------------------------------------------------- a resumable loop


def _resume_point(work: Path, name: str) -> ResumePoint:
    """Where stage ``name`` checkpoints (every 60 s and at its end) and resumes from."""
    return ResumePoint(work / f"{name}.ckpt.pt")


def _batch_rng(recipe: ZooRecipe, stage: int, step: int) -> np.random.Generator:
    # A fresh generator per (stage, step): a resumed run draws exactly the batches the
    # uninterrupted run would have drawn.
    return np.random.default_rng([recipe.seed, stage, step])


def _torch_gen(recipe: ZooRecipe, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(_batch_rng(recipe, stage, step).integers(2**62)))


def warmup_cosine_factor(step: int, total: int, warmup: int = 50) -> float:
    """The zoo stages' learning-rate factor at ``step`` of ``total``: a linear warm-up over
    ``min(warmup, total // 5 + 1)`` steps times a cosine decay to 10% (diffusers'
    get_scheduler("cosine") has no floor)."""
    warm = min(1.0, (step + 1) / max(1, min(warmup, total // 5 + 1)))
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, total))))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's LambdaLR over :func:`warmup_cosine_factor`, stepped by ``engine.train_steps``.

    The committed zoo (recipe 0df563359312) was trained before the schedule and the UNet's
    EMA came from torch and diffusers: its code set ``lr * factor`` itself (LambdaLR multiplies
    in another order: 1 of 2000 VAE, 8 of 2400 UNet and 1 of 300 CLIPSeg rates differ in the
    last bit) and kept the EMA by ``lerp`` (diffusers' EMAModel rounds otherwise and skips the
    first step's 0.1 blend). This code trains the same recipe to weights that differ at
    rounding level, as a retrain on another CPU type does (docs/toyworld.md "Training time")."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, total))


# ---------------------------------------------------------------- stage 1: VAE


def train_vae(world: World, recipe: ZooRecipe, work: Path, progress: bool = True):
    """Train the AutoencoderKL; returns it with ``scaling_factor`` set to 1/std(latents)."""
    torch.manual_seed(recipe.seed)
    vae = build_vae(recipe)
    with torch.no_grad():
        # Start the posterior nearly deterministic (std ~ 0.02): with a tiny KL weight the
        # sampling noise of a unit-variance start costs hundreds of steps to shrink.
        vae.quant_conv.bias[4:].fill_(-8.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)

    def step_loss(step: int) -> torch.Tensor:
        rng = _batch_rng(recipe, 1, step)
        idx = rng.integers(0, len(world), size=recipe.vae_batch)
        c = recipe.vae_crop
        y0, x0 = (int(v) for v in rng.integers(0, IMAGE_SIZE - c + 1, size=2))
        x = to_model_range(world.images[idx, y0 : y0 + c, x0 : x0 + c])
        # Full masks give the pipeline an all-zero masked image: teach that too.
        x[: max(1, recipe.vae_batch // 16)] = 0.0
        post = vae.encode(x).latent_dist
        z = post.sample(generator=_torch_gen(recipe, 1, step))
        rec = vae.decode(z).sample
        return (rec - x).abs().mean() + F.mse_loss(rec, x) + recipe.vae_kl_weight * post.kl().mean()

    def restore(ck: dict) -> None:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])

    vae.train()
    train_steps(step_loss, opt, recipe.vae_steps, lr_scheduler=warmup_cosine_schedule(opt, recipe.vae_steps),
                resume=_resume_point(work, "vae"), restore=restore, save_every_s=60.0,
                state=lambda done: {"model": vae.state_dict(), "opt": opt.state_dict(), "step": done},
                desc="vae", progress=progress)
    vae.eval()
    with torch.no_grad():
        idx = np.random.default_rng([recipe.seed, 11]).choice(len(world), size=min(256, len(world)), replace=False)
        z = torch.cat([vae.encode(to_model_range(world.images[idx[j : j + 64]])).latent_dist.mean
                       for j in range(0, len(idx), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std().clamp_min(1e-6)))
    return vae


@torch.no_grad()
def encode_latents(vae, images_m11: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latents of images in [-1, 1], as the pipeline computes them."""
    return vae.encode(images_m11).latent_dist.sample(generator=generator) * vae.config.scaling_factor


# ---------------------------------------------------------------- stage 3: UNet + text encoder


def precompute_inpainting_latents(world: World, vae, recipe: ZooRecipe, work: Path | None = None,
                                  progress: bool = True) -> dict[str, torch.Tensor]:
    """Latents the UNet trains on, encoded once (the VAE is frozen by then).

    ``z0`` (N, 4, 16, 16): each world image; ``masks`` (N, K, 64, 64) bool: K partial masks
    per image drawn from the non-full kinds of ``recipe.mask_mix``; ``zm`` (N, K, 4, 16, 16):
    latents of the masked images (masked pixels set to 0, as the pipeline does); ``z_blank``:
    the latent of an all-zero image (the full-mask case).
    """
    path = work / "unet_latents.pt" if work is not None else None
    if path is not None and path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    K = recipe.unet_masks_per_image
    partial_mix = (0.0,) + tuple(recipe.mask_mix[1:])
    rng = np.random.default_rng([recipe.seed, 30])
    gen = torch.Generator().manual_seed(recipe.seed + 30)
    n = len(world)
    masks = np.stack([sample_training_masks(world.masks, rng, partial_mix) > 0.5 for _ in range(K)], axis=1)
    z0 = torch.empty(n, 4, LATENT_SIZE, LATENT_SIZE)
    zm = torch.empty(n, K, 4, LATENT_SIZE, LATENT_SIZE)
    bs = 64
    for j in tqdm(range(0, n, bs), desc="unet: encoding latents", disable=not progress):
        x = to_model_range(world.images[j : j + bs])
        z0[j : j + bs] = encode_latents(vae, x, gen)
        for k in range(K):
            m = torch.from_numpy(masks[j : j + bs, k])[:, None]
            zm[j : j + bs, k] = encode_latents(vae, x * (~m), gen)
    z_blank = encode_latents(vae, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), gen)[0]
    pre = {"z0": z0, "masks": torch.from_numpy(masks), "zm": zm, "z_blank": z_blank}
    if path is not None:
        torch.save(pre, path)
    return pre


def object_cells(masks: np.ndarray) -> torch.Tensor:
    """Bool (N, 16, 16): the latent cells each (N, 64, 64) object mask touches (any pixel
    of the cell's 4x4 patch)."""
    m = torch.from_numpy(np.asarray(masks)).float()[:, None]
    return F.max_pool2d(m, IMAGE_SIZE // LATENT_SIZE)[:, 0] > 0


def unet_input(z0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, m_lat: torch.Tensor,
               zm: torch.Tensor) -> torch.Tensor:
    """The 9-channel inpainting UNet input for clean latents ``z0`` noised to cumulative alpha
    ``alpha_bar`` (scalar or per sample): noisy latents, latent mask, masked-image latents."""
    a = torch.as_tensor(alpha_bar).reshape(-1, 1, 1, 1)
    return torch.cat([a.sqrt() * z0 + (1 - a).sqrt() * noise, m_lat, zm], dim=1)


def sample_timesteps(n: int, power: float, generator: torch.Generator, num_train_timesteps: int = 1000):
    """``n`` training timesteps ``floor((T - 1) * u ** power + 0.5)`` for u ~ U[0, 1): uniform
    for ``power`` 1, tilted towards high noise (large t) for ``power`` < 1."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return ((num_train_timesteps - 1) * u ** power + 0.5).floor().long()


def unet_loss(pred: torch.Tensor, target: torch.Tensor, alpha_bar: torch.Tensor, obj: torch.Tensor,
              full: torch.Tensor, recipe: ZooRecipe) -> torch.Tensor:
    """The UNet's training loss: per-element MSE, the object's latent cells ``obj`` (N, 16, 16)
    weighted ``1 + object_loss_weight`` (renormalised per image), then per sample Min-SNR
    weights (epsilon prediction only) and ``full_mask_loss_weight`` on the fully masked
    samples ``full`` (N,) bool; the batch mean."""
    weight = torch.ones(len(pred))
    if recipe.min_snr_gamma > 0 and recipe.prediction_type == "epsilon":
        snr = (alpha_bar / (1 - alpha_bar)).view(-1)
        weight = snr.clamp(max=recipe.min_snr_gamma) / snr
    err = F.mse_loss(pred, target, reduction="none")
    if recipe.object_loss_weight > 0:
        cell = 1.0 + recipe.object_loss_weight * obj[:, None].float()
        err = err * cell / cell.mean(dim=(1, 2, 3), keepdim=True)
    if recipe.full_mask_loss_weight != 1.0:
        weight = weight * torch.where(full, recipe.full_mask_loss_weight, 1.0)
    return (err.mean(dim=(1, 2, 3)) * weight).mean()


class LatentDigitProbe(torch.nn.Module):
    """A small CNN naming the digit (0-9) of a (4, 16, 16) latent: the UNet's digit-naming loss."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(4, w, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(2 * w, 2 * w, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4 * w, 10))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def train_latent_probe(z0: torch.Tensor, digits: torch.Tensor, recipe: ZooRecipe,
                       work: Path | None = None) -> LatentDigitProbe:
    """Train :class:`LatentDigitProbe` on the world's clean latents ``z0`` with their ``digits``
    (light Gaussian noise and 4-pixel shifts as augmentation) through the zoo's one loop,
    ``engine.train_steps``; its final state is kept in ``work`` (a resumed UNet stage does not
    train it again). Returns it frozen."""
    torch.manual_seed(recipe.seed + 5)
    probe = LatentDigitProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-2)

    def step_loss(step: int) -> torch.Tensor:
        rng = _batch_rng(recipe, 5, step)
        gen = _torch_gen(recipe, 5, step)
        idx = torch.from_numpy(rng.integers(0, len(z0), size=128))
        z = z0[idx] + 0.2 * torch.rand(len(idx), 1, 1, 1, generator=gen) * torch.randn(z0[idx].shape, generator=gen)
        dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
        z = torch.roll(z, shifts=(dy, dx), dims=(2, 3))  # 4-pixel shifts: the world's objects move
        return F.cross_entropy(probe(z), digits[idx])

    def restore(ck: dict) -> None:
        probe.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])

    train_steps(step_loss, opt, recipe.probe_steps, resume=None if work is None else _resume_point(work, "probe"),
                restore=restore, save_every_steps=recipe.probe_steps,
                state=lambda done: {"model": probe.state_dict(), "opt": opt.state_dict(), "step": done},
                desc="latent probe", progress=False)
    return probe.eval().requires_grad_(False)


def digit_naming_loss(probe: torch.nn.Module, pred: torch.Tensor, z0: torch.Tensor, m_lat: torch.Tensor,
                      digits: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """The probe's cross entropy against the captioned ``digits``, averaged over the samples
    whose caption names the digit (``named``; an empty caption names none). The probe reads
    what the pipeline keeps: the x0 prediction ``pred`` inside the latent mask ``m_lat``, the
    source's latents ``z0`` outside it, so no gradient reaches the unmasked region."""
    shown = m_lat * pred + (1 - m_lat) * z0
    ce = F.cross_entropy(probe(shown), digits, reduction="none")
    return (ce * named).sum() / named.sum().clamp_min(1)


def train_unet(world: World, vae, tokenizer, recipe: ZooRecipe, work: Path, progress: bool = True):
    """Train the 9-channel inpainting UNet jointly with the text encoder; returns (unet, text_encoder)
    holding the EMA weights."""
    torch.manual_seed(recipe.seed + 3)
    unet = build_unet(recipe)
    text_encoder = build_text_encoder(tokenizer, recipe)
    sched = build_training_scheduler(recipe.prediction_type)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    from diffusers.training_utils import (
        EMAModel,  # deferred: heavy optional model library, only the DDB stages need it
    )

    # diffusers' EMAModel (decay warm-up min(decay, (1 + n) / (10 + n)) over its update count n)
    ema = EMAModel(params, decay=recipe.unet_ema_decay, use_ema_warmup=False)
    alphas = sched.alphas_cumprod
    vae.eval()
    pre = precompute_inpainting_latents(world, vae, recipe, work, progress)
    pre["obj"] = object_cells(world.masks)
    if recipe.prediction_type not in ("sample", "epsilon"):
        raise ValueError(f"prediction_type must be 'sample' or 'epsilon', got {recipe.prediction_type!r}")
    full_share = recipe.mask_mix[0] / sum(recipe.mask_mix)
    if recipe.digit_loss_weight > 0 and recipe.prediction_type != "sample":
        raise ValueError("digit_loss_weight needs prediction_type 'sample' (the probe reads the x0 prediction)")
    digits = torch.as_tensor(np.asarray(world.digits), dtype=torch.long)
    probe = train_latent_probe(pre["z0"], digits, recipe, work) if recipe.digit_loss_weight > 0 else None

    def step_loss(step: int) -> torch.Tensor:
        rng = _batch_rng(recipe, 3, step)
        gen = _torch_gen(recipe, 3, step)
        idx = rng.integers(0, len(world), size=recipe.unet_batch)
        full = torch.from_numpy(rng.random(len(idx)) < full_share)
        k = torch.from_numpy(rng.integers(0, pre["masks"].shape[1], size=len(idx)))
        ti = torch.from_numpy(idx)
        z0 = pre["z0"][ti]
        m = torch.where(full.view(-1, 1, 1, 1), 1.0, pre["masks"][ti, k][:, None].float())
        zm = torch.where(full.view(-1, 1, 1, 1), pre["z_blank"], pre["zm"][ti, k])
        m_lat = F.interpolate(m, size=(LATENT_SIZE, LATENT_SIZE))
        t = sample_timesteps(len(idx), recipe.timestep_power, gen, sched.config.num_train_timesteps)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        captions = _captions_for(world, idx, rng, recipe)
        ids = tokenize(tokenizer, captions)
        cond = text_encoder(ids).last_hidden_state
        pred = unet(unet_input(z0, noise, a, m_lat, zm), t, cond).sample
        target = z0 if recipe.prediction_type == "sample" else noise
        loss = unet_loss(pred, target, a, pre["obj"][ti], full, recipe)
        if probe is not None:
            named = torch.tensor([bool(c) for c in captions]) & (t < recipe.digit_loss_max_t)
            loss = loss + recipe.digit_loss_weight * digit_naming_loss(probe, pred, z0, m_lat, digits[ti], named)
        return loss

    def update_ema(step: int) -> None:
        ema.step(params)

    def restore(ck: dict) -> None:
        unet.load_state_dict(ck["unet"])
        text_encoder.load_state_dict(ck["text_encoder"])
        opt.load_state_dict(ck["opt"])
        ema.load_state_dict(ck["ema"])

    unet.train()
    text_encoder.train()
    train_steps(step_loss, opt, recipe.unet_steps, lr_scheduler=warmup_cosine_schedule(opt, recipe.unet_steps),
                clip_params=params, after_step=update_ema, resume=_resume_point(work, "unet"), restore=restore,
                state=lambda done: {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                                    "opt": opt.state_dict(), "ema": ema.state_dict(), "step": done},
                save_every_s=60.0, desc="unet+text", progress=progress)
    ema.copy_to(params)
    return unet.eval(), text_encoder.eval()


# ---------------------------------------------------------------- stage 4: CLIPSeg


def segmenter_prompts(world: World, idx: np.ndarray, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Text prompts and target masks for the segmenter: "digit" and the digit's word -> the
    object; a background word -> the background region if it is that background, else nothing;
    another digit's word -> nothing."""
    prompts, targets = [], []
    for i in idx:
        obj = world.masks[i]
        u = rng.random()
        d, b = int(world.digits[i]), int(world.backgrounds[i])
        if u < 0.5:
            prompts.append(SEGMENTER_OBJECT_PROMPT)
            targets.append(obj)
        elif u < 0.75:
            prompts.append(DIGIT_WORDS[d] if rng.random() < 0.5 else f"{DIGIT_WORDS[d]} digit")
            targets.append(obj)
        elif u < 0.9:
            other = int(rng.integers(len(BACKGROUNDS)))
            prompts.append(BACKGROUNDS[other])
            targets.append(~obj if other == b else np.zeros_like(obj))
        else:
            other = (d + int(rng.integers(1, 10))) % 10
            prompts.append(DIGIT_WORDS[other])
            targets.append(np.zeros_like(obj))
    return prompts, np.stack(targets).astype(np.float32)


def clipseg_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 64, 64, 3) -> CLIPSeg pixel values, as the saved processor computes them."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def train_clipseg(world: World, tokenizer, recipe: ZooRecipe, work: Path, progress: bool = True):
    """Train the text-prompted segmenter on world masks."""
    torch.manual_seed(recipe.seed + 4)
    model = build_clipseg(tokenizer, recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.seg_lr, weight_decay=1e-2)

    def step_loss(step: int) -> torch.Tensor:
        rng = _batch_rng(recipe, 4, step)
        idx = rng.integers(0, len(world), size=recipe.seg_batch)
        prompts, target = segmenter_prompts(world, idx, rng)
        enc = tokenizer(prompts, padding=True, return_tensors="pt")
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                       pixel_values=clipseg_pixels(world.images[idx])).logits
        logits = logits.view(len(idx), IMAGE_SIZE, IMAGE_SIZE)
        tgt = torch.from_numpy(target)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * tgt).sum((1, 2)) + 1) / (prob.sum((1, 2)) + tgt.sum((1, 2)) + 1)
        return F.binary_cross_entropy_with_logits(logits, tgt) + 0.5 * dice.mean()

    def restore(ck: dict) -> None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])

    model.train()
    train_steps(step_loss, opt, recipe.seg_steps, lr_scheduler=warmup_cosine_schedule(opt, recipe.seg_steps),
                clip_params=list(model.parameters()), resume=_resume_point(work, "clipseg"), restore=restore,
                state=lambda done: {"model": model.state_dict(), "opt": opt.state_dict(), "step": done},
                save_every_s=60.0, desc="clipseg", progress=progress)
    return model.eval()


# ---------------------------------------------------------------- assembling the zoo


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under ``folder/<name>`` for each name, keyed by relative path."""
    out = {}
    for name in names:
        for p in sorted((folder / name).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(folder))] = sha256_file(p)
    return out


def save_inpainting_pipeline(folder: Path, vae, text_encoder, tokenizer, unet, recipe: ZooRecipe) -> None:
    """Save a StableDiffusionInpaintPipeline folder whose scheduler samples in few steps."""
    from diffusers import (  # deferred: heavy optional model library, only the DDB stages need it
        DPMSolverMultistepScheduler,
        StableDiffusionInpaintPipeline,
    )

    scheduler = DPMSolverMultistepScheduler.from_config(build_training_scheduler(recipe.prediction_type).config)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # A component loaded from a cached stage (build_zoo's work folder) carries the folder it was
    # read from as "_name_or_path": the zoo's files must not name this machine's paths, and must
    # not depend on whether a stage was trained in this run or read back.
    for config in folder.glob("*/config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            atomic.write_text(config, json.dumps(data, indent=2, sort_keys=True) + "\n")
    # Keep the CLIP-format vocabulary files next to tokenizer.json (tokenizer folder).

    write_tokenizer_files(folder / "tokenizer", caption_words())
    (folder / "spuraug_recipe.json").write_text(json.dumps(
        {"inference_steps": recipe.inference_steps, "image_size": IMAGE_SIZE,
         "prompt_template": "a photo of a {word} digit", "initializer_word": "digit"}, indent=2))


PIPELINE_DIR, CLIPSEG_DIR, ORACLE_DIR = "toy-sd-inpainting", "toy-clipseg", "toy-oracle"
ZOO_PARTS = (PIPELINE_DIR, CLIPSEG_DIR, ORACLE_DIR)


def build_zoo(out_dir: str | Path, recipe: ZooRecipe = ZooRecipe(), work_dir: str | Path | None = None,
              progress: bool = True, force: bool = False, threads: int = 2) -> dict:
    """Train every zoo model for ``recipe`` into ``out_dir``; returns the manifest.

    Skips everything when ``out_dir/manifest.json`` already records this recipe and every
    file still has its recorded hash (unless ``force``). Finished stages are cached in
    ``work_dir`` and an interrupted stage resumes from its last checkpoint.
    """

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if not force and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("recipe") == recipe.to_json() and old.get("files") == file_hashes(out_dir, ZOO_PARTS):
            if progress:
                print(f"toy zoo in {out_dir} is up to date (recipe {recipe.key()}); nothing to train")
            return old
    work = Path(work_dir) if work_dir is not None else Path("build") / "toy-zoo" / recipe.key()
    work.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, float] = {}
    t_all = time.time()
    try:
        t = time.time()
        world = generate_world(recipe.world, cache_dir=str(work.parent))
        times["world"] = time.time() - t

        tokenizer = build_tokenizer(work / "tokenizer-files", recipe)

        from diffusers import (
            AutoencoderKL,  # deferred: heavy optional model library, only the DDB stages need it
        )

        t = time.time()
        if (work / "vae" / "config.json").exists():
            vae = AutoencoderKL.from_pretrained(work / "vae")
        else:
            vae = train_vae(world, recipe, work, progress)
            vae.save_pretrained(work / "vae")
        vae.eval().requires_grad_(False)
        times["vae"] = time.time() - t


        from diffusers import (
            UNet2DConditionModel,  # deferred: heavy optional model library, only the DDB stages need it
        )
        from transformers import CLIPTextModel  # deferred: heavy model library, only the DDB stages need it

        t = time.time()
        if (work / "unet" / "config.json").exists():
            unet = UNet2DConditionModel.from_pretrained(work / "unet")
            text_encoder = CLIPTextModel.from_pretrained(work / "text_encoder")
        else:
            unet, text_encoder = train_unet(world, vae, tokenizer, recipe, work, progress)
            unet.save_pretrained(work / "unet")
            text_encoder.save_pretrained(work / "text_encoder")
        times["unet"] = time.time() - t

        from transformers import (
            CLIPSegForImageSegmentation,  # deferred: heavy model library, only the DDB stages need it
        )

        t = time.time()
        if (work / "clipseg" / "config.json").exists():
            seg = CLIPSegForImageSegmentation.from_pretrained(work / "clipseg")
        else:
            seg = train_clipseg(world, tokenizer, recipe, work, progress)
            seg.save_pretrained(work / "clipseg")
        times["clipseg"] = time.time() - t
        t = time.time()
        if (work / "oracle" / "model.safetensors").exists():
            pass
        else:
            oracle_world = generate_world(replace(recipe.world, n_per_kind=recipe.oracle_world_per_kind),
                                          cache_dir=str(work.parent))
            oracle = train_oracle(oracle_world, recipe, work, progress=progress)
            save_oracle(oracle, work / "oracle")
        times["oracle"] = time.time() - t

        out_dir.mkdir(parents=True, exist_ok=True)
        for part in ZOO_PARTS:
            shutil.rmtree(out_dir / part, ignore_errors=True)
        save_inpainting_pipeline(out_dir / PIPELINE_DIR, vae, text_encoder, tokenizer, unet, recipe)
        seg.save_pretrained(out_dir / CLIPSEG_DIR)
        build_clipseg_processor(tokenizer).save_pretrained(out_dir / CLIPSEG_DIR)
        shutil.copytree(work / "oracle", out_dir / ORACLE_DIR)
    finally:
        torch.set_num_threads(old_threads)
    stage_times = {}
    for name in ("world", "vae", "oracle", "unet", "clipseg"):
        stage_times[name] = round(times.get(name, 0.0), 1)
        f = work / f"{name}.time.json"
        if f.exists():  # a stage trained earlier reports the time it took then
            stage_times[name] = json.loads(f.read_text())["train_s"]
        elif times.get(name, 0.0) > 1.0:
            f.write_text(json.dumps({"train_s": round(times[name], 1)}))
    manifest = {
        "recipe": recipe.to_json(),
        "recipe_key": recipe.key(),
        "seeds": {"recipe": recipe.seed, "world": recipe.world.seed},
        "threads": threads,
        "stage_train_s": stage_times,
        "this_run_wall_s": round(time.time() - t_all, 1),
        "models": {
            "spuraug/toy-sd-inpainting": PIPELINE_DIR,
            "spuraug/toy-clipseg": CLIPSEG_DIR,
            "spuraug/toy-oracle": ORACLE_DIR,
        },
        "files": file_hashes(out_dir, ZOO_PARTS),
    }
    if manifest_path.exists():  # the backbone's entry (spuraug.toyworld.backbone.build_backbone) stays
        previous = json.loads(manifest_path.read_text())
        if "backbone" in previous:
            manifest["backbone"] = previous["backbone"]
            manifest["models"]["spuraug/toy-backbone"] = previous.get("models", {}).get("spuraug/toy-backbone", "toy-backbone")
    atomic.write_json(manifest_path, manifest)
    return manifest


def shortened(recipe: ZooRecipe, **changes) -> ZooRecipe:
    """``recipe`` with some fields replaced (a convenience for experiments)."""
    return replace(recipe, **changes)
