"""``make plan DATASET=...`` (``python -m bench.plan --dataset D``): what the real job will cost.

For each method (ERM, GroupDRO, JTT, DFR) and each DDB stage (invert, sources, segment,
inpaint, prune, retrain), the work in images is read from the dataset's config
(``spuraug.config.config_path``: epochs, batch sizes, K, steps) and its image counts (the
dataset on disk when present, else the published counts of ``spuraug.data``, else
``--counts``), and divided by the recorded throughput of that kind of work:

- records under ``results/gpu/`` and ``results/throughput/`` (``--results-dir``): pytest-benchmark
  files (``make throughput``, ``bench/gpu/check.sh``), ``bench.train_throughput`` records
  (``train_loop/``), the GPU inpainting bench (``gpu_ddb.json``), the stage bench
  (``stages``) and the reference-loop bench (``reference_loop.json``);
- a GPU record wins over a CPU one; CPU-only rows are marked ``cpu``; a kind of work with no
  record at all is marked ``n/a`` and left out of the totals (which then read ``>=``).

Printed as a table and written to ``results/plan/<dataset>.md`` and ``.json``. Every
assumption is listed in the output and in docs/harness.md ("make plan").
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spuraug import atomic
from spuraug.config import load_config
from spuraug.data.base import DataError
from spuraug.data.registry import dataset_info, get_dataset, resolve_data_dir
from spuraug.ddb.method import config_from_hparams

REAL_DATASETS = ("waterbirds", "celeba", "metashift")
#: Forward-only images/s per training images/s when no inference record exists: a training
#: step is ~3x the FLOPs of a forward pass (forward + backward for inputs and weights).
EMBED_PER_TRAIN = 3.0


@dataclass
class Rate:
    """A measured rate of one kind of work."""

    kind: str
    images_per_s: float
    device: str  # "gpu" | "cpu"
    source: str  # file (and benchmark) it comes from
    time: str = ""
    peak_mem_mb: float | None = None
    batch_size: int | None = None
    note: str = ""
    priority: int = 0  # within a device: higher wins (real data path over synthetic tensors)


@dataclass
class Row:
    method: str
    stage: str
    images: float | None
    kind: str
    rate: Rate | None = None
    hours: float | None = None
    note: str = ""
    assumptions: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- records


def _device_of(value: str | None, path: Path) -> str:
    v = str(value or "").lower()
    if v.startswith("cuda") or "nvidia" in v or v == "gpu":
        return "gpu"
    if v == "cpu":
        return "cpu"
    return "gpu" if "gpu" in path.parts else "cpu"


def _rates_of_file(path: Path, root: Path) -> list[Rate]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(data, dict):
        return []
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    out: list[Rate] = []
    when = str(data.get("time") or data.get("datetime") or "")
    if isinstance(data.get("benchmarks"), list):  # pytest-benchmark
        for b in data["benchmarks"]:
            extra = b.get("extra_info") or {}
            mean = (b.get("stats") or {}).get("mean")
            n = extra.get("images")
            if not (isinstance(n, int | float) and isinstance(mean, int | float) and mean > 0):
                continue
            ips = float(n) / float(mean)
            dev = _device_of(extra.get("device"), path)
            common = dict(device=dev, source=f"{rel}::{b.get('name')}", time=when,
                          peak_mem_mb=extra.get("peak_mem_mb"), batch_size=extra.get("batch_size"))
            stage, method = str(extra.get("stage", "")), str(extra.get("method", ""))
            if extra.get("model") == "resnet50" and stage == "train":
                if method == "erm":  # GroupDRO's and JTT's steps are the same work
                    out.append(Rate("train", ips, note="synthetic tensors", priority=1, **common))
                elif method == "dfr":  # embedding + logistic regressions: a forward pass
                    out.append(Rate("embed", ips, note="synthetic tensors", priority=1, **common))
            elif stage.startswith("inpaint_sd2") and extra.get("steps"):
                out.append(Rate("inpaint", ips, note=f"{extra.get('steps')} steps", **common))
    elif isinstance(data.get("real"), list) and data.get("model") == "resnet50":  # bench.train_throughput
        best = max(data["real"], key=lambda r: r["images_per_s"])
        out.append(Rate("train", float(best["images_per_s"]), _device_of(data.get("device"), path), rel, when,
                        best.get("peak_rss_mb"), data.get("batch_size"),
                        f"real data path, {best['workers']} loader workers, jemalloc "
                        f"{'on' if data.get('jemalloc') else 'off'}", priority=2))
    elif isinstance(data.get("batches"), list) and data.get("flops_per_image"):  # gpu_ddb_throughput
        ok = [b for b in data["batches"] if b.get("images_per_s")]
        if ok:
            best = max(ok, key=lambda b: b["images_per_s"])
            out.append(Rate("inpaint", float(best["images_per_s"]), _device_of(data.get("device"), path), rel, when,
                            best.get("peak_mem_mb"), best.get("batch_size"),
                            f"{data.get('steps')} steps at {data.get('resolution')} px",
                            priority=0))
            out[-1].note += f"; steps={data.get('steps')}"
    elif isinstance(data.get("stages"), list):  # gpu_stage_throughput
        for s in data["stages"]:
            if s.get("stage") in ("invert", "segment", "prune") and s.get("images_per_s"):
                out.append(Rate(s["stage"], float(s["images_per_s"]), _device_of(data.get("device"), path), rel,
                                when, s.get("peak_mem_mb"), s.get("batch_size"),
                                f"resolution={s.get('resolution')}"))
    elif isinstance(data.get("staged"), dict) or isinstance(data.get("train"), dict):  # bench/gpu/reference_loop.py
        train = data.get("train") or {}
        dev = _device_of(data.get("device"), path)
        if train.get("model") == "resnet50" and not data.get("smoke"):
            bare = [b for b in (train.get("bare") or {}).values() if b.get("images_per_s")]
            if bare:
                b = max(bare, key=lambda b: b["images_per_s"])
                out.append(Rate("train", float(b["images_per_s"]), dev, rel, when, b.get("peak_gpu_mb"),
                                train.get("batch_size"), f"synthetic tensors, compile={b.get('compile')}",
                                priority=1))
            real = train.get("real") or {}
            if real.get("images_per_s"):
                out.append(Rate("train", float(real["images_per_s"]), dev, rel, when, None, train.get("batch_size"),
                                f"real data path, {real.get('workers')} loader workers", priority=2))
        for stage, s in ((data.get("staged") or {}).get("stages") or {}).items():
            if stage in ("segment", "inpaint", "prune") and s.get("images_per_s") and not data.get("smoke"):
                note = f"steps={data.get('steps')}" if stage == "inpaint" else ""
                out.append(Rate(stage, float(s["images_per_s"]), _device_of(data.get("device"), path), rel, when,
                                s.get("peak_mem_mb"), data.get("batch_size"), note, priority=1))
    return out


def collect_rates(results_dir: str | Path) -> dict[str, Rate]:
    """The rate to plan with for each kind of work: GPU before CPU, then priority, then newest."""
    root = Path(results_dir)
    rates: list[Rate] = []
    for sub in ("gpu", "throughput"):
        for path in sorted((root / sub).rglob("*.json")):
            rates.extend(_rates_of_file(path, root))
    best: dict[str, Rate] = {}
    for r in rates:
        key = (r.device == "gpu", r.priority, r.time, r.source)
        cur = best.get(r.kind)
        if cur is None or key > (cur.device == "gpu", cur.priority, cur.time, cur.source):
            best[r.kind] = r
    return best


# --------------------------------------------------------------------------- work


def image_counts(dataset: str, data_dir: str | None, counts: str | None) -> tuple[dict[str, int] | None, str]:
    """``{"train", "val", "test"}`` image counts and where they come from."""
    if counts:
        try:
            out = {k: int(v) for k, v in (kv.split("=") for kv in counts.split(","))}
        except ValueError:
            raise SystemExit(f"--counts {counts!r}: expected train=N,val=N,test=N") from None
        if set(out) != {"train", "val", "test"}:
            raise SystemExit(f"--counts {counts!r}: expected train=N,val=N,test=N")
        return out, "--counts"

    try:
        found = {s: len(get_dataset(dataset, s, data_dir=data_dir, transform=None)) for s in ("train", "val", "test")}
        return found, f"the dataset in {resolve_data_dir(data_dir)}"
    except (DataError, OSError, ValueError):
        pass
    published = dataset_info(dataset).published_counts
    if published:
        return {s: int(sum(published[s])) for s in ("train", "val", "test")}, "published counts (spuraug.data)"
    return None, "unknown (no data found, none published): pass --data-dir or --counts"


def error_set_size(dataset: str, n_train: int) -> tuple[int, str]:
    """JTT's error set, before any run: the training groups smaller than half the mean group."""

    groups = dataset_info(dataset).published_counts.get("train")
    if groups:
        mean = sum(groups) / len(groups)
        small = sum(g for g in groups if g < mean / 2)
        return small, "JTT error set = the training groups smaller than half the mean group (published counts)"
    return round(0.05 * n_train), "JTT error set = 5% of training images (no published group counts)"


