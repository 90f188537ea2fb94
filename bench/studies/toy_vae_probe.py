"""Probe: how much digit identity does the toy zoo's VAE keep, and would another VAE recipe keep more?

    python -m bench.studies.toy_vae_probe [--variant NAME KEY=VALUE ...] [--n-eval 384] [--work DIR] [--out FILE]

Every image DDB's toy pipeline returns is decoded by the zoo's VAE, so what the world
oracle reads after a bare VAE round trip (encode to the latent mean, decode; nothing
repainted) bounds every composition-success number. This reads the round trips of
``--n-eval`` balanced toy test images (the inversion probe's selection) through the
committed VAE and through VAEs trained by the zoo recipe's own :func:`spuraug.toyworld.recipe.
train_vae` with some recipe fields changed (``--variant wide vae_channels=[32,64,64]``;
repeatable; ``committed_recipe`` = no change, a control that retrains the committed recipe),
with each one's training time. Not part of the zoo: a VAE change means retraining the UNet
and re-measuring every toy number.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.provenance import emit_report
from bench.studies.toy_inversion_probe import balanced_test_selection
from spuraug.toyworld.check import vae_roundtrip
from spuraug.toyworld.oracle import load_oracle, predict
from spuraug.toyworld.recipe import ZooRecipe, train_vae
from spuraug.toyworld.world import generate_world
from spuraug.toyworld.zoo.__main__ import recipe_changes


def read_roundtrip(oracle, vae_folder: str, test, sel: np.ndarray) -> dict:
    """The oracle's digit accuracy on the round trips of ``test[sel]`` (overall, per class)."""

    truth = np.array([test.config.digits[y] for y in test.y[sel]])
    d, _ = predict(oracle, vae_roundtrip(test.images[sel], vae_folder))
    ok = d == truth
    return {"n": int(len(sel)), "digit_acc": round(float(ok.mean()), 4),
            "digit_acc_by_digit": {str(g): round(float(ok[truth == g].mean()), 4) for g in sorted(set(truth))}}


def train_variant(changes: dict, folder: Path) -> float:
    """Train the zoo's VAE with ``changes`` to the recipe into ``folder``; returns seconds."""

    recipe = replace(ZooRecipe(), **changes)
    world = generate_world(recipe.world)
    t = time.time()
    work = folder / "work"
    work.mkdir(parents=True, exist_ok=True)
    vae = train_vae(world, recipe, work)
    vae.save_pretrained(folder)
    return time.time() - t


def main(argv: list[str] | None = None) -> dict:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME [KEY=VALUE ...]",
                    help="a VAE trained with these recipe fields changed (repeatable)")
    ap.add_argument("--n-eval", type=int, default=384)
    ap.add_argument("--work", default="/tmp/spuraug-vae-probe")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)

    test, sel, _ = balanced_test_selection(args.n_eval)
    oracle = load_oracle()
    d, _ = predict(oracle, test.images[sel])
    truth = np.array([test.config.digits[y] for y in test.y[sel]])
    report = {"n_eval": args.n_eval, "committed": read_roundtrip(oracle, "spuraug/toy-sd-inpainting", test, sel),
              "clean_images": {"digit_acc": round(float((d == truth).mean()), 4)}, "variants": {}}
    for name, *pairs in args.variant:
        changes = recipe_changes(ZooRecipe(), pairs, flag=f"--variant {name}")
        folder = Path(args.work) / name
        train_s = train_variant(changes, folder)
        report["variants"][name] = {"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
                                    "train_s": round(train_s, 1), **read_roundtrip(oracle, str(folder), test, sel)}
        print(name, report["variants"][name], flush=True)
    return emit_report(report, args.out)


if __name__ == "__main__":
    main()
