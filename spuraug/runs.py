"""Run folders: one method, one dataset, one seed, resumable and skipped when done.

Layout::

    runs/<dataset>/<method>/seed<S>/
        config.json     the resolved config (with its citations and hash)
        metrics.jsonl   one JSON line per evaluated epoch
        checkpoints/    last.pt (resume), best.pt (selected model state dict)
        result.json     the selected epoch's metrics, annotation setting, timing
        done            written last

The files' fields are those of :mod:`spuraug.records` (``RunConfig``, ``EpochLine``,
``RunResult``): they are written through it, and read through it by the harness.

:func:`run_method` skips a finished run (unless ``force``), resumes an unfinished one,
and refuses to mix configs: a run folder made with another config is an error naming
both hashes (``force`` moves the old folder aside to ``.seed<S>.previous``, so nothing
finished is lost).

Safety around a run folder:

- a file lock (``.seed<S>.lock`` beside the folder, :func:`run_lock`): a second process on
  the same run waits for the first one and then finds it done (one line says so);
- ``force`` keeps the previous run until the new one has started cleanly: a forced run that
  fails (or is killed) before its first training file keeps/restores the previous run, and
  a finished ``.seed<S>.previous`` is never replaced by an unfinished folder;
- ``attempts.json`` holds every attempt's seconds (persisted while it runs, so a killed
  attempt's time counts): ``result.json``'s ``wall_time_s`` is their sum.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn

from spuraug import atomic, engine
from spuraug.config import ConfigError, load_config
from spuraug.data.base import SpuriousDataset
from spuraug.data.registry import dataset_info, get_dataset
from spuraug.ddb.artifacts import AttemptClock
from spuraug.methods import get_method
from spuraug.models import ToyCNN, build_model, load_toy_backbone_state
from spuraug.records import EpochLine, RunConfig, RunResult

__all__ = [
    "ConfigError",
    "RunConfigMismatch",
    "RunContext",
    "build_model_from_config",
    "ensure_erm",
    "load_config",
    "load_model",
    "read_metrics",
    "run_dir",
    "run_method",
]


class RunConfigMismatch(ConfigError):
    """A run folder already holds a run made with a different config."""


class DamagedRunError(ConfigError):
    """A file of a finished run cannot be read (truncated or damaged)."""


def _redo_hint(d: Path) -> str:
    """The command that redoes the run in folder ``d`` (``<out>/<dataset>/<method>/seed<S>``)."""
    seed = d.name[4:] if d.name.startswith("seed") else "S"
    return (f"spuraug train --dataset {d.parent.parent.name} --method {d.parent.name} --seed {seed} "
            f"--out {d.parent.parent.parent} --force")


def lock_path(d: str | os.PathLike) -> Path:
    """The lock file of run folder ``d``: ``.seed<S>.lock`` beside it (not inside, so moving
    the folder aside does not move its lock)."""
    d = Path(d)
    return d.parent / f".{d.name}.lock"


@contextmanager
def run_lock(d: str | os.PathLike, label: str | None = None, wait: bool = True) -> Iterator[bool]:
    """Hold the file lock of run folder ``d`` (``filelock``, released when the process dies).

    When another process holds it, one line says so and this one waits for it (``wait``)
    or yields ``False`` at once without the lock (the caller skips the run)."""

    path = lock_path(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        what = f"[{label}] " if label else ""
        if not wait:
            print(f"{what}skipped: another process is running {d} (lock {path})", file=sys.stderr)
            yield False
            return
        print(f"{what}another process is running {d} (lock {path}); waiting for it to finish", file=sys.stderr)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def run_dir(runs_dir: str | os.PathLike, dataset: str, method: str, seed: int) -> Path:
    """``runs_dir/<dataset>/<method>/seed<seed>``."""
    return Path(runs_dir) / dataset / method / f"seed{int(seed)}"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The JSON lines of a run folder's ``metrics.jsonl`` (or of that file itself), each
    checked as a :class:`spuraug.records.EpochLine` (a line without ``epoch`` is a
    :class:`~spuraug.records.RecordError` naming the file)."""
    p = Path(path)
    f = p / "metrics.jsonl" if p.is_dir() else p
    return [EpochLine.from_dict(line, str(f)).to_dict() for line in engine.read_jsonl(f)]


