"""``python -m bench.sweep``: run a sweep (methods x seeds on one dataset), then write a
new, never-overwritten version folder of result tables with provenance.

    python -m bench.sweep --dataset toy [--methods erm jtt] [--seeds 0 1 2] [--data-dir DIR]
        [--runs-dir runs] [--results-dir results] [--launcher local] [--set erm.epochs=2]

Finished runs are skipped and interrupted ones resume (``spuraug.runs.run_method``).
The version folder ``results/<dataset>/<YYYY-MM-DD>_<short-sha>[-dirty][-N]/`` holds
summary.csv, summary.md, summary.tex, provenance.json and ``runs/`` (copies of each
run's result.json, metrics.jsonl and config.json). See docs/harness.md.

One sweep at a time per runs folder and dataset (a file lock, ``<runs-dir>/<dataset>/.sweep.lock``):
a second sweep started meanwhile says so in one line and exits 0 without training or
writing a version folder (the first one's holds the results); each run also has its own
lock (:func:`spuraug.runs.run_lock`), so a ``spuraug train`` on a run being swept waits.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from bench.launch import RunOutcome, RunSpec, make_launcher
from bench.provenance import git_state, hardware, new_version_dir, software, write_json
from bench.summary import RunRecord, copy_runs, find_runs, format_console, summarize, write_summary

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)


def default_methods() -> list[str]:
    """Every method registered in :mod:`spuraug.methods`."""
    from spuraug.methods import method_names

    return list(method_names())


def parse_overrides(items: Sequence[str]) -> dict:
    """``["erm.epochs=2", "dataset.n_train=400"]`` -> ``{"erm": {"epochs": 2}, "dataset": {"n_train": 400}}``.

    Values are parsed as YAML scalars/lists (``2`` -> int, ``1e-3`` -> float, ``[1,2]`` -> list).
    """
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. erm.epochs=2)")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text)
        if isinstance(value, str) and _looks_float(value):
            value = float(value)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of {p!r}")
        node[leaf] = value
    return out


def _looks_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def merge_overrides(base: dict | None, extra: dict | None) -> dict | None:
    """Deep-merge two nested override dicts (``extra`` wins)."""
    if not base:
        return extra or None
    out = json.loads(json.dumps(base))
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_overrides(out[k], v)
        else:
            out[k] = v
    return out


# -- DDB generation throughput --------------------------------------------------------

def ddb_generation_throughput(runs_dir: str | Path, dataset: str) -> list[dict]:
    """Images/s of DDB's generation stages, read from the stage manifests under
    ``runs/<dataset>/ddb_artifacts/`` (spuraug/ddb/pipeline.py: inpaint and prune record
    ``images_per_s``) or ``runs/<dataset>/ddb/``.

    Any ``manifest*.json`` below those folders counts. A manifest (or each entry of its
    ``stages`` list/dict) contributes a row when it has ``images_per_s``, or a count of
    images (``n_generated``, ``n_images`` or ``images``) plus ``wall_time_s``/``seconds``.
    Missing artifacts give an empty list.
    """
    from bench.ddb_examples import ddb_artifact_dirs

    rows: list[dict] = []
    manifests = [p for base in ddb_artifact_dirs(runs_dir, dataset) for p in sorted(base.rglob("manifest*.json"))]
    for path in manifests:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(manifest, dict):
            continue
        entries: list[tuple[str, dict]] = [(str(manifest.get("stage", path.parent.name)), manifest)]
        stages = manifest.get("stages")
        if isinstance(stages, dict):
            entries += [(str(k), v) for k, v in stages.items() if isinstance(v, dict)]
        elif isinstance(stages, list):
            entries += [(str(v.get("stage", v.get("name", i))), v) for i, v in enumerate(stages) if isinstance(v, dict)]
        for stage, entry in entries:
            ips = _images_per_s(entry)
            if ips is not None:
                rows.append({"manifest": str(path), "stage": stage, "images_per_s": ips,
                             "images": _images(entry), "wall_time_s": _seconds(entry)})
    return rows


def _images(d: dict) -> float | None:
    counts = d.get("counts") if isinstance(d.get("counts"), dict) else {}
    for v in [*(d.get(k) for k in ("n_generated", "n_images", "images")), counts.get("generated")]:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, list):
            return float(len(v))
    return None


def _seconds(d: dict) -> float | None:
    for k in ("wall_time_s", "seconds", "elapsed_s", "time_s"):
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
    return None


def _images_per_s(d: dict) -> float | None:
    v = d.get("images_per_s")
    if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
        return float(v)
    n, s = _images(d), _seconds(d)
    return n / s if n and s else None


def throughput_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["## DDB generation throughput", "", "| stage | images | wall time (s) | images/s | manifest |",
             "|---|---|---|---|---|"]
    for r in rows:
        img = "n/a" if r["images"] is None else f"{r['images']:.0f}"
        wt = "n/a" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}"
        lines.append(f"| {r['stage']} | {img} | {wt} | {r['images_per_s']:.3f} | {r['manifest']} |")
    return "\n".join(lines)


# -- the sweep ------------------------------------------------------------------------

def build_provenance(command: str, dataset: str, methods: Sequence[str], seeds: Sequence[int],
                     records: list[RunRecord], outcomes: list[RunOutcome], problems: list[str],
                     git: dict, sweep_wall_time_s: float, ddb_throughput: list[dict],
                     overrides: dict | None = None, config_file: str | None = None) -> dict:
    """The provenance record of a version folder (keys listed in docs/harness.md)."""
    annotation: dict = {}
    selection: dict = {}
    config_hashes: dict = {}
    wall: dict = {}
    for r in records:
        key = f"{r.method}/seed{r.seed}"
        annotation.setdefault(r.method, r.result.get("annotation"))
        selection.setdefault(r.method, r.result.get("selection"))
        config_hashes[key] = r.result.get("config_hash")
        wall[key] = r.result.get("wall_time_s")
    return {
        "command": command,
        "dataset": dataset,
        "methods": list(methods),
        "seeds": list(seeds),
        # Config changes (--set, --config): a version with any is an ablation, not ranked.
        "overrides": dict(overrides or {}),
        "config_file": config_file,
        "git": git,
        "software": software(),
        "hardware": hardware(),
        "annotation": annotation,
        "selection": selection,
        "config_hashes": config_hashes,
        "wall_time_s": wall,
        "sweep": {
            "wall_time_s": sweep_wall_time_s,
            "outcomes": [o.to_json() for o in outcomes],
            "missing_or_unfinished": problems,
        },
        "ddb_generation_throughput": ddb_throughput,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class SweepBusy(RuntimeError):
    """Another sweep holds the runs folder's sweep lock."""


