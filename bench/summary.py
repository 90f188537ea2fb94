"""Collect finished run folders into one summary table per dataset and write it out.

A run folder follows the cross-team contract (``runs/<dataset>/<method>/seed<S>/`` with
``result.json``, ``metrics.jsonl``, ``config.json`` and a ``done`` marker). The summary
reads the *test* metrics of the selected checkpoint from ``result.json``.

Conventions (also in docs/harness.md):

- accuracies are percentages, as :mod:`spuraug.metrics` returns them;
- ``*_mean`` is the mean over seeds, ``*_std`` the SAMPLE standard deviation over seeds
  (``ddof=1``); with a single seed the std is undefined: NaN in memory, an empty cell in
  ``summary.csv`` and "n/a" in ``summary.md``/``summary.tex``;
- ``avg_acc`` is the plain accuracy over test examples, ``adjusted_avg_acc`` the per-group
  test accuracy weighted by the training-group proportions;
- one column per group, named by the group names of the data the runs were made on
  (``"three / land"`` by default, ``"four / sky"`` with ``dataset_options.digits=[4,9]``
  ``backgrounds=[sky,brick]``; recorded in each ``result.json``), holding the mean test
  accuracy of that group over seeds; runs of one method on data with other group names
  make their own row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spuraug import atomic
from spuraug.data.registry import dataset_info
from spuraug.records import RecordError, RunResult

#: The fixed leading columns of summary.csv, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "dataset",
    "method",
    "n_seeds",
    "worst_group_acc_mean",
    "worst_group_acc_std",
    "avg_acc_mean",
    "avg_acc_std",
    "adjusted_avg_acc_mean",
    "adjusted_avg_acc_std",
)
SUMMARY_METRICS: tuple[str, ...] = ("worst_group_acc", "avg_acc", "adjusted_avg_acc")
#: The file of a version folder with one line per run (:func:`write_runs_jsonl`).
RUNS_FILE = "runs.jsonl"


class RunFolderError(ValueError):
    """A run folder that does not follow the contract; the message names file and field."""


@dataclass
class RunRecord:
    """One finished run: where it lives and what its ``result.json`` says."""

    path: Path
    dataset: str
    method: str
    seed: int
    result: dict = field(repr=False)

    @property
    def test(self) -> dict:
        return self.result["test"]


def load_run(path: str | Path) -> RunRecord:
    """Read a finished run folder; raise :class:`RunFolderError` if it is not finished or malformed."""
    path = Path(path)
    result_file = path / "result.json"
    if not (path / "done").exists():
        raise RunFolderError(f"{path}: run not finished (no 'done' marker)")
    if not result_file.is_file():
        raise RunFolderError(f"{result_file}: missing (the run has a 'done' marker but no result)")
    try:
        result = RunResult.read(result_file)
    except RecordError as e:
        raise RunFolderError(str(e)) from None
    return RunRecord(path, str(result.dataset), str(result.method), int(result.seed), result.to_dict())


def find_runs(runs_dir: str | Path, dataset: str, methods: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> tuple[list[RunRecord], list[str]]:
    """Finished runs of ``dataset`` under ``runs_dir`` (optionally only some methods/seeds).

    Returns ``(records, problems)``: ``problems`` names every expected run (method x seed,
    when both are given) that is missing or unfinished, and every malformed folder.
    """
    base = Path(runs_dir) / dataset
    records: list[RunRecord] = []
    problems: list[str] = []
    if methods is not None and seeds is not None:
        candidates = [base / m / f"seed{s}" for m in methods for s in seeds]
    else:
        candidates = sorted(p for p in base.glob("*/seed*") if p.is_dir())
        if methods is not None:
            candidates = [p for p in candidates if p.parent.name in methods]
        if seeds is not None:
            candidates = [p for p in candidates if p.name in {f"seed{s}" for s in seeds}]
    for p in candidates:
        if not p.exists():
            problems.append(f"{p}: missing")
            continue
        try:
            records.append(load_run(p))
        except RunFolderError as e:
            problems.append(str(e))
    return records, problems


def group_names_for(dataset: str, n_groups: int, options: dict | None = None) -> list[str]:
    """The dataset's group names from the registry (with ``options``, a run's
    ``dataset_options``: those of the data they make), or ``group <g>`` for an unknown dataset."""
    try:
        names = list(dataset_info(dataset, options).group_names)
    except (KeyError, ImportError, TypeError, ValueError):
        names = []
    if len(names) < n_groups:
        names += [f"group {g}" for g in range(len(names), n_groups)]
    return names


def _group_index(entry: dict, n_attributes: int) -> int:
    return int(entry["y"]) * n_attributes + int(entry["a"])


def _group_layout(record: RunRecord) -> tuple[int, int]:
    """``(n_attributes, n_groups)`` of a run's test groups."""
    groups = record.test["groups"]
    n_attributes = max(int(g["a"]) for g in groups) + 1
    return n_attributes, max(_group_index(g, n_attributes) for g in groups) + 1


