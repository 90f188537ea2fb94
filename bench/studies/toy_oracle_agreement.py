"""Probe: how far two world oracles agree, on real toy images and on DDB's generated ones.

    python -m bench.studies.toy_oracle_agreement OTHER_ORACLE_FOLDER [--runs runs] [--seed 0] [--out FILE]

The oracle is the toy world's measuring instrument. `make toy-zoo` from nothing retrains it,
and on another CPU type floating-point differences give other weights; this reads the 1200
toy test images and DDB's generated images of one seed (``<runs>/toy/ddb_artifacts/seed<S>/
inpaint-*/images/``) with the zoo's oracle and with ``OTHER_ORACLE_FOLDER`` and reports each
one's digit accuracy on the test images and the share of images on which the two read the
same digit (and background).
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
from PIL import Image

from bench.provenance import emit_report
from spuraug.data.toy import ToyConfig, ToyDataset
from spuraug.toyworld.oracle import ORACLE_MODEL_ID, load_oracle, predict


def agreement(oracle_a, oracle_b, images, truth: np.ndarray | None = None) -> dict:
    """Share of ``images`` on which both oracles read the same digit / the same background;
    with ``truth`` (the true digits) also each oracle's digit accuracy (``acc_a``, ``acc_b``)."""

    da, ba = predict(oracle_a, images)
    db, bb = predict(oracle_b, images)
    out = {"n": int(len(da)), "digit": round(float((da == db).mean()), 4),
           "background": round(float((ba == bb).mean()), 4)}
    if truth is not None:
        out.update(acc_a=round(float((da == truth).mean()), 4), acc_b=round(float((db == truth).mean()), 4))
    return out


def main(argv: list[str] | None = None) -> dict:


    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", help="the other oracle's folder")
    ap.add_argument("--runs", default="runs", help="runs folder holding DDB's toy artifacts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    a, b = load_oracle(ORACLE_MODEL_ID), load_oracle(args.other)
    test = ToyDataset("test", ToyConfig())
    on_test = agreement(a, b, test.images, truth=np.array([test.config.digits[y] for y in test.y]))
    out = {"oracle": ORACLE_MODEL_ID, "other": args.other,
           "test_digit_acc": {"oracle": on_test.pop("acc_a"), "other": on_test.pop("acc_b")},
           "test_images": on_test}
    files = sorted(glob.glob(f"{args.runs}/toy/ddb_artifacts/seed{args.seed}/inpaint-*/images/*.png"))
    if files:
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        out[f"ddb_edits_seed{args.seed}"] = agreement(a, b, images)
    return emit_report(out, args.out, args.quiet)


if __name__ == "__main__":
    main()