def build_model_from_config(model_config: dict, n_classes: int, pretrained: bool | None = None) -> nn.Module:
    """The backbone a config's ``model`` section describes (``pretrained`` overrides it)."""
    name = model_config["name"]
    use_pretrained = model_config.get("pretrained", True) if pretrained is None else pretrained
    if name == "toy_cnn":
        width = int(model_config.get("width", 32))
        model = ToyCNN(n_classes, width=width)
        if use_pretrained:
            model.load_state_dict(load_toy_backbone_state(model_config.get("weights"), width), strict=False)
        return model
    return build_model(name, n_classes, pretrained=use_pretrained, weights_path=model_config.get("weights"))


def load_model(run_dir: str | os.PathLike, which: str = "best") -> nn.Module:
    """The model of a run folder, rebuilt from ``config.json`` and ``checkpoints/<which>.pt``
    (``which`` = ``best``, ``last`` or a kept epoch such as ``epoch010``), in eval mode on CPU.
    Pretrained weights are not needed: the checkpoint holds every parameter."""
    d = Path(run_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{d}: no config.json; is this a run folder?")
    config = json.loads(cfg_path.read_text())
    ckpt = d / "checkpoints" / f"{which}.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint (has the run finished an epoch?)")
    try:
        state = engine.load_state(ckpt)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... on a torn file
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise DamagedRunError(
            f"{ckpt}: cannot be read ({type(e).__name__}: {first}; truncated or damaged?); "
            f"redo that run: {_redo_hint(d)}"
        ) from None
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]

    model = build_model_from_config(config["model"], dataset_info(config["dataset"]).n_classes, pretrained=False)
    model.load_state_dict(state)
    return model.eval()


@dataclass
class RunContext:
    """Everything a method's ``run`` needs: the resolved config, the run folder, the data."""

    dataset: str
    method: str
    seed: int
    config: dict
    dir: Path
    runs_dir: Path
    data_dir: str | None = None
    device: torch.device = field(default_factory=lambda: engine.resolve_device(None))
    config_file: str | None = None
    overrides: dict | None = None
    progress: bool = True
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def hparams(self) -> dict:
        return self.config["hparams"]

    @property
    def num_workers(self) -> int:
        return engine.resolve_num_workers(self.config["loader"]["num_workers"], self.device)

    def load_split(self, split: str, transform: str = "eval") -> SpuriousDataset:
        """A split of the dataset with the config's dataset options (cached)."""
        key = (split, transform)
        if key not in self._splits:
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config["dataset_options"].items()}
            try:
                self._splits[key] = get_dataset(
                    self.dataset, split, data_dir=self.data_dir, transform=transform, **options
                )
            except TypeError as e:
                raise ConfigError(f"{self.config['config_file']}: dataset_options: {e}") from None
        return self._splits[key]

    def train_group_counts(self) -> list[int]:
        return [int(c) for c in self.load_split("train").group_counts()]

    def eval_sets(self) -> dict[str, SpuriousDataset]:
        return {"val": self.load_split("val"), "test": self.load_split("test")}

    def build_model(self, pretrained: bool | None = None) -> nn.Module:
        """A fresh backbone with a new head (seeded by the run seed)."""
        engine.seed_everything(self.seed)
        return build_model_from_config(self.config["model"], self.load_split("train").n_classes, pretrained)

    def fit(
        self,
        model: nn.Module,
        sources: Any,
        objective: engine.Objective | None = None,
        hparams: dict | None = None,
        out_dir: Path | None = None,
        keep_epochs: tuple[int, ...] = (),
        params: Any = None,
    ) -> engine.FitResult:
        """:func:`spuraug.engine.fit` with the optimiser, epochs, selection and evaluation
        of ``hparams`` (default: the method's section), into ``out_dir`` (default: the run folder)."""
        hp = hparams or self.hparams
        opt = engine.build_optimizer(
            params if params is not None else model.parameters(),
            hp["optimizer"], hp["lr"], hp["weight_decay"], hp["momentum"],
        )
        return engine.fit(
            model, sources, opt, hp["epochs"], self.eval_sets(),
            lr_scheduler=engine.build_lr_schedule(opt, hp.get("lr_schedule", "constant"), hp["epochs"]),
            objective=objective, out_dir=out_dir or self.dir, seed=self.seed, device=self.device,
            selection=hp["selection"], train_group_counts=self.train_group_counts(),
            eval_every=self.config["eval"]["every"], eval_batch_size=self.config["eval"]["batch_size"],
            keep_epochs=keep_epochs, num_workers=self.num_workers, progress=self.progress,
        )

    def ensure_erm(self) -> Path:
        """The ERM run of this seed (same config file and overrides), trained if missing."""
        return ensure_erm(
            self.dataset, self.seed, self.runs_dir, self.data_dir,
            config_file=self.config_file, overrides=self.overrides, device=self.device, progress=self.progress,
        )

    def result_from_fit(self, fit: engine.FitResult) -> dict:
        """``{"selected_epoch", "val", "test"}`` of the line the selection rule picked."""
        sel = fit.selected
        if sel is None:
            raise RuntimeError("training produced no evaluated epoch")
        return {"selected_epoch": sel["epoch"], "val": sel.get("val"), "test": sel.get("test")}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _previous(d: Path) -> Path:
    return d.with_name(f".{d.name}.previous")


