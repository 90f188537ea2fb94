"""How well DDB's toy edits worked, read by the toy world's oracle classifier.

    python -m bench.ddb_toy_oracle RUNS_DIR [--seed 0]

For the newest prune table of ``RUNS_DIR/toy/ddb_artifacts/seed<S>/``: the share of
generated images the oracle (``spuraug/toy-oracle``) reads as the TARGET digit, the share
whose background is the source's, and both, for all / kept / pruned samples, plus how
many sources were majority-group images (the toy's group labels are used here for
measurement only, never by DDB).
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import pandas as pd
from PIL import Image


def main(argv: list[str] | None = None) -> dict:
    from spuraug.data.toy import ToyConfig, ToyDataset
    from spuraug.toyworld.oracle import load_oracle, predict
    from spuraug.toyworld.render import BACKGROUNDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tables = glob.glob(f"{args.runs_dir}/toy/ddb_artifacts/seed{args.seed}/prune-*/table.csv")
    if not tables:
        raise SystemExit(f"no DDB prune table under {args.runs_dir}/toy/ddb_artifacts/seed{args.seed}")
    t = pd.read_csv(max(tables, key=os.path.getmtime), dtype={"source_id": str})
    cfg = ToyConfig()
    train = ToyDataset("train", cfg)
    d, b = predict(load_oracle(), [Image.open(p).convert("RGB") for p in t.generated_path])
    src_a = np.array([train.a[int(s)] for s in t.source_id])
    ok_digit = d == np.array([cfg.digits[c] for c in t.target_class])
    ok_bg = np.array([BACKGROUNDS[k] for k in b]) == np.array([cfg.backgrounds[a] for a in src_a])
    out = {"sources_majority_share": float((src_a == t.source_class).mean()),
           "oracle_reads_source_digit": float((d == np.array([cfg.digits[c] for c in t.source_class])).mean())}
    for name, sel in [("all", np.ones(len(t), bool)), ("kept", t.keep.to_numpy(bool)),
                      ("pruned", ~t.keep.to_numpy(bool))]:
        out[name] = {"n": int(sel.sum()), "target_digit": float(ok_digit[sel].mean()) if sel.any() else None,
                     "background_kept": float(ok_bg[sel].mean()) if sel.any() else None,
                     "both": float((ok_digit & ok_bg)[sel].mean()) if sel.any() else None}
    print(out)
    return out


if __name__ == "__main__":
    main()
