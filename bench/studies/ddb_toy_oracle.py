"""How well DDB's toy edits worked, read by the toy world's oracle classifier.

    python -m bench.studies.ddb_toy_oracle RUNS_DIR [--seed 0 [1 2]] [--initializer] [--out FILE]

With several seeds the report is ``{"seeds": {"<S>": <the report of seed S>}}``.

For the newest prune table of ``RUNS_DIR/toy/ddb_artifacts/seed<S>/``: the share of
generated images the oracle (``spuraug/toy-oracle``) reads as the TARGET digit, the share
whose background is the source's, and both (composition success), for all / kept / pruned
samples, and per generator (``by_generator``: the oracle and the learned edits of
``ddb.inpaint.backend: oracle`` with an ``oracle_mix``), plus how many sources were
majority-group images (the toy's group labels are used here for measurement only, never by DDB).

``--initializer`` also repaints the very same sources, masks and seeds with the
textual-inversion *initializer* word in place of each learned token (through the same
inpainting code, into ``initializer-probe-<inpaint key>/`` beside the stage, resumable), and
reads those: does the learned token do better than the word it started from?

``vae_roundtrip_of_sources`` is the ceiling: the share of the sources the oracle still reads
as their own digit after a VAE round trip (every generated image is VAE-decoded).
``pruning_separability`` asks whether any threshold of the pruning rules could raise
composition success: per target class, the ROC AUC of each per-sample statistic the rules
threshold (``p``, and ``rho_raw``, plus ``p_target`` and ``logit_delta``) for telling the edits
the oracle reads as the target digit from the others (0.5 = no information).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.provenance import emit_report
from spuraug.data.toy import ToyConfig, ToyDataset
from spuraug.ddb.config import InpaintConfig
from spuraug.ddb.inpaint import Plan, Source, inpaint, load_inpaint_pipeline
from spuraug.toyworld.check import vae_roundtrip
from spuraug.toyworld.oracle import ORACLE_MODEL_ID, as_uint8_batch, load_oracle, predict
from spuraug.toyworld.render import BACKGROUNDS, COLOR_WORDS, color_index, object_box


def _newest(pattern: str) -> Path:
    found = glob.glob(pattern)
    if not found:
        raise SystemExit(f"nothing matches {pattern}")
    return Path(max(found, key=os.path.getmtime))


def _load(paths) -> list[Image.Image]:
    """Each generated image, read once (the oracle and the colour reading share it)."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def _read(oracle, images: list[Image.Image], target_class, source_class, source_a, cfg) -> dict[str, np.ndarray]:

    d, b = predict(oracle, images)
    ok_digit = d == np.array([cfg.digits[c] for c in target_class])
    ok_bg = np.array([BACKGROUNDS[k] for k in b]) == np.array([cfg.backgrounds[a] for a in source_a])
    src_digit = d == np.array([cfg.digits[c] for c in source_class])
    return {"digit": ok_digit, "background": ok_bg, "source_digit": src_digit}


def object_colour(image: Image.Image, mask_path: str) -> str:
    """The colour word of the edited object: the mean of the most saturated third of the
    pixels in the mask's bounding box (the object is saturated; the toy backgrounds are
    mostly not), named by :func:`spuraug.toyworld.render.color_index`."""

    g = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    with Image.open(mask_path) as im:
        m = np.asarray(im.convert("L").resize(g.shape[1::-1], Image.Resampling.NEAREST)) > 127
    if (region := object_box(m)) is None:
        return "none"
    box = g[region].reshape(-1, 3)
    sat = box.max(axis=1) - box.min(axis=1)
    return COLOR_WORDS[color_index(box[sat >= np.quantile(sat, 2 / 3)].mean(axis=0))]


def _colours_by_target(images, masks, target_class, words=None) -> dict:
    """Per target class: the most frequent object colour word and its share (``words``:
    the colour words, when already read)."""
    words = pd.Series(words if words is not None else [object_colour(im, m) for im, m in zip(images, masks)])
    out = {}
    for c in sorted(set(int(v) for v in target_class)):
        counts = words[np.asarray(target_class) == c].value_counts()
        out[str(c)] = {"top": counts.index[0], "share": round(float(counts.iloc[0] / counts.sum()), 3)}
    return out


def _rates(r: dict[str, np.ndarray], sel: np.ndarray) -> dict:
    if not sel.any():
        return {"n": 0, "target_digit": None, "background_kept": None, "both": None}
    return {"n": int(sel.sum()), "target_digit": float(r["digit"][sel].mean()),
            "background_kept": float(r["background"][sel].mean()),
            "both": float((r["digit"] & r["background"])[sel].mean()),
            "source_digit": float(r["source_digit"][sel].mean())}