def sweep_lock_path(runs_dir: str | Path, dataset: str) -> Path:
    """The lock a sweep holds on ``runs_dir/<dataset>`` while it trains and writes its version folder."""
    return Path(runs_dir) / dataset / ".sweep.lock"


def run_sweep(dataset: str, methods: Sequence[str] | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
              runs_dir: str = "runs", results_dir: str = "results", data_dir: str | None = None,
              config_file: str | None = None, overrides: dict | None = None, launcher: str = "local",
              force: bool = False, run: bool = True, command: str | None = None,
              log=print) -> tuple[Path | None, pd.DataFrame, list[RunOutcome]]:
    """Run ``methods x seeds`` on ``dataset`` and write a new version folder.

    Returns ``(version_dir, summary, outcomes)``; ``version_dir`` is ``None`` when no run
    finished (nothing to summarise). Runs are skipped/resumed as ``run_method`` does;
    ``run=False`` only collects what ``runs_dir`` already holds.
    """
    methods = list(methods) if methods else default_methods()
    seeds = [int(s) for s in seeds]
    command = command or shlex.join([sys.executable, "-m", "bench.sweep", *sys.argv[1:]])
    git = git_state()
    t0 = time.monotonic()
    outcomes: list[RunOutcome] = []
    lock = None
    if run:
        from filelock import FileLock, Timeout

        path = sweep_lock_path(runs_dir, dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise SweepBusy(f"another sweep is running on {Path(runs_dir) / dataset} (lock {path}); "
                            "this one skips: that sweep's version folder will hold the results") from None
    try:
        return _sweep_locked(dataset, methods, seeds, runs_dir, results_dir, data_dir, config_file, overrides,
                             launcher, force, run, command, log, git, t0, outcomes)
    finally:
        if lock is not None:
            lock.release()


def _sweep_locked(dataset, methods, seeds, runs_dir, results_dir, data_dir, config_file, overrides, launcher,
                  force, run, command, log, git, t0, outcomes):
    if run:
        la = make_launcher(launcher)
        for m in methods:
            for s in seeds:
                la.submit(RunSpec(dataset, m, s, runs_dir, data_dir, config_file, overrides, force))
        outcomes = la.wait()
    sweep_time = time.monotonic() - t0
    records, problems = find_runs(runs_dir, dataset, methods, seeds)
    df = summarize(records, method_order=methods)
    if not records:
        log(f"no finished runs of {dataset!r} under {runs_dir}; nothing to summarise")
        for p in problems:
            log(f"  {p}")
        return None, df, outcomes
    out = new_version_dir(results_dir, dataset, git)
    ddb = ddb_generation_throughput(runs_dir, dataset)
    write_summary(df, out, title=f"{dataset}: {out.name}", extra_md=throughput_markdown(ddb))
    copy_runs(records, out)
    provenance = build_provenance(command, dataset, methods, seeds, records, outcomes, problems, git,
                                  sweep_time, ddb, overrides=overrides,
                                  config_file=str(config_file) if config_file else None)
    write_json(out / "provenance.json", provenance)
    log("")
    log(f"{dataset}: test accuracy (%) at the selected checkpoint, mean ± sample std over seeds")
    log(format_console(df))
    if ddb:
        log("")
        log("DDB generation throughput: " + ", ".join(f"{r['stage']} {r['images_per_s']:.3f} images/s" for r in ddb))
    for p in problems:
        log(f"not in the table: {p}")
    log(f"wrote {out}")
    return out, df, outcomes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--methods", nargs="+", help="default: every registered method")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--data-dir")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--config", dest="config_file", help="config file instead of bench/configs/<dataset>.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, dotted key (repeatable), e.g. --set erm.epochs=2")
    p.add_argument("--launcher", default="local", help="local (in-process) | local-subprocess | ray (RAY_ADDRESS, else a local Ray; docs/scaleout.md)")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--no-run", action="store_true", help="only collect what --runs-dir already holds")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as e:
        print(f"bench.sweep: error: {e}", file=sys.stderr)
        return 2
    try:
        out, df, outcomes = run_sweep(
            args.dataset, args.methods, args.seeds, args.runs_dir, args.results_dir, args.data_dir,
            args.config_file, overrides or None, args.launcher, args.force, run=not args.no_run,
        )
    except KeyboardInterrupt:
        print("bench.sweep: interrupted; finished runs are kept, re-run to resume", file=sys.stderr)
        return 130
    except SweepBusy as e:
        print(f"bench.sweep: {e}", file=sys.stderr)
        return 0
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"bench.sweep: {len(failed)} run(s) failed: " + ", ".join(o.spec.label for o in failed),
              file=sys.stderr)
        return 1
    return 0 if out is not None else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["run_sweep", "parse_overrides", "ddb_generation_throughput", "default_methods", "main"]
