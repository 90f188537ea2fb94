"""``python -m bench.mutation``: show that the accuracy gate (``make check``) catches a known
regression of every method, and passes when nothing is broken.

For each method of the reference (``results/reference/toy.json``) a mutation of
:data:`MUTATIONS` removes what makes the method work, through config overrides (the
``--set KEY=VALUE`` items of ``make bench``), applied to that method only: JTT without
upweighting, DFR refit on the unbalanced training split instead of balanced validation subsets,
DDB with zero gammas or with its edits labelled by their source class (and, as a probe, without
pruning), GroupDRO without its robust loss and its group-balanced
sampler, ERM stopped after one epoch. The gate is
then run with it, through the gate's own functions (:func:`bench.check.measure` on the CI
sweep :data:`bench.check.CI_OVERRIDES` plus the mutation, :func:`bench.check.compare` against
the reference's entry of that method), and must FAIL. ``--clean N`` runs the unmutated gate N
times, each into a fresh folder; each must PASS.

    python -m bench.mutation [--methods erm groupdro jtt dfr ddb] [--seeds 0] [--clean 3]
        [--runs-dir runs/mutation] [--reference results/reference/toy.json] [--dry-run]

Runs folders (resumable: a finished run is reused, an interrupted one resumes)::

    <runs-dir>/clean<i>/toy/<method>/seed<S>/      clean gate run i
    <runs-dir>/<method>-<mutation>/toy/...         one folder per mutation

A mutation's folder never holds a clean run's folder: the runs it does not mutate (the ERM
run that JTT, DFR and DDB start from, DDB's generated images, keyed by what they depend on)
are copied in from ``clean0`` when it exists, and their config hashes are checked equal to the
clean ones; the mutated run's hash is checked different; the clean runs' result.json files
are checked unchanged after the mutations ran (``isolation`` in the record).

Writes ``results/check/mutation_<machine>_<time>.json`` (through :mod:`spuraug.atomic`) and the
Markdown table into the section "Mutation test of the gate" of docs/harness.md (``--docs``).
Exit 0 when every required mutation failed the gate and every clean run passed it, else 1; a
bad option or override exits 2 before anything runs. A probe (``Mutation.required`` false:
removing a part whose published effect is below the gate's tolerance, DDB's pruning) runs and is
reported, caught or not, without deciding the exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import check
from bench.provenance import git_state, hardware, software
from spuraug import atomic
from spuraug.config import ConfigError, format_overrides, load_config, parse_overrides
from spuraug.methods import get_method

DEFAULT_RUNS_DIR = Path("runs/mutation")
DEFAULT_DOCS = Path("docs/harness.md")
RESULTS_DIR = Path("results/check")
SECTION = "## Mutation test of the gate"
TABLE_START = "<!-- bench.mutation table: start (written by python -m bench.mutation) -->"
TABLE_END = "<!-- bench.mutation table: end -->"


@dataclass(frozen=True)
class Mutation:
    """A known regression of ``method``: the ``--set`` items that inject it and what they remove."""

    method: str
    name: str
    overrides: tuple[str, ...]
    removes: str
    #: ``False`` for a probe: a part whose published effect is below the gate's tolerance, so the
    #: gate is not required to catch its removal; it runs and is reported, but does not decide
    #: whether the mutation test passes (``why_probe`` says why).
    required: bool = True
    why_probe: str = ""

    @property
    def label(self) -> str:
        return f"{self.method}-{self.name}"


#: The regressions injected, one or more per method (the order of the table).
MUTATIONS: tuple[Mutation, ...] = (
    Mutation("erm", "one_epoch", ("erm.epochs=1",),
             "ERM stopped after its first epoch (the toy config trains erm.epochs)"),
    Mutation("groupdro", "not_robust_no_sampler", ("groupdro.robust=false", "groupdro.group_balanced_sampling=false"),
             "GroupDRO's robust loss (the authors' run without --robust: the mean per-example loss, "
             "kohpangwei/group_DRO loss.py) and its group-balanced sampler, Sagawa et al. 2020; what is left "
             "is ERM with GroupDRO's recipe (eta 0 would not do: uniform group weights still give a "
             "group-balanced loss)"),
    Mutation("jtt", "no_upweighting", ("jtt.lambda_up=1",),
             "JTT's upweighting of the error set (lambda_up 1: every example counts once), Liu et al. 2021"),
    Mutation("dfr", "train_fit_unbalanced", ("dfr.fit_split=train", "dfr.balance_val=false"),
             "DFR's reweighting data: the last layer is refit on the spurious training split as it is "
             "(DFR^Tr_Tr without its group-balanced subsets, Kirichenko et al. 2023), close to ERM's own last "
             "layer; C still chosen on validation (balance_val=false alone would not do on the toy: its "
             "validation split is already group-balanced within each class)"),
    Mutation("ddb", "no_pruning", ("ddb.prune.use_condition1=false", "ddb.prune.use_condition2=false"),
             "DDB's bicephalous pruning (both conditions off: every generated image is kept), the DDB paper's pruning (docs/ddb.md prune)",
             required=False,
             why_probe="pruning's published effect is below the gate's 5-point tolerance (the DDB paper's "
                       "pruning ablation, Yazdan Parast et al., ICCV 2025: worst-group +1.7 on Waterbirds, +0.6 on "
                       "MetaShift, +4.1 on CelebA), and on the toy the rules prune 1-6% of the edits "
                       "(docs/harness.md)"),
    Mutation("ddb", "zero_gammas", ("ddb.retrain.gamma=[0,0]",),
             "DDB's generated images in retraining (gamma 0 for both classes: weight 0), the DDB paper's retraining (docs/ddb.md retrain)"),
    Mutation("ddb", "source_labels", ("ddb.inpaint.label=source",),
             "DDB's relabelling: edits trained with their SOURCE class instead of the new class j, the DDB paper's inpainting (docs/ddb.md inpaint)"),
)


def mutations_for(methods: Sequence[str]) -> list[Mutation]:
    """The mutations of ``methods``, in :data:`MUTATIONS` order."""
    return [m for m in MUTATIONS if m.method in methods]


def ci_items() -> list[str]:
    """The gate's CI overrides as ``--set`` items."""
    return format_overrides(check.CI_OVERRIDES)


