"""``python -m bench.chaos``: kill -9 training and every DDB stage at random moments, resume,
and compare everything with an uninterrupted run.

    python -m bench.chaos --dataset toy [--kills 10] [--seed S] [--targets erm,invert,...]
                          [--work DIR] [--out results/chaos]

Two runs folders are made with the same tiny settings (tiny diffusion and CLIPSeg models
from tests/tiny_models.py, a small toy benchmark, a few epochs; see :func:`tiny_config`):
the reference runs each target once through the CLI; the chaos run starts the same command,
watches the files it writes and sends SIGKILL to its process group at a seeded random
point of its progress (after the k-th file write of the ones the reference made, the i-th
of n kills drawn from the i-th n-th of them, plus up to half a second), and repeats until the planned kills of
that target are spent, then lets it finish. Targets, in order: ERM training (``spuraug train --method erm``),
the DDB stages (``spuraug ddb invert|sources|segment|inpaint|prune``) and DDB's retraining
(``spuraug train --method ddb``). Kills are spread over the targets round robin.

Then every file of both runs folders is compared:

- lost: a file of the reference missing from the chaos run;
- duplicated: rows of a ``.jsonl``/``.csv`` file beyond the reference's (e.g. an epoch logged twice);
- extra: a file only the chaos run has (``.tmp`` leftovers of a killed atomic write are listed apart);
- identical: the file is byte-identical, or (JSON/CSV) identical once timing fields and the
  runs folder's own path are taken out, or (``.pt``) holds the same values with every tensor
  equal bit for bit; ``done`` markers (a time stamp) by presence; metrics: every
  ``result.json``'s val/test metrics equal.

The table is printed and written to ``<out>/<timestamp>.md`` and ``.json``. Needs no
network and no GPU; about 10 minutes with 10 kills on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

TARGETS = ("erm", "invert", "sources", "segment", "inpaint", "prune", "retrain")
#: JSON fields that measure time or speed: differ between any two runs.
TIMING_KEYS = frozenset({"images_per_s", "step_time_s", "peak_mem_mb", "wall_time_s", "steps_per_s", "started",
                         "seconds", "created", "startup_s", "attempts"})
#: Bookkeeping files: timing (attempts.json) and locks, not results.
SKIP_NAMES = ("attempts.json",)
REPO = Path(__file__).resolve().parents[1]


def tiny_config(models: Path) -> dict:
    """The chaos bench's config: the toy benchmark small, tiny SD / CLIPSeg models, few steps,
    with checkpoints inside each stage so that kills land between and inside them."""
    import tests.tiny_models as tiny  # deferred: the tiny test models (a checkout, not the installed package)

    sd = models / "sd9"
    cs = models / "clipseg"
    if not (sd / "model_index.json").is_file():
        tiny.save_stable_diffusion(sd, in_channels=9, image_size=16)
    if not (cs / "config.json").is_file():
        tiny.save_clipseg(cs)
    # the tests' tiny DDB toy config, with more images, epochs and steps and checkpoints inside each
    # stage, so that kills land between and inside them
    return OmegaConf.to_container(OmegaConf.merge(tiny.tiny_ddb_toy_config(str(sd), str(cs), [6, 6]), {
        "dataset_options": {"n_train": 400, "n_val": 120, "n_test": 120},
        "erm": {"batch_size": 32, "epochs": 4},
        "ddb": {
            "invert": {"max_train_steps": 40, "checkpoint_every": 10},
            "segment": {"batch_size": 2},
            "inpaint": {"num_inference_steps": 12},
            "prune": {"n_steps": 16, "batch_size": 2},
            "retrain": {"epochs": 3},
        },
    }))


def command(target: str, runs: Path, config: Path, seed: int = 0) -> list[str]:
    """The CLI command of one target."""
    cli = [sys.executable, "-c", "import sys; from spuraug.cli import main; sys.exit(main())"]
    common = ["--dataset", "toy", "--seed", str(seed), "--out", str(runs), "--config", str(config)]
    if target == "erm":
        return [*cli, "train", "--method", "erm", *common, "--device", "cpu"]
    if target == "retrain":
        return [*cli, "train", "--method", "ddb", *common, "--device", "cpu"]
    return [*cli, "ddb", target, *common, "--device", "cpu"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every result file under ``root`` and its (mtime, size): bookkeeping and temporaries out."""
    out = {}
    if root.is_dir():
        for f in root.rglob("*"):
            if f.name in SKIP_NAMES or f.name.endswith((".lock", ".tmp")):
                continue
            try:
                st = f.stat()
            except OSError:  # renamed meanwhile
                continue
            if not f.is_dir():
                out[str(f)] = (st.st_mtime_ns, st.st_size)
    return out


