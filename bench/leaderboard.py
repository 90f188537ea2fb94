"""``python -m bench.leaderboard``: build results/leaderboard.md and the static page
results/leaderboard/index.html from every version folder, every scored submission and
the published numbers (bench/published.yaml), always labelled apart.

Inputs (see docs/harness.md):

- version folders ``results/<dataset>/<version>/`` written by ``bench.sweep``;
- submissions ``results/submissions/<dataset>/<name>.json``: the output of
  ``spuraug score --dataset <dataset> --predictions preds.csv --json``, optionally with
  the keys ``name``, ``description``, ``url`` and ``annotation`` added by hand;
- ``bench/published.yaml``: the published numbers of shared/spec/anchors.md;
- DDB artifacts under ``runs/<dataset>/ddb/`` for the grid of examples (optional).

The page is self-contained: inline CSS, no scripts, images as PNG files beside it.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from bench.launch import flatten_overrides
from bench.summary import SUMMARY_COLUMNS

#: Folders directly under results/ that are not datasets.
RESERVED = {"reference", "submissions", "leaderboard", "throughput"}
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
DISPLAY_NAMES = {"erm": "ERM", "groupdro": "GroupDRO", "jtt": "JTT", "dfr": "DFR", "ddb": "DDB"}
DATASET_ORDER = ("toy", "waterbirds", "celeba", "metashift")


class LeaderboardError(ValueError):
    """A malformed input file; the message names the file and the field."""


def display_name(method: str) -> str:
    return DISPLAY_NAMES.get(method.lower(), method)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def ddb_grid(runs_dir: str | Path, dataset: str, out_png: Path, n_rows: int = 8) -> Path | None:
    """A grid of DDB examples (source | mask | generated | verdict), half kept and half pruned.

    Reads the prune tables that :func:`bench.ddb_examples.find_examples` finds under
    ``runs/<dataset>/ddb/``; returns ``None`` when there are none.
    """
    from bench.ddb_examples import find_examples

    examples = find_examples(runs_dir, dataset)
    if not examples:
        return None
    kept = [e for e in examples if e["kept"]]
    pruned = [e for e in examples if not e["kept"]]
    half = n_rows // 2
    chosen = kept[:half] + pruned[: n_rows - min(half, len(kept))]
    chosen += kept[half: half + n_rows - len(chosen)]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(chosen), 3, figsize=(6.3, 2.1 * len(chosen)), squeeze=False)
    for row, e in zip(axes, chosen):
        for ax, key, title in zip(row, ("source", "mask", "generated"), ("source", "mask", "generated")):
            ax.set_xticks([])  # keep the frame: an all-white mask stays visible
            ax.set_yticks([])
            p = e.get(key)
            if p and Path(p).is_file():
                with Image.open(p) as im:
                    if key == "mask":  # fixed range: an all-object mask must show white, not black
                        ax.imshow(im.convert("L"), cmap="gray", vmin=0, vmax=255)
                    else:
                        ax.imshow(im.convert("RGB"))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=8)
            ax.set_title(title, fontsize=8)
        verdict = "KEPT" if e["kept"] else "PRUNED"
        detail = "  ".join(f"{k}={e[k]:.3g}" for k in ("p", "rho") if isinstance(e.get(k), int | float))
        row[2].set_title(f"{verdict} {detail}".strip(), fontsize=8, color="#1a7f37" if e["kept"] else "#c62828")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


# -- writing -------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;padding:0 1rem;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ec;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.92rem}
th,td{border:1px solid #d5dbe5;padding:.3rem .6rem;text-align:right}th{background:#f1f4f9;text-align:left}
td:first-child,th:first-child,td.txt{text-align:left}
.tag{display:inline-block;font-size:.75rem;font-weight:600;padding:.05rem .45rem;border-radius:.6rem;
margin-right:.4rem;vertical-align:middle}
.reproduced{background:#dbe8fb;color:#174a8c}.published{background:#ececec;color:#333}
.submission{background:#fdeccb;color:#7a4d00}
.note{color:#5a6475;font-size:.88rem}img{max-width:100%;border:1px solid #e3e7ee}
caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.3rem}
"""


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def erm_recipe(dataset: str) -> str:
    """The ERM recipe (baselines/erm.py RECIPES) the dataset's config names, to set a reproduced
    ERM row beside the published rows of the same recipe; "custom" when unknown."""
    from spuraug.config import ConfigError, load_config

    try:
        return str(load_config(dataset, "erm")["hparams"].get("recipe", "custom"))
    except (ConfigError, KeyError):
        return "custom"