def _evals(epochs: int, every: int) -> int:
    return sum(1 for e in range(1, epochs + 1) if e % every == 0 or e == epochs)


def work_rows(dataset: str, counts: dict[str, int] | None) -> tuple[list[Row], list[str]]:
    """Every row of the plan with its images and kind of work (rates not applied yet)."""

    n_classes = dataset_info(dataset).n_classes
    assumptions: list[str] = []
    rows: list[Row] = []
    n_train = counts["train"] if counts else None
    n_eval = counts["val"] + counts["test"] if counts else None

    def times(a, b):
        return None if a is None or b is None else a * b

    def train_and_eval(method: str, stage: str, epochs: int, every: int, per_epoch: float | None) -> None:
        rows.append(Row(method, stage, times(epochs, per_epoch), "train", note=f"{epochs} epochs"))
        rows.append(Row(method, f"{stage} eval", times(_evals(epochs, every), n_eval), "embed",
                        note=f"val+test every {every} epoch(s)"))

    erm = load_config(dataset, "erm")
    every = int(erm["eval"]["every"])
    train_and_eval("erm", "train", erm["hparams"]["epochs"], every, n_train)
    gdro = load_config(dataset, "groupdro")["hparams"]
    train_and_eval("groupdro", "train", gdro["epochs"], every, n_train)
    jtt = load_config(dataset, "jtt")["hparams"]
    reuse = jtt["reuse_erm"] and all(jtt[f"stage1_{k}"] == erm["hparams"][k]
                                     for k in ("optimizer", "lr", "weight_decay", "momentum", "batch_size"))
    if reuse:
        rows.append(Row("jtt", "stage 1", 0, "train", note="taken from the ERM run"))
    else:
        train_and_eval("jtt", "stage 1", jtt["stage1_epochs"], every, n_train)
    rows.append(Row("jtt", "error set", n_train, "embed", note="one pass over train"))
    n_err, why = error_set_size(dataset, n_train or 0)
    if n_train is not None:
        assumptions.append(why)
    up = None if n_train is None else n_train + (jtt["lambda_up"] - 1) * n_err
    train_and_eval("jtt", "stage 2", jtt["epochs"], every, up)
    rows[-2].note += f", lambda_up {jtt['lambda_up']}, error set ~{n_err}"
    rows.append(Row("dfr", "embed val+test", n_eval, "embed", note="ERM run reused; logistic regressions not timed"))

    ddb = config_from_hparams(load_config(dataset, "ddb")["hparams"], where=f"{dataset}: ddb")
    inv = ddb.invert
    inv_images = n_classes * inv.max_train_steps * inv.gradient_accumulation_steps * inv.train_batch_size
    rows.append(Row("ddb", "invert", inv_images, "invert",
                    note=f"{n_classes} tokens x {inv.max_train_steps} steps x {inv.gradient_accumulation_steps * inv.train_batch_size} images at {inv.resolution} px"))
    rows.append(Row("ddb", "sources", n_train, "embed", note="ERM losses over train (ERM run reused)"))
    k = sum(int(v) for v in ddb.sources.k)
    rows.append(Row("ddb", "segment", k, "segment", note=f"K = {list(ddb.sources.k)}"))
    generated = k * (n_classes - 1)
    rows.append(Row("ddb", "inpaint", generated, "inpaint",
                    note=f"{ddb.inpaint.num_inference_steps} steps at {ddb.inpaint.resolution} px"))
    rows.append(Row("ddb", "prune", generated, "prune", note="integrated gradients"))
    assumptions.append("DDB retraining counts every generated image as kept (pruning only removes some: an upper bound)")
    rc = ddb.retrain
    train_and_eval("ddb", "retrain", rc.epochs, every, None if n_train is None else n_train + generated)
    assumptions.append("the ERM run that DFR, JTT (stage 1 when the recipes match) and DDB start from is counted once, "
                       "under erm")
    return rows, assumptions


