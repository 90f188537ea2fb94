"""DDB's worst-group accuracy against the quality of its edits (issue 18 item 4).

    python -m bench.studies.ddb_edit_quality [--runs-dir runs-edit-quality] [--seeds 0 1 2]
        [--mixes 0 0.25 0.5 0.75 1] [--set KEY=VALUE ...] [--workers auto|N]
        [--out results/studies/ddb_edit_quality/curve.json]

For each share ``m`` of ``--mixes``, DDB runs on the toy with ``ddb.inpaint.backend: oracle``
and ``ddb.inpaint.oracle_mix: m``: that share of the planned edits is drawn by the toy's
oracle generator (spuraug/ddb/oracle_edit.py), the rest by the learned generator, and every
edit goes through the same pruning and retraining. Which edits are the oracle's is fixed by
each sample's id, so a larger share only swaps learned edits for oracle ones. Each mix's
composition success (the share of its edits the world oracle reads as the target digit on
the source's background, :mod:`bench.studies.ddb_toy_oracle`; over all edits and over the
kept ones) is recorded beside DDB's validation and test worst-group and average accuracy
and the ERM model it starts from, per seed and as the mean and sample std over seeds.

Every mix runs in ``--runs-dir/mix<m>/`` (its own DDB run folder); the ERM runs and the
DDB stage folders are shared through links to ``--runs-dir/toy/erm`` and
``--runs-dir/toy/ddb_artifacts`` (stage folders are keyed by their inputs, so the
sources, masks and learned tokens are computed once). Finished runs are found, not redone.
The learned edits need the textual inversion (``ddb.invert``) once: the longest step on CPU.
The DDB runs go through the sweep's local launcher (``--workers``: one run per core on one
torch thread each without a GPU, as ``make bench``; bench/launch.py), so a mix-0 run repeats the
table's DDB run when ``--runs-dir/toy/`` holds a copy of that sweep's ``erm`` and
``ddb_artifacts``; the oracle then reads each run's edits here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench.launch import RunSpec, local_parallelism, make_launcher
from bench.provenance import emit_report, git_state, hardware
from bench.studies import ddb_toy_oracle
from spuraug.config import load_config, parse_overrides
from spuraug.data.toy import ToyConfig
from spuraug.ddb.method import ddb_dataset_options
from spuraug.runs import run_method
from spuraug.toyworld.oracle import ORACLE_MODEL_ID, load_oracle

DEFAULT_MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_OUT = "results/studies/ddb_edit_quality/curve.json"


def mix_runs_dir(runs: Path, mix: float) -> Path:
    """``runs/mix<m>/`` with ``toy/erm`` and ``toy/ddb_artifacts`` linked to ``runs/toy/``."""
    d = runs / f"mix{mix:g}"
    (d / "toy").mkdir(parents=True, exist_ok=True)
    for name in ("erm", "ddb_artifacts"):
        target = (runs / "toy" / name).resolve()
        target.mkdir(parents=True, exist_ok=True)
        link = d / "toy" / name
        if not link.is_symlink():
            if link.exists():
                raise SystemExit(f"{link} exists and is not a link to {target}: move it away or use another --runs-dir")
            link.symlink_to(target, target_is_directory=True)
    return d


def _scores(result: dict) -> dict:
    out = {}
    for split in ("val", "test"):
        m = result.get(split) or {}
        out[f"{split}_worst_group_acc"] = m.get("worst_group_acc")
        out[f"{split}_avg_acc"] = m.get("avg_acc")
    return out


def _composition(report: dict) -> dict:
    """Composition success (target digit and source background) of all / kept edits, and of
    each generator's edits."""
    out = {"all": report["all"]["both"], "kept": report["kept"]["both"], "n": report["all"]["n"],
           "n_kept": report["kept"]["n"], "target_digit_all": report["all"]["target_digit"]}
    out["by_generator"] = {g: {"all": r["all"]["both"], "n": r["all"]["n"], "kept": r["kept"]["both"],
                               "n_kept": r["kept"]["n"]} for g, r in report["by_generator"].items()}
    return out


def mean_std(values: list) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.fmean(vals), 4),
            "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else None, "n": len(vals)}