def mutated_overrides(mutation: Mutation) -> dict:
    """The gate's CI overrides with the mutation's on top, through the one ``--set`` parser
    (:func:`spuraug.config.parse_overrides`)."""
    return parse_overrides([*ci_items(), *mutation.overrides])


def config_hash(method: str, overrides: dict, dataset: str = check.CI_DATASET) -> str:
    """The config hash of ``method`` under ``overrides``; :class:`ConfigError` naming a bad value."""
    return str(load_config(dataset, method, None, overrides)["config_hash"])


def starts_from_erm(method: str) -> bool:
    return method != "erm" and bool(getattr(get_method(method), "uses_erm", False))


# -- the plan -----------------------------------------------------------------------------

def plan(methods: Sequence[str], seeds: Sequence[int], clean: int, runs_dir: str | Path) -> dict:
    """Every gate run this invocation makes, its folder and its config hashes, with every
    override resolved by the config validator (a rejected one raises :class:`ConfigError`
    here, before anything runs)."""
    runs_dir = Path(runs_dir)
    clean_hashes = {m: config_hash(m, check.CI_OVERRIDES) for m in methods}
    out: dict = {"clean": [], "mutations": []}
    for i in range(clean):
        out["clean"].append({"runs_dir": str(runs_dir / f"clean{i}"), "methods": list(methods),
                             "seeds": list(seeds), "config_hashes": dict(clean_hashes)})
    for mut in mutations_for(methods):
        overrides = mutated_overrides(mut)
        h = config_hash(mut.method, overrides)
        reuse = []
        if clean and starts_from_erm(mut.method):
            reuse.append("erm")
        if clean and mut.method == "ddb":
            reuse.append("ddb_artifacts")
        out["mutations"].append({
            "method": mut.method, "mutation": mut.name, "overrides": list(mut.overrides), "removes": mut.removes,
            "runs_dir": str(runs_dir / mut.label), "seeds": list(seeds), "config_hash": h,
            "clean_config_hash": clean_hashes[mut.method], "copied_from_clean0": reuse,
            # the run it starts from keeps its clean hash: the copied folder is reused as is
            "erm_config_hash": config_hash("erm", overrides) if starts_from_erm(mut.method) else None,
        })
    return out