# --------------------------------------------------------------------------- plan


def _scale(row: Row, rate: Rate, ddb_inpaint_steps: int | None, invert_res: int | None) -> tuple[float, str]:
    """images/s of ``rate`` for the row's setting (inpainting steps, inversion resolution)."""
    ips, note = rate.images_per_s, ""
    if row.kind == "inpaint" and ddb_inpaint_steps and "steps=" in rate.note:
        measured = rate.note.split("steps=")[1].split(";")[0].split()[0]
        if measured.isdigit() and int(measured) != ddb_inpaint_steps:
            ips *= int(measured) / ddb_inpaint_steps
            note = f"scaled from {measured} to {ddb_inpaint_steps} steps"
    if row.kind == "invert" and invert_res and "resolution=" in rate.note:
        measured = rate.note.split("resolution=")[1].split(";")[0]
        if measured.isdigit() and int(measured) != invert_res:
            ips *= (int(measured) / invert_res) ** 2
            note = f"scaled by pixels from {measured} to {invert_res} px"
    return ips, note


def make_plan(dataset: str, results_dir: str | Path = "results", data_dir: str | None = None,
              counts: str | None = None, seeds: int = 3) -> dict:

    found, counts_from = image_counts(dataset, data_dir, counts)
    rows, assumptions = work_rows(dataset, found)
    rates = collect_rates(results_dir)
    ddb = config_from_hparams(load_config(dataset, "ddb")["hparams"], where=f"{dataset}: ddb")
    if "embed" not in rates and "train" in rates:
        t = rates["train"]
        rates["embed"] = Rate("embed", t.images_per_s * EMBED_PER_TRAIN, t.device, t.source, t.time, t.peak_mem_mb,
                              t.batch_size, f"assumed {EMBED_PER_TRAIN:g}x the training rate")
        assumptions.append(f"no inference record: forward-only rate = {EMBED_PER_TRAIN:g}x the training rate")
    for row in rows:
        rate = rates.get(row.kind)
        row.rate = rate
        if row.images == 0:
            row.hours = 0.0
        elif rate is not None and row.images is not None:
            ips, note = _scale(row, rate, ddb.inpaint.num_inference_steps, ddb.invert.resolution)
            row.hours = row.images / ips / 3600
            if note:
                row.note += f"; {note}"
    per_method: dict[str, dict] = {}
    for row in rows:
        m = per_method.setdefault(row.method, {"hours": 0.0, "complete": True, "peak_mem_mb": None, "devices": set()})
        if row.hours is None:
            m["complete"] = False
        else:
            m["hours"] += row.hours
        if row.rate is not None and row.images:
            m["devices"].add(row.rate.device)
            if row.rate.peak_mem_mb:
                m["peak_mem_mb"] = max(m["peak_mem_mb"] or 0, float(row.rate.peak_mem_mb))
    for m in per_method.values():
        m["devices"] = sorted(m["devices"])
    total = sum(m["hours"] for m in per_method.values())
    complete = all(m["complete"] for m in per_method.values())
    assumptions += [
        "rates do not depend on the batch size (records at other batch sizes are used as they are); "
        "peak memory is the record's, at the batch it was measured with",
        "one device per run (device-hours = wall hours); seeds run one after another; every DDB stage "
        "runs once per seed (an upper bound where a stage's artifacts are shared between seeds)",
        "GPU rates for training come from synthetic tensors unless a train_loop record exists: "
        "the JPEG loader is assumed to keep up",
    ]
    return {
        "dataset": dataset,
        "image_counts": found,
        "image_counts_from": counts_from,
        "seeds": seeds,
        "rows": [{**{k: v for k, v in asdict(r).items() if k != "rate"},
                  "rate": asdict(r.rate) if r.rate else None} for r in rows],
        "methods": per_method,
        "total_hours_per_seed": total,
        "total_hours": total * seeds,
        "complete": complete,
        "assumptions": assumptions,
    }


