"""Launchers: where the runs of a sweep execute, kept apart from what a run is.

A sweep hands :class:`RunSpec` objects to a :class:`Launcher` (``submit``) and then
collects one :class:`RunOutcome` per spec (``wait``). Each run writes its own folder
(``runs/<dataset>/<method>/seed<S>/``) through :func:`spuraug.runs.run_method`, which skips
finished runs and resumes unfinished ones, so a launcher only decides *where* a run
executes. :class:`LocalLauncher` runs them one after another on this machine; a Ray
launcher (scale-out issue) implements the same two methods.
"""

from __future__ import annotations

import abc
import json
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: the arguments of :func:`spuraug.runs.run_method`."""

    dataset: str
    method: str
    seed: int
    runs_dir: str = "runs"
    data_dir: str | None = None
    config_file: str | None = None
    #: Nested config overrides, merged by ``spuraug.runs.load_config``.
    overrides: dict | None = field(default=None, hash=False)
    force: bool = False

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.dataset / self.method / f"seed{self.seed}"

    def is_finished(self) -> bool:
        return (self.run_dir() / "done").exists()


@dataclass
class RunOutcome:
    """What became of a :class:`RunSpec`: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    spec: RunSpec
    status: str
    wall_time_s: float
    error: str | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["spec"] = {k: v for k, v in asdict(self.spec).items()}
        return d


class Launcher(abc.ABC):
    """Executes run specs somewhere. Subclasses implement :meth:`submit` and :meth:`wait`."""

    @abc.abstractmethod
    def submit(self, spec: RunSpec) -> None:
        """Queue ``spec``; may start it at once or later."""

    @abc.abstractmethod
    def wait(self) -> list[RunOutcome]:
        """Block until every submitted run has finished or failed; one outcome per spec, in submit order."""


def _print(msg: str) -> None:
    print(msg, flush=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LocalLauncher(Launcher):
    """Runs the specs one after another on this machine, when :meth:`wait` is called.

    ``mode="inprocess"`` calls :func:`spuraug.runs.run_method` directly (fast: imports
    and cached toy data are shared); ``mode="subprocess"`` runs ``spuraug train`` per run,
    so a crash (out of memory, a segfault) cannot take the sweep down. A failed run is
    reported and the sweep goes on; what it had written stays for the next resume.
    """

    def __init__(self, mode: str = "inprocess", log=_print) -> None:
        if mode not in ("inprocess", "subprocess"):
            raise ValueError(f"LocalLauncher mode must be 'inprocess' or 'subprocess', not {mode!r}")
        self.mode = mode
        self.log = log
        self._queue: list[RunSpec] = []

    def submit(self, spec: RunSpec) -> None:
        self._queue.append(spec)

    def wait(self) -> list[RunOutcome]:
        outcomes = []
        start = time.monotonic()
        n = len(self._queue)
        for i, spec in enumerate(self._queue, 1):
            prefix = f"[{i}/{n}] {spec.label}"
            if spec.is_finished() and not spec.force:
                self.log(f"{prefix}: already finished, skipped (elapsed {_hms(time.monotonic() - start)})")
                outcomes.append(RunOutcome(spec, "skipped", 0.0))
                continue
            resuming = (spec.run_dir() / "checkpoints" / "last.pt").exists() and not spec.force
            self.log(f"{prefix}: {'resuming' if resuming else 'running'} "
                     f"(elapsed {_hms(time.monotonic() - start)})")
            t0 = time.monotonic()
            try:
                if self.mode == "inprocess":
                    self._run_inprocess(spec)
                else:
                    self._run_subprocess(spec)
            except KeyboardInterrupt:
                self.log(f"{prefix}: interrupted; finished runs are kept, re-run the sweep to resume")
                raise
            except Exception as e:  # one failing run must not lose the others
                dt = time.monotonic() - t0
                detail = "".join(traceback.format_exception_only(type(e), e)).strip()
                self.log(f"{prefix}: FAILED after {dt:.1f} s: {detail}")
                outcomes.append(RunOutcome(spec, "failed", dt, detail))
                continue
            dt = time.monotonic() - t0
            self.log(f"{prefix}: done in {dt:.1f} s (elapsed {_hms(time.monotonic() - start)})")
            outcomes.append(RunOutcome(spec, "done", dt))
        self._queue = []
        return outcomes

    @staticmethod
    def _run_inprocess(spec: RunSpec) -> None:
        from spuraug.runs import run_method

        run_method(spec.dataset, spec.method, spec.seed, runs_dir=spec.runs_dir, data_dir=spec.data_dir,
                   config_file=spec.config_file, overrides=spec.overrides, force=spec.force)

    @staticmethod
    def train_command(spec: RunSpec) -> list[str]:
        """The ``spuraug train`` command line that executes ``spec`` (overrides as ``--set``)."""
        cmd = [sys.executable, "-m", "spuraug.cli", "train", "--dataset", spec.dataset, "--method", spec.method,
               "--seed", str(spec.seed), "--out", spec.runs_dir]
        if spec.data_dir:
            cmd += ["--data-dir", spec.data_dir]
        if spec.config_file:
            cmd += ["--config", spec.config_file]
        for key, value in flatten_overrides(spec.overrides or {}).items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]  # JSON is valid YAML
        if spec.force:
            cmd.append("--force")
        return cmd

    def _run_subprocess(self, spec: RunSpec) -> None:
        cmd = self.train_command(spec)
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise RuntimeError(f"`{shlex.join(cmd)}` exited with {proc.returncode}")


def flatten_overrides(overrides: dict, prefix: str = "") -> dict:
    """``{"erm": {"epochs": 2}}`` -> ``{"erm.epochs": 2}`` (the ``--set`` form of ``spuraug train``)."""
    out: dict = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_overrides(v, key + "."))
        else:
            out[key] = v
    return out


LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher}


def make_launcher(name: str, **options) -> Launcher:
    """The launcher registered as ``name`` (``"local"``; ``"local-subprocess"`` runs each in its own process)."""
    if name == "local-subprocess":
        return LocalLauncher(mode="subprocess", **options)
    if name not in LAUNCHERS:
        raise ValueError(f"unknown launcher {name!r}; known: {', '.join([*LAUNCHERS, 'local-subprocess'])}")
    return LAUNCHERS[name](**options)
