"""Study: the toy inpainter's digit-naming loss (issue 18 item 5, "a generator that composes").

    # one zoo variant: the committed VAE, CLIPSeg and oracle, a UNet + text encoder retrained
    # with the recipe fields given (about 8 min on 2 idle threads, 20 min on one shared thread)
    python -m bench.studies.toy_digit_loss train --out /work/gz/zc --set digit_loss_weight=0.1 [--threads 1]
    # its quality, as make toy-zoo-check measures the committed zoo (about 1 min)
    SPURAUG_TOY_ZOO=/work/gz/zc python -m spuraug.toyworld.check --n 64 --out /work/gz/zc.check.json
    # DDB on it, the learned generator only (python -m bench.studies.ddb_edit_quality ... --mixes 0)
    # then one record of every variant:
    python -m bench.studies.toy_digit_loss collect --variant NAME=ZOO_FOLDER[,CHECK_JSON[,DDB_JSON]] ... --out FILE

``collect`` reads each variant's recipe from its zoo manifest, the inpainting probes of its
``spuraug.toyworld.check`` report (box masks, the other class's word, a random other digit word,
text-to-image) and, when given, the composition success and DDB test worst-group accuracy of a
``bench.studies.ddb_edit_quality`` report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from bench.provenance import emit_report, git_state, hardware
from bench.studies.ddb_edit_quality import mean_std
from spuraug.toyworld.recipe import ZooRecipe, build_zoo
from spuraug.toyworld.zoo import ZOO_DIR
from spuraug.toyworld.zoo.__main__ import with_fields

#: What a variant reuses from the committed zoo (their stages do not read the UNet).
REUSED = {"vae": "toy-sd-inpainting/vae", "clipseg": "toy-clipseg", "oracle": "toy-oracle"}


def train_variant(out: Path, changes: list[str], threads: int) -> dict:
    """Build a zoo variant in ``out`` whose UNet + text encoder are retrained with ``changes``;
    the other stages are the committed zoo's (copied into the stage cache, ``out/work``)."""
    recipe = with_fields(ZooRecipe(), changes)
    work = out / "work"
    for stage, src in REUSED.items():
        if not (work / stage).exists():
            shutil.copytree(ZOO_DIR / src, work / stage)
    manifest = build_zoo(out / "zoo", recipe, work_dir=work, threads=threads, progress=False)
    backbone = out / "zoo" / "toy-backbone"  # DDB's ERM runs load it from the same zoo folder
    if not backbone.exists():
        shutil.copytree(ZOO_DIR / "toy-backbone", backbone)
    return manifest


def _box_probes(check: dict) -> dict:
    box = check["inpainting_benchmark_box"]
    return {
        "other_class_word": box["other_class_word"]["composition_success"],
        "random_other_word": box["random_other_word"]["composition_success"],
        "source_digit_kept": box["other_class_word"]["source_digit_rate"],
        "mae_outside_mask": round(box["other_class_word"]["mae_outside_mask"], 2),
        "initializer_word_other_class": box["initializer_word_digit"]["other_class_rate"],
        "text_to_image": check["text_to_image_digit_rate"],
        "n": check["n"],
    }


def collect(variants: list[str], notes: list[str] = ()) -> dict:
    rows = {}
    said = dict(n.partition("=")[::2] for n in notes)
    for item in variants:
        name, sep, files = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {item!r}: expected NAME=ZOO_FOLDER[,CHECK_JSON[,DDB_JSON]]")
        parts = files.split(",")
        zoo = Path(parts[0])
        manifest = json.loads((zoo / "manifest.json").read_text())
        row = {"zoo": str(zoo), "recipe_key": manifest["recipe_key"],
               "digit_loss": {k: manifest["recipe"].get(k) for k in ("digit_loss_weight", "probe_steps",
                                                                    "digit_loss_max_t")},
               "unet_train_s": manifest["stage_train_s"].get("unet")}
        if len(parts) > 1 and parts[1]:
            row["check_box_masks"] = _box_probes(json.loads(Path(parts[1]).read_text()))
        if len(parts) > 2 and parts[2]:
            ddb = json.loads(Path(parts[2]).read_text())
            point = ddb["curve"][0]
            seeds = ddb["per_mix"][f"{point['oracle_mix']:g}"]
            row["ddb_learned"] = {
                "overrides": ddb.get("overrides"),
                "composition_success_all": point["composition_success_all"],
                "composition_success_kept": point["composition_success_kept"],
                "ddb_test_worst_group_acc": point["ddb_test_worst_group_acc"],
                "erm_test_worst_group_acc": point["erm_test_worst_group_acc"],
                "per_seed_worst_group": {s: v["ddb"]["test_worst_group_acc"] for s, v in seeds.items()},
                # what the paper's protocol selects on: validation worst-group accuracy
                "ddb_val_worst_group_acc": mean_std([v["ddb"]["val_worst_group_acc"] for v in seeds.values()]),
                "per_seed_val_worst_group": {s: v["ddb"]["val_worst_group_acc"] for s, v in seeds.items()},
                "n_generated_kept": {s: v.get("n_generated_kept") for s, v in seeds.items()},
                "wall_s": ddb.get("wall_s"),
                "command": ddb.get("command"),
            }
        if name in said:
            row["note"] = said[name]
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.toy_digit_loss", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="build one zoo variant (UNet + text encoder retrained)")
    tr.add_argument("--out", required=True, help="folder: OUT/zoo (the variant zoo) and OUT/work (stage cache)")
    tr.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="recipe fields, e.g. digit_loss_weight=0.2")
    tr.add_argument("--threads", type=int, default=2)
    co = sub.add_parser("collect", help="one record of the variants' measurements")
    co.add_argument("--variant", action="append", required=True, metavar="NAME=ZOO[,CHECK[,DDB]]")
    co.add_argument("--note", action="append", default=[], metavar="NAME=TEXT", help="a remark on one variant")
    co.add_argument("--out", default=None)
    co.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.command == "train":
        old = torch.get_num_threads()
        try:
            m = train_variant(Path(args.out), args.set, args.threads)
        finally:
            torch.set_num_threads(old)
        print(json.dumps({k: m[k] for k in ("recipe_key", "stage_train_s")}))
        return 0
    report = {"command": " ".join(["python -m bench.studies.toy_digit_loss", *sys.argv[1:]]),
              "git": git_state(), "hardware": hardware(), "variants": collect(args.variant, args.note)}
    emit_report(report, args.out, args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
