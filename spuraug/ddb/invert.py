"""Stage 1: textual inversion, one new token per class, on Stable Diffusion.

Only the new token's embedding row is trained: the text encoder, UNet and VAE stay
frozen and untouched. The row lives in a separate parameter that a forward hook on the
token-embedding layer substitutes for the token's positions, so no optimizer ever sees
another weight (diffusers' script instead trains the whole matrix and restores the
other rows after each step; the result is the same, this is cheaper and exact by
construction). Each class's embedding is saved as ``learned_embeds.safetensors``
``{token: tensor[1, dim]}``, the file diffusers' ``load_textual_inversion`` reads.

Works with a 4-channel text-to-image UNet (Stable Diffusion 2 base, the paper) and
with a 9-channel inpainting UNet used fully masked (mask = 1, masked image = 0; the toy
zoo's single pipeline). ``loss_region: object`` (not in the paper) instead masks only
each image's object region and takes the loss there (docs/ddb.md).
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from spuraug import atomic
from spuraug.ddb import hub
from spuraug.ddb.config import InvertConfig
from spuraug.engine import resolve_device

EMBEDS_FILE = "learned_embeds.safetensors"


def class_tokens(cfg_tokens: Sequence[str] | None, n_classes: int) -> list[str]:
    """The placeholder token of each class (``<class-0>``, ... unless configured)."""
    tokens = list(cfg_tokens) if cfg_tokens else [f"<class-{c}>" for c in range(n_classes)]
    if len(tokens) != n_classes or len(set(tokens)) != n_classes:
        raise ValueError(f"ddb.invert.tokens: need {n_classes} distinct tokens, got {tokens}")
    return tokens


@dataclass
class SDComponents:
    """The Stable Diffusion parts textual inversion needs."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object


def load_sd_components(model_id: str, revision: str | None = None) -> SDComponents:
    """Load tokenizer, text encoder, VAE, UNet and a DDPM noise scheduler of a SD folder or hub id."""
    from diffusers import (  # deferred: heavy optional model library, only the DDB stages need it
        AutoencoderKL,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        CLIPTextModel,
        CLIPTokenizer,
    )

    return SDComponents(
        tokenizer=hub.load(CLIPTokenizer, model_id, "tokenizer", revision),
        text_encoder=hub.load(CLIPTextModel, model_id, "text_encoder", revision),
        vae=hub.load(AutoencoderKL, model_id, "vae", revision),
        unet=hub.load(UNet2DConditionModel, model_id, "unet", revision),
        noise_scheduler=hub.load(DDPMScheduler, model_id, "scheduler", revision),
    )


def select_images(y: np.ndarray, cls: int, n: int, seed: int) -> np.ndarray:
    """Positions of ``n`` training images of class ``cls``, drawn uniformly with a fixed seed.

    The paper uses 20-40 training images of the class without saying how they are
    picked; a uniform draw needs no ERM model or group labels, so the tokens are shared
    by every ERM seed.
    """
    pool = np.flatnonzero(np.asarray(y) == cls)
    if len(pool) == 0:
        raise ValueError(f"no training images of class {cls}")
    rng = np.random.default_rng([int(seed), int(cls), 104729])
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def preprocess(image: Image.Image, resolution: int, center_crop: bool = False) -> torch.Tensor:
    """An RGB image as a ``[3, R, R]`` tensor in [-1, 1] (diffusers' textual-inversion preprocessing)."""
    img = image.convert("RGB")
    if center_crop:
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    img = img.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def mask_image(mask: Image.Image | np.ndarray) -> Image.Image:
    """A mask (bool / 0-1 / 0-255 array, or any PIL image) as an L image."""
    if isinstance(mask, np.ndarray):
        return Image.fromarray((mask > 0).astype(np.uint8) * 255)
    return mask.convert("L")


def preprocess_mask(mask: Image.Image | np.ndarray, resolution: int, center_crop: bool = False) -> torch.Tensor:
    """A region mask (bool array or L image at the image's size) as a ``[1, R, R]`` 0/1
    tensor, cropped and resized the way :func:`preprocess` treats its image."""
    m = mask_image(mask)
    if center_crop:
        w, h = m.size
        s = min(w, h)
        m = m.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    m = m.resize((resolution, resolution), resample=Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(m) > 127).astype(np.float32))[None]