def _reproduced_table(rows: list[dict], link_base: Path, fmt: str) -> list[str]:
    header = ["method", "worst-group acc", "avg acc (plain)", "adjusted avg acc (train-weighted)", "seeds",
              "version (provenance)"]
    body = []
    for r in rows:
        v: Version = r["version"]
        link = _rel(v.path / "provenance.json", link_base)
        recipe = erm_recipe(v.dataset) if r["method"] == "erm" else "custom"
        name = display_name(str(r["method"])) + (f" (recipe {recipe})" if recipe != "custom" else "")
        body.append([name, _pm(r["worst_group_acc_mean"], r["worst_group_acc_std"]),
                     _pm(r["avg_acc_mean"], r["avg_acc_std"]),
                     _pm(r["adjusted_avg_acc_mean"], r["adjusted_avg_acc_std"]), str(int(r["n_seeds"])),
                     (v.name, link)])
    return _table(header, body, fmt)


def _table(header: list[str], body: list[list], fmt: str, caption: str = "") -> list[str]:
    def cell(c) -> str:
        if isinstance(c, tuple):
            text, href = c
            return f"[{text}]({href})" if fmt == "md" else f'<a href="{html.escape(href)}">{html.escape(text)}</a>'
        return str(c) if fmt == "md" else html.escape(str(c))

    if fmt == "md":
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(cell(c) for c in r) + " |" for r in body), ""]
    out = ["<table>"]
    if caption:
        out.append(caption)
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    def td(c) -> str:
        numeric = not isinstance(c, tuple) and (str(c)[:1].isdigit() or str(c).startswith(("n/a", "about")))
        return f"<td>{cell(c)}</td>" if numeric else f"<td class='txt'>{cell(c)}</td>"

    out += ["<tr>" + "".join(td(c) for c in r) + "</tr>" for r in body]
    out.append("</table>")
    return out


def _submission_rows(subs: list[dict], link_base: Path) -> tuple[list[str], list[list]]:
    header = ["submission", "worst-group acc", "avg acc (plain)", "adjusted avg acc (train-weighted)", "file"]
    body = [[s["name"], _pm(s["worst_group_acc"]), _pm(s["avg_acc"]), _pm(s.get("adjusted_avg_acc")),
             (s["path"].name, _rel(s["path"], link_base))] for s in subs]
    return header, body


def _published_rows(pubs: list[dict]) -> tuple[list[str], list[list]]:
    header = ["method", "worst-group acc", "avg acc (as reported)", "group labels train/val", "source"]
    body = []
    for p in pubs:
        wga = _pm(p["worst_group_acc"], p.get("worst_group_acc_std"))
        if p.get("approximate"):
            wga = "about " + wga
        src = p["cite"] + (f" ({p['note']})" if p.get("note") else "")
        method = p["method"] + (f" (recipe {p['recipe']})" if p.get("recipe") else "")
        body.append([method, wga, _pm(p.get("avg_acc")), p.get("group_labels", "n/a"), src])
    return header, body


