"""rho under both Integrated-Gradients targets of DDB's pruning, on one DDB run's edits.

The public code (ArianYp/DDB generate.py) attributes the SOURCE class i's logit
(``ig.attribute(edited, original, target=class_label)``) and keeps an edit when
``rho > --threshold 0.3``; the paper (and ``prune.ig_target: new``) attributes the NEW class
j's. The scale and sign of rho differ between the two, so the same P does not prune the
same edits. Run the prune stage once per target on the same edits, e.g.::

    spuraug ddb prune --dataset toy --seed 0 --out RUNS --device cpu
    spuraug ddb prune --dataset toy --seed 0 --out RUNS --device cpu --set prune.ig_target=source
    python -m bench.studies.ddb_rho_targets RUNS --dataset toy --seed 0

It prints rho's quantiles under each target, the share of edits condition 2 keeps under the
reference's pairing (target source, P = 0.3) and the P that keeps the same share under the
paper's target (quantile matching), and writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.provenance import emit_report

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def prune_scores(runs: Path, dataset: str, seed: int) -> dict[str, pd.DataFrame]:
    """``{ig_target: scores}`` of every finished prune stage of the run (the newest per target)."""
    out: dict[str, tuple[float, pd.DataFrame]] = {}
    for d in (Path(runs) / dataset / "ddb_artifacts" / f"seed{seed}").glob("prune-*"):
        man, scores = d / "manifest.json", d / "scores.csv"
        if not (man.is_file() and scores.is_file()):
            continue
        target = json.loads(man.read_text())["ig"]["target"]
        mtime = scores.stat().st_mtime
        if target not in out or mtime > out[target][0]:
            out[target] = (mtime, pd.read_csv(scores, dtype={"sample_id": str, "source_id": str}))
    return {k: v[1] for k, v in out.items()}


def summarise(scores: dict[str, pd.DataFrame], p_ref: float = 0.3) -> dict:
    """Quantiles of rho per target, condition-2 keep shares, and the matched P for target new."""
    res: dict = {"n": {k: int(len(v)) for k, v in scores.items()}, "quantiles": {}}
    for target, s in scores.items():
        r = s["rho_raw"].to_numpy(float)
        res["quantiles"][target] = {f"q{int(q * 100):02d}": float(np.quantile(r, q)) for q in QUANTILES}
        res["quantiles"][target]["mean"] = float(r.mean())
        res["quantiles"][target]["share_above_0.3"] = float((r > p_ref).mean())
    if {"new", "source"} <= set(scores):
        src = scores["source"]["rho_raw"].to_numpy(float)
        new = scores["new"].set_index("sample_id").loc[scores["source"]["sample_id"], "rho_raw"].to_numpy(float)
        kept = float((src > p_ref).mean())
        res["reference_keep_share"] = kept  # condition 2 alone, target source, P = 0.3
        res["matched_P_for_target_new"] = float(np.quantile(new, 1.0 - kept)) if 0 < kept < 1 else None
        res["spearman_new_vs_source"] = float(pd.Series(new).rank().corr(pd.Series(src).rank()))
        both = (src > p_ref) & (new > res["matched_P_for_target_new"]) if res["matched_P_for_target_new"] is not None \
            else np.zeros(len(src), bool)
        res["same_edits_kept_share"] = float(both.sum() / max((src > p_ref).sum(), 1))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs")
    ap.add_argument("--dataset", default="toy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    scores = prune_scores(Path(args.runs), args.dataset, args.seed)
    if not scores:
        print(f"no finished prune stage under {args.runs}/{args.dataset}/ddb_artifacts/seed{args.seed}")
        return 2
    emit_report(summarise(scores), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
