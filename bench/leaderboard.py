"""``python -m bench.leaderboard``: build results/leaderboard.md and the static page
results/leaderboard/index.html from every version folder, every scored submission and
the published numbers (spuraug/configs/published.yaml), always labelled apart.

Inputs (see docs/harness.md):

- version folders ``results/<dataset>/<version>/`` written by ``bench.sweep``;
- submissions ``results/submissions/<dataset>/<name>.json``: the output of
  ``spuraug score --dataset <dataset> --predictions preds.csv --json``, optionally with
  the keys ``name``, ``description``, ``url`` and ``annotation`` added by hand;
- ``spuraug/configs/published.yaml``: the published numbers, each with its paper;
- the grid of DDB examples a version folder holds (``ddb_examples.png``, written by the sweep);
- the curve of DDB's worst-group accuracy against the quality of its edits,
  ``results/studies/ddb_edit_quality/curve.json`` (written by ``bench.studies.ddb_edit_quality``),
  drawn in the toy section when it exists.

It never reads the runs folder. The Markdown and the page are rendered from the jinja2
templates in bench/templates/. The page is self-contained: inline CSS, no scripts, images as PNG files beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd
import yaml

from bench.browser import BrowserMissingError, render_page
from bench.ddb_examples import EXAMPLES_PNG
from bench.summary import SUMMARY_COLUMNS
from spuraug.config import CONFIG_DIR, ConfigError, flatten_overrides, load_config
from spuraug.methods import get_method

#: Folders directly under results/ that are not datasets.
RESERVED = {"reference", "submissions", "leaderboard", "throughput", "studies", "gpu"}
PUBLISHED_FILE = CONFIG_DIR / "published.yaml"
#: The edit-quality study's output (bench.studies.ddb_edit_quality DEFAULT_OUT), relative to results/.
EDIT_QUALITY_JSON = Path("studies", "ddb_edit_quality", "curve.json")
EDIT_QUALITY_PNG = "ddb_edit_quality.png"
#: Methods that are not baselines of the edit-quality figure: the start and DDB itself.
NOT_BASELINES = {"erm", "ddb"}
DATASET_ORDER = ("toy", "waterbirds", "celeba", "metashift")


class LeaderboardError(ValueError):
    """A malformed input file; the message names the file and the field."""


def display_name(method: str) -> str:
    """The method class's ``display_name`` (:func:`spuraug.methods.get_method`), else its class
    name; a name no method is registered as stays as it is."""
    try:
        cls = get_method(method)
    except KeyError:
        return method
    return getattr(cls, "display_name", None) or cls.__name__


@dataclass
class Version:
    """One version folder of results."""

    dataset: str
    name: str
    path: Path
    summary: pd.DataFrame = field(repr=False)
    provenance: dict = field(default_factory=dict, repr=False)
    #: Its parent folder relative to the results folder ("toy", "toyworld/zoo_58660efb1898").
    folder: str = ""

    @property
    def ablation(self) -> list[str]:
        """The config changes this version was run with (``--set`` overrides, ``--config``),
        and ``results/<folder>/`` when it is kept outside its dataset's folder (where ablations
        run at an older commit's config are filed); empty for a benchmark version. A version
        with any is an ablation: listed, never ranked."""
        changes = version_changes(self.provenance)
        folder = self.folder or self.path.parent.name
        if folder != self.dataset:
            changes.append(f"kept in results/{folder}/")
        return changes

    @property
    def created(self) -> str:
        return str(self.provenance.get("created") or time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime((self.path / "summary.csv").stat().st_mtime)))


def version_changes(provenance: dict) -> list[str]:
    """``KEY=VALUE`` overrides and ``--config FILE`` of a sweep, from its provenance (the
    ``overrides``/``config_file`` fields, or the recorded command line of older folders)."""
    if "overrides" in provenance or "config_file" in provenance:
        out = [f"{k}={v}" for k, v in sorted(flatten_overrides(provenance.get("overrides") or {}).items())]
        if provenance.get("config_file"):
            out.append(f"--config {provenance['config_file']}")
        return out
    words = str(provenance.get("command") or "").split()
    out = []
    for i, w in enumerate(words[:-1]):
        if w == "--set":
            out.append(words[i + 1])
        elif w == "--config":
            out.append(f"--config {words[i + 1]}")
    return out


def find_versions(results_dir: str | Path) -> list[Version]:
    """Every ``results/<folder>/[<subfolders>/]<version>/`` with a summary.csv, oldest first;
    the dataset is the one its provenance names (else the top folder's name). Versions in
    subfolders (``results/toyworld/zoo_58660efb1898/ablation_no_pruning``) are named by their
    path below the top folder, so equal folder names stay apart."""
    out = []
    for csv_path in sorted(Path(results_dir).rglob("summary.csv")):
        vdir = csv_path.parent
        rel = vdir.relative_to(results_dir).parts
        if len(rel) < 2 or rel[0] in RESERVED or "runs" in rel:
            continue
        dataset = rel[0]
        try:
            df = pd.read_csv(csv_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise LeaderboardError(f"{csv_path}: cannot be read as CSV ({e})") from None
        missing = [c for c in SUMMARY_COLUMNS if c not in df.columns]
        if missing:
            raise LeaderboardError(f"{csv_path}: missing column(s) {', '.join(missing)}")
        prov: dict = {}
        if (vdir / "provenance.json").is_file():
            try:
                prov = json.loads((vdir / "provenance.json").read_text())
            except json.JSONDecodeError as e:
                raise LeaderboardError(f"{vdir / 'provenance.json'}: not valid JSON ({e})") from None
        out.append(Version(str(prov.get("dataset") or dataset), "/".join(rel[1:]), vdir, df, prov,
                           folder="/".join(rel[:-1])))
    return sorted(out, key=lambda v: (v.created, v.name))


def load_published(path: str | Path = PUBLISHED_FILE) -> list[dict]:
    """The published entries with their source text resolved; validated."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "entries" not in data or "sources" not in data:
        raise LeaderboardError(f"{path}: expected top-level keys 'sources' and 'entries'")
    out = []
    for i, e in enumerate(data["entries"]):
        where = f"{path}: entries[{i}]"
        for key in ("dataset", "method", "worst_group_acc", "source"):
            if key not in e:
                raise LeaderboardError(f"{where}: missing field {key!r}")
        if e["source"] not in data["sources"]:
            raise LeaderboardError(f"{where}: source {e['source']!r} is not a key of 'sources'")
        src = data["sources"][e["source"]]
        if not isinstance(src, dict) or not {"cite", "reference"} <= set(src):
            raise LeaderboardError(f"{path}: sources.{e['source']} needs the fields 'cite' and 'reference'")
        if not isinstance(e["worst_group_acc"], int | float):
            raise LeaderboardError(f"{where}: worst_group_acc must be a number, got {e['worst_group_acc']!r}")
        out.append({**e, "cite": src["cite"], "reference": src["reference"]})
    return out


def load_submissions(results_dir: str | Path) -> list[dict]:
    """Scored submissions under ``results/submissions/<dataset>/<name>.json``; validated."""
    out = []
    for path in sorted(Path(results_dir, "submissions").glob("*/*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise LeaderboardError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise LeaderboardError(f"{path}: expected the JSON object `spuraug score --json` prints")
        for key in ("worst_group_acc", "avg_acc"):
            v = data.get(key)
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise LeaderboardError(f"{path}: field {key!r} must be a number (`spuraug score --json` output), "
                                       f"got {v!r}")
        out.append({**data, "dataset": path.parent.name, "name": str(data.get("name") or path.stem),
                    "path": path})
    return out


def load_edit_quality(results_dir: str | Path) -> dict | None:
    """``<results>/studies/ddb_edit_quality/curve.json`` (bench.studies.ddb_edit_quality), or
    ``None`` when it is absent; validated: the fields the leaderboard reads, named when missing."""
    path = Path(results_dir) / EDIT_QUALITY_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeaderboardError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LeaderboardError(f"{path}: expected the JSON object bench.studies.ddb_edit_quality writes")
    for key in ("command", "curve"):
        if key not in data:
            raise LeaderboardError(f"{path}: missing field {key!r}")
    if not isinstance(data["curve"], list) or not data["curve"]:
        raise LeaderboardError(f"{path}: field 'curve' must be a non-empty list of points")
    for i, point in enumerate(data["curve"]):
        if not isinstance(point, dict) or not isinstance(point.get("oracle_mix"), int | float):
            raise LeaderboardError(f"{path}: curve[{i}].oracle_mix must be a number")
        for key in ("composition_success_all", "composition_success_kept", "ddb_test_worst_group_acc",
                    "ddb_test_avg_acc", "erm_test_worst_group_acc"):
            stat = point.get(key)
            if not isinstance(stat, dict) or not {"mean", "std", "n"} <= set(stat):
                raise LeaderboardError(f"{path}: curve[{i}].{key} must be an object with 'mean', 'std' and 'n'")
    return {**data, "path": path}


def latest_rows(versions: list[Version]) -> dict[str, list[dict]]:
    """Per dataset, each method's row from the newest version folder that has it (ablations,
    versions run with config changes, are never ranked)."""
    best: dict[tuple[str, str], dict] = {}
    for v in versions:  # oldest first: newer overwrite
        if v.ablation:
            continue
        for _, row in v.summary.iterrows():
            best[(v.dataset, str(row["method"]))] = {**row.to_dict(), "version": v}
    per: dict[str, list[dict]] = {}
    for (dataset, _), row in best.items():
        per.setdefault(dataset, []).append(row)
    return per


def _ablation_note(v: Version) -> str:
    return f"; ablation, not ranked: {', '.join(v.ablation)}" if v.ablation else ""


def ordered_datasets(names) -> list[str]:
    names = set(names)
    return [d for d in DATASET_ORDER if d in names] + sorted(names - set(DATASET_ORDER))


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _pm(mean, std=None) -> str:
    m, s = _num(mean), _num(std)
    if m is None:
        return "n/a"
    return f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"


# -- figures ---------------------------------------------------------------------------

def plot_wga(reproduced: dict[str, list[dict]], published: list[dict], submissions: list[dict],
             out_png: Path) -> Path | None:
    """Worst-group accuracy by method, one panel per dataset: reproduced (bars, ± std),
    submissions (hatched bars) and published numbers (black diamonds)."""
    import matplotlib  # deferred: heavy, only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy, only plotting needs it

    datasets = ordered_datasets([*reproduced, *(p["dataset"] for p in published),
                                 *(s["dataset"] for s in submissions)])
    if not datasets:
        return None
    ncols = min(2, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 3.9 * nrows + 0.5), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(datasets):]:
        ax.axis("off")
    for ax, ds in zip(flat, datasets):
        rep = {display_name(str(r["method"])): r for r in reproduced.get(ds, [])}
        pub = [p for p in published if p["dataset"] == ds]
        sub = [s for s in submissions if s["dataset"] == ds]
        methods = list(rep) + [m for m in dict.fromkeys(p["method"] for p in pub) if m not in rep]
        methods += [s["name"] for s in sub]
        xs = range(len(methods))
        for x, m in zip(xs, methods):
            if m in rep:
                r = rep[m]
                height = _num(r["worst_group_acc_mean"]) or 0
                ax.bar(x, height, yerr=_num(r["worst_group_acc_std"]) or 0,
                       color="#3b7dd8", capsize=3, label="reproduced (mean ± std)")
                ax.text(x, height + 1.5, f"{height:.1f}", ha="center", va="bottom", fontsize=7)
            for s in sub:
                if s["name"] == m:
                    ax.bar(x, s["worst_group_acc"], color="#f2b134", hatch="//", label="submission")
            ys = [p["worst_group_acc"] for p in pub if p["method"] == m]
            if ys:
                ax.scatter([x] * len(ys), ys, marker="D", color="black", zorder=3, s=22, label="published")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(methods, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(ds)
        ax.set_ylabel("worst-group accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = [], []
    for ax in flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.9 * nrows + 0.5)))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def edit_quality_references(data: dict, toy_rows: list[dict]) -> list[dict]:
    """The horizontal lines of the edit-quality figure: the ERM model DDB starts from (the
    study's own ERM runs, mean over seeds) and the best baseline of the toy table (highest
    worst-group mean of a method other than ERM and DDB), the latter only when the study ran
    the toy's default config (no ``overrides``), so that both numbers measure the same data."""
    refs = []
    erm = [v for v in (_num(p["erm_test_worst_group_acc"]["mean"]) for p in data["curve"]) if v is not None]
    if erm:
        value = sum(erm) / len(erm)  # one ERM run per seed, shared by every mix: equal means
        refs.append({"kind": "erm", "value": value, "label": f"ERM start (study's ERM runs): {value:.1f}"})
    baselines = [r for r in toy_rows if str(r["method"]) not in NOT_BASELINES
                 and _num(r["worst_group_acc_mean"]) is not None]
    if baselines and not data.get("overrides"):
        best = max(baselines, key=lambda r: _num(r["worst_group_acc_mean"]))
        value = _num(best["worst_group_acc_mean"])
        refs.append({"kind": "baseline", "value": value,
                     "label": f"best baseline: {display_name(str(best['method']))} {value:.1f} "
                              f"(toy table, {best['version'].name})"})
    return refs


def plot_edit_quality(data: dict, refs: list[dict], out_png: Path) -> Path | None:
    """DDB's test worst-group accuracy (y) against the measured composition success of all the
    edits of each mix (x), each point labelled with its oracle share, ± sample std over seeds on
    both axes when there is more than one seed; ``refs`` as dashed horizontal lines."""
    import matplotlib  # deferred: heavy, only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy, only plotting needs it

    points = sorted((p for p in data["curve"] if _num(p["composition_success_all"]["mean"]) is not None
                     and _num(p["ddb_test_worst_group_acc"]["mean"]) is not None), key=lambda p: p["oracle_mix"])
    if not points:
        return None
    xs = [100 * _num(p["composition_success_all"]["mean"]) for p in points]
    ys = [_num(p["ddb_test_worst_group_acc"]["mean"]) for p in points]
    xerr = [100 * (_num(p["composition_success_all"]["std"]) or 0) for p in points]
    yerr = [_num(p["ddb_test_worst_group_acc"]["std"]) or 0 for p in points]
    several = any(int(p["ddb_test_worst_group_acc"]["n"] or 0) > 1 for p in points)
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10.4, 4.4))
    for a in (ax, zoom):  # the whole 0-100 square, and the points' own range
        a.errorbar(xs, ys, xerr=xerr if several else None, yerr=yerr if several else None, fmt="o-",
                   color="#3b7dd8", capsize=3, label="DDB (mean ± std over seeds)" if several else "DDB (one seed)")
        for ref, color in zip(refs, ("#7a7a7a", "#d8743b")):
            a.axhline(ref["value"], ls="--", lw=1.2, color=color, label=ref["label"])
    for p, x, y in zip(points, xs, ys):
        zoom.annotate(f"{100 * p['oracle_mix']:g}% oracle", (x, y), textcoords="offset points", xytext=(5, 6),
                      fontsize=8)
    near = [r["value"] for r in refs if min(ys) - 10 <= r["value"] <= max(ys) + 10]
    zoom.set_xlim(max(0, min(xs) - 4), min(100, max(xs) + 6))
    zoom.set_ylim(max(0, min(ys + near) - 3), min(100, max(ys + near) + 3))
    zoom.set_xlabel("composition success (%), zoomed")
    zoom.grid(alpha=0.3)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("composition success of the mix's edits, all edits (%)")
    ax.set_ylabel("DDB test worst-group accuracy (%)")
    ax.set_title("DDB on the toy: worst-group accuracy against edit quality", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# -- writing -------------------------------------------------------------------------------

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class Link:
    """A table cell that links to a file."""

    text: str
    href: str


@dataclass
class Table:
    """A table of display strings (or :class:`Link` cells), written as Markdown through pandas
    and as HTML by the page template."""

    header: list[str]
    rows: list[list]

    def markdown(self) -> str:
        cells = [[f"[{c.text}]({c.href})" if isinstance(c, Link) else str(c) for c in r] for r in self.rows]
        return pd.DataFrame(cells, columns=self.header).to_markdown(index=False, disable_numparse=True)


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _numeric(cell) -> bool:
    """Right-aligned cells of the page: numbers, "n/a", "about 97.0"."""
    return not isinstance(cell, Link) and (str(cell)[:1].isdigit() or str(cell).startswith(("n/a", "about")))


def group_labels(method: str, provenance: dict | None = None) -> str:
    """``"no/yes"``: whether ``method`` needs group labels in training / in validation, from its
    class (:func:`spuraug.methods.get_method`); for a method no longer registered, from the
    version's provenance; ``"n/a"`` when neither says."""
    try:
        ann = dict(get_method(method).annotation)
    except KeyError:
        ann = (provenance or {}).get("annotation", {}).get(method) or {}
    if not {"train_group_labels", "val_group_labels"} <= set(ann):
        return "n/a"
    return "/".join("yes" if ann[k] else "no" for k in ("train_group_labels", "val_group_labels"))


def erm_recipe(dataset: str) -> str:
    """The ERM recipe (baselines/erm.py RECIPES) the dataset's config names, to set a reproduced
    ERM row beside the published rows of the same recipe; "custom" when unknown."""
    try:
        return str(load_config(dataset, "erm")["hparams"].get("recipe", "custom"))
    except (ConfigError, KeyError):
        return "custom"


def _reproduced_table(rows: list[dict], link_base: Path) -> Table:
    header = ["method", "worst-group acc", "avg acc (plain)", "adjusted avg acc (train-weighted)", "seeds",
              "group labels train/val", "version (provenance)"]
    body = []
    for r in rows:
        v: Version = r["version"]
        method = str(r["method"])
        recipe = erm_recipe(v.dataset) if method == "erm" else "custom"
        name = display_name(method) + (f" (recipe {recipe})" if recipe != "custom" else "")
        body.append([name, _pm(r["worst_group_acc_mean"], r["worst_group_acc_std"]),
                     _pm(r["avg_acc_mean"], r["avg_acc_std"]),
                     _pm(r["adjusted_avg_acc_mean"], r["adjusted_avg_acc_std"]), str(int(r["n_seeds"])),
                     group_labels(method, v.provenance), Link(v.name, _rel(v.path / "provenance.json", link_base))])
    return Table(header, body)


def _submission_table(subs: list[dict], link_base: Path) -> Table:
    header = ["submission", "worst-group acc", "avg acc (plain)", "adjusted avg acc (train-weighted)", "file"]
    body = [[s["name"], _pm(s["worst_group_acc"]), _pm(s["avg_acc"]), _pm(s.get("adjusted_avg_acc")),
             Link(s["path"].name, _rel(s["path"], link_base))] for s in subs]
    return Table(header, body)


def _published_table(pubs: list[dict]) -> Table:
    header = ["method", "worst-group acc", "avg acc (as reported)", "group labels train/val", "source"]
    body = []
    for p in pubs:
        wga = _pm(p["worst_group_acc"], p.get("worst_group_acc_std"))
        if p.get("approximate"):
            wga = "about " + wga
        src = p["cite"] + (f" ({p['note']})" if p.get("note") else "")
        method = p["method"] + (f" (recipe {p['recipe']})" if p.get("recipe") else "")
        body.append([method, wga, _pm(p.get("avg_acc")), p.get("group_labels", "n/a"), src])
    return Table(header, body)


def _pm_stat(stat: dict, scale: float = 1.0) -> str:
    """``mean ± std`` of a ``{"mean", "std", "n"}`` record of the studies, times ``scale``."""
    m, sd = _num(stat.get("mean")), _num(stat.get("std"))
    return _pm(None if m is None else scale * m, None if sd is None else scale * sd)


def _edit_quality_table(data: dict) -> Table:
    header = ["oracle share", "composition success, all edits (%)", "composition success, kept edits (%)",
              "DDB worst-group acc", "DDB avg acc", "seeds"]
    body = [[f"{100 * p['oracle_mix']:g}%", _pm_stat(p["composition_success_all"], 100),
             _pm_stat(p["composition_success_kept"], 100), _pm_stat(p["ddb_test_worst_group_acc"]),
             _pm_stat(p["ddb_test_avg_acc"]), str(p["ddb_test_worst_group_acc"]["n"])]
            for p in sorted(data["curve"], key=lambda p: p["oracle_mix"])]
    return Table(header, body)


def edit_quality_command(results_dir: Path) -> str:
    """The command that writes the curve the leaderboard reads from ``results_dir``."""
    return ("python -m bench.studies.ddb_edit_quality --seeds 0 1 2 --out "
            + (Path(results_dir) / EDIT_QUALITY_JSON).as_posix())


def _edit_quality_section(eq: dict, base: Path) -> dict:
    """What the toy section shows of the edit-quality curve, with links relative to ``base``."""
    if eq.get("data") is None:
        return {"measured": False, "command": eq["command"]}
    data = eq["data"]
    git = data.get("git") or {}
    sha = str(git.get("short_sha") or "")
    return {"measured": True, "command": data["command"], "table": eq["table"],
            "png": _rel(eq["png"], base) if eq.get("png") else None,
            "json": Link(EDIT_QUALITY_JSON.name, _rel(data["path"], base)),
            "commit": sha + (" (dirty)" if git.get("dirty") else "") if sha else "",
            "overrides": ", ".join(f"{k}={v}" for k, v in sorted(flatten_overrides(data.get("overrides") or {}).items())),
            "refs": eq["refs"]}


def examples_png(versions: list[Version], rows: list[dict]) -> Path | None:
    """The DDB examples grid of a dataset: that of the version folder the DDB row comes from,
    else of the newest version folder that holds one."""
    ddb = [r["version"] for r in rows if str(r["method"]) == "ddb"]
    for v in ddb + list(reversed(versions)):
        if (v.path / EXAMPLES_PNG).is_file():
            return v.path / EXAMPLES_PNG
    return None


def _sections(datasets: list[str], versions: list[Version], reproduced: dict[str, list[dict]],
              submissions: list[dict], published: list[dict], images: dict[str, Path], base: Path,
              edit_quality: dict | None = None) -> list[dict]:
    """What the templates show per dataset, with links relative to ``base``; ``edit_quality``
    (the curve of :func:`load_edit_quality`, or the command that measures it) in the toy section."""
    out = []
    for ds in datasets:
        rows = reproduced.get(ds, [])
        subs = [s for s in submissions if s["dataset"] == ds]
        pubs = [p for p in published if p["dataset"] == ds]
        out.append({
            "name": ds,
            "reproduced": _reproduced_table(rows, base) if rows else None,
            "submissions": _submission_table(subs, base) if subs else None,
            "published": _published_table(pubs) if pubs else None,
            "sources": list(dict.fromkeys((p["cite"], p["reference"]) for p in pubs)),
            "examples": _rel(images[f"ddb_{ds}"], base) if f"ddb_{ds}" in images else None,
            "edit_quality": _edit_quality_section(edit_quality, base) if ds == "toy" and edit_quality else None,
            "versions": [{"name": v.name, "href": _rel(v.path / "summary.md", base), "created": v.created,
                          "methods": ", ".join(map(str, v.summary["method"])), "note": _ablation_note(v)}
                         for v in reversed([v for v in versions if v.dataset == ds])],
        })
    return out


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html.j2"]),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.tests["link"] = lambda c: isinstance(c, Link)
    env.tests["numeric"] = _numeric
    return env


def build_leaderboard(results_dir: str | Path = "results", published_file: str | Path = PUBLISHED_FILE) -> dict:
    """Write ``<results>/leaderboard.md`` and ``<results>/leaderboard/index.html`` (+ PNGs) from
    the version folders under ``results_dir`` (never from runs/), the submissions and the
    published numbers.

    Returns ``{"markdown", "html", "images", "datasets"}`` (paths and the datasets shown).
    """
    results_dir = Path(results_dir)
    versions = find_versions(results_dir)
    published = load_published(published_file)
    submissions = load_submissions(results_dir)
    reproduced = latest_rows(versions)
    page_dir = results_dir / "leaderboard"
    page_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    wga_png = plot_wga(reproduced, published, submissions, page_dir / "wga.png")
    if wga_png:
        images["wga"] = wga_png
    curve = load_edit_quality(results_dir)
    datasets = ordered_datasets([*reproduced, *(p["dataset"] for p in published),
                                 *(s["dataset"] for s in submissions), *(["toy"] if curve else [])])
    edit_quality = {"data": curve, "command": edit_quality_command(results_dir)}
    eq_png = page_dir / EDIT_QUALITY_PNG
    if curve:
        edit_quality["refs"] = edit_quality_references(curve, reproduced.get("toy", []))
        edit_quality["table"] = _edit_quality_table(curve)
        edit_quality["png"] = plot_edit_quality(curve, edit_quality["refs"], eq_png)
        if edit_quality["png"]:
            images["edit_quality"] = eq_png
    if "edit_quality" not in images:
        eq_png.unlink(missing_ok=True)  # no figure of an older curve beside the page
    for ds in datasets:
        grid = examples_png([v for v in versions if v.dataset == ds], reproduced.get(ds, []))
        if grid:  # copied beside the page: the page stays self-contained
            images[f"ddb_{ds}"] = page_dir / f"ddb_{ds}.png"
            shutil.copyfile(grid, images[f"ddb_{ds}"])
    env = _environment()
    shown = "spuraug/configs/published.yaml" if Path(published_file) == PUBLISHED_FILE else str(published_file)
    common = {"stamp": time.strftime("%Y-%m-%d %H:%M"), "published_file": shown}
    md_path = results_dir / "leaderboard.md"
    md_path.write_text(env.get_template("leaderboard.md.j2").render(
        **common, wga=_rel(wga_png, results_dir) if wga_png else None,
        datasets=_sections(datasets, versions, reproduced, submissions, published, images, results_dir,
                           edit_quality)))
    html_path = page_dir / "index.html"
    html_path.write_text(env.get_template("leaderboard.html.j2").render(
        **common, wga=_rel(wga_png, page_dir) if wga_png else None,
        datasets=_sections(datasets, versions, reproduced, submissions, published, images, page_dir,
                           edit_quality)))
    return {"markdown": md_path, "html": html_path, "images": images, "datasets": datasets}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--published", default=str(PUBLISHED_FILE))
    p.add_argument("--no-screenshot", action="store_true",
                   help="skip rendering the page in headless Chromium")
    args = p.parse_args(argv)
    try:
        built = build_leaderboard(args.results_dir, args.published)
    except LeaderboardError as e:
        print(f"bench.leaderboard: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {built['markdown']} and {built['html']} ({', '.join(built['datasets'])})")
    if args.no_screenshot:
        return 0

    shot = Path(built["html"]).with_name("screenshot.png")
    try:
        rendered = render_page(built["html"], shot)
    except BrowserMissingError as e:
        print(f"bench.leaderboard: no screenshot: {e}")
        return 0
    if rendered["console_errors"]:
        print("bench.leaderboard: the page logs errors in Chromium:\n  " + "\n  ".join(rendered["console_errors"]),
              file=sys.stderr)
        return 1
    print(f"rendered in headless Chromium without console errors; screenshot {shot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
