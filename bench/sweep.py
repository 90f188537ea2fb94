"""``python -m bench.sweep``: run a sweep (methods x seeds on one dataset), then write a
new, never-overwritten version folder of result tables with provenance.

    python -m bench.sweep --dataset toy [--methods erm jtt] [--seeds 0 1 2] [--data-dir DIR]
        [--runs-dir runs] [--results-dir results] [--launcher local] [--set erm.epochs=2]

Finished runs are skipped and interrupted ones resume (``spuraug.runs.run_method``).
The version folder ``results/<dataset>/<YYYY-MM-DD>_<short-sha>[-dirty][-N]/`` holds
summary.csv, summary.md, summary.tex, provenance.json, ``runs.jsonl`` (one line per run:
method, seed, config hash, selected epoch, metrics) and, when DDB's artifacts are under the
runs folder, ``ddb_examples.png``. Per-epoch lines and checkpoints stay in the runs folder.
See docs/harness.md.

One sweep at a time per runs folder and dataset (a file lock, ``<runs-dir>/<dataset>/.sweep.lock``):
a second sweep started meanwhile says so in one line and exits 0 without training or
writing a version folder (the first one's holds the results); each run also has its own
lock (:func:`spuraug.runs.run_lock`), so a ``spuraug train`` on a run being swept waits.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock, Timeout

from bench.ddb_examples import EXAMPLES_PNG, ddb_artifact_dirs, ddb_grid
from bench.launch import RunOutcome, RunSpec, local_parallelism, log_line, make_launcher
from bench.provenance import git_state, hardware, new_version_dir, software, write_json
from bench.summary import RunRecord, find_runs, format_console, summarize, write_runs_jsonl, write_summary
from spuraug.config import ConfigError, check_seed, load_config, parse_overrides
from spuraug.ddb.artifacts import DONE, MANIFEST
from spuraug.methods import method_names
from spuraug.records import RecordError, StageManifest

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)


#: What `make bench` runs without METHODS=: DDB next to the four baselines of the design card
#: (ERM, GroupDRO, JTT, DFR). Every other registered method (SUBG, RWG, ...) runs when named.
BENCHMARK_METHODS: tuple[str, ...] = ("erm", "groupdro", "jtt", "dfr", "ddb")


def default_methods() -> list[str]:
    """:data:`BENCHMARK_METHODS` that are registered, in the registry's order."""
    return [m for m in method_names() if m in BENCHMARK_METHODS]


def check_sweep(dataset: str, methods: Sequence[str], seeds: Sequence[int], config_file: str | None,
                overrides: dict | None) -> None:
    """Every seed and every known method's resolved config (types and ranges), before anything
    runs or is written: :class:`~spuraug.config.ConfigError` naming the value. An unknown
    method is left to its run, which fails alone (the sweep goes on)."""
    for s in seeds:
        check_seed(s)
    known = set(method_names())
    for m in methods:
        if m in known:
            load_config(dataset, m, config_file, overrides)


def split_stale(records: Sequence[RunRecord], dataset: str, config_file: str | None,
                overrides: dict | None) -> tuple[list[RunRecord], list[str]]:
    """``(current, problems)``: the records whose ``config_hash`` is this sweep's for their
    method, and one line for each other one (a finished run of another config, e.g. left in
    place when this sweep's run stopped with ``RunConfigMismatch``): a table must not mix
    configs under one header."""
    expected: dict[str, str | None] = {}
    current, problems = [], []
    for r in records:
        m = r.method
        if m not in expected:
            try:
                expected[m] = load_config(dataset, m, config_file, overrides)["config_hash"]
            except (KeyError, ValueError, ConfigError):
                expected[m] = None  # a method this code cannot configure: nothing to compare
        have = r.result.get("config_hash")
        if expected[m] is not None and have is not None and have != expected[m]:
            problems.append(f"{r.path}: its run has config {have}, not this sweep's {expected[m]} "
                            f"(a stale run: redo it with --force, or use another --runs-dir)")
        else:
            current.append(r)
    return current, problems


# -- DDB generation throughput --------------------------------------------------------