def add_tokens(components: SDComponents, tokens: Sequence[str], initializer_token: str) -> list[int]:
    """Add the placeholder tokens, grow the embedding matrix, initialise the new rows from the initializer."""
    tok = components.tokenizer
    init_ids = tok.encode(initializer_token, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(
            f"ddb.invert.initializer_token: {initializer_token!r} is {len(init_ids)} tokens for this tokenizer; "
            "it must be one token"
        )
    added = tok.add_tokens(list(tokens))
    if added != len(tokens):
        raise ValueError(f"ddb.invert.tokens: some of {list(tokens)} are already in the tokenizer; pick new strings")
    ids = tok.convert_tokens_to_ids(list(tokens))
    te = components.text_encoder
    te.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        weight = te.get_input_embeddings().weight
        for i in ids:
            weight[i] = weight[init_ids[0]].clone()
    return list(ids)


class RowSubstitution:
    """Substitute trainable rows for some token ids in the embedding layer's output."""

    def __init__(self, embedding: torch.nn.Embedding, token_ids: Sequence[int], init: torch.Tensor) -> None:
        self.token_ids = list(token_ids)
        self.rows = torch.nn.Parameter(init.detach().clone().float())
        self.handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        for k, tid in enumerate(self.token_ids):
            sel = (ids == tid).unsqueeze(-1)
            output = torch.where(sel, self.rows[k].to(output.dtype), output)
        return output

    def remove(self) -> None:
        self.handle.remove()


def save_learned_embeds(path: Path, token: str, vector: torch.Tensor) -> None:
    """Write ``{token: tensor[1, dim]}`` as safetensors (diffusers' textual-inversion format)."""
    from safetensors.torch import save  # deferred: only checkpoint loading of DDB weights needs it

    data = save({token: vector.detach().float().cpu().reshape(1, -1).contiguous()}, metadata={"format": "pt"})
    atomic.write_bytes(Path(path), data)


def load_learned_embeds(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # deferred: only checkpoint loading of DDB weights needs it

    return load_file(str(path))


def _weight_dtype(cfg: InvertConfig, device: torch.device) -> torch.dtype:
    if cfg.mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"no": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        cfg.mixed_precision
    ]


def train_token(
    components: SDComponents,
    images: Sequence[Image.Image],
    token: str,
    token_id: int,
    cfg: InvertConfig,
    out_dir: Path,
    device: torch.device | str = "cpu",
    desc: str = "invert",
    regions: Sequence[Image.Image | np.ndarray | None] | None = None,
    objects: Sequence[Image.Image | np.ndarray | None] | None = None,
) -> torch.Tensor:
    """Learn the embedding of ``token`` from ``images``; returns the learned row.

    With ``cfg.loss_region == "object"``, ``regions`` gives each image's region to
    repaint and ``objects`` its object mask (masks at the image's size; ``None``: no
    object found, the image is used whole; ``objects`` defaults to ``regions``): the
    9-channel UNet sees the region masked and the rest of the image as the masked image,
    as at inpainting time, and the loss is the mean over the object, each latent cell
    weighted by the share of its pixels the object covers. ``"region"``: the same, with
    the loss over the whole region (``objects`` is not used).

    Resumes from ``out_dir/checkpoint.pt`` (written every ``cfg.checkpoint_every``
    optimizer steps) and writes ``out_dir/learned_embeds.safetensors`` at the end. Does
    not modify any weight of ``components``.
    """
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wdtype = _weight_dtype(cfg, device)
    te, vae, unet, sched = components.text_encoder, components.vae, components.unet, components.noise_scheduler
    for m in (te, vae, unet):
        m.requires_grad_(False)
        m.eval()
    te.to(device)
    for m in (vae, unet):
        m.to(device) if m.dtype == wdtype else m.to(device, dtype=wdtype)
    emb = te.get_input_embeddings()
    sub = RowSubstitution(emb, [token_id], emb.weight[token_id : token_id + 1].to(device))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    lr = cfg.learning_rate
    if cfg.scale_lr:  # one process here; the README's run used one GPU
        lr = lr * cfg.gradient_accumulation_steps * cfg.train_batch_size
    opt = torch.optim.AdamW([sub.rows], lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    from diffusers.optimization import (
        get_scheduler,  # deferred: heavy optional model library, only the DDB stages need it
    )

    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer=opt, num_warmup_steps=0, num_training_steps=cfg.max_train_steps)
    step = 0
    ckpt = out_dir / "checkpoint.pt"
    state = None
    if ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a torn or damaged file: this class starts over (issue 20)
            print(f"{ckpt}: unreadable ({type(e).__name__}); training this token from step 0", file=sys.stderr)
            ckpt.unlink()
    if state is not None:
        with torch.no_grad():
            sub.rows.copy_(state["rows"].to(device))
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        gen.set_state(state["generator"])
        step = int(state["step"])

    # The VAE is frozen and images are not augmented (flip_p = 0 in the public script), so
    # each image's latent distribution is computed once; a fresh sample is drawn per step.
    with torch.no_grad():
        pix = torch.stack([preprocess(im, cfg.resolution, cfg.center_crop) for im in images])
        moments = []
        for chunk in pix.split(8):
            dist = vae.encode(chunk.to(device, wdtype)).latent_dist
            moments.append((dist.mean.float(), dist.std.float()))
        mean = torch.cat([m for m, _ in moments])
        std = torch.cat([s for _, s in moments])
        scaling = vae.config.scaling_factor
        nine = unet.config.in_channels == 9
        if nine:
            zeros = torch.zeros(1, 3, cfg.resolution, cfg.resolution, device=device, dtype=wdtype)
            if cfg.full_mask_latents == "encode":
                masked_lat = vae.encode(zeros).latent_dist.mean.float() * scaling
            else:
                masked_lat = torch.zeros_like(mean[:1])
        elif unet.config.in_channels != 4:
            raise ValueError(f"UNet with {unet.config.in_channels} input channels: expected 4 or 9")
        # Per image: the mask channel and masked-image latents the UNet sees, and the loss
        # weight of each latent cell. "image": fully masked, weight 1 everywhere.
        lat_hw = mean.shape[-2:]
        mask_lat = torch.ones(len(images), 1, *lat_hw, device=device)
        masked = masked_lat.expand(len(images), -1, -1, -1).clone() if nine else None
        weight = torch.ones(len(images), 1, *lat_hw, device=device)
        if cfg.loss_region in ("object", "region"):
            if not nine:
                raise ValueError(f"ddb.invert.loss_region: {cfg.loss_region!r} needs a 9-channel inpainting UNet "
                                 f"(this one takes {unet.config.in_channels}); use 'image'")
            objects = regions if objects is None or cfg.loss_region == "region" else objects
            for name, given in (("regions", regions), ("objects", objects)):
                if given is None or len(given) != len(images):
                    raise ValueError(f"ddb.invert.loss_region {cfg.loss_region!r}: need one region per image "
                                     f"({len(images)} images, {0 if given is None else len(given)} {name})")
            for k, (region, obj) in enumerate(zip(regions, objects)):
                if region is None or obj is None or not np.asarray(region).any() or not np.asarray(obj).any():
                    continue  # no object found: this image stays fully masked, whole-image loss
                m = preprocess_mask(region, cfg.resolution, cfg.center_crop).to(device)[None]
                # The pipeline's own preparation: masked image = image * (mask < 0.5),
                # mask resized to the latents (nearest).
                enc = vae.encode((pix[k : k + 1].to(device) * (m < 0.5)).to(wdtype)).latent_dist.mean.float()
                masked[k : k + 1] = enc * scaling
                mask_lat[k : k + 1] = F.interpolate(m, size=tuple(lat_hw))
                o = preprocess_mask(obj, cfg.resolution, cfg.center_crop).to(device)[None]
                weight[k : k + 1] = F.interpolate(o, size=tuple(lat_hw), mode="area")
        elif cfg.loss_region != "image":
            raise ValueError(f"ddb.invert.loss_region: {cfg.loss_region!r} is not one of ('image', 'object', 'region')")
    n_img = len(images)
    tok = components.tokenizer
    templates = list(cfg.templates)
    if not templates or any("{token}" not in t for t in templates):
        raise ValueError("ddb.invert.templates: every template needs a {token} placeholder")
    pbar = tqdm(total=cfg.max_train_steps, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    try:
        accum, bs = cfg.gradient_accumulation_steps, cfg.train_batch_size
        group = accum if cfg.fuse_accumulation else 1  # micro-batches per forward pass
        while step < cfg.max_train_steps:
            # Every micro-batch's randomness is drawn first, in the same order either way,
            # so fusing the micro-batches into one forward pass changes only rounding.
            draws = []
            for _ in range(accum):
                idx = torch.randint(0, n_img, (bs,), generator=gen)
                tpl = torch.randint(0, len(templates), (bs,), generator=gen)
                eps_lat = torch.randn(mean[idx].shape, generator=gen)
                noise = torch.randn(eps_lat.shape, generator=gen)
                t = torch.randint(0, sched.config.num_train_timesteps, (bs,), generator=gen)
                draws.append((idx, tpl, eps_lat, noise, t))
            step_loss = 0.0
            for g in range(0, accum, group):
                idx, tpl, eps_lat, noise, t = (torch.cat(parts) for parts in zip(*draws[g : g + group]))
                texts = [templates[int(k)].format(token=token, noun=cfg.noun) for k in tpl]
                ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                          return_tensors="pt").input_ids.to(device)
                idx_d, noise, t = idx.to(device), noise.to(device), t.to(device)
                latents = (mean[idx_d] + std[idx_d] * eps_lat.to(device)) * scaling
                noisy = sched.add_noise(latents, noise, t)
                if nine:
                    noisy = torch.cat([noisy, mask_lat[idx_d], masked[idx_d]], 1)
                hidden = te(ids)[0].to(wdtype)
                pred = unet(noisy.to(wdtype), t, hidden).sample.float()
                if sched.config.prediction_type == "epsilon":
                    target = noise
                elif sched.config.prediction_type == "v_prediction":
                    target = sched.get_velocity(latents, noise, t)
                elif sched.config.prediction_type == "sample":  # x0-prediction (the toy zoo's UNet)
                    target = latents
                else:
                    raise ValueError(f"unsupported prediction_type {sched.config.prediction_type!r}")
                losses = []
                for k in range(0, len(idx_d), bs):  # each micro-batch's own loss, as unfused
                    sl = slice(k, k + bs)
                    if cfg.loss_region != "image":  # mean squared error over the object's (region's) cells
                        w = weight[idx_d[sl]]
                        losses.append(((pred[sl] - target[sl].float()) ** 2 * w).sum() / (w.sum() * pred.shape[1]))
                    else:
                        losses.append(F.mse_loss(pred[sl], target[sl].float()))
                loss = torch.stack(losses).sum() / accum
                loss.backward()
                step_loss += loss.item()
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            pbar.update(1)
            pbar.set_postfix(loss=f"{step_loss:.4f}")
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"textual inversion of {token}: loss is {step_loss} at step {step}")
            if step % cfg.checkpoint_every == 0 and step < cfg.max_train_steps:
                _save_checkpoint(ckpt, sub, opt, lr_sched, gen, step)
    finally:
        pbar.close()
        sub.remove()
    vector = sub.rows.detach()[0].float().cpu()
    save_learned_embeds(out_dir / EMBEDS_FILE, token, vector)
    ckpt.unlink(missing_ok=True)
    return vector


def _save_checkpoint(path: Path, sub: RowSubstitution, opt, lr_sched, gen: torch.Generator, step: int) -> None:

    buf = io.BytesIO()
    torch.save({"rows": sub.rows.detach().cpu(), "optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict(),
                "generator": gen.get_state(), "step": step}, buf)
    atomic.write_bytes(path, buf.getvalue())