def format_plan(p: dict) -> str:
    lines = []
    for i, c in enumerate(p["clean"]):
        lines.append(f"clean {i}: {' '.join(c['methods'])} x seeds {c['seeds']} -> {c['runs_dir']}")
    for m in p["mutations"]:
        reuse = f"; copies {' and '.join(m['copied_from_clean0'])} from clean0" if m["copied_from_clean0"] else ""
        lines.append(f"{m['method']}-{m['mutation']}: --set {' '.join(m['overrides'])} x seeds {m['seeds']} -> "
                     f"{m['runs_dir']} (config {m['config_hash']}, clean {m['clean_config_hash']}{reuse})")
    return "\n".join(lines)


# -- running --------------------------------------------------------------------------------

def copy_clean_inputs(clean_dir: Path, mut_dir: Path, mutation: Mutation, seeds: Sequence[int],
                      dataset: str = check.CI_DATASET) -> list[str]:
    """Copy into a mutation's folder what it does not mutate and would otherwise recompute:
    the finished ERM runs of ``seeds`` (JTT, DFR, DDB start from them) and DDB's stage folders
    (keyed by everything they depend on, so a changed input makes a new folder). Copies, not
    links: nothing a mutated run writes can reach a clean folder. Returns what was copied."""
    copied = []
    if starts_from_erm(mutation.method):
        for s in seeds:
            src = clean_dir / dataset / "erm" / f"seed{s}"
            dst = mut_dir / dataset / "erm" / f"seed{s}"
            if (src / "done").is_file() and not dst.exists():
                shutil.copytree(src, dst)
                copied.append(str(dst))
    if mutation.method == "ddb":
        src, dst = clean_dir / dataset / "ddb_artifacts", mut_dir / dataset / "ddb_artifacts"
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst)
            copied.append(str(dst))
    return copied


