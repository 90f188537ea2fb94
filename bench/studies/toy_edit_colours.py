"""Study: how varied are DDB's learned toy edits, under other inpainting settings (issue 18 item 5).

    python -m bench.studies.toy_edit_colours --inpaint runs/toy/ddb_artifacts/seed0/inpaint-<key> \\
        --invert runs/toy/ddb_artifacts/invert-<key> --n 192 \\
        --variant committed= --variant strength0.4=strength=0.4 --variant ddpm=sampler=ddpm \\
        --out results/studies/toy_digit_loss/edit_colours.json

Regenerates ``--n`` of one DDB run's edits (the same sources, box masks, prompts and seeds as its
inpaint stage) under each variant's inpainting settings and reports, per variant, the share the
world oracle reads as the target digit and the entropy of the edited objects' hue words
(``spuraug.toyworld.check.object_colors``; 3 bits = the world's uniform hues) per target class.
A variant is ``NAME=FIELD=VALUE[;FIELD=VALUE...]`` over the stage's ``InpaintConfig`` fields, plus
``sampler``: ``default`` (the zoo's DPM-Solver++), ``ddim_eta1`` (DDIM with eta 1), ``ddpm``,
``sde_dpm`` (SDE DPM-Solver++): the stochastic samplers, which redraw noise at every step.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.provenance import emit_report, git_state, hardware
from spuraug.config import ConfigError, parse_overrides
from spuraug.ddb.config import InpaintConfig, ddb_config
from spuraug.ddb.inpaint import load_inpaint_pipeline, paste_back, region_from_mask
from spuraug.toyworld.check import object_colors
from spuraug.toyworld.oracle import load_oracle, predict

SAMPLERS = ("default", "ddim_eta1", "ddpm", "sde_dpm")


def hue_entropy(colors: np.ndarray) -> float:
    """Entropy in bits of hue-word indices (8 words: 3 bits when uniform)."""
    if len(colors) == 0:
        return float("nan")
    p = np.bincount(colors, minlength=8) / len(colors)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def parse_variant(item: str, base: InpaintConfig) -> tuple[str, InpaintConfig, str]:
    """``NAME=FIELD=VALUE[;FIELD=VALUE...]`` -> (name, ``base`` with those fields, sampler). Values
    are read by the project's one override parser and checked by the DDB config's own checks."""
    name, sep, body = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {item!r}: expected NAME=[FIELD=VALUE;...]")
    cfg, sampler = base, "default"
    for part in filter(None, body.split(";")):
        key, _, value = part.partition("=")
        if key == "sampler":
            if value not in SAMPLERS:
                raise SystemExit(f"--variant {name}: sampler {value!r} is not one of {SAMPLERS}")
            sampler = value
            continue
        try:
            checked = ddb_config({"inpaint": parse_overrides([part])}, where=f"--variant {name}").inpaint
        except (ConfigError, ValueError) as e:
            raise SystemExit(f"--variant {name}: {part!r} is not FIELD=VALUE of InpaintConfig or sampler=... ({e})") from None
        cfg = replace(cfg, **{key: getattr(checked, key)})
    return name, cfg, sampler


def _sampler(pipe, sampler: str):
    import diffusers  # deferred: heavy optional model library

    conf = pipe.scheduler.config
    if sampler == "ddim_eta1":
        pipe.scheduler = diffusers.DDIMScheduler.from_config(conf)
    elif sampler == "ddpm":
        pipe.scheduler = diffusers.DDPMScheduler.from_config(conf)
    elif sampler == "sde_dpm":
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(conf, algorithm_type="sde-dpmsolver++")
    return {"eta": 1.0} if sampler == "ddim_eta1" else {}


def load_samples(inpaint_dir: Path, n: int) -> list[dict]:
    """``n`` of the stage's sample records (a fixed draw), each with its source image's path."""
    recs = [json.loads(p.read_text()) for p in sorted((inpaint_dir / "images").glob("*.json"))]
    if not recs:
        raise SystemExit(f"{inpaint_dir}/images: no sample records (is it a DDB inpaint stage folder?)")
    order = np.random.default_rng(0).permutation(len(recs))[:n]
    out = []
    for i in order:
        r = recs[i]
        mask = Path(r["mask"])
        if not mask.is_file():  # the record names it from the run's root; the stage folders sit side by side
            mask = inpaint_dir.parent / mask.parent.parent.name / "masks" / mask.name
        src = mask.parent.parent / "sources" / mask.name
        if not src.is_file():
            raise SystemExit(f"{src}: the segment stage's source image of sample {r['sample_id']} is missing")
        out.append({**r, "mask": str(mask), "source_file": str(src)})
    return out


def measure(samples: list[dict], cfg: InpaintConfig, sampler: str, embeddings: dict, oracle, digits) -> dict:
    pipe = load_inpaint_pipeline(cfg, embeddings, "cpu")
    extra = _sampler(pipe, sampler)
    edits, regions = [], []
    bs = max(1, int(cfg.batch_size))
    for start in range(0, len(samples), bs):
        chunk = samples[start:start + bs]
        srcs = [Image.open(r["source_file"]).convert("RGB") for r in chunk]
        masks = [region_from_mask(Image.open(r["mask"]).convert("L"), im.size, cfg.mask_dilation, cfg.mask_mode)
                 for r, im in zip(chunk, srcs)]
        res = pipe(prompt=[cfg.prompt.format(token=f"<class-{r['target_class']}>") for r in chunk],
                   image=srcs, mask_image=masks, height=cfg.resolution, width=cfg.resolution,
                   num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                   strength=cfg.strength, output_type="pil",
                   generator=[torch.Generator().manual_seed(int(r["seed"])) for r in chunk], **extra).images
        edits += [np.asarray(paste_back(s, g, m)) for s, g, m in zip(srcs, res, masks)]
        regions += [np.asarray(m) > 127 for m in masks]
    edits, regions = np.stack(edits), np.stack(regions)
    target = np.array([r["target_class"] for r in samples])
    read, _ = predict(oracle, edits)
    hues = object_colors(edits, regions)
    return {"target_digit_rate": round(float((read == np.asarray(digits)[target]).mean()), 4),
            "hue_entropy_bits": {str(c): round(hue_entropy(hues[target == c]), 3) for c in sorted(set(target))},
            "n": len(samples)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.studies.toy_edit_colours", description=__doc__.split("\n\n")[0])
    p.add_argument("--inpaint", required=True, help="a DDB inpaint stage folder (its edits are redrawn)")
    p.add_argument("--invert", required=True, help="the inversion stage folder of the same run (learned tokens)")
    p.add_argument("--n", type=int, default=192)
    p.add_argument("--digits", type=int, nargs=2, default=(3, 8), help="the toy's class digits")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=[FIELD=VALUE;...]")
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    inpaint_dir, invert_dir = Path(args.inpaint), Path(args.invert)
    samples = load_samples(inpaint_dir, args.n)
    first = samples[0]
    base = InpaintConfig(model="spuraug/toy-sd-inpainting", resolution=int(first["resolution"]),
                         num_inference_steps=int(first["num_inference_steps"]),
                         guidance_scale=float(first["guidance_scale"]), strength=float(first.get("strength", 1.0)),
                         mask_mode=first["mask_mode"], mask_dilation=int(first["mask_dilation"]),
                         prompt=first["prompt"].replace(f"<class-{first['target_class']}>", "{token}"),
                         batch_size=32, device="cpu")
    embeddings = {f"<class-{c}>": invert_dir / f"class{c}" / "learned_embeds.safetensors" for c in (0, 1)}
    for tok, path in embeddings.items():
        if not path.is_file():
            raise SystemExit(f"{path}: the learned embedding of {tok} is missing (--invert must be an inversion stage folder)")
    oracle = load_oracle()
    variants = [parse_variant(v, base) for v in args.variant]
    rows = {}
    for name, cfg, sampler in variants:
        rows[name] = {"changes": {k: getattr(cfg, k) for k in ("strength", "guidance_scale", "mask_mode",
                                                              "mask_dilation", "num_inference_steps")
                                  if getattr(cfg, k) != getattr(base, k)} | ({"sampler": sampler} if sampler != "default" else {}),
                      **measure(samples, cfg, sampler, embeddings, oracle, args.digits)}
        if not args.quiet:
            print(name, json.dumps(rows[name]), flush=True)
    report = {"command": " ".join(["python -m bench.studies.toy_edit_colours", *(argv if argv is not None else sys.argv[1:])]),
              "git": git_state(), "hardware": hardware(), "inpaint_stage": str(inpaint_dir),
              "base": {k: getattr(base, k) for k in ("strength", "guidance_scale", "mask_mode", "mask_dilation",
                                                     "num_inference_steps")},
              "variants": rows}
    return emit_report(report, args.out, quiet=True)


if __name__ == "__main__":
    main()
