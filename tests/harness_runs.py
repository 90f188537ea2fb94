"""Hand-built run folders in the cross-team format, for the harness tests."""

from __future__ import annotations

import json
from pathlib import Path


def metrics(wga: float, avg: float, adj: float | None, group_accs: list[float | None]) -> dict:
    """A spuraug.metrics.evaluate_predictions-shaped dict (2 classes x 2 attributes)."""
    groups = []
    for g, acc in enumerate(group_accs):
        y, a = divmod(g, 2)
        groups.append({"y": y, "a": a, "n": 0 if acc is None else 100, "correct": 0 if acc is None else int(acc),
                       "acc": acc})
    return {"worst_group_acc": wga, "avg_acc": avg, "adjusted_avg_acc": adj, "mean_group_acc": avg,
            "worst_class_acc": wga, "groups": groups}


def make_run(runs_dir: Path, dataset: str, method: str, seed: int, wga: float, avg: float,
             adj: float | None = None, group_accs: list[float | None] | None = None, done: bool = True,
             annotation: dict | None = None, wall_time_s: float = 1.5) -> Path:
    """Write ``runs_dir/<dataset>/<method>/seed<seed>/`` as the engine would."""
    d = Path(runs_dir) / dataset / method / f"seed{seed}"
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    group_accs = group_accs if group_accs is not None else [avg, wga, wga + 1, avg]
    test = metrics(wga, avg, adj, group_accs)
    config = {"dataset": {"name": dataset}, "method": method, "seed": seed}
    (d / "config.json").write_text(json.dumps(config))
    line = {"epoch": 1, "step": 10, "train_loss": 0.5, "images_per_s": 100.0, "step_time_s": 0.1,
            "peak_mem_mb": 10.0, "val": test, "test": test}
    (d / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    result = {
        "dataset": dataset, "method": method, "seed": seed, "selection": "val_worst_group_acc",
        "selected_epoch": 1,
        "annotation": annotation or {"train_group_labels": False, "val_group_labels": True},
        "val": test, "test": test, "config_hash": f"hash-{method}-{seed}", "wall_time_s": wall_time_s,
        "config": config,
    }
    (d / "result.json").write_text(json.dumps(result))
    if done:
        (d / "done").write_text("")
    return d