def run_watched(cmd: list[str], root: Path, kill_at: int | None = None, extra_s: float = 0.0,
                poll_s: float = 0.05) -> tuple[int, bool]:
    """Run ``cmd`` (its own process group), counting the files it writes under ``root``
    (polled). With ``kill_at``: SIGKILL the group ``extra_s`` seconds after the
    ``kill_at``-th write, so kills land at a moment of its progress, not of the clock (the
    machine's load changes how long anything takes). Returns (writes seen, killed)."""
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    reader.start()
    seen, before = 0, _snapshot(root)
    while p.poll() is None:
        time.sleep(poll_s)
        now = _snapshot(root)
        seen += sum(1 for k, v in now.items() if before.get(k) != v)
        before = now
        if kill_at is not None and seen >= kill_at:
            time.sleep(extra_s)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                reader.join()
                return seen, True
    reader.join()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed (exit {p.returncode}): {''.join(err)[-2000:]}")
    now = _snapshot(root)
    return seen + sum(1 for k, v in now.items() if before.get(k) != v), False


# ------------------------------------------------------------------------------ comparison


def _strip(obj, root: str):
    if isinstance(obj, dict):
        return {k: _strip(v, root) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v, root) for v in obj]
    if isinstance(obj, str):
        return _unroot(obj, root)
    return obj


def _unroot(text: str, root: str) -> str:
    """``text`` with the runs folder's own path (``root/...`` or ``root`` itself) as ``<RUNS>``."""
    return "<RUNS>" if text == root else text.replace(root + os.sep, "<RUNS>" + os.sep)