def build_leaderboard(results_dir: str | Path = "results", runs_dir: str | Path = "runs",
                      published_file: str | Path = PUBLISHED_FILE) -> dict:
    """Write ``<results>/leaderboard.md`` and ``<results>/leaderboard/index.html`` (+ PNGs).

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
    datasets = ordered_datasets([*reproduced, *(p["dataset"] for p in published),
                                 *(s["dataset"] for s in submissions)])
    for ds in datasets:
        grid = ddb_grid(runs_dir, ds, page_dir / f"ddb_{ds}.png")
        if grid:
            images[f"ddb_{ds}"] = grid
    md_path = results_dir / "leaderboard.md"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    legend = ("**reproduced** = trained and evaluated by this project (`make bench`), mean ± sample std over "
              "seeds, newest version folder per method; **submission** = outside predictions scored with "
              "`spuraug score`; **published** = numbers copied from the papers (bench/published.yaml), "
              "NOT reproduced here. Accuracies in percent on the test split. avg = plain accuracy over test "
              "examples; adjusted avg = per-group accuracy weighted by training-group proportions.")
    md = ["# spuraug leaderboard", "", f"Built {stamp} by `make leaderboard`. {legend}", ""]
    if wga_png:
        md += [f"![worst-group accuracy by method and dataset]({_rel(wga_png, results_dir)})", ""]
    body = [f"<h1>spuraug leaderboard</h1><p class='note'>Built {html.escape(stamp)} by <code>make leaderboard"
            f"</code>.</p><p>{_md_inline_to_html(legend)}</p>"]
    if wga_png:
        body.append(f'<h2>Worst-group accuracy</h2><img src="{_rel(wga_png, page_dir)}" '
                    f'alt="worst-group accuracy by method and dataset">')
    for ds in datasets:
        md.append(f"## {ds}")
        body.append(f'<h2 id="{html.escape(ds)}">{html.escape(ds)}</h2>')
        rows = reproduced.get(ds, [])
        md += ["### Reproduced (this project)", ""]
        body.append('<h3><span class="tag reproduced">reproduced</span>this project</h3>')
        if rows:
            md += _reproduced_table(rows, results_dir, "md")
            body += _reproduced_table(rows, page_dir, "html")
        else:
            md += ["No version folder yet: run `make bench DATASET=" + ds + "`.", ""]
            body.append(f"<p class='note'>No version folder yet: run <code>make bench DATASET={html.escape(ds)}"
                        f"</code>.</p>")
        subs = [s for s in submissions if s["dataset"] == ds]
        if subs:
            md += ["### Submissions (scored with `spuraug score`)", ""]
            body.append('<h3><span class="tag submission">submission</span>scored with spuraug score</h3>')
            h, b = _submission_rows(subs, results_dir)
            md += _table(h, b, "md")
            h, b = _submission_rows(subs, page_dir)
            body += _table(h, b, "html")
        pubs = [p for p in published if p["dataset"] == ds]
        if pubs:
            md += ["### Published (copied from the papers, not reproduced here)", ""]
            body.append('<h3><span class="tag published">published</span>copied from the papers, '
                        'not reproduced here</h3>')
            h, b = _published_rows(pubs)
            md += _table(h, b, "md")
            body += _table(h, b, "html")
            refs = dict.fromkeys((p["cite"], p["reference"]) for p in pubs)
            md += ["Sources:", "", *(f"- {c}: {r}" for c, r in refs), ""]
            body.append("<p class='note'>Sources:</p><ul class='note'>"
                        + "".join(f"<li>{html.escape(c)}: {html.escape(r)}</li>" for c, r in refs) + "</ul>")
        if f"ddb_{ds}" in images:
            png = images[f"ddb_{ds}"]
            md += ["### DDB examples: source, mask, generated image, pruning verdict", "",
                   f"![DDB examples on {ds}]({_rel(png, results_dir)})", ""]
            body.append(f"<h3>DDB examples: source, mask, generated image, pruning verdict</h3>"
                        f'<img src="{_rel(png, page_dir)}" alt="DDB examples on {html.escape(ds)}">')
        ds_versions = [v for v in versions if v.dataset == ds]
        if ds_versions:
            md += ["### All version folders", ""]
            md += [f"- [{v.name}]({_rel(v.path / 'summary.md', results_dir)}) ({v.created}, methods: "
                   f"{', '.join(map(str, v.summary['method']))}){_ablation_note(v)}" for v in reversed(ds_versions)]
            md.append("")
            body.append("<details><summary>All version folders</summary><ul>")
            body += [f'<li><a href="{html.escape(_rel(v.path / "summary.md", page_dir))}">{html.escape(v.name)}'
                     f"</a> ({html.escape(v.created)}; methods: "
                     f"{html.escape(', '.join(map(str, v.summary['method'])))}){html.escape(_ablation_note(v))}</li>"
                     for v in reversed(ds_versions)]
            body.append("</ul></details>")
    md_path.write_text("\n".join(md) + "\n")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>spuraug leaderboard</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    html_path = page_dir / "index.html"
    html_path.write_text(page)
    return {"markdown": md_path, "html": html_path, "images": images, "datasets": datasets}


def _md_inline_to_html(text: str) -> str:
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--published", default=str(PUBLISHED_FILE))
    p.add_argument("--no-screenshot", action="store_true",
                   help="skip rendering the page in headless Chromium")
    args = p.parse_args(argv)
    try:
        built = build_leaderboard(args.results_dir, args.runs_dir, args.published)
    except LeaderboardError as e:
        print(f"bench.leaderboard: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {built['markdown']} and {built['html']} ({', '.join(built['datasets'])})")
    if args.no_screenshot:
        return 0
    from bench.browser import BrowserMissingError, render_page

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