#: The prune table's per-sample statistics, and the direction in which each one should
#: mark a good edit if pruning is to work: a low ``p`` (the ERM is less sure of the source
#: class) and a high ``p_target``, ``rho_raw`` and ``logit_delta`` (the ERM moved toward the
#: new class, on the object).
PRUNING_STATISTICS: dict[str, int] = {"p": -1, "p_target": 1, "rho_raw": 1, "logit_delta": 1}


def roc_auc(good: np.ndarray, score: np.ndarray) -> float | None:
    """P(score of a good sample > score of a bad one), ties counting half (the ROC AUC);
    None when one side is empty."""
    good = np.asarray(good, bool)
    score = np.asarray(score, float)
    n1, n0 = int(good.sum()), int((~good).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[good].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def pruning_separability(table: pd.DataFrame, good: np.ndarray) -> dict:
    """Can the pruning rules tell a good edit (the oracle reads the target digit) from a bad
    one at all? Per target class, the ROC AUC of each statistic of
    :data:`PRUNING_STATISTICS`, oriented so that 1.0 = every good edit ranks above every bad
    one in the direction the rule keeps, 0.5 = no information, below 0.5 = the rule's
    direction prefers the bad edits. Any threshold of a rule can only do as well as its AUC
    allows."""
    out = {}
    target = table.target_class.to_numpy()
    for c in sorted(set(int(v) for v in target)):
        sel = target == c
        row = {"n": int(sel.sum()), "good": int(good[sel].sum())}
        for col, sign in PRUNING_STATISTICS.items():
            if col in table:
                auc = roc_auc(good[sel], sign * table[col].to_numpy(float)[sel])
                row[f"auc_{col}"] = None if auc is None else round(auc, 3)
        out[str(c)] = row
    return out


def roundtrip_reading(oracle, table: pd.DataFrame, cfg: ToyConfig = ToyConfig()) -> dict:
    """The ceiling of composition success for these edits: every generated image is decoded
    by the zoo's VAE, so read each SOURCE image after a VAE round trip (encode, decode,
    nothing repainted) and report the share the oracle still reads as the source's digit,
    overall and per source class."""

    src = table.source_class.to_numpy()
    images = as_uint8_batch(_load(table.source_path))
    d, _ = predict(oracle, vae_roundtrip(images))
    truth = np.array([cfg.digits[c] for c in src])
    ok = d == truth
    d0, _ = predict(oracle, images)
    return {"n": int(len(ok)), "digit_acc": round(float(ok.mean()), 4),
            "digit_acc_without_roundtrip": round(float((d0 == truth).mean()), 4),
            "digit_acc_by_source_class": {str(c): round(float(ok[src == c].mean()), 4) for c in sorted(set(src))}}


def initializer_probe(stage: Path, initializer: str, train, n_classes: int) -> tuple[pd.DataFrame, Path]:
    """Repaint the inpaint ``stage``'s samples with ``initializer`` instead of the learned
    tokens (same sources, masks, seeds, settings); returns the probe's samples table and folder."""

    key = json.loads((stage / "key.json").read_text())["inpaint"]
    names = {f.name for f in fields(InpaintConfig)}
    cfg = InpaintConfig(**{k: v for k, v in key.items() if k in names and k != "dtype"})
    cfg.dtype, cfg.device = "fp32", "cpu"
    samples = pd.read_csv(stage / "samples.csv", dtype={"source_id": str})
    plan = [
        Plan(str(r.sample_id),
             Source(str(r.source_id), int(r.source_position), int(r.source_class), int(r.source_rank),
                    (lambda pos=int(r.source_position): train.load_image(pos)), Path(r.mask)),
             int(r.target_class), int(r.seed))
        for r in samples.itertuples()
    ]
    pipe = load_inpaint_pipeline(cfg, embeddings=None, device="cpu")
    out = stage.parent / f"initializer-probe-{stage.name.split('-', 1)[1]}"
    return inpaint(pipe, plan, [initializer] * n_classes, cfg, out), out


def main(argv: list[str] | None = None) -> dict:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dir")
    ap.add_argument("--seed", type=int, nargs="+", default=[0])
    ap.add_argument("--initializer", action="store_true",
                    help="also repaint every sample with the initializer word instead of the learned token")
    ap.add_argument("--initializer-word", default="digit", help="the toy config's initializer_token")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    ap.add_argument("--oracle", default=None,
                    help="read with this oracle folder instead of the zoo's (how much the readings depend "
                         "on the instrument: e.g. an oracle retrained by `make toy-zoo` on another machine)")
    args = ap.parse_args(argv)
    for seed in args.seed:
        if not glob.glob(f"{args.runs_dir}/toy/ddb_artifacts/seed{seed}/prune-*/table.csv"):
            raise SystemExit(f"no DDB prune table under {args.runs_dir}/toy/ddb_artifacts/seed{seed}")
    oracle = load_oracle(args.oracle or ORACLE_MODEL_ID)  # once, for every reading below
    reports = {str(seed): seed_report(args, seed, oracle) for seed in args.seed}
    out = reports[str(args.seed[0])] if len(args.seed) == 1 else {"seeds": reports}
    return emit_report(out, args.out, args.quiet)


def generators(table: pd.DataFrame) -> np.ndarray:
    """Which generator made each edit of a prune table: ``"oracle"`` or ``"diffusers"``
    (``ddb.inpaint.backend: oracle`` with ``oracle_mix``; the inpaint stage's samples.csv
    records it; a stage written before the oracle existed made every edit with diffusers)."""
    out = []
    for folder in sorted({Path(p).parent.parent for p in table.generated_path}):
        s = pd.read_csv(folder / "samples.csv", dtype={"source_id": str, "sample_id": str})
        gen = s["generator"] if "generator" in s else pd.Series("diffusers", index=s.index)
        out.append(pd.Series(gen.fillna("diffusers").to_numpy(), index=s.sample_id))
    found = pd.concat(out) if out else pd.Series(dtype=str)
    return found.reindex(table.sample_id.astype(str)).fillna("diffusers").to_numpy(str)


def seed_report(args, seed: int, oracle, table: Path | None = None, cfg: ToyConfig = ToyConfig()) -> dict:
    """The report of one seed's newest prune table, or of ``table`` (see the module docstring);
    ``cfg``: the toy benchmark the run used (its ``dataset_options``; default the benchmark)."""

    base = f"{args.runs_dir}/toy/ddb_artifacts/seed{seed}"
    table = Path(table) if table is not None else _newest(f"{base}/prune-*/table.csv")
    t = pd.read_csv(table, dtype={"source_id": str})
    train = ToyDataset("train", cfg)
    src_a = np.array([train.a[int(s)] for s in t.source_id])
    images = _load(t.generated_path)
    r = _read(oracle, images, t.target_class, t.source_class, src_a, cfg)
    keep = t.keep.to_numpy(bool)
    out = {"prune_table": str(table), "oracle": args.oracle or ORACLE_MODEL_ID,
           "sources_majority_share": float((src_a == t.source_class).mean()),
           "oracle_reads_source_digit": float(r["source_digit"].mean())}
    for name, sel in (("all", np.ones(len(t), bool)), ("kept", keep), ("pruned", ~keep)):
        out[name] = _rates(r, sel)
    generator = generators(t)
    out["by_generator"] = {g: {name: _rates(r, (generator == g) & sel) for name, sel in
                               (("all", np.ones(len(t), bool)), ("kept", keep), ("pruned", ~keep))}
                           for g in sorted(set(generator))}
    # Which pruning condition keeps which edits, per target class.
    target = t.target_class.to_numpy()
    out["by_target_class"] = {
        str(c): {name: _rates(r, (target == c) & sel) for name, sel in
                 (("all", np.ones(len(t), bool)), ("kept", keep), ("pruned", ~keep))}
        for c in sorted(set(int(v) for v in target))}
    out["pruning_separability"] = pruning_separability(t, r["digit"])
    out["vae_roundtrip_of_sources"] = roundtrip_reading(oracle, t, cfg)
    out["by_condition"] = {
        cond: {"passed": _rates(r, t[cond].to_numpy(bool)), "failed": _rates(r, ~t[cond].to_numpy(bool))}
        for cond in ("cond1_keep", "cond2_keep") if cond in t}
    # Does the learned token carry its class's spurious context (the toy: the majority
    # background's colour) into the object? The edited object's colour per target class,
    # and among kept and pruned edits.
    colours = [object_colour(im, m) for im, m in zip(images, t.mask_path)]
    out["object_colour_by_target_class"] = _colours_by_target(images, list(t.mask_path),
                                                              t.target_class, words=colours)
    out["object_colour_kept_vs_pruned"] = {
        name: _colours_by_target(None, None, target[sel], words=[w for w, k in zip(colours, sel) if k])
        for name, sel in (("kept", keep), ("pruned", ~keep)) if sel.any()}
    if args.initializer:
        stage = _newest(f"{base}/inpaint-*/samples.csv").parent
        probe, folder = initializer_probe(stage, args.initializer_word, train, train.n_classes)
        probe = probe.set_index("sample_id").loc[t.sample_id]
        probe_images = _load(folder / f for f in probe.file)
        ri = _read(oracle, probe_images, probe.target_class, probe.source_class, src_a, cfg)
        out["initializer"] = {"word": args.initializer_word, "folder": str(folder),
                              "all": _rates(ri, np.ones(len(t), bool)),
                              "object_colour_by_target_class": _colours_by_target(
                                  probe_images, list(probe["mask"]), probe.target_class)}
    return out




if __name__ == "__main__":
    main()