def _move_aside(d: Path) -> Path:
    """Move a run folder to ``.seed<S>.previous`` next to it (replacing an older one), except
    that a finished ``.previous`` is never replaced by an unfinished folder: that one goes to
    ``.seed<S>.unfinished`` instead."""
    target = _previous(d)
    if not (d / "done").is_file() and (target / "done").is_file():
        target = d.with_name(f".{d.name}.unfinished")
    if target.exists():
        shutil.rmtree(target)
    os.replace(d, target)
    return target


def _started(d: Path) -> bool:
    """Whether a run folder holds anything its training wrote (beyond ``config.json``)."""
    return d.is_dir() and any(p.name not in ("config.json", "attempts.json") for p in d.iterdir())


def _restore_previous(d: Path, why: str, label: str) -> bool:
    """Put a finished ``.previous`` back in place of a run folder that never started (a forced
    run that failed or was killed before its first training file)."""
    prev = _previous(d)
    if not (prev / "done").is_file() or _started(d) or (d / "done").is_file():
        return False
    if d.exists():
        shutil.rmtree(d)
    os.replace(prev, d)
    print(f"[{label}] {why}; the previous run is restored in {d}", file=sys.stderr)
    return True


def _context(dataset: str, method: str, seed: int, runs_dir, data_dir, config_file, overrides,
             device=None, progress: bool = True) -> RunContext:
    """The resolved config (``load_config``) and run folder of one run, as a :class:`RunContext`."""
    return RunContext(
        dataset=dataset, method=method, seed=int(seed), config=load_config(dataset, method, config_file, overrides),
        dir=run_dir(runs_dir, dataset, method, seed), runs_dir=Path(runs_dir), data_dir=data_dir,
        device=engine.resolve_device(device), config_file=str(config_file) if config_file is not None else None,
        overrides=overrides, progress=progress,
    )


def _finished(ctx: RunContext, method_obj, old: dict | None) -> tuple[dict | None, str | None]:
    """The finished run in ``ctx.dir``: ``(result, None)`` when it was made with this config and
    can be returned as is, ``(None, why)`` when its inputs changed since
    (``Method.stale_reason``), ``(None, None)`` when there is no finished run of this config."""
    if not (ctx.dir / "done").is_file() or old is None or old.get("config_hash") != ctx.config["config_hash"]:
        return None, None
    result = _read_json(ctx.dir / "result.json")
    if result is None:
        return None, None
    stale = method_obj.stale_reason(ctx, result)
    return (result, None) if stale is None else (None, stale)


def is_current(
    dataset: str,
    method: str,
    seed: int,
    runs_dir: str | os.PathLike = "runs",
    data_dir: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: dict | None = None,
) -> bool:
    """Whether :func:`run_method` would return a finished run as is: ``done`` present, the
    same config hash, and the method finds it not stale (``Method.stale_reason``)."""
    d = run_dir(runs_dir, dataset, method, seed)
    if not (d / "done").is_file():  # nothing finished: no config to resolve
        return False
    ctx = _context(dataset, method, seed, runs_dir, data_dir, config_file, overrides, progress=False)
    return _finished(ctx, get_method(method)(), _read_json(d / "config.json"))[0] is not None


