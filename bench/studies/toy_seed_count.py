"""Is a method's gap to another on the toy more than seed noise? More seeds of one sweep.

    python -m bench.sweep --dataset toy --seeds 0 1 2 3 4 5 6 7 8 9 --runs-dir RUNS
    python -m bench.studies.toy_seed_count RUNS --seeds 0 1 2 3 4 5 6 7 8 9 \
        --tuned-seeds 0 1 2 --against dfr --name NAME --out results/studies/toy_seed_count/sweeps.json

`make bench` runs three seeds, and the toy's settings were tuned on those seeds' validation
split. This study reads the finished runs of a longer sweep (``bench.summary.find_runs``, the
harness's one run reader) and reports, per method, the test worst-group accuracy over all
seeds, over the tuned seeds and over the fresh ones (a replication on seeds no setting was
chosen on), with a 95% t interval. Each method is compared with ``--against`` seed by seed:
DFR and DDB both start from the ERM run of the same seed, so their difference is paired (for
methods that do not start from ERM the pairing is by seed number only). Reported: the mean
paired difference, its 95% t interval, the paired t test's p value, Welch's unpaired p value,
and how many seeds the method won, tied and lost. The validation worst-group accuracy of each
run's selected checkpoint (what model selection saw) is summarised the same way, without
comparisons. With ``--name`` the report is stored under that key of ``--out``'s
``"variants"`` (other keys kept), so one file holds several sweeps (configs) side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from scipy import stats

from bench.provenance import emit_report, git_state, hardware, update_json
from bench.summary import find_runs


def interval(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof 1) and the 95% t interval's half-width of ``values``."""
    values = [float(v) for v in values]
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": round(mean, 2), "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = float(stats.t.ppf(0.975, n - 1)) * std / n ** 0.5
    return {"n": n, "mean": round(mean, 2), "std": round(std, 2), "ci95": round(half, 2)}


def compare(method: dict[int, float], against: dict[int, float]) -> dict:
    """``method`` against ``against`` over the seeds both have (seed -> test worst-group)."""
    seeds = sorted(set(method) & set(against))
    if len(seeds) < 2:
        raise ValueError(f"need at least 2 common seeds to compare, got {seeds}")
    a = [method[s] for s in seeds]
    b = [against[s] for s in seeds]
    diff = [x - y for x, y in zip(a, b)]
    out = {"seeds": seeds, "difference": interval(diff),
           "wins": sum(d > 0 for d in diff), "ties": sum(d == 0 for d in diff), "losses": sum(d < 0 for d in diff)}
    if statistics.pstdev(diff) > 0:
        out["paired_t_p"] = round(float(stats.ttest_rel(a, b).pvalue), 4)
    else:
        out["paired_t_p"] = 1.0 if diff[0] == 0 else 0.0
    out["welch_p"] = round(float(stats.ttest_ind(a, b, equal_var=False).pvalue), 4)
    return out


def summarise(worst: dict[str, dict[int, float]], tuned: Sequence[int], against: str) -> dict:
    """Per-method intervals (all seeds, tuned seeds, fresh seeds) and comparisons with ``against``."""
    if against not in worst:
        raise ValueError(f"--against {against!r}: no runs of that method (have {sorted(worst)})")
    methods = {}
    for name, by_seed in worst.items():
        tuned_values = [by_seed[s] for s in tuned if s in by_seed]
        fresh = [s for s in by_seed if s not in tuned]
        row = {"values": {str(s): round(v, 2) for s, v in sorted(by_seed.items())},
               "all": interval(list(by_seed.values())),
               "tuned": interval(tuned_values) if tuned_values else None,
               "fresh": interval([by_seed[s] for s in fresh]) if fresh else None}
        if name != against:
            row[f"minus_{against}"] = compare(by_seed, worst[against])
            fresh_common = [s for s in fresh if s in worst[against]]
            if len(fresh_common) >= 2:
                row[f"minus_{against}_fresh"] = compare({s: by_seed[s] for s in fresh_common}, worst[against])
        methods[name] = row
    return methods


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.toy_seed_count", description=__doc__.split("\n\n")[0])
    p.add_argument("runs_dir", help="a sweep's --runs-dir")
    p.add_argument("--dataset", default="toy")
    p.add_argument("--methods", nargs="+", default=["erm", "groupdro", "jtt", "dfr", "ddb"])
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--tuned-seeds", nargs="*", type=int, default=[0, 1, 2],
                   help="the seeds the settings were chosen on (make bench's); the rest are fresh")
    p.add_argument("--against", default="dfr", help="the method every other is compared with")
    p.add_argument("--name", default=None, help="store the report under this key of --out's \"variants\"")
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    records, problems = find_runs(args.runs_dir, args.dataset, args.methods, args.seeds)
    if problems:
        print("missing or unfinished runs:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    worst: dict[str, dict[int, float]] = {}
    val: dict[str, dict[int, float]] = {}
    config_hashes: dict[str, set] = {}
    for r in records:
        worst.setdefault(r.method, {})[r.seed] = float(r.test["worst_group_acc"])
        val.setdefault(r.method, {})[r.seed] = float(r.result["val"]["worst_group_acc"])
        config_hashes.setdefault(r.method, set()).add(r.result.get("config_hash"))
    report = {
        "command": "python -m bench.studies.toy_seed_count " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git": git_state(), "hardware": hardware(),
        "runs_dir": str(Path(args.runs_dir)), "tuned_seeds": args.tuned_seeds, "against": args.against,
        "config_hashes": {m: sorted(h) for m, h in config_hashes.items()},
        "test_worst_group": summarise(worst, args.tuned_seeds, args.against),
        "val_worst_group": {m: {"all": interval(list(v.values())),
                                "values": {str(s): round(x, 2) for s, x in sorted(v.items())}}
                            for m, v in val.items()},
    }
    if args.name is None:
        emit_report(report, args.out, quiet=args.quiet)
        return 0
    emit_report(report, None, quiet=args.quiet)
    if args.out:
        update_json(args.out, lambda stored: {**stored, "variants": {**stored.get("variants", {}), args.name: report}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