def _h(hours: float | None) -> str:
    if hours is None:
        return "n/a"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h"


def format_plan(plan: dict) -> str:
    ge = "" if plan["complete"] else ">= "
    counts = plan["image_counts"]
    head = (f"plan for {plan['dataset']}: images "
            + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "unknown")
            + f" ({plan['image_counts_from']}); {plan['seeds']} seed(s)")
    lines = [head, "",
             "| method | stage | images | rate (img/s) | device | wall per seed | device-h per seed | peak mem | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in plan["rows"]:
        rate = r["rate"]
        imgs = "n/a" if r["images"] is None else f"{r['images']:,.0f}"
        rs = "n/a" if rate is None else f"{rate['images_per_s']:.3g}"
        dev = "n/a" if rate is None else rate["device"] + ("" if rate["device"] == "gpu" else " (CPU record)")
        mem = "" if not rate or not rate.get("peak_mem_mb") else (
            f"{rate['peak_mem_mb'] / 1024:.1f} GiB" + (f" @b{rate['batch_size']}" if rate.get("batch_size") else ""))
        dh = r["hours"]
        lines.append(f"| {r['method']} | {r['stage']} | {imgs} | {rs} | {dev} | {_h(r['hours'])} | "
                     f"{'n/a' if dh is None else f'{dh:.2f}'} | {mem} | {r['note']} |")
    lines += ["", "| method | wall per seed | device-h per seed | device-h, all seeds | peak mem | devices |",
              "|---|---|---|---|---|---|"]
    for name, m in plan["methods"].items():
        pre = "" if m["complete"] else ">= "
        mem = f"{m['peak_mem_mb'] / 1024:.1f} GiB" if m["peak_mem_mb"] else "n/a"
        lines.append(f"| {name} | {pre}{_h(m['hours'])} | {pre}{m['hours']:.2f} | {pre}{m['hours'] * plan['seeds']:.2f} "
                     f"| {mem} | {', '.join(m['devices']) or 'n/a'} |")
    lines.append(f"| **all** | {ge}{_h(plan['total_hours_per_seed'])} | {ge}{plan['total_hours_per_seed']:.2f} | "
                 f"{ge}{plan['total_hours']:.2f} | | |")
    lines += ["", "Rates (kind: images/s, device, record):"]
    seen = set()
    for r in plan["rows"]:
        rate = r["rate"]
        if rate and rate["kind"] not in seen:
            seen.add(rate["kind"])
            lines.append(f"- {rate['kind']}: {rate['images_per_s']:.4g} img/s, {rate['device']}, {rate['source']}"
                         + (f" ({rate['note']})" if rate["note"] else ""))
    missing = sorted({r["kind"] for r in plan["rows"] if r["rate"] is None and r["images"]})
    if missing:
        lines.append(f"- no record for: {', '.join(missing)} (rows n/a, totals are lower bounds)")
    lines += ["", "Assumptions:"] + [f"- {a}" for a in plan["assumptions"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", action="append", choices=REAL_DATASETS, help="repeat for several (default: all three)")
    p.add_argument("--results-dir", default="results", help="where the throughput records are (and results/plan/ goes)")
    p.add_argument("--data-dir", default=None, help="count images from the dataset here when present")
    p.add_argument("--counts", default=None, help="train=N,val=N,test=N (overrides data and published counts)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    for dataset in args.dataset or REAL_DATASETS:
        plan = make_plan(dataset, args.results_dir, args.data_dir, args.counts, args.seeds)
        text = format_plan(plan)
        print(text + "\n")
        if not args.no_write:
            out = Path(args.results_dir) / "plan"
            atomic.write_json(out / f"{dataset}.json", plan)
            atomic.write_text(out / f"{dataset}.md", f"# {text}\n")
            print(f"# written {out / dataset}.md and .json\n", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