def run_method(
    dataset: str,
    method: str,
    seed: int,
    runs_dir: str | os.PathLike = "runs",
    data_dir: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: dict | None = None,
    force: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate ``method`` on ``dataset`` with ``seed``; returns ``result.json``'s contents.

    A finished run (``done`` present, same config, not stale) is returned as is; an
    unfinished one resumes from ``checkpoints/last.pt``. Every input is validated before any
    file is touched. With ``force``, or when the method finds the finished run stale (its
    inputs changed), it is moved aside (``.seed<S>.previous``) and redone; if the new run
    fails before it starts (nothing beyond ``config.json`` written), the previous one is put
    back. The run's file lock (:func:`run_lock`) is held throughout: a second process on the
    same run waits for this one.
    """
    ctx = _context(dataset, method, seed, runs_dir, data_dir, config_file, overrides, device, progress)
    if force or not (ctx.dir / "done").is_file():
        ctx.load_split("train", "eval")  # missing data fails here, before any folder (or lock) is made
    label = f"{dataset}/{method}/seed{seed}"
    with run_lock(ctx.dir, label):
        return _run_locked(ctx, get_method(method)(), force, label)


def _run_locked(ctx: RunContext, method_obj, force: bool, label: str) -> dict:
    """:func:`run_method` with the run's lock held."""

    config, d = ctx.config, ctx.dir
    _restore_previous(d, "the last forced run did not start", label)
    old = _read_json(d / "config.json")
    stale = None
    if not force:
        result, stale = _finished(ctx, method_obj, old)
        if result is not None:
            return result
    ctx.load_split("train", "eval")  # cached when checked above
    kept = None
    if stale is not None:
        kept = _move_aside(d)
        print(f"[{label}] redoing the finished run in {d}: {stale}; "
              f"the old one is kept as {kept}", file=sys.stderr)
    elif d.exists() and old is not None and old.get("config_hash") != config["config_hash"]:
        if not force:
            raise RunConfigMismatch(
                f"{d} holds a run with config {old.get('config_hash')} (from {old.get('config_file')}), "
                f"but this config is {config['config_hash']}; use --force to redo it "
                f"(the old folder is kept as .{d.name}.previous) or another --out"
            )
        kept = _move_aside(d)
    elif force and (d / "done").is_file():
        kept = _move_aside(d)
    d.mkdir(parents=True, exist_ok=True)
    RunConfig.from_dict(config).write(d / "config.json")
    if ctx.progress:
        print(f"[{label}] training in {d} on {ctx.device}", file=sys.stderr)
    try:
        with AttemptClock(d / "attempts.json") as clock:
            out = method_obj.run(ctx)
    except BaseException as e:
        if kept is not None and kept == _previous(d):
            _restore_previous(d, f"the forced run failed before it started ({type(e).__name__})", label)
        raise
    record = RunResult(
        dataset=ctx.dataset,
        method=ctx.method,
        seed=int(ctx.seed),
        selection=config["hparams"].get("selection", "val_worst_group_acc"),
        selected_epoch=out.get("selected_epoch"),
        annotation=method_obj.annotation_for(config["hparams"]),
        val=out.get("val"),
        test=out.get("test"),
        config_hash=config["config_hash"],
        wall_time_s=clock.total_seconds,
        config=config,
        group_names=list(ctx.load_split("train", "eval").info.group_names),
        torch_threads=torch.get_num_threads(),
    )
    record.extra = {k: _jsonable(v) for k, v in out.items() if k not in record.to_dict()}
    record.write(d / "result.json")
    result = record.to_dict()
    atomic.write_bytes(d / "done", b"done\n")
    return result


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


def ensure_erm(
    dataset: str,
    seed: int,
    runs_dir: str | os.PathLike,
    data_dir: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """The folder of the finished ERM run of ``dataset``/``seed``, trained first if missing
    (DFR, JTT and DDB start from it instead of training their own)."""
    run_method(dataset, "erm", seed, runs_dir, data_dir, config_file, overrides, device=device, progress=progress)
    return run_dir(runs_dir, dataset, "erm", seed)