def run_group_names(record: RunRecord) -> list[str]:
    """The names of the groups of the data ``record`` was run on: those its ``result.json``
    recorded (``group_names``), else those of its config's ``dataset_options`` (a result
    written before the field, with its config), else the dataset's defaults (a ``runs.jsonl``
    line written before the field: it keeps no config)."""
    _, n_groups = _group_layout(record)
    names = record.result.get("group_names")
    if isinstance(names, list) and len(names) >= n_groups:
        return [str(n) for n in names]
    config = record.result.get("config")
    options = config.get("dataset_options") if isinstance(config, dict) else None
    return group_names_for(record.dataset, n_groups, options or None)


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    vals = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if len(vals) == 0:
        return math.nan, math.nan
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    return float(np.mean(vals)), std


def summarize(records: Iterable[RunRecord], method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (dataset, method, data): :data:`SUMMARY_COLUMNS` then one column per group.

    Group columns are named by the groups of the data each run was made on
    (:func:`run_group_names`): runs of one method on data with other group names (another
    digit or background pair) are never averaged together, they make their own row, with
    values under their own group columns only. Methods appear in ``method_order`` (then
    alphabetically for the rest). Group columns that have no test example in any run (e.g.
    MetaShift's two empty test groups) are dropped.
    """
    by_key: dict[tuple[str, str, tuple[str, ...]], list[RunRecord]] = {}
    for r in records:
        by_key.setdefault((r.dataset, r.method, tuple(run_group_names(r))), []).append(r)
    order = list(method_order or [])
    keys = sorted(by_key, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else len(order), k[1]))
    rows = []
    group_columns: list[str] = []
    for dataset, method, names in keys:
        runs = sorted(by_key[(dataset, method, names)], key=lambda r: r.seed)
        row: dict = {"dataset": dataset, "method": method, "n_seeds": len(runs)}
        for metric in SUMMARY_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([r.test.get(metric) for r in runs])
        per_group: dict[int, list] = {}
        for r in runs:
            n_attributes, _ = _group_layout(r)
            for g in r.test["groups"]:
                per_group.setdefault(_group_index(g, n_attributes), []).append(g.get("acc"))
        for gi in sorted(per_group):
            mean, _ = _mean_std(per_group[gi])
            if math.isnan(mean):
                continue
            row[names[gi]] = mean
            if names[gi] not in group_columns:
                group_columns.append(names[gi])
        rows.append(row)
    return pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *group_columns])


# -- writing -------------------------------------------------------------------------

AVERAGES_NOTE = (
    "avg = plain accuracy over all test examples; adjusted avg = per-group test accuracy "
    "weighted by the training-group proportions (the GroupDRO/JTT/DFR papers' Waterbirds average). "
    "Test accuracy in percent at the selected checkpoint; mean +- sample std (ddof=1) over seeds, "
    "n/a with one seed."
)


def _fmt(mean: float, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {'n/a' if math.isnan(std) else f'{std:.2f}'}"


def display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The human-readable table (header, rows) that summary.md, summary.tex and the console show."""
    group_cols = [c for c in df.columns if c not in SUMMARY_COLUMNS]
    header = ["method", "seeds", "worst-group acc", "avg acc (plain)", "adjusted avg acc (train-weighted)",
              *group_cols]
    rows = []
    for _, r in df.iterrows():
        rows.append([
            str(r["method"]), str(int(r["n_seeds"])),
            *(_fmt(r[f"{m}_mean"], r[f"{m}_std"]) for m in SUMMARY_METRICS),
            *(_fmt(r[c]) for c in group_cols),
        ])
    return header, rows


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The human-readable table (strings) that summary.md, summary.tex and the console show."""
    header, rows = display_rows(df)
    return pd.DataFrame(rows, columns=header)


def format_console(df: pd.DataFrame) -> str:
    """The summary as an aligned plain-text table."""
    return display_frame(df).to_string(index=False, justify="left")


def format_markdown(df: pd.DataFrame, title: str = "", extra: str = "") -> str:
    out = [f"# {title}", ""] if title else []
    out += [display_frame(df).to_markdown(index=False, disable_numparse=True)]
    out += ["", AVERAGES_NOTE, ""]
    if extra:
        out += [extra, ""]
    return "\n".join(out)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """LaTeX-escape free text (the comment and caption; the table's cells go through pandas)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def format_latex(df: pd.DataFrame, caption: str = "") -> str:
    disp = display_frame(df)
    cap = tex_escape(caption + (". " if caption else "") + AVERAGES_NOTE).replace("+-", r"$\pm$")
    styler = disp.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    body = styler.to_latex(column_format="l" + "r" * (len(disp.columns) - 1), position="t",
                           position_float="centering", hrules=True, caption=cap)
    return "% Generated by bench.sweep. " + tex_escape(AVERAGES_NOTE) + "\n" + body.replace("±", r"$\pm$")


def write_summary(df: pd.DataFrame, out_dir: Path, title: str = "", extra_md: str = "") -> None:
    """Write summary.csv (NaN as empty cells, full precision), summary.md and summary.tex."""
    df.to_csv(out_dir / "summary.csv", index=False, na_rep="", float_format="%.4f")
    (out_dir / "summary.md").write_text(format_markdown(df, title, extra_md))
    (out_dir / "summary.tex").write_text(format_latex(df, caption=title))


def run_line(record: RunRecord) -> dict:
    """One line of a version folder's ``runs.jsonl``: the run's ``result.json`` (method, seed,
    config hash, selection rule and selected epoch, annotation, wall time, the val and test
    metrics with their groups, method details) without the resolved config it repeats (the
    config hash names it; the run folder under runs/ keeps it, with the per-epoch lines)."""
    return {k: v for k, v in record.result.items() if k != "config"}


def write_runs_jsonl(records: Iterable[RunRecord], out_dir: Path) -> Path:
    """Write ``out_dir/runs.jsonl``: one :func:`run_line` per finished run, by method then seed."""
    path = out_dir / RUNS_FILE
    atomic.write_text(path, "".join(json.dumps(run_line(r), allow_nan=True) + "\n" for r in records))
    return path


def read_runs_jsonl(path: str | Path) -> list[dict]:
    """The run lines of a version folder's ``runs.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def records_from_runs_jsonl(path: str | Path) -> list[RunRecord]:
    """The runs of a version folder as :class:`RunRecord` (``path`` is ``runs.jsonl`` or its
    folder), so :func:`summarize` can rebuild the folder's table from it alone."""
    path = Path(path)
    path = path / RUNS_FILE if path.is_dir() else path
    return [RunRecord(path.parent, str(r["dataset"]), str(r["method"]), int(r["seed"]), r) for r in read_runs_jsonl(path)]