def ddb_generation_throughput(runs_dir: str | Path, dataset: str) -> list[dict]:
    """Images/s of DDB's stages, from the manifests of the finished stage folders under
    ``runs/<dataset>/ddb_artifacts/`` (or ``runs/<dataset>/ddb/``), read as
    :class:`spuraug.records.StageManifest`: a stage with ``images_per_s`` gives a row with
    its ``images`` and ``wall_time_s``, the ERM ``seed`` whose stage it is (``None`` for a
    stage shared by every seed: the inversion) and the stage ``run`` (its folder,
    ``<stage>-<key>``), so every figure names where it comes from. Unfinished stages (no
    ``done``) and manifests that do not follow the schema are skipped; missing artifacts
    give an empty list.
    """
    rows: list[dict] = []
    for base in ddb_artifact_dirs(runs_dir, dataset):
        for path in sorted(base.rglob(MANIFEST)):
            if not (path.parent / DONE).is_file():
                continue
            try:
                m = StageManifest.read(path)
            except RecordError:
                continue
            if m.images_per_s is not None:
                seeds = [int(p[4:]) for p in path.relative_to(base).parts[:-1] if re.fullmatch(r"seed\d+", p)]
                rows.append({"manifest": str(path), "stage": m.stage, "seed": seeds[0] if seeds else None,
                             "run": path.parent.name, "images_per_s": float(m.images_per_s),
                             "images": None if m.images is None else float(m.images),
                             "wall_time_s": m.wall_time_s})
    return rows


def throughput_source(row: dict) -> str:
    """Where a throughput figure comes from: ``"seed 0, inpaint-3f2a"`` (``"all seeds"`` for a
    stage shared by every seed); a row of a provenance written before these fields: its manifest."""
    if "run" not in row:
        return str(row.get("manifest", "n/a"))
    seed = "all seeds" if row.get("seed") is None else f"seed {row['seed']}"
    return f"{seed}, {row['run']}"


def throughput_line(rows: list[dict]) -> str:
    """The console line: each stage's images/s with the seed and stage run it was measured on."""
    return "DDB generation throughput: " + ", ".join(
        f"{r['stage']} {r['images_per_s']:.3f} images/s ({throughput_source(r)})" for r in rows)


def throughput_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["## DDB generation throughput", "",
             "| stage | seed | stage run | images | wall time (s) | images/s | manifest |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        img = "n/a" if r["images"] is None else f"{r['images']:.0f}"
        wt = "n/a" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}"
        seed = "all seeds" if r.get("seed") is None else str(r["seed"])
        lines.append(f"| {r['stage']} | {seed} | {r.get('run', 'n/a')} | {img} | {wt} | {r['images_per_s']:.3f} "
                     f"| {r['manifest']} |")
    return "\n".join(lines)


# -- the sweep ------------------------------------------------------------------------

def build_provenance(command: str, dataset: str, methods: Sequence[str], seeds: Sequence[int],
                     records: list[RunRecord], outcomes: list[RunOutcome], problems: list[str],
                     git: dict, sweep_wall_time_s: float, ddb_throughput: list[dict],
                     overrides: dict | None = None, config_file: str | None = None,
                     parallelism: dict | None = None) -> dict:
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
        # torch threads of each run as its result.json records them (None: written before the field)
        "torch_threads": {f"{r.method}/seed{r.seed}": r.result.get("torch_threads") for r in records},
        "sweep": {
            "wall_time_s": sweep_wall_time_s,
            # the local launcher's worker processes and threads per run (None: another launcher or --no-run)
            "parallelism": parallelism,
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
              log=log_line, workers: int | str | None = 1,
              threads: int | None = None) -> tuple[Path | None, pd.DataFrame, list[RunOutcome]]:
    """Run ``methods x seeds`` on ``dataset`` and write a new version folder.

    Returns ``(version_dir, summary, outcomes)``; ``version_dir`` is ``None`` when no run
    finished (nothing to summarise). Runs are skipped/resumed as ``run_method`` does;
    ``run=False`` only collects what ``runs_dir`` already holds. With ``run``, every config
    and seed is checked first (:func:`check_sweep`): a bad one raises before anything runs.
    ``workers`` and ``threads`` apply to the local launcher (:func:`bench.launch.local_parallelism`;
    ``"auto"``: one run per core on one thread each on a CPU-only machine).
    """
    methods = list(methods) if methods else default_methods()
    seeds = [int(s) for s in seeds]
    command = command or shlex.join([sys.executable, "-m", "bench.sweep", *sys.argv[1:]])
    git = git_state()
    t0 = time.monotonic()
    outcomes: list[RunOutcome] = []
    lock = None
    if run:
        check_sweep(dataset, methods, seeds, config_file, overrides)  # before the lock makes any folder

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
                             launcher, force, run, command, log, git, t0, outcomes, workers, threads)
    finally:
        if lock is not None:
            lock.release()


