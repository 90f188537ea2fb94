"""Ablation: DDB on the toy when the ERM model starts from a pretrained backbone.

    python -m bench.studies.toy_pretrained_erm [--runs-dir runs-pretrained] [--seeds 0 1 2]
        [--steps 3000] [--world-per-kind 150] [--invert-from runs] [--set KEY=VALUE ...]
        [--out results/studies/toy_pretrained_erm/pretrained_erm.json]

The paper's ERM model is an ImageNet-pretrained ResNet-50; the toy config's ToyCNN is
trained from scratch and reads only the background (worst-group accuracy 0). Here the
ToyCNN is first pretrained to name the digit kind of world-corpus images
(:mod:`spuraug.toyworld.backbone`, ~3 min on 2 cores; its width is the config's
``model.width``), then ERM and DDB run unchanged with ``model.pretrained: true`` and
``model.weights: <that backbone>`` (every other value from spuraug/configs/toy.yaml and
``--set``), and the world oracle reads DDB's edits (:mod:`bench.studies.ddb_toy_oracle`), with the
pruning statistics' separability: does an ERM model with digit features let the pruning
rules judge the edits? (Measured: no; docs/toyworld.md.) Everything lands in
``--runs-dir`` (resumable: finished steps are skipped); ``--invert-from`` copies the class
tokens of an earlier toy run (the inversion does not depend on the ERM model) instead of
learning them again. About 3 minutes per seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bench.provenance import write_json
from bench.studies import ddb_toy_oracle
from spuraug.config import load_config, parse_overrides
from spuraug.runs import run_method
from spuraug.toyworld.backbone import BackboneRecipe, digit_accuracy, pretrain_backbone, save_backbone
from spuraug.toyworld.world import WorldConfig, generate_world


def backbone_folder(runs_dir: Path, recipe, progress: bool = True) -> tuple[Path, dict]:
    """The pretrained backbone of ``recipe`` (trained once per recipe, resumable) and its facts."""


    folder = runs_dir / "toy" / f"backbone-{recipe.key()}"
    if not (folder / "model.safetensors").is_file():
        t = time.time()
        model = pretrain_backbone(recipe, work=folder.with_name(folder.name + ".work"), progress=progress)
        held_out = WorldConfig(n_per_kind=20, seed=1)
        acc = digit_accuracy(model, generate_world(held_out))
        save_backbone(model, folder, recipe, heldout_world=json.loads(json.dumps(held_out.__dict__)),
                      heldout_digit_accuracy=round(acc, 4), train_s=round(time.time() - t, 1))
        shutil.rmtree(folder.with_name(folder.name + ".work"), ignore_errors=True)
    return folder, json.loads((folder / "config.json").read_text())


def _scores(result: dict) -> dict:
    test = result.get("test") or {}
    return {"test_worst_group_acc": test.get("worst_group_acc"), "test_avg_acc": test.get("avg_acc"),
            "selected_epoch": result.get("selected_epoch")}


def main(argv: list[str] | None = None) -> dict:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default="runs-pretrained")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3000, help="pretraining steps of the backbone")
    ap.add_argument("--world-per-kind", type=int, default=150,
                    help="pretraining corpus: world images per digit x background (seed 0)")
    ap.add_argument("--invert-from", default=None,
                    help="a runs folder whose toy/ddb_artifacts/invert-* tokens to reuse (same inversion config)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more config overrides for both methods (e.g. erm.lr=0.01)")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.time()
    command = "python -m bench.studies.toy_pretrained_erm " + " ".join(argv if argv is not None else sys.argv[1:])


    runs = Path(args.runs_dir)
    progress = not args.no_progress
    extra = parse_overrides(args.set)
    width = int(load_config("toy", "erm", overrides=extra or None)["model"]["width"])
    recipe = BackboneRecipe(width=width, steps=args.steps, world=WorldConfig(n_per_kind=args.world_per_kind, seed=0))
    folder, facts = backbone_folder(runs, recipe, progress)
    overrides = {**extra, "model.pretrained": True, "model.weights": str(folder)}
    if args.invert_from:
        for src in sorted(Path(args.invert_from, "toy", "ddb_artifacts").glob("invert-*")):
            dst = runs / "toy" / "ddb_artifacts" / src.name
            if (src / "done").exists() and not dst.exists():
                shutil.copytree(src, dst)
    report: dict = {"command": command.strip(), "backbone": {"folder": str(folder), **{k: facts[k] for k in
                                                             ("recipe_key", "heldout_digit_accuracy", "train_s")}},
                    "overrides": overrides, "seeds": {}}
    for seed in args.seeds:
        erm = run_method("toy", "erm", seed, runs_dir=runs, overrides=overrides, progress=progress)
        ddb = run_method("toy", "ddb", seed, runs_dir=runs, overrides=overrides, progress=progress)
        oracle = ddb_toy_oracle.main([str(runs), "--seed", str(seed), "--quiet"])
        report["seeds"][str(seed)] = {
            "erm": _scores(erm), "ddb": _scores(ddb),
            "edits": {k: oracle[k] for k in ("all", "kept", "pruned")},
            "pruning_separability": oracle["pruning_separability"],
        }
    report["wall_s"] = round(time.time() - t0, 1)  # finished steps found in --runs-dir are not redone
    print(_summary(report))
    if args.out:
        write_json(Path(args.out), report)
    return report


def _summary(report: dict) -> str:
    lines = [f"backbone {report['backbone']['recipe_key']}: held-out world digit accuracy "
             f"{report['backbone']['heldout_digit_accuracy']:.3f}",
             "seed | ERM test WGA | DDB test WGA | target digit: all / kept (n) / pruned (n) | AUC p, rho_raw"]
    for seed, r in report["seeds"].items():
        e = r["edits"]
        sep = r["pruning_separability"]
        aucs = "; ".join(f"class {c}: {v.get('auc_p')}, {v.get('auc_rho_raw')}" for c, v in sep.items())
        pr = e["pruned"]["target_digit"]
        lines.append(f"{seed} | {r['erm']['test_worst_group_acc']:.1f} | {r['ddb']['test_worst_group_acc']:.1f} | "
                     f"{e['all']['target_digit']:.3f} / {e['kept']['target_digit']:.3f} ({e['kept']['n']}) / "
                     f"{'-' if pr is None else f'{pr:.3f}'} ({e['pruned']['n']}) | {aucs}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
