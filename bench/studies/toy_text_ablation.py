"""What keeps the toy UNet from using the digit word? A short ablation of its training.

Trains a fresh toy inpainting UNet + text encoder (the recipe's architectures) for
``--steps`` steps on the toy world's 3600 images with *box* masks (each object's bounding
box grown by 2 px: the digit must come from the text), and every 200 steps measures the
text-usage gap of ``spuraug.toyworld.check --text-gap``: on 192 held-out world images, the
x0 error on the object's latent cells with another digit word minus the error with the
true one, same noise, at t = 500 and 900. A model that ignores the digit word has gap 0.

Switches (each one a difference between this stripped-down run and the zoo recipe):

- ``--tilt P``: timesteps ``999 * u ** P`` (the recipe's ``timestep_power``; 1 = uniform);
- ``--recipe-captions``: the recipe's captions (10% empty, short and long forms, no
  colour word) instead of always "a photo of a {word} digit";
- ``--full-share S`` / ``--full-weight W``: a share S of the samples fully masked
  (text-to-image), their loss weighted W (the recipe's ``full_mask_loss_weight``).

The VAE and tokenizer are the committed zoo's. 1000 steps take about 6 minutes at 2 threads,
about 7.5 minutes each for two runs side by side at 1 thread.

    python -m bench.studies.toy_text_ablation --steps 1000 --tilt 0.4 --recipe-captions \
        --full-share 0.25 --full-weight 0.1 --out results/studies/toy_text_ablation/x.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.provenance import write_json
from spuraug.engine import train_steps
from spuraug.toyworld import recipe as R
from spuraug.toyworld.check import box_inpainting_latents, load_inpainter, object_x0_gap
from spuraug.toyworld.render import DIGIT_WORDS
from spuraug.toyworld.world import WorldConfig, generate_world


def run(steps: int, tilt: float, recipe_captions: bool, full_share: float, full_weight: float,
        threads: int = 2, every: int = 200) -> dict:

    torch.set_num_threads(threads)
    rec = replace(R.ZooRecipe(), full_mask_loss_weight=full_weight)
    pipe = load_inpainter()
    vae, tok = pipe.vae, pipe.tokenizer
    world = generate_world(WorldConfig(n_per_kind=60, seed=0))
    z0, zm, ml = box_inpainting_latents(vae, world, grow=2, seed=0)
    obj = R.object_cells(world.masks)
    held = generate_world(WorldConfig(n_per_kind=4, seed=1000)).subset(np.arange(192))
    held_latents = box_inpainting_latents(vae, held, grow=2, seed=1)
    with torch.no_grad():
        z_blank = R.encode_latents(vae, torch.zeros(1, 3, 64, 64), torch.Generator().manual_seed(0))[0]
    torch.manual_seed(rec.seed + 3)
    unet, te = R.build_unet(rec), R.build_text_encoder(tok, rec)
    alphas = R.build_training_scheduler("sample").alphas_cumprod
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=rec.unet_lr, weight_decay=1e-2)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)

    def gap() -> dict:
        unet.eval()
        te.eval()
        rep = object_x0_gap(unet, te, tok, held, *held_latents, timesteps=(500, 900))
        unet.train()
        te.train()
        return {t: {"x0_error": r["true"], "gap": r["gap"]} for t, r in rep.items()}

    log, t0 = [], time.time()

    def step_loss(step: int) -> torch.Tensor:
        idx = rng.integers(0, len(world), rec.unet_batch)
        ti = torch.from_numpy(idx)
        if recipe_captions:
            caps = R._captions_for(world, idx, rng, rec)
        else:
            caps = [f"a photo of a {DIGIT_WORDS[d]} digit" for d in world.digits[idx]]
        full = torch.from_numpy(rng.random(len(idx)) < full_share)
        m = torch.where(full.view(-1, 1, 1, 1), 1.0, ml[ti])
        zmi = torch.where(full.view(-1, 1, 1, 1), z_blank, zm[ti])
        t = R.sample_timesteps(len(idx), tilt, gen)
        a = alphas[t].view(-1, 1, 1, 1)
        z = z0[ti]
        noise = torch.randn(z.shape, generator=gen)
        pred = unet(R.unet_input(z, noise, a, m, zmi), t, te(R.tokenize(tok, caps))[0]).sample
        loss = R.unet_loss(pred, z, a, obj[ti], full, rec)
        last_loss[0] = loss.detach()
        return loss

    def report(step: int) -> None:
        if (step + 1) % every == 0 or step + 1 == steps:
            log.append({"step": step + 1, "elapsed_s": round(time.time() - t0, 1),
                        "loss": round(last_loss[0].item(), 4), "text_gap": gap()})
            print(json.dumps(log[-1]), flush=True)

    last_loss: list[torch.Tensor] = [torch.zeros(())]
    # the zoo's own loop and schedule (engine.train_steps, recipe.warmup_cosine_schedule)
    train_steps(step_loss, opt, steps, lr_scheduler=R.warmup_cosine_schedule(opt, steps), clip_params=params,
                after_step=report, desc="unet+text (ablation)", progress=False)
    return {"steps": steps, "tilt": tilt, "recipe_captions": recipe_captions, "full_share": full_share,
            "full_weight": full_weight, "mask": "object box grown by 2 px", "log": log}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.toy_text_ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--tilt", type=float, default=1.0, help="timestep power (1 = uniform)")
    p.add_argument("--recipe-captions", action="store_true")
    p.add_argument("--full-share", type=float, default=0.0)
    p.add_argument("--full-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    a = p.parse_args(argv)
    report = run(a.steps, a.tilt, a.recipe_captions, a.full_share, a.full_weight, a.threads, a.every)
    if a.out:
        write_json(Path(a.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
