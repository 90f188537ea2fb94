"""``python -m spuraug.toyworld.zoo train|check``: train the toy zoo or check its files."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from spuraug.config import ConfigError, parse_overrides
from spuraug.toyworld.backbone import BACKBONE_DIR, BackboneRecipe, build_backbone
from spuraug.toyworld.recipe import ZOO_PARTS, ZooRecipe, build_zoo, file_hashes
from spuraug.toyworld.zoo import zoo_dir


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m spuraug.toyworld.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the zoo (skips when the manifest matches)")
    tr.add_argument("--out", default=None, help="zoo folder (default: the package's zoo folder)")
    tr.add_argument("--work-dir", default=None, help="stage cache (default: build/toy-zoo/<recipe key>)")
    tr.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    tr.add_argument("--threads", type=int, default=2,
                    help="torch threads (default 2; use 1 on a busy machine: oversubscription is slower)")
    tr.add_argument("--short", action="store_true", help="the few-step test recipe (quality is not the point)")
    tr.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="recipe fields to change, e.g. vae_steps=2000 (an experiment: use --out elsewhere)")
    sub.add_parser("check", help="verify every file against the manifest's sha256")
    args = parser.parse_args(argv)


    if args.command == "train":
        recipe = ZooRecipe.short() if args.short else ZooRecipe()
        if args.set:
            recipe = with_fields(recipe, args.set)
        out = Path(args.out) if args.out else zoo_dir()
        manifest = build_zoo(out, recipe, work_dir=args.work_dir, force=args.force, threads=args.threads)
        backbone_recipe = BackboneRecipe.short() if args.short else BackboneRecipe()
        old_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            backbone = build_backbone(out, backbone_recipe, force=args.force,
                                      work_dir=None if args.work_dir is None else Path(args.work_dir) / "backbone")
        finally:
            torch.set_num_threads(old_threads)
        print(json.dumps({**{k: manifest[k] for k in ("recipe_key", "stage_train_s", "this_run_wall_s")},
                          "backbone": {k: backbone[k] for k in ("recipe_key", "train_s", "heldout_digit_accuracy")}}))
        return 0
    out = zoo_dir()
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        print(f"no manifest at {manifest_path}; run `make toy-zoo`", file=sys.stderr)
        return 1
    manifest = json.loads(manifest_path.read_text())
    recorded = {**manifest["files"], **(manifest.get("backbone") or {}).get("files", {})}
    actual = file_hashes(out, ZOO_PARTS + (BACKBONE_DIR,))
    bad = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
    for k in bad:
        print(f"mismatch: {k}", file=sys.stderr)
    print("ok" if not bad else f"{len(bad)} file(s) differ from the manifest")
    return 1 if bad else 0


def recipe_changes(recipe, items: list[str], flag: str = "--set") -> dict:
    """``FIELD=VALUE`` items as recipe field changes (values read by the suite's one override
    parser, :func:`spuraug.config.parse_overrides`; lists become tuples); ``SystemExit``
    naming ``flag`` and the item for anything else."""


    known = {f.name for f in fields(recipe)}
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"{flag} {item!r}: not KEY=VALUE; expected FIELD=VALUE with FIELD one of the "
                             f"recipe's fields ({', '.join(sorted(known))})")
        try:
            parsed = parse_overrides([item])[key]
        except ConfigError as e:
            raise SystemExit(f"{flag} {item!r}: {e}") from None
        changes[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return changes


def with_fields(recipe, items: list[str]):
    """``recipe`` with ``FIELD=VALUE`` changes (:func:`recipe_changes`)."""

    return replace(recipe, **recipe_changes(recipe, items))


if __name__ == "__main__":
    raise SystemExit(main())