def _rows(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    return lines[1:] if path.suffix == ".csv" else lines


def _duplicates(path: Path) -> int:
    if path.suffix == ".jsonl":
        keys = [json.loads(ln).get("epoch") for ln in _rows(path) if ln.strip()]
        return len(keys) - len(set(keys))
    rows = _rows(path)
    return len(rows) - len(set(rows))


def _same_values(x, y) -> bool:

    if isinstance(x, torch.Tensor):
        return (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape
                and torch.equal(x.reshape(-1).contiguous().view(torch.uint8), y.reshape(-1).contiguous().view(torch.uint8)))
    if isinstance(x, dict):
        return isinstance(y, dict) and list(x) == list(y) and all(_same_values(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple):
        return type(x) is type(y) and len(x) == len(y) and all(_same_values(u, v) for u, v in zip(x, y))
    return type(x) is type(y) and x == y


def _same(a: Path, b: Path, ra: str, rb: str) -> tuple[bool, bool]:
    """(byte-identical, identical once timing fields and the runs folder's path are out)."""
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return True, True
    if a.name == "done":  # the marker holds the time it was written
        return False, True
    if a.suffix == ".pt":  # same tensors bit for bit and same values (pickle layout aside)

        try:
            return False, _same_values(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is a difference
            return False, False
    if a.suffix == ".json":
        try:
            return False, _strip(json.loads(da), ra) == _strip(json.loads(db), rb)
        except ValueError:
            return False, False
    if a.suffix == ".jsonl":
        try:
            la = [_strip(json.loads(x), ra) for x in da.decode().splitlines() if x.strip()]
            lb = [_strip(json.loads(x), rb) for x in db.decode().splitlines() if x.strip()]
        except ValueError:
            return False, False
        return False, la == lb
    if a.suffix in (".csv", ".txt", ".md"):
        return False, _unroot(da.decode(errors="replace"), ra) == _unroot(db.decode(errors="replace"), rb)
    return False, False


def _target_of(rel: str) -> str:
    parts = rel.split("/")
    if "ddb_artifacts" in parts:
        stage = next((p.split("-")[0] for p in parts if "-" in p and p.split("-")[0] in TARGETS), "?")
        return stage
    if len(parts) > 1 and parts[1] == "erm":
        return "erm"
    if len(parts) > 1 and parts[1] == "ddb":
        return "retrain"
    return "?"


def _files(root: Path) -> dict[str, Path]:
    return {f.relative_to(root).as_posix(): f for f in sorted(root.rglob("*"))
            if f.is_file() and f.name not in SKIP_NAMES and not f.name.endswith(".lock")}


def compare(ref: Path, got: Path) -> dict[str, dict]:
    """Per target: files, lost, duplicated rows, extra files, .tmp leftovers, byte-identical,
    identical (timing and paths out), metrics equal."""
    fa, fb = _files(ref), _files(got)
    ra, rb = str(ref.resolve()), str(got.resolve())
    out: dict[str, dict] = {}

    def row(t):
        return out.setdefault(t, {"files": 0, "lost": 0, "duplicated": 0, "extra": 0, "tmp_leftovers": 0,
                                  "byte_identical": 0, "identical": 0, "different": [], "metrics_equal": None})

    for rel, a in fa.items():
        r = row(_target_of(rel))
        r["files"] += 1
        b = fb.get(rel)
        if b is None:
            r["lost"] += 1
            r["different"].append(f"lost: {rel}")
            continue
        if a.suffix in (".jsonl", ".csv"):
            r["duplicated"] += max(0, _duplicates(b) - _duplicates(a))
        byte, same = _same(a, b, ra, rb)
        r["byte_identical"] += byte
        r["identical"] += same
        if not same:
            r["different"].append(rel)
        if a.name == "result.json":
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            eq = all(ma.get(k) == mb.get(k) for k in ("val", "test", "selected_epoch"))
            r["metrics_equal"] = eq if r["metrics_equal"] is None else (r["metrics_equal"] and eq)
    for rel in fb.keys() - fa.keys():
        r = row(_target_of(rel))
        if rel.endswith(".tmp"):
            r["tmp_leftovers"] += 1
        else:
            r["extra"] += 1
            r["different"].append(f"extra: {rel}")
    return out


# ------------------------------------------------------------------------------ the bench


def plan_kills(targets: list[str], kills: int) -> dict[str, int]:
    plan = dict.fromkeys(targets, 0)
    for i in range(kills):
        plan[targets[i % len(targets)]] += 1
    return plan


def run_chaos(dataset: str = "toy", kills: int = 10, seed: int = 0, targets: list[str] | None = None,
              work: Path | None = None, out: Path | None = Path("results/chaos"), log=print) -> dict:
    if dataset != "toy":
        raise SystemExit("bench.chaos: only --dataset toy (tiny models, no downloads) is supported")
    targets = list(targets or TARGETS)
    last = max(TARGETS.index(t) for t in targets)
    chain = list(TARGETS[: last + 1])  # everything up to the last target runs, in order
    work = Path(work or Path("runs") / ".chaos" / time.strftime("%Y%m%d-%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "chaos.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(work / "models")))
    ref, got = work / "reference", work / "chaos-run"  # same length: files that hold paths keep their size
    rng = random.Random(seed)
    plan = plan_kills(targets, kills)

    t_start = time.perf_counter()

    durations, writes = {}, {}
    for t in chain:
        t0 = time.perf_counter()
        writes[t], _ = run_watched(command(t, ref, cfg_path), ref)
        durations[t] = time.perf_counter() - t0
        log(f"reference {t}: {durations[t]:.1f} s, {writes[t]} file writes")
    landed = dict.fromkeys(chain, 0)
    moments: dict[str, list[str]] = {t: [] for t in chain}
    for t in chain:
        done_writes, n = 0, plan.get(t, 0)
        for i in range(n):
            # the i-th of n kills lands in the i-th n-th of the target's progress (its k-th file
            # write of the reference's, counted over the attempts so far), plus up to half a second
            lo, hi = 1 + (i * writes[t]) // n, max(1 + (i * writes[t]) // n, ((i + 1) * writes[t]) // n - 1)
            k_abs = rng.randint(lo, hi)
            k = max(1, k_abs - done_writes)
            extra = round(rng.uniform(0.0, 0.5), 2)
            seen, hit = run_watched(command(t, got, cfg_path), got, kill_at=k, extra_s=extra)
            done_writes += seen
            landed[t] += hit
            moments[t].append(f"write {k_abs}/{writes[t]}+{extra}s")
            log(f"chaos {t}: SIGKILL {extra} s after write {k_abs} of {writes[t]} "
                + ("(landed)" if hit else "(missed: it had finished)"))
            if not hit:
                break
        run_watched(command(t, got, cfg_path), got)
    cmp = compare(ref, got)
    rows = []
    for t in chain:
        c = cmp.get(t, {"files": 0, "lost": 0, "duplicated": 0, "extra": 0, "tmp_leftovers": 0,
                        "byte_identical": 0, "identical": 0, "different": [], "metrics_equal": None})
        rows.append({"target": t, "kills": landed[t], "kill_points": moments[t], **c})
    total = {"target": "total", "kills": sum(r["kills"] for r in rows),
             **{k: sum(r[k] for r in rows) for k in ("files", "lost", "duplicated", "extra", "tmp_leftovers",
                                                     "byte_identical", "identical")}}
    total["metrics_equal"] = all(r["metrics_equal"] is not False for r in rows)
    report = {"command": " ".join(["python -m bench.chaos", "--dataset", dataset, "--kills", str(kills),
                                   "--seed", str(seed)] + (["--targets", ",".join(targets)] if targets != list(TARGETS) else [])),
              "seed": seed, "planned_kills": plan, "rows": rows, "total": total, "work": str(work),
              "wall_time_s": round(time.perf_counter() - t_start, 1),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    table = format_table(report)
    log(table)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (out / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{stamp}.md").write_text(f"`{report['command']}` ({report['created']}, "
                                         f"{report['wall_time_s']} s)\n\n{table}\n")
        log(f"wrote {out / stamp}.md and .json")
    report["table"] = table
    return report


def format_table(report: dict) -> str:
    head = "| target | kills | files | lost | duplicated | extra | .tmp left | byte-identical | identical | metrics equal |"
    lines = [head, "|" + "---|" * 10]
    for r in [*report["rows"], report["total"]]:
        me = r.get("metrics_equal")
        lines.append(f"| {r['target']} | {r['kills']} | {r['files']} | {r['lost']} | {r['duplicated']} | "
                     f"{r['extra']} | {r['tmp_leftovers']} | {r['byte_identical']} | {r['identical']} | "
                     f"{'-' if me is None else ('yes' if me else 'NO')} |")
    diffs = [d for r in report["rows"] for d in r.get("different", [])]
    if diffs:
        lines.append("")
        lines.append("not identical: " + ", ".join(diffs[:20]) + (f" (+{len(diffs) - 20})" if len(diffs) > 20 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="toy")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--work", default=None, help="where both runs folders go (default runs/.chaos/<timestamp>)")
    p.add_argument("--out", default="results/chaos")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad or args.kills < 0:
        print(f"bench.chaos: error: unknown target(s) {bad} (known: {', '.join(TARGETS)})" if bad
              else f"bench.chaos: error: --kills {args.kills}: expected >= 0", file=sys.stderr)
        return 2
    report = run_chaos(args.dataset, args.kills, args.seed, targets, Path(args.work) if args.work else None,
                       Path(args.out))
    t = report["total"]
    ok = t["lost"] == 0 and t["duplicated"] == 0 and t["extra"] == 0 and t["identical"] == t["files"] and t["metrics_equal"]
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
