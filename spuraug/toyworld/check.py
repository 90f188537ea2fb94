"""Measure the committed zoo's quality: ``python -m spuraug.toyworld.check [--n N] [--out FILE]``.

On held-out world images (a world seed the zoo never saw) and on toy-benchmark test
images it measures

- the oracle's digit / background accuracy, and on the benchmark images' VAE round trip
  (the ceiling of every inpainting probe: the pipeline's output is VAE-decoded),
- the segmenter's IoU for the prompt "digit" (and the mean predicted mask area),
- the inpainter: for each source image, repaint a dilated object mask with
  "a photo of a {word} digit" and read the result with the oracle (share showing the
  requested digit, share keeping the source background, pixel error outside the mask),
  for the other benchmark class's word, a random other word, and the initializer
  word "digit";
- text-to-image (full mask, blank masked image) digit rate per word.

Writes a JSON report and optionally a PNG grid of examples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from spuraug import atomic
from spuraug.data.toy import ToyConfig, ToyDataset
from spuraug.toyworld.oracle import load_oracle, predict
from spuraug.toyworld.quality import box_crops, composition_report, segmentation_iou, variance_explained
from spuraug.toyworld.recipe import (
    build_training_scheduler,
    encode_latents,
    object_cells,
    to_model_range,
    tokenize,
    unet_input,
)
from spuraug.toyworld.render import BACKGROUNDS, DIGIT_WORDS, color_index, object_box
from spuraug.toyworld.world import WorldConfig, generate_world
from spuraug.toyworld.zoo import resolve_model_id


def load_inpainter(model_id: str = "spuraug/toy-sd-inpainting"):
    """The zoo's StableDiffusionInpaintPipeline (safety checker off, progress bar off)."""
    from diffusers import (
        StableDiffusionInpaintPipeline,  # deferred: heavy optional model library, only the DDB stages need it
    )


    pipe = StableDiffusionInpaintPipeline.from_pretrained(resolve_model_id(model_id), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dilate_masks(masks: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of each (H, W) mask by ``pixels``."""
    if pixels <= 0:
        return masks.astype(bool)
    return np.stack([ndimage.binary_dilation(m, iterations=pixels) for m in masks])


def inpaint(pipe, images: np.ndarray, masks: np.ndarray, prompts: list[str], seed: int = 0,
            steps: int = 20, guidance_scale: float = 5.0, batch_size: int = 32,
            strength: float = 1.0) -> np.ndarray:
    """Inpaint uint8 ``images`` (N, 64, 64, 3) inside bool ``masks`` with ``prompts``; uint8 out.
    ``strength`` < 1 starts from the source's latents noised to that share of the schedule
    (diffusers' ``strength``), so the source's colours inside the mask are partly kept."""
    out = []
    for j in range(0, len(images), batch_size):
        sl = slice(j, j + batch_size)
        res = pipe(
            prompt=prompts[sl],
            image=[Image.fromarray(a) for a in images[sl]],
            mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks[sl]],
            height=images.shape[1], width=images.shape[2],
            num_inference_steps=steps, guidance_scale=guidance_scale, strength=strength,
            generator=torch.Generator().manual_seed(seed + j), output_type="np",
        ).images
        out.append((np.clip(res, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def _grid(rows: list[np.ndarray], path: Path, scale: int = 3) -> None:
    g = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST).save(path)


def vae_roundtrip(images: np.ndarray, model_id: str = "spuraug/toy-sd-inpainting", batch_size: int = 64) -> np.ndarray:
    """uint8 (N, 64, 64, 3) images encoded (latent mean) and decoded by a VAE: the one of the
    pipeline ``model_id`` (an id or a pipeline folder with ``vae/``) or a VAE folder itself."""
    from diffusers import AutoencoderKL  # deferred: heavy optional model library, only the DDB stages need it


    folder = Path(resolve_model_id(model_id))
    vae = AutoencoderKL.from_pretrained(folder / "vae" if (folder / "vae").is_dir() else folder).eval()
    out = []
    with torch.no_grad():
        for j in range(0, len(images), batch_size):
            x = to_model_range(images[j : j + batch_size])
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            out.append(((y + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


def object_colors(images: np.ndarray, regions: np.ndarray, share: float = 0.1) -> np.ndarray:
    """The hue word (index into :data:`COLOR_WORDS`) of the object painted in each ``region``:
    the mean colour of the region's most vivid pixels (top ``share`` by saturation x value).
    Toy objects are bright and saturated, toy backgrounds mostly are not."""
    out = np.zeros(len(images), dtype=np.int64)
    for i, (img, reg) in enumerate(zip(images, regions)):
        px = img[reg].astype(np.float32) / 255
        if len(px) == 0:
            continue
        hi, lo = px.max(axis=1), px.min(axis=1)
        vivid = (hi - lo) / np.maximum(hi, 1e-6) * hi
        top = px[np.argsort(vivid)[-max(5, int(len(px) * share)):]]
        out[i] = color_index(top.mean(axis=0))
    return out


def box_masks(masks: np.ndarray, grow: int = 0) -> np.ndarray:
    """Each object's bounding box (grown by ``grow`` px) as a bool mask."""
    out = np.zeros(masks.shape, dtype=bool)
    for i, m in enumerate(masks):
        if (box := object_box(m, grow)) is not None:
            out[i][box] = True
    return out


def _inpaint_probes(pipe, oracle, b_img, b_digit, b_bg, masks, probes, seed, guidance_scale, rows) -> dict:

    n = len(b_img)
    inpaint_report = {}
    for probe, targets in probes.items():
        prompts = [f"a photo of a {DIGIT_WORDS[t]} digit" for t in targets]
        out = inpaint(pipe, b_img, masks, prompts, seed=seed, guidance_scale=guidance_scale)
        rep = composition_report(out, targets, b_bg, oracle=oracle)
        outside = ~masks
        err = np.abs(out.astype(np.float32) - b_img.astype(np.float32)).mean(axis=-1)
        inpaint_report[probe] = {
            "digit_rate": rep["digit_rate"], "background_rate": rep["background_rate"],
            "composition_success": rep["success"],
            "source_digit_rate": float((rep["pred_digit"] == b_digit).mean()),
            "mae_outside_mask": float(err[outside].mean()),
        }
        rows.append(out[:8])
    # The initializer word alone: which digit appears, and how often it is the other class.
    out = inpaint(pipe, b_img, masks, ["a photo of a digit digit"] * n, seed=seed, guidance_scale=guidance_scale)
    rep = composition_report(out, probes["other_class_word"], b_bg, oracle=oracle)
    inpaint_report["initializer_word_digit"] = {
        "prompt": "a photo of a digit digit",
        "other_class_rate": rep["digit_rate"], "background_rate": rep["background_rate"],
        "source_digit_rate": float((rep["pred_digit"] == b_digit).mean()),
    }
    rows.append(out[:8])
    return inpaint_report


def measure(n: int = 64, seed: int = 0, dilation: int = 4, guidance_scale: float = 5.0,
            grid_path: str | None = None) -> dict:
    """The quality report described in the module docstring, on ``n`` images per probe."""
    from transformers import (  # deferred: heavy model library, only the DDB stages need it
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
    )


    t0 = time.time()
    report: dict = {"n": n, "seed": seed, "mask_dilation_px": dilation, "guidance_scale": guidance_scale}
    oracle = load_oracle()
    held = generate_world(WorldConfig(n_per_kind=max(1, n // 60 + 1), seed=1000 + seed))
    pd, pb = predict(oracle, held.images)
    report["oracle_heldout_world"] = {"n": len(held), "digit_acc": float((pd == held.digits).mean()),
                                      "background_acc": float((pb == held.backgrounds).mean())}
    bench = ToyDataset("test", ToyConfig())
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(bench), size=n, replace=False)
    b_img, b_mask = bench.images[idx], bench.masks[idx]
    b_digit = np.asarray([bench.config.digits[y] for y in bench.y[idx]])
    b_bg = np.asarray([BACKGROUNDS.index(bench.config.backgrounds[a]) for a in bench.a[idx]])
    pd, pb = predict(oracle, b_img)
    report["oracle_benchmark"] = {"n": n, "digit_acc": float((pd == b_digit).mean()),
                                  "background_acc": float((pb == b_bg).mean())}
    # Every image the pipeline returns is decoded by the VAE: the oracle's reading of the
    # benchmark images' own VAE round trip bounds what any inpainting probe can score.
    pd, pb = predict(oracle, vae_roundtrip(b_img))
    report["oracle_benchmark_vae_roundtrip"] = {
        "n": n, "digit_acc": float((pd == b_digit).mean()), "background_acc": float((pb == b_bg).mean()),
        "digit_acc_by_digit": {str(d): float((pd == b_digit)[b_digit == d].mean()) for d in sorted(set(b_digit))}}

    folder = resolve_model_id("spuraug/toy-clipseg")
    seg = CLIPSegForImageSegmentation.from_pretrained(folder).eval()
    proc = CLIPSegProcessor.from_pretrained(folder)
    for name, imgs, true in (("world", held.images[:n], held.masks[:n]), ("benchmark", b_img, b_mask)):
        with torch.no_grad():
            enc = proc(text=["digit"] * len(imgs), images=[Image.fromarray(a) for a in imgs],
                       return_tensors="pt", padding=True)
            logits = seg(**enc).logits.view(len(imgs), *imgs.shape[1:3])
        pred = (logits.sigmoid() > 0.5).numpy()
        report[f"clipseg_iou_{name}"] = segmentation_iou(pred, true)
        report[f"clipseg_area_{name}"] = {"pred": float(pred.mean()), "true": float(true.mean())}

    pipe = load_inpainter()
    other = {3: 8, 8: 3}
    probes = {
        "other_class_word": np.asarray([other.get(int(d), (int(d) + 5) % 10) for d in b_digit]),
        "random_other_word": np.asarray([(int(d) + int(rng.integers(1, 10))) % 10 for d in b_digit]),
    }
    rows = [b_img[:8]]
    for kind, masks in (("", dilate_masks(b_mask, dilation)), ("_box", box_masks(b_mask, 2))):
        report[f"inpainting_benchmark{kind}"] = _inpaint_probes(pipe, oracle, b_img, b_digit, b_bg, masks, probes,
                                                                seed, guidance_scale, rows)
    report["inpainting_benchmark_box"]["mask"] = "object bounding box grown by 2 px (DDB's toy mask_mode: box)"

    # Text-to-image through the inpainting model (what textual inversion trains through).
    words = np.arange(n) % 10
    blank = np.zeros_like(b_img)
    full = np.ones(b_mask.shape, dtype=bool)
    out = inpaint(pipe, blank, full, [f"a photo of a {DIGIT_WORDS[d]} digit" for d in words], seed=seed + 1,
                  guidance_scale=guidance_scale)
    pd, _ = predict(oracle, out)
    report["text_to_image_digit_rate"] = float((pd == words).mean())
    rows.append(out[:8])
    report["wall_s"] = round(time.time() - t0, 1)
    if grid_path:
        _grid(rows, Path(grid_path))
    return report


def variance_report(n_per_kind: int = 60, seed: int = 0) -> dict:
    """Why a digit word is hard to learn: the share of the object box's latent variance
    explained by the digit kind, the object's colour, the background and their
    combinations, on the world corpus, in the zoo's VAE latents (and in pixels).

    The x0 loss rewards a text word only by the variance its group means explain, so a
    word that explains ~0 gets ~0 gradient. Shares for the finer groupings are biased
    upwards by about (number of groups) / N; ``groups`` records that number."""

    world = generate_world(WorldConfig(n_per_kind=n_per_kind, seed=seed))
    pipe = load_inpainter()
    with torch.no_grad():
        z = torch.cat([encode_latents(pipe.vae, to_model_range(world.images[j : j + 128]))
                       for j in range(0, len(world), 128)]).numpy()
    pixels = world.images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    d, c, b = world.digits, world.colors, world.backgrounds
    groupings = {"digit": d, "colour": c, "background": b, "colour+digit": c * 10 + d,
                 "colour+background": c * 6 + b, "colour+background+digit": (c * 6 + b) * 10 + d}
    report: dict = {"n": len(world), "world_seed": seed, "box_size": 8}
    for space, arr in (("latent", z), ("pixel", pixels)):
        crops = box_crops(arr, world.masks)
        report[space] = {name: round(variance_explained(crops, keys), 4) for name, keys in groupings.items()}
    report["groups"] = {name: int(len(np.unique(keys))) for name, keys in groupings.items()}
    return report


@torch.no_grad()
def box_inpainting_latents(vae, world, grow: int = 2, seed: int = 0, batch_size: int = 256):
    """The inpainting UNet's inputs for repainting each world object's bounding box (grown by
    ``grow`` px): clean latents ``z0``, masked-image latents ``zm`` (box pixels set to 0, as
    the pipeline does) and the latent-resolution mask ``m_lat``; encoded in batches with one
    generator seeded ``seed`` (all of ``z0`` first, then ``zm``)."""


    masks = box_masks(world.masks, grow)
    x = to_model_range(world.images)
    gen = torch.Generator().manual_seed(seed)

    def encode(images):
        return torch.cat([encode_latents(vae, images[j : j + batch_size], gen)
                          for j in range(0, len(images), batch_size)])

    z0 = encode(x)
    zm = encode(x * torch.from_numpy(~masks)[:, None])
    m_lat = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=z0.shape[-2:])
    return z0, zm, m_lat


@torch.no_grad()
def object_x0_gap(unet, text_encoder, tokenizer, world, z0, zm, m_lat,
                  timesteps: tuple[int, ...] = (300, 500, 700, 900)) -> dict:
    """Per timestep, the UNet's x0 error on the object's latent cells with the true digit word
    and with another one ("a photo of a {word} digit"), same noise (seeded by t), and their
    gap (other - true): 0 for a model that ignores the digit word."""

    obj = object_cells(world.masks)[:, None]
    alphas = build_training_scheduler().alphas_cumprod
    words = {"true": world.digits, "other": (world.digits + 5) % 10}
    cond = {k: text_encoder(tokenize(tokenizer, [f"a photo of a {DIGIT_WORDS[d]} digit" for d in v]))[0]
            for k, v in words.items()}
    out = {}
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
        inp = unet_input(z0, noise, alphas[t], m_lat, zm)
        err = {}
        for k, c in cond.items():
            pred = unet(inp, torch.full((len(z0),), t), c).sample
            err[k] = float((((pred - z0) ** 2) * obj).sum() / (obj.sum() * z0.shape[1]))
        out[str(t)] = {**{k: round(v, 5) for k, v in err.items()}, "gap": round(err["other"] - err["true"], 5)}
    return out


def text_usage_gap(n: int = 192, seed: int = 1000, timesteps: tuple[int, ...] = (300, 500, 700, 900)) -> dict:
    """Does the zoo's UNet use the digit word? :func:`object_x0_gap` on ``n`` held-out world
    images (world seed ``seed``) with box masks grown by 2 px. A word the model ignores gives
    equal errors; a used word gives a larger error when wrong."""

    pipe = load_inpainter()
    world = generate_world(WorldConfig(n_per_kind=max(1, n // 60 + 1), seed=seed)).subset(np.arange(n))
    z0, zm, m_lat = box_inpainting_latents(pipe.vae, world, grow=2, seed=seed)
    gaps = object_x0_gap(pipe.unet, pipe.text_encoder, pipe.tokenizer, world, z0, zm, m_lat, timesteps)
    return {"n": n, "world_seed": seed, "mask": "object box grown by 2 px", "x0_error_on_object_cells": gaps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spuraug.toyworld.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="images per probe (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dilation", type=int, default=4, help="inpainting mask dilation in pixels")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--grid", default=None, help="write a PNG grid of examples here")
    parser.add_argument("--variance", action="store_true",
                        help="instead: how much of the object box's variance the digit, colour and "
                             "background explain on the world (why the digit word is hard to learn)")
    parser.add_argument("--text-gap", action="store_true",
                        help="instead: the UNet's object-cell x0 error with the true vs another digit word")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.variance:
        report = variance_report(seed=args.seed)
    elif args.text_gap:
        report = text_usage_gap()
    else:
        report = measure(args.n, args.seed, args.dilation, args.guidance_scale, args.grid)
    print(json.dumps(report, indent=2))
    if args.out:
        atomic.write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