def _sweep_locked(dataset, methods, seeds, runs_dir, results_dir, data_dir, config_file, overrides, launcher,
                  force, run, command, log, git, t0, outcomes, workers, threads):
    parallelism = None
    if run:
        if launcher == "local":
            n_workers, threads = local_parallelism(workers, threads)
            parallelism = {"workers": n_workers, "torch_threads_per_run": threads or torch.get_num_threads()}
            la = make_launcher(launcher, log=log, workers=n_workers, threads=threads)
        else:
            la = make_launcher(launcher, log=log)
        for m in methods:
            for s in seeds:
                la.submit(RunSpec(dataset, m, s, runs_dir, data_dir, config_file, overrides, force))
        outcomes = la.wait()
    sweep_time = time.monotonic() - t0
    records, problems = find_runs(runs_dir, dataset, methods, seeds)
    if run:  # what this sweep ran must be what its table shows (--no-run collects what is there)
        records, stale = split_stale(records, dataset, config_file, overrides)
        problems += stale
    df = summarize(records, method_order=methods)
    if not records:
        log(f"no finished runs of {dataset!r} under {runs_dir}; nothing to summarise")
        for p in problems:
            log(f"  {p}")
        return None, df, outcomes
    out = new_version_dir(results_dir, dataset, git)
    ddb = ddb_generation_throughput(runs_dir, dataset)
    write_summary(df, out, title=f"{dataset}: {out.name}", extra_md=throughput_markdown(ddb))
    write_runs_jsonl(records, out)
    ddb_grid(runs_dir, dataset, out / EXAMPLES_PNG)
    provenance = build_provenance(command, dataset, methods, seeds, records, outcomes, problems, git,
                                  sweep_time, ddb, overrides=overrides,
                                  config_file=str(config_file) if config_file else None, parallelism=parallelism)
    write_json(out / "provenance.json", provenance)
    log("")
    log(f"{dataset}: test accuracy (%) at the selected checkpoint, mean ± sample std over seeds")
    log(format_console(df))
    if ddb:
        log("")
        log(throughput_line(ddb))
    for p in problems:
        log(f"not in the table: {p}")
    log(f"wrote {out}")
    return out, df, outcomes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--methods", nargs="+",
                   help="default: erm groupdro jtt dfr ddb (BENCHMARK_METHODS); name others, e.g. subg rwg")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--data-dir")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--config", dest="config_file", help="config file instead of spuraug/configs/<dataset>.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, dotted key (repeatable), e.g. --set erm.epochs=2")
    p.add_argument("--launcher", default="local", help="local (in-process) | local-subprocess | ray (RAY_ADDRESS, else a local Ray; docs/scaleout.md)")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--no-run", action="store_true", help="only collect what --runs-dir already holds")
    p.add_argument("--workers", default="auto",
                   help="local launcher: runs at once, each in its own process (default auto: one per CPU core "
                        "on one torch thread each without a GPU, else 1; bench/launch.py local_parallelism)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads per run (default: 1 without a GPU, so a run's numbers do not "
                        "depend on the machine's core count; with a GPU torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"bench.sweep: error: --threads {args.threads}: expected an integer >= 1", file=sys.stderr)
        return 2
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        print(f"bench.sweep: error: --workers {args.workers!r}: expected 'auto' or an integer >= 1", file=sys.stderr)
        return 2
    if args.threads and args.launcher != "local":
        torch.set_num_threads(args.threads)
    try:
        out, df, outcomes = run_sweep(
            args.dataset, args.methods, args.seeds, args.runs_dir, args.results_dir, args.data_dir,
            args.config_file, parse_overrides(args.overrides) or None, args.launcher, args.force, run=not args.no_run,
            workers=args.workers, threads=args.threads,
        )
    except ConfigError as e:  # a bad --set, --seeds or --config: nothing ran
        print(f"bench.sweep: error: {e}", file=sys.stderr)
        return 2
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


__all__ = ["run_sweep", "check_sweep", "ddb_generation_throughput", "default_methods", "main"]
