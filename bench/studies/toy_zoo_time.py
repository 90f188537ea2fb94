"""Projected `make toy-zoo` time on this machine, from two short builds of the zoo's own code.

    python -m bench.studies.toy_zoo_time [--fraction 0.05] [--threads 2] [--out FILE]

`make toy-zoo` from nothing must finish in 20 minutes on 2 cores, and machines of the same
size differ by up to 1.7x per stage. Rather than 20-odd minutes of training, this builds
the zoo twice, what `make toy-zoo` builds (the inpainter's VAE and UNet, CLIPSeg, the
oracle, then the pretrained backbone), every stage's step count cut to ``fraction`` and
then twice that (fresh folders, so the world, the UNet's pre-encoded latents and the
oracle's and backbone's worlds are made each time), fits each stage's time as ``fixed +
per_step x steps`` from the two builds' ``stage_train_s`` (the backbone's ``train_s``) and
projects the committed recipes' steps. About 6 minutes with the default
fraction (idle 2-core AMD EPYC, backbone included); the check of the projection against a full build is in docs/toyworld.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.provenance import emit_report, hardware
from spuraug.toyworld.backbone import BackboneRecipe, build_backbone
from spuraug.toyworld.recipe import ZooRecipe, build_zoo

#: The recipe field holding each timed stage's number of optimizer steps.
STEP_FIELDS = {"vae": "vae_steps", "unet": "unet_steps", "clipseg": "seg_steps", "oracle": "oracle_steps"}


#: The backbone recipe's step field (spuraug.toyworld.backbone.BackboneRecipe).
BACKBONE_STEPS = "steps"


def scaled(recipe, fraction: float, fields=tuple(STEP_FIELDS.values())):
    """``recipe`` with every stage's step count (``fields``) multiplied by ``fraction`` (at least 2)."""
    return replace(recipe, **{f: max(2, round(getattr(recipe, f) * fraction)) for f in fields})


def project(full_steps: dict[str, int], a: dict, b: dict) -> dict:
    """Per stage, fit ``time = fixed + per_step x steps`` through the builds ``a`` and ``b``
    (each ``{"steps": {stage: n}, "stage_s": {stage: seconds}, "world_s", "wall_s"}``) and
    project ``full_steps``. The total adds the world and what the builds spent outside the
    stages (tokenizer, saving), both taken from ``b``."""
    out = {}
    for stage, n_full in full_steps.items():
        na, nb = a["steps"][stage], b["steps"][stage]
        if nb <= na:
            raise ValueError(f"stage {stage}: the second build needs more steps ({na} -> {nb})")
        per = max(0.0, (b["stage_s"][stage] - a["stage_s"][stage]) / (nb - na))
        fixed = max(0.0, b["stage_s"][stage] - per * nb)
        out[stage] = {"steps": n_full, "per_step_s": round(per, 5), "fixed_s": round(fixed, 1),
                      "projected_s": round(fixed + per * n_full, 1)}
    other = max(0.0, b["wall_s"] - b["world_s"] - sum(b["stage_s"][s] for s in full_steps))
    total = b["world_s"] + other + sum(v["projected_s"] for v in out.values())
    return {"stages": out, "world_s": round(b["world_s"], 1), "other_s": round(other, 1),
            "projected_total_s": round(total, 1), "projected_total_min": round(total / 60, 2)}


def timed_build(recipe, folder: Path, threads: int, backbone_recipe=None) -> dict:
    """Build the zoo for ``recipe`` into ``folder`` as `make toy-zoo` does (with the backbone
    when ``backbone_recipe`` is given); its steps and per-stage times."""
    t = time.time()
    m = build_zoo(folder / "zoo", recipe, work_dir=folder / "work" / "k", progress=False, force=True,
                  threads=threads)
    st = m["stage_train_s"]
    out = {"steps": {s: getattr(recipe, f) for s, f in STEP_FIELDS.items()},
           "stage_s": {s: float(st[s]) for s in STEP_FIELDS}, "world_s": float(st["world"])}
    if backbone_recipe is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            bb = build_backbone(folder / "zoo", backbone_recipe, work_dir=folder / "work" / "backbone",
                                progress=False, force=True, cache_dir=str(folder / "work"))
        finally:
            torch.set_num_threads(old)
        out["steps"]["backbone"] = getattr(backbone_recipe, BACKBONE_STEPS)
        out["stage_s"]["backbone"] = float(bb["train_s"])
    out["wall_s"] = time.time() - t
    return out


def main(argv: list[str] | None = None) -> dict:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fraction", type=float, default=0.05, help="first build's share of each stage's steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--short", action="store_true", help="project the tiny test recipes (ZooRecipe.short, BackboneRecipe.short)")
    ap.add_argument("--no-backbone", action="store_true", help="leave the pretrained backbone out (the inpainter's stages, CLIPSeg, oracle)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 0.5:
        raise SystemExit(f"--fraction must be in (0, 0.5], got {args.fraction}")
    recipe = ZooRecipe.short() if args.short else ZooRecipe()
    bb = None if args.no_backbone else (BackboneRecipe.short() if args.short else BackboneRecipe())
    with tempfile.TemporaryDirectory(prefix="spuraug-zoo-time-") as tmp:
        ra = scaled(recipe, args.fraction)
        rb = replace(ra, **{f: 2 * getattr(ra, f) for f in STEP_FIELDS.values()})
        bba = None if bb is None else scaled(bb, args.fraction, (BACKBONE_STEPS,))
        bbb = None if bb is None else replace(bba, **{BACKBONE_STEPS: 2 * getattr(bba, BACKBONE_STEPS)})
        a = timed_build(ra, Path(tmp) / "a", args.threads, bba)
        b = timed_build(rb, Path(tmp) / "b", args.threads, bbb)
    full = {s: getattr(recipe, f) for s, f in STEP_FIELDS.items()}
    if bb is not None:
        full["backbone"] = getattr(bb, BACKBONE_STEPS)
    report = {"recipe_key": recipe.key(), "backbone_recipe_key": None if bb is None else bb.key(),
              "fraction": args.fraction, "threads": args.threads,
              "hardware": hardware(),
              "builds": {"a": a, "b": b}, **project(full, a, b)}
    return emit_report(report, args.out, args.quiet)


if __name__ == "__main__":
    main()
