"""``spuraug train``: train and evaluate one method on one dataset with one seed.

    spuraug train --dataset toy --method erm --seed 0 [--data-dir DIR] [--out runs]
                  [--config FILE] [--set erm.lr=0.01 ...] [--weights PATH] [--device cpu] [--threads N] [--force]

Writes ``<out>/<dataset>/<method>/seed<S>/`` (see :mod:`spuraug.runs`). A finished run
is reported, not redone (unless ``--force``); an interrupted one resumes. Bad input
(unknown dataset or method, missing data or weights, a bad config, a NaN loss) exits 2
with one line naming the problem; nothing finished is overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from spuraug.config import ConfigError, check_seed, parse_overrides
from spuraug.data.registry import dataset_names
from spuraug.engine import NonFiniteLossError, UnreadableCheckpoint
from spuraug.errors import UserError
from spuraug.methods import method_names
from spuraug.runs import run_dir, run_method


def check_runtime_options(args: argparse.Namespace) -> None:
    """``--threads`` >= 1 and a ``--device`` torch knows, as one-line errors."""

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: expected an integer >= 1")
    if args.device not in (None, "auto"):

        try:
            torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {args.device!r}: not a device (cpu, cuda, cuda:1, mps)") from None


def check_out_dir(out: str) -> None:
    """``--out`` must be a folder this user can write to (or one that can be made)."""

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    existing = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write to {existing} (read-only or not a folder)")


def train_command(args: argparse.Namespace) -> int:

    if args.dataset not in dataset_names():
        raise UserError(f"unknown dataset {args.dataset!r}; known datasets: {', '.join(dataset_names())}")
    if args.method not in method_names():
        raise UserError(f"unknown method {args.method!r}; known methods: {', '.join(method_names())}")
    check_runtime_options(args)
    if args.threads:

        torch.set_num_threads(args.threads)
    try:
        for seed in args.seed:
            check_seed(seed)
        overrides = parse_overrides([*(args.set or []), *([f"model.weights={json.dumps(args.weights)}"]
                                                           if args.weights else [])])
    except ConfigError as e:
        raise UserError(str(e)) from None
    check_out_dir(args.out)
    for seed in args.seed:
        d = run_dir(args.out, args.dataset, args.method, seed)
        was_done = (d / "done").is_file()
        try:
            result = run_method(
                args.dataset, args.method, seed, runs_dir=args.out, data_dir=args.data_dir,
                config_file=args.config, overrides=overrides or None, force=args.force, device=args.device,
            )
        except ConfigError as e:
            raise UserError(str(e)) from None
        except NonFiniteLossError as e:
            raise UserError(f"{d}: {e}") from None
        except UnreadableCheckpoint as e:  # a finished run's checkpoint another method starts from
            raise UserError(f"{e}; redo that run with --force") from None
        test, val = result.get("test") or {}, result.get("val") or {}
        status = "already done (use --force to redo)" if was_done and not args.force else "done"
        print(
            f"{args.dataset}/{args.method}/seed{seed}: {status}; selected epoch {result.get('selected_epoch')} "
            f"by {result.get('selection')}: val worst-group {val.get('worst_group_acc', float('nan')):.1f}, "
            f"test worst-group {test.get('worst_group_acc', float('nan')):.1f}, "
            f"test avg {test.get('avg_acc', float('nan')):.1f}  ({d})"
        )
        if args.json:
            print(json.dumps({k: result[k] for k in ("dataset", "method", "seed", "selected_epoch", "test")}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:

    names = ", ".join(method_names())
    p = subparsers.add_parser(
        "train",
        help=f"train and evaluate a method ({names}) on a dataset",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--dataset", required=True, help="toy, waterbirds, celeba, metashift")
    p.add_argument("--method", required=True, help=f"one of the registered methods: {names}")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    p.add_argument("--data-dir", default=None, help="where the real datasets live (default $SPURAUG_DATA_DIR or ./data)")
    p.add_argument("--out", default="runs", help="runs folder (default ./runs)")
    p.add_argument("--config", default=None, help="config file (default spuraug/configs/<dataset>.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. erm.epochs=2")
    p.add_argument("--weights", default=None, help="ImageNet ResNet-50 state-dict file (instead of torchvision's cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (1 is fastest on a shared machine)")
    p.add_argument("--force", action="store_true", help="redo a finished run (the old one is kept as .seedS.previous)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p.set_defaults(handler=train_command)


if __name__ == "__main__":  # pragma: no cover
    from spuraug.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
