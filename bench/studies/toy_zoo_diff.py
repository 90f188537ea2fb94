"""Study: how far apart are two builds of the toy zoo, weight by weight?

    python -m bench.studies.toy_zoo_diff ZOO_A ZOO_B [--out FILE]

A retrain of the zoo on another CPU type, or with code that computes the same recipe in
another order (the learning-rate schedule and the UNet's EMA from torch and diffusers instead
of hand-written, issue 17), gives other bits. This reads every ``*.safetensors`` file under
both folders and reports, per file, whether the two are bit-identical, the largest absolute
difference of any weight and that difference relative to the largest weight of the tensor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.provenance import emit_report


def tensor_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Largest absolute and relative (to the tensor's largest magnitude) difference over the
    tensors both state dicts hold; names held by only one are listed."""
    common = sorted(set(a) & set(b))
    max_abs, max_rel, identical = 0.0, 0.0, True
    for name in common:
        x, y = a[name].double(), b[name].double()
        if x.shape != y.shape:
            raise ValueError(f"{name}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        d = float((x - y).abs().max()) if x.numel() else 0.0
        identical = identical and torch.equal(a[name], b[name])
        max_abs = max(max_abs, d)
        scale = float(x.abs().max()) if x.numel() else 0.0
        if scale > 0:
            max_rel = max(max_rel, d / scale)
    return {"tensors": len(common), "bit_identical": identical and set(a) == set(b), "max_abs_diff": max_abs,
            "max_rel_diff": max_rel, "only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a))}


def zoo_diff(zoo_a: Path, zoo_b: Path) -> dict:
    files_a = {p.relative_to(zoo_a).as_posix() for p in zoo_a.rglob("*.safetensors")}
    files_b = {p.relative_to(zoo_b).as_posix() for p in zoo_b.rglob("*.safetensors")}
    if not files_a & files_b:
        raise SystemExit(f"bench.studies.toy_zoo_diff: error: no *.safetensors file in both {zoo_a} and {zoo_b}")
    return {
        "files": {f: tensor_diffs(load_file(zoo_a / f), load_file(zoo_b / f)) for f in sorted(files_a & files_b)},
        "only_in_a": sorted(files_a - files_b),
        "only_in_b": sorted(files_b - files_a),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.toy_zoo_diff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zoo_a", type=Path)
    p.add_argument("zoo_b", type=Path)
    p.add_argument("--note", default="", help="what the two builds are (kept in the report)")
    p.add_argument("--out", help="write the report (JSON) here")
    args = p.parse_args(argv)
    for z in (args.zoo_a, args.zoo_b):
        if not z.is_dir():
            p.error(f"{z}: not a folder")
    report = {"zoo_a": str(args.zoo_a), "zoo_b": str(args.zoo_b), "note": args.note,
              **zoo_diff(args.zoo_a, args.zoo_b)}
    for f, d in report["files"].items():
        print(f"{f}: {'bit-identical' if d['bit_identical'] else 'differs'}, max |diff| {d['max_abs_diff']:.3g} "
              f"({d['max_rel_diff']:.3g} of the tensor's largest weight)")
    emit_report(report, args.out, quiet=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