def results_fingerprint(runs_dir: Path) -> dict[str, str]:
    """sha256 of every result.json under ``runs_dir`` (to show a clean folder was not touched)."""
    return {str(p.relative_to(runs_dir)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(runs_dir.rglob("result.json"))}


Measure = Callable[..., tuple[dict, dict]]


def gate_run(reference: dict, methods: Sequence[str], runs_dir: Path, seeds: Sequence[int], overrides: dict,
             measure: Measure = check.measure, log=print) -> dict:
    """One run of the gate (:func:`bench.check.measure` + :func:`bench.check.compare`) on
    ``methods`` against their entries of ``reference``; ``passed`` as ``make check`` decides
    (a failed run fails it)."""
    got, info = measure(runs_dir, list(methods), list(seeds), overrides=overrides, log=log)
    ref = {k: v for k, v in reference.items() if k.startswith("_") or k in methods}
    rows, passed = check.compare(ref, got)
    passed = passed and not info.get("failed")
    return {"rows": rows, "passed": bool(passed), "failed_runs": list(info.get("failed") or []),
            "config_hashes": dict(info.get("config_hashes") or {}), "got": got}


def verdict_reason(result: dict) -> str:
    """Why a gate run failed: "regression", "run failed", "missing result" (or "" when it passed)."""
    if result["passed"]:
        return ""
    if result["failed_runs"]:
        return "run failed"
    statuses = {r["status"] for r in result["rows"]}
    return "regression" if "REGRESSION" in statuses else ("missing result" if "MISSING" in statuses else "other")


def run_mutation_test(reference: dict, methods: Sequence[str], seeds: Sequence[int], clean: int,
                      runs_dir: str | Path, measure: Measure = check.measure, log=print) -> dict:
    """Clean run 0 (its ERM runs and DDB images are copied into the mutations' folders), every
    mutation of ``methods``, then the other clean runs. Returns the report (see :func:`main`)."""
    runs_dir = Path(runs_dir)
    missing = [m for m in methods if m not in reference]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: not in the reference (the gate does not check it); "
                          f"measure it into the reference first (python -m bench.check --write-reference)")
    p = plan(methods, seeds, clean, runs_dir)
    report: dict = {"clean": [], "mutations": []}

    def clean_run(i: int) -> None:
        d = runs_dir / f"clean{i}"
        log(f"\n== clean gate run {i} -> {d}")
        r = gate_run(reference, methods, d, seeds, check.CI_OVERRIDES, measure, log)
        report["clean"].append({"run": i, "runs_dir": str(d), "expected": "PASS",
                                "gate": "PASS" if r["passed"] else "FAIL", "ok": r["passed"],
                                "verdict": "passed" if r["passed"] else "WRONG", "reason": verdict_reason(r), **r})

    if clean:
        clean_run(0)
    before = results_fingerprint(runs_dir / "clean0") if clean else {}
    for entry, mut in zip(p["mutations"], mutations_for(methods)):
        d = Path(entry["runs_dir"])
        copied = copy_clean_inputs(runs_dir / "clean0", d, mut, seeds) if clean else []
        log(f"\n== mutation {mut.label}: --set {' '.join(mut.overrides)} -> {d}")
        r = gate_run(reference, [mut.method], d, seeds, mutated_overrides(mut), measure, log)
        hashes = {k: v for k, v in r["config_hashes"].items() if k.startswith(f"{mut.method}/")}
        caught = not r["passed"]
        verdict = ("caught" if caught else "WRONG") if mut.required else \
            ("caught (probe)" if caught else "not caught (probe)")
        report["mutations"].append({
            **{k: entry[k] for k in ("method", "mutation", "overrides", "removes", "runs_dir", "config_hash",
                                     "clean_config_hash")},
            "copied_from_clean0": copied, "expected": "FAIL" if mut.required else "probe",
            "required": mut.required, "why_probe": mut.why_probe, "gate": "FAIL" if caught else "PASS",
            "ok": caught or not mut.required, "caught": caught, "verdict": verdict, "reason": verdict_reason(r),
            "hash_differs_from_clean": bool(hashes) and all(h != entry["clean_config_hash"] for h in hashes.values()),
            **r,
        })
    after = results_fingerprint(runs_dir / "clean0") if clean else {}
    for i in range(1, clean):
        clean_run(i)
    report["isolation"] = {
        "clean0_results_unchanged_by_mutations": before == after,
        "mutated_hashes_differ_from_clean": all(m["hash_differs_from_clean"] for m in report["mutations"]),
        "mutation_folders_apart_from_clean": all(not Path(m["runs_dir"]).resolve().is_relative_to(
            (runs_dir / f"clean{i}").resolve()) for m in report["mutations"] for i in range(clean)),
    }
    report["passed"] = (all(m["ok"] for m in report["mutations"]) and all(c["ok"] for c in report["clean"])
                        and all(report["isolation"].values()))
    return report


# -- the report ---------------------------------------------------------------------------------

def _num(v, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def report_table(report: dict) -> str:
    """The Markdown table: one row per (mutation or clean run, metric)."""
    header = ["run", "overrides (--set)", "metric", "expected", "got", "diff", "tolerance", "status",
              "gate", "wanted", "verdict"]
    rows = []
    for kind, entries in (("mutation", report["mutations"]), ("clean", report["clean"])):
        for e in entries:
            name = f"{e['method']}-{e['mutation']}" if kind == "mutation" else f"clean {e['run']}"
            sets = " ".join(e["overrides"]) if kind == "mutation" else "(none)"
            verdict = e["verdict"]
            gate = e["gate"] + (f" ({e['reason']})" if e["reason"] else "")
            for r in e["rows"]:
                rows.append([name if kind == "mutation" else f"{name}: {r['method']}", sets, r["metric"],
                             _num(r["expected"]), _num(r["got"]), _num(r["diff"], True), _num(r["tolerance"]),
                             r["status"], gate, e["expected"], verdict])
            if not e["rows"]:
                rows.append([name, sets, "-", "-", "-", "-", "-", "-", gate, e["expected"], verdict])
    return pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True)


