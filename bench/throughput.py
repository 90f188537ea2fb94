"""``python -m bench.throughput``: run the pytest-benchmark suite of bench/ (``make throughput``).

Every ``bench/test_*.py`` / ``bench/bench_*.py`` benchmark runs once with pytest-benchmark;
its JSON lands in ``results/throughput/<machine-id>/<timestamp>.json``. Then a table of
images/s per stage and method is printed, with the ratio to the previous saved run of
the same machine (> 1 means faster now).

Convention for benchmark authors (docs/harness.md): set ``benchmark.extra_info`` to

- ``"stage"``: what is measured (``"train"``, ``"eval"``, ``"inpaint"``, ``"prune"``, ...),
- ``"method"``: whose code (``"erm"``, ``"ddb"``, ``"toy"``, ...),
- ``"images"``: images processed per round (one call of the benchmarked function);
  images/s = images / mean round time. Or ``"images_per_s"`` directly, when the
  benchmark measures it itself (then it wins).

A benchmark without either is listed with images/s "n/a".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.provenance import machine_id

BENCH_DIR = Path(__file__).resolve().parent


def images_per_s(bench: dict) -> float | None:
    """Images/s of one pytest-benchmark record per the convention above, else ``None``."""
    extra = bench.get("extra_info") or {}
    v = extra.get("images_per_s")
    if isinstance(v, int | float) and v > 0:
        return float(v)
    n = extra.get("images")
    mean = (bench.get("stats") or {}).get("mean")
    if isinstance(n, int | float) and n > 0 and isinstance(mean, int | float) and mean > 0:
        return float(n) / float(mean)
    return None


def summarize_benchmarks(data: dict) -> list[dict]:
    """Rows ``{"name", "stage", "method", "images_per_s", "mean_s"}`` of a --benchmark-json file."""
    rows = []
    for b in data.get("benchmarks", []):
        extra = b.get("extra_info") or {}
        rows.append({
            "name": b.get("name") or b.get("fullname"),
            "stage": str(extra.get("stage", b.get("group") or "n/a")),
            "method": str(extra.get("method", "n/a")),
            "images_per_s": images_per_s(b),
            "mean_s": (b.get("stats") or {}).get("mean"),
        })
    return rows


def previous_run(machine_dir: Path, current: Path | None = None) -> Path | None:
    """The newest saved JSON in ``machine_dir`` other than ``current`` (names sort by time)."""
    runs = sorted(p for p in machine_dir.glob("*.json") if current is None or p.resolve() != current.resolve())
    if current is not None:
        runs = [p for p in runs if p.name < current.name]
    return runs[-1] if runs else None


def compare_runs(now: list[dict], before: list[dict] | None) -> list[dict]:
    """``now`` rows with ``previous`` images/s and ``ratio`` (now / previous) by benchmark name."""
    prev = {r["name"]: r for r in (before or [])}
    out = []
    for r in now:
        p = prev.get(r["name"], {}).get("images_per_s")
        ratio = r["images_per_s"] / p if (r["images_per_s"] and p) else None
        out.append({**r, "previous": p, "ratio": ratio})
    return out


def format_table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    ws = max([5, *(len(r["stage"]) for r in rows)])
    wm = max([6, *(len(r["method"]) for r in rows)])
    header = f"{'stage':<{ws}} {'method':<{wm}} {'images/s':>10} {'previous':>10} {'ratio':>7}  benchmark"
    lines = [header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: (r["stage"], r["method"], r["name"] or "")):
        lines.append(f"{r['stage']:<{ws}} {r['method']:<{wm}} {f(r['images_per_s'], '10.1f'):>10} "
                     f"{f(r['previous'], '10.1f'):>10} {f(r['ratio'], '7.2f'):>7}  {r['name']}")
    return "\n".join(lines)


def run_suite(out_json: Path, paths: list[str] | None = None, extra_args: list[str] | None = None) -> int:
    """Run pytest-benchmark over ``paths`` (default: bench/), writing ``out_json``; pytest's exit code."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", *(paths or [str(BENCH_DIR)]), "-q", "-p", "no:cacheprovider",
           "--benchmark-enable", "--benchmark-only", f"--benchmark-json={out_json}",
           "-o", "addopts=", "-o", "testpaths=", *(extra_args or [])]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--machine-id", help="default: CPU model, cores and GPU ($SPURAUG_MACHINE_ID overrides)")
    p.add_argument("paths", nargs="*", help="benchmark files or folders (default: bench/)")
    p.add_argument("-k", dest="keyword", help="pytest -k expression")
    args = p.parse_args(argv)
    mid = args.machine_id or machine_id()
    machine_dir = Path(args.results_dir) / "throughput" / mid
    out = machine_dir / (time.strftime("%Y%m%dT%H%M%S") + ".json")
    rc = run_suite(out, args.paths or None, ["-k", args.keyword] if args.keyword else None)
    if not out.is_file():
        print(f"bench.throughput: pytest exited {rc} without writing {out}", file=sys.stderr)
        return rc or 1
    now = summarize_benchmarks(json.loads(out.read_text()))
    prev_path = previous_run(machine_dir, out)
    before = summarize_benchmarks(json.loads(prev_path.read_text())) if prev_path else None
    print(f"\nthroughput on {mid} (saved {out}; ratio = now / previous run"
          f"{' ' + prev_path.name if prev_path else ': none saved yet'})")
    print(format_table(compare_runs(now, before)))
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