def run_mix(runs: Path, mix: float, seed: int, overrides: dict, oracle, progress: bool) -> dict:
    """DDB at one mix and seed, and the oracle's reading of its edits."""
    d = mix_runs_dir(runs, mix)
    ov = {**overrides, "ddb.inpaint.backend": "oracle", "ddb.inpaint.oracle_mix": float(mix)}
    erm = run_method("toy", "erm", seed, runs_dir=d, overrides=overrides or None, progress=progress)
    ddb = run_method("toy", "ddb", seed, runs_dir=d, overrides=ov, progress=progress)
    table = Path(ddb["ddb"]["stages"]["prune"]["path"]) / "table.csv"
    args = argparse.Namespace(runs_dir=str(d), oracle=None, initializer=False)
    options = ddb_dataset_options(load_config("toy", "ddb", None, ov))
    toy = ToyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    reading = ddb_toy_oracle.seed_report(args, seed, oracle, table=table, cfg=toy)
    return {"erm": _scores(erm), "ddb": _scores(ddb), "composition_success": _composition(reading),
            "n_generated_kept": ddb["ddb"]["n_generated_kept"], "prune_table": str(table)}


def curve(per_mix: dict) -> list[dict]:
    """One point per mix: composition success and DDB's test worst-group accuracy over seeds."""
    points = []
    for mix, seeds in per_mix.items():
        rows = list(seeds.values())
        points.append({
            "oracle_mix": float(mix),
            "composition_success_all": mean_std([r["composition_success"]["all"] for r in rows]),
            "composition_success_kept": mean_std([r["composition_success"]["kept"] for r in rows]),
            "ddb_test_worst_group_acc": mean_std([r["ddb"]["test_worst_group_acc"] for r in rows]),
            "ddb_test_avg_acc": mean_std([r["ddb"]["test_avg_acc"] for r in rows]),
            "erm_test_worst_group_acc": mean_std([r["erm"]["test_worst_group_acc"] for r in rows]),
        })
    return points


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default="runs-edit-quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mixes", type=float, nargs="+", default=list(DEFAULT_MIXES))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more config overrides for ERM and DDB (e.g. ddb.retrain.epochs=2)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="write the report as JSON here ('' for none)")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--workers", default="auto", help="DDB runs at once (default auto: bench/launch.py local_parallelism)")
    args = ap.parse_args(argv)
    bad = [m for m in args.mixes if not 0 <= m <= 1]
    if bad:
        ap.error(f"--mixes: {bad[0]!r} is not a share in [0, 1]")
    t0 = time.time()
    command = "python -m bench.studies.ddb_edit_quality " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = Path(args.runs_dir)
    overrides = parse_overrides(args.set)
    oracle = load_oracle(ORACLE_MODEL_ID)
    workers, threads = local_parallelism(args.workers)
    launcher = make_launcher("local", workers=workers, threads=threads)
    for mix in args.mixes:
        d = mix_runs_dir(runs, mix)
        ov = {**overrides, "ddb.inpaint.backend": "oracle", "ddb.inpaint.oracle_mix": float(mix)}
        for seed in args.seeds:
            launcher.submit(RunSpec("toy", "ddb", seed, str(d), overrides=ov))
    failed = [o for o in launcher.wait() if o.status == "failed"]
    if failed:
        raise SystemExit("bench.studies.ddb_edit_quality: " + "; ".join(f"{o.spec.label} in {o.spec.runs_dir}: "
                                                                        f"{o.error}" for o in failed))
    per_mix: dict = {}
    for mix in args.mixes:
        per_mix[f"{mix:g}"] = {str(seed): run_mix(runs, mix, seed, overrides, oracle, not args.no_progress)
                               for seed in args.seeds}
    report = {"command": command.strip(), "git": git_state(), "hardware": hardware(), "runs_dir": str(runs),
              "seeds": args.seeds, "overrides": overrides, "oracle": ORACLE_MODEL_ID,
              "curve": curve(per_mix), "per_mix": per_mix, "wall_s": round(time.time() - t0, 1)}
    return emit_report(report, args.out or None, args.quiet)


if __name__ == "__main__":
    main()