def docs_section(report: dict, command: str) -> str:
    """What goes between the table markers of the docs section."""
    meta = report["meta"]
    iso = report["isolation"]
    lines = [
        f"Measured by `{command}` on {meta['machine']} at {meta['git']['short_sha']}"
        f"{'-dirty' if meta['git'].get('dirty') else ''}, {meta['created']}, against `{meta['reference']}` "
        f"(measured at {meta['reference_git']}); record `{meta['record']}`.",
        "",
        report_table(report),
        "",
        f"Every required mutation failed the gate: "
        f"{'yes' if all(m['ok'] for m in report['mutations'] if m['required']) else 'NO'}; "
        f"every clean run passed it: {'yes' if all(c['ok'] for c in report['clean']) else 'NO'}; "
        f"mutated config hashes differ from the clean ones: {'yes' if iso['mutated_hashes_differ_from_clean'] else 'NO'}; "
        f"clean results unchanged by the mutations: {'yes' if iso['clean0_results_unchanged_by_mutations'] else 'NO'}.",
    ]
    lines += [f"Probe {m['method']}-{m['mutation']} ({m['verdict'].removesuffix(' (probe)')}), not required: "
              f"{m['why_probe']}." for m in report["mutations"] if not m["required"]]
    return "\n".join(lines)


def write_docs(path: Path, body: str) -> None:
    """Replace the text between the table markers of :data:`SECTION` in ``path`` (the section and
    markers are appended when missing)."""
    text = path.read_text() if path.is_file() else ""
    block = f"{TABLE_START}\n{body}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    elif SECTION in text:
        head, rest = text.split(SECTION, 1)
        text = f"{head}{SECTION}\n\n{block}\n{rest}"
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    atomic.write_text(path, text)


def machine_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "unknown"


def main(argv: list[str] | None = None, measure: Measure = check.measure) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default=str(check.DEFAULT_REFERENCE))
    p.add_argument("--methods", nargs="+", help="default: the methods of the reference")
    p.add_argument("--seeds", nargs="+", type=int, default=list(check.CI_SEEDS), help="default: the gate's seeds")
    p.add_argument("--clean", type=int, default=3, metavar="N", help="clean gate runs, each must pass (default 3)")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR),
                   help="where the runs go; finished ones are reused (default %(default)s)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="the JSON record goes here")
    p.add_argument("--docs", default=str(DEFAULT_DOCS), help="the Markdown file whose section gets the table "
                   "('' to skip)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs (overrides checked) and exit")
    args = p.parse_args(argv)
    if args.clean < 0:
        p.error("--clean must be >= 0")
    command = shlex.join(["python", "-m", "bench.mutation", *(argv if argv is not None else sys.argv[1:])])
    try:
        reference = check.load_reference(args.reference)
        methods = args.methods or [m for m in reference if not m.startswith("_")]
        planned = plan(methods, args.seeds, args.clean, args.runs_dir)
        if args.dry_run:
            print(format_plan(planned))
            return 0
        t0 = time.monotonic()
        report = run_mutation_test(reference, methods, args.seeds, args.clean, args.runs_dir, measure)
    except ConfigError as e:
        print(f"bench.mutation: error: {e}", file=sys.stderr)
        return 2
    machine = hardware()["cpu_model"]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    record = Path(args.results_dir) / f"mutation_{machine_slug(machine)}_{stamp}.json"
    report["meta"] = {
        "command": command, "machine": machine, "git": git_state(), "torch": software()["torch"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_time_s": round(time.monotonic() - t0, 1),
        "reference": args.reference, "reference_git": (reference.get("_meta", {}).get("git") or {}).get("short_sha"),
        "ci_overrides": check.CI_OVERRIDES, "seeds": args.seeds, "record": str(record),
    }
    atomic.write_json(record, report)
    print("\n" + report_table(report))
    if args.docs:
        write_docs(Path(args.docs), docs_section(report, command))
        print(f"wrote the table into {args.docs} ({SECTION[3:]})")
    print(f"wrote {record}")
    print("mutation test PASSED: the gate failed on every required mutation and passed every clean run"
          if report["passed"]
          else "mutation test FAILED: see the verdicts and isolation above")
    return 0 if report["passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
