"""``spuraug score``: score any model's predictions, so outside models can join.

The predictions file is a UTF-8 CSV (a byte-order mark is fine) with integer columns
``y``, ``a`` and ``pred``, each named once (other columns are ignored). The adjusted
average uses the dataset's training-group counts: the published counts for the real
datasets, so no data is needed to score.

Every group (y, a) of the dataset must have at least one prediction: a worst-group
accuracy over the groups present only would be a different, higher number. A file that
lacks a group is an error naming the missing groups, unless ``--allow-missing-groups``,
which scores the groups present and records the missing ones (``missing_groups``, and
``n = 0`` in ``groups``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from spuraug.data.registry import dataset_info, dataset_names
from spuraug.metrics import METRIC_NAMES, evaluate_predictions

REQUIRED_COLUMNS = ("y", "a", "pred")


class PredictionsFileError(ValueError):
    """A malformed predictions file; the message names the file, line and problem."""


def _rows(path: Path):
    """The CSV rows of ``path`` (UTF-8, with or without a byte-order mark)."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise PredictionsFileError(f"{path}: cannot open ({e.strerror})") from e
    with handle:
        try:
            yield from csv.reader(handle)
        except UnicodeDecodeError:
            raise PredictionsFileError(f"{path}: not a UTF-8 text (CSV) file") from None
        except csv.Error as e:
            raise PredictionsFileError(f"{path}: not a readable CSV file ({e})") from None


def read_predictions(path: Path, n_classes: int, n_attributes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate ``y, a, pred`` from a CSV file."""
    if Path(path).is_dir():
        raise PredictionsFileError(f"{path}: is a folder, not a predictions file")
    reader = _rows(path)
    header = next(reader, None)
    if header is None:
        raise PredictionsFileError(f"{path}: file is empty (expected a header with columns y,a,pred)")
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise PredictionsFileError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} (header is {','.join(header)})"
        )
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise PredictionsFileError(f"{path}: line 1: column(s) {', '.join(repeated)} appear more than once")
    col = {c: header.index(c) for c in REQUIRED_COLUMNS}
    limits = {"y": n_classes, "a": n_attributes, "pred": n_classes}
    rows: list[tuple[int, int, int]] = []
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not f.strip() for f in row):
            continue
        values = []
        for c in REQUIRED_COLUMNS:
            if col[c] >= len(row):
                raise PredictionsFileError(f"{path}: line {lineno}: no value for column {c!r}")
            text = row[col[c]].strip()
            try:
                v = int(text)
            except ValueError:
                raise PredictionsFileError(
                    f"{path}: line {lineno}: column {c!r} is not an integer: {text!r}"
                ) from None
            if not 0 <= v < limits[c]:
                raise PredictionsFileError(
                    f"{path}: line {lineno}: column {c!r} = {v} is out of range 0..{limits[c] - 1}"
                )
            values.append(v)
        rows.append(tuple(values))  # type: ignore[arg-type]
    if not rows:
        raise PredictionsFileError(f"{path}: no predictions after the header")
    arr = np.asarray(rows, dtype=np.int64)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def score_file(dataset: str, path: Path, allow_missing_groups: bool = False) -> dict:
    """The metrics of a predictions file; a group without predictions is an error naming it
    unless ``allow_missing_groups`` (then ``missing_groups`` lists them)."""
    info = dataset_info(dataset)
    y, a, pred = read_predictions(path, info.n_classes, info.n_attributes)
    train_counts = info.published_counts.get("train")
    result = evaluate_predictions(y, a, pred, info.n_classes, info.n_attributes, train_counts)
    result["groups"] = [
        {"y": g["y"], "a": g["a"], "n": g["n"], "acc": g["acc"]} for g in result["groups"]
    ]
    missing = [info.group_name(g["y"] * info.n_attributes + g["a"]) for g in result["groups"] if g["n"] == 0]
    if missing and not allow_missing_groups:
        raise PredictionsFileError(
            f"{path}: no predictions for group(s) {', '.join(missing)}: the worst-group accuracy would cover "
            f"only {len(result['groups']) - len(missing)} of {len(result['groups'])} groups "
            f"(--allow-missing-groups scores the groups present and lists the missing ones)"
        )
    out = {k: result[k] for k in (*METRIC_NAMES, "groups")}
    if missing:
        out["missing_groups"] = missing
    return out


def format_score(dataset: str, result: dict) -> str:
    info = dataset_info(dataset)
    lines = [f"{'metric':<20} {'value':>8}"]
    for k in METRIC_NAMES:
        v = result[k]
        lines.append(f"{k:<20} {'n/a' if v is None else f'{v:8.2f}':>8}")
    lines.append("")
    lines.append(f"{'group':<32} {'n':>7} {'acc':>8}")
    for g in result["groups"]:
        name = info.group_name(g["y"] * info.n_attributes + g["a"])
        acc = "n/a" if g["acc"] is None else f"{g['acc']:.2f}"
        lines.append(f"{name:<32} {g['n']:>7} {acc:>8}")
    if result.get("missing_groups"):
        lines.append("")
        lines.append(f"over the groups present only: no predictions for {', '.join(result['missing_groups'])}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    try:
        result = score_file(args.dataset, Path(args.predictions), args.allow_missing_groups)
    except PredictionsFileError as e:
        print(f"spuraug score: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(format_score(args.dataset, result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score a predictions CSV (columns y, a, pred) on a dataset's groups")
    p.add_argument("--dataset", required=True, choices=dataset_names())
    p.add_argument("--predictions", required=True, metavar="FILE.csv")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--allow-missing-groups", action="store_true",
                   help="score a file that lacks some groups over the groups present (listed as missing_groups); "
                        "without it such a file is an error naming the missing groups")
    p.set_defaults(handler=_run)
