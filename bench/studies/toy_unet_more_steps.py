"""Probe: does more UNet training give the toy inpainter better digit control?

    python -m bench.studies.toy_unet_more_steps [--steps 1200] [--work /tmp/unet-more] [--out FILE]

Continues the committed zoo's UNet + text encoder (``spuraug/toy-sd-inpainting``) for
``--steps`` more steps of the zoo recipe's own training loop (:func:`spuraug.toyworld.recipe.
train_unet`, resumed at step 2400 from the committed EMA weights with a fresh optimiser; the
cosine learning-rate schedule stretched to 2400 + steps), writes the continued pipeline to
``--work``, and repaints the object boxes (grown 2 px) of 384 balanced toy test images, as
:mod:`bench.studies.toy_inversion_probe` does, with the other class's true digit word and with the
initializer word, under the committed and the continued pipeline. The oracle reads the
share that shows the requested digit. Not part of the zoo: ``make toy-zoo`` stays within its
20-minute budget; this asks what more compute would buy. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.provenance import emit_report
from bench.studies.toy_inversion_probe import balanced_test_selection, repaint_rates
from spuraug.toyworld.check import load_inpainter
from spuraug.toyworld.oracle import load_oracle
from spuraug.toyworld.recipe import ZooRecipe, build_tokenizer, train_unet
from spuraug.toyworld.render import DIGIT_WORDS
from spuraug.toyworld.world import generate_world
from spuraug.toyworld.zoo import resolve_model_id


def continue_unet(steps: int, work: Path) -> Path:
    from diffusers import (  # deferred: heavy optional model library, only the DDB stages need it
        AutoencoderKL,
        UNet2DConditionModel,
    )
    from diffusers.training_utils import EMAModel  # deferred: as above
    from transformers import CLIPTextModel  # deferred: heavy model library, only the DDB stages need it


    zoo = Path(resolve_model_id("spuraug/toy-sd-inpainting"))
    base = ZooRecipe()
    recipe = replace(base, unet_steps=base.unet_steps + steps)
    world = generate_world(recipe.world)
    vae = AutoencoderKL.from_pretrained(zoo / "vae").eval().requires_grad_(False)
    tokenizer = build_tokenizer(work / "tokenizer-files", recipe)
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    unet = UNet2DConditionModel.from_pretrained(zoo / "unet")
    text_encoder = CLIPTextModel.from_pretrained(zoo / "text_encoder")
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    # train_unet resumes from this checkpoint, in its own format: the committed (EMA) weights at
    # step 2400, and an EMA whose shadow weights are those weights, updated 2400 times.
    ema = EMAModel(params, decay=recipe.unet_ema_decay, use_ema_warmup=False)
    ema.optimization_step = base.unet_steps
    torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(),
                "ema": ema.state_dict(), "step": base.unet_steps}, stage / "unet.ckpt.pt")
    unet, text_encoder = train_unet(world, vae, tokenizer, recipe, stage)
    out = work / "pipeline"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(zoo, out)
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    return out


def word_rates(model: str, n_eval: int = 384) -> dict:
    """Target-digit share with the true digit word and with the initializer word (same test
    images, masks and seed as :mod:`bench.studies.toy_inversion_probe`)."""

    test, sel, target = balanced_test_selection(n_eval)
    pipe, oracle = load_inpainter(model), load_oracle()
    probes = {"true_word": [f"a photo of a {DIGIT_WORDS[test.config.digits[j]]} digit" for j in target],
              "initializer_word": ["a photo of a digit digit"] * len(sel)}
    return {name: repaint_rates(pipe, oracle, test, sel, target, prompts) for name, prompts in probes.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1200, help="more UNet training steps")
    ap.add_argument("--work", default="/tmp/spuraug-unet-more", help="folder for the continued pipeline")
    ap.add_argument("--n-eval", type=int, default=384)
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    t = time.time()
    continued = continue_unet(args.steps, Path(args.work))
    train_s = time.time() - t
    report = {"steps_more": args.steps, "train_s": round(train_s, 1),
              "committed": word_rates("spuraug/toy-sd-inpainting", args.n_eval),
              "continued": word_rates(str(continued), args.n_eval)}
    return emit_report(report, args.out)


if __name__ == "__main__":
    main()
