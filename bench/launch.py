"""Launchers: where the runs of a sweep execute, kept apart from what a run is.

A sweep hands :class:`RunSpec` objects to a :class:`Launcher` (``submit``) and then
collects one :class:`RunOutcome` per spec (``wait``). Each run writes its own folder
(``runs/<dataset>/<method>/seed<S>/``) through :func:`spuraug.runs.run_method`, which skips
finished runs and resumes unfinished ones, so a launcher only decides *where* a run
executes. :class:`LocalLauncher` runs them one after another on this machine;
:class:`RayLauncher` runs each as a Ray task (docs/scaleout.md).
"""

from __future__ import annotations

import abc
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as cf_wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from spuraug.config import format_overrides
from spuraug.ddb.engines import connect_ray
from spuraug.runs import is_current, run_method


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
        """Finished with this spec's config and still current (``spuraug.runs.is_current``):
        a run made with other settings or, for DDB, other model weights is not skipped."""

        try:
            return is_current(self.dataset, self.method, self.seed, self.runs_dir, self.data_dir,
                              self.config_file, self.overrides)
        except Exception:  # noqa: BLE001 - a bad config fails, with its message, in the run itself
            return False


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


def log_line(msg: str) -> None:
    """The launchers' and sweeps' default log: one line to stdout, flushed (a log file sees it at once)."""
    print(msg, flush=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def local_parallelism(workers: int | str | None = "auto", threads: int | None = None) -> tuple[int, int | None]:
    """``(workers, threads)`` of a local sweep.

    Without a GPU every run trains on one torch thread unless ``threads`` says otherwise, and
    ``"auto"`` runs one run per core at once. One thread per run is what makes a run's numbers
    independent of the machine's size: torch's CPU kernels split their reductions by thread
    count, so the same run on 1 and on 2 threads differs in the last bits, and training grows
    that into other accuracies. On 2 cores, two runs on one thread each also finish sooner than
    one after the other on two threads (one toy ERM run: 36.4 s on one thread, 25.7 s on two;
    the sweep 9 min 12 s against 11 min 37 s; docs/measurements.md). With a GPU, ``"auto"`` is
    one worker at torch's thread count (the runs share the one device).
    """
    gpu = torch.cuda.is_available()
    if not gpu:
        threads = threads or 1
    if workers in (None, "auto"):
        return (1, threads) if gpu else (max(1, usable_cpus() // threads), threads)
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or 'auto', not {workers}")
    return workers, threads


def parallel_order(specs: list[RunSpec]) -> list[int]:
    """Indices of ``specs`` in the order a parallel launcher starts them: ERM runs first (DFR,
    DDB and a reusing JTT read them, and wait on their lock meanwhile), then DDB runs (by far
    the longest, so they do not end the sweep alone), then the rest in the given order."""

    def rank(i: int) -> int:
        return {"erm": 0, "ddb": 1}.get(specs[i].method, 2)

    return sorted(range(len(specs)), key=rank)


_STARTED = None  # in a worker process: the queue on which it says which run it starts


def _init_worker(threads: int | None, started) -> None:
    global _STARTED
    _STARTED = started
    if threads:
        torch.set_num_threads(threads)


def _worker_run(spec: RunSpec, index: int) -> float:
    """Body of one run in a worker process: :func:`spuraug.runs.run_method` without progress
    bars (two processes' bars would overwrite each other); returns its wall time."""
    if _STARTED is not None:
        _STARTED.put(index)
    t0 = time.monotonic()
    run_method(spec.dataset, spec.method, spec.seed, runs_dir=spec.runs_dir, data_dir=spec.data_dir,
               config_file=spec.config_file, overrides=spec.overrides, force=spec.force, progress=False)
    return time.monotonic() - t0


class LocalLauncher(Launcher):
    """Runs the specs on this machine when :meth:`wait` is called.

    ``mode="inprocess"`` calls :func:`spuraug.runs.run_method` directly (fast: imports
    and cached toy data are shared); ``mode="subprocess"`` runs ``spuraug train`` per run,
    so a crash (out of memory, a segfault) cannot take the sweep down. With ``workers`` > 1
    (in-process mode) the runs go to that many worker processes at once, each on
    ``threads`` torch threads (:func:`local_parallelism`), started in :func:`parallel_order`;
    a line every ``heartbeat_s`` says which runs are in flight. A failed run is reported and
    the sweep goes on; what it had written stays for the next resume.
    """

    def __init__(self, mode: str = "inprocess", log=log_line, workers: int = 1, threads: int | None = None,
                 heartbeat_s: float = 60.0) -> None:
        if mode not in ("inprocess", "subprocess"):
            raise ValueError(f"LocalLauncher mode must be 'inprocess' or 'subprocess', not {mode!r}")
        if workers < 1:
            raise ValueError(f"LocalLauncher workers must be >= 1, not {workers}")
        if workers > 1 and mode != "inprocess":
            raise ValueError("LocalLauncher runs several workers only in mode 'inprocess'")
        self.mode = mode
        self.log = log
        self.workers = workers
        self.threads = threads
        self.heartbeat_s = heartbeat_s
        self._queue: list[RunSpec] = []

    def submit(self, spec: RunSpec) -> None:
        self._queue.append(spec)

    def _announce(self, prefix: str, spec: RunSpec, start: float, now: str = "running") -> bool:
        """Log what becomes of ``spec`` (``now``: running, or queued for a worker); False when it
        is finished and skipped."""
        if spec.is_finished() and not spec.force:
            self.log(f"{prefix}: already finished, skipped (elapsed {_hms(time.monotonic() - start)})")
            return False
        state = now
        if (spec.run_dir() / "done").exists() and not spec.force:
            state = "finished with other settings or inputs, not skipped"
        elif (spec.run_dir() / "checkpoints" / "last.pt").exists() and not spec.force:
            state = "resuming"
        self.log(f"{prefix}: {state} (elapsed {_hms(time.monotonic() - start)})")
        return True

    def wait(self) -> list[RunOutcome]:
        try:
            if self.workers > 1:
                return self._wait_parallel()
            return self._wait_sequential()
        finally:
            self._queue = []

    def _wait_sequential(self) -> list[RunOutcome]:
        outcomes = []
        start = time.monotonic()
        n = len(self._queue)
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for i, spec in enumerate(self._queue, 1):
                self._run_one(i, n, spec, start, outcomes)
        finally:
            torch.set_num_threads(before)  # the caller's thread count, as it was
        return outcomes

    def _run_one(self, i: int, n: int, spec: RunSpec, start: float, outcomes: list[RunOutcome]) -> None:
        """Run ``spec`` here (the ``i``-th of ``n``) and append its outcome."""
        prefix = f"[{i}/{n}] {spec.label}"
        if not self._announce(prefix, spec, start):
            outcomes.append(RunOutcome(spec, "skipped", 0.0))
            return
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
            return
        dt = time.monotonic() - t0
        self.log(f"{prefix}: done in {dt:.1f} s (elapsed {_hms(time.monotonic() - start)})")
        outcomes.append(RunOutcome(spec, "done", dt))

    def _wait_parallel(self) -> list[RunOutcome]:
        start = time.monotonic()
        specs = self._queue
        n = len(specs)
        outcomes: list[RunOutcome | None] = [None] * n
        todo = []
        for i in parallel_order(specs):
            if self._announce(f"[{i + 1}/{n}] {specs[i].label}", specs[i], start, now="queued"):
                todo.append(i)
            else:
                outcomes[i] = RunOutcome(specs[i], "skipped", 0.0)
        if todo:
            self.log(f"{len(todo)} run(s) on {min(self.workers, len(todo))} worker processes, "
                     f"{self.threads or torch.get_num_threads()} torch thread(s) each")
        # spawn, not fork: a forked child inherits the parent's OpenMP thread pool in an unusable state
        ctx = multiprocessing.get_context("spawn")
        started_q = ctx.SimpleQueue()  # which runs a worker has begun (a queued future also reads as running)
        started: set[int] = set()
        pool = ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(todo))), mp_context=ctx,
                                   initializer=_init_worker, initargs=(self.threads, started_q))
        futures: dict = {}
        try:
            # the workers start at the first submit and copy this environment: no progress bars in
            # them (tqdm reads TQDM_DISABLE at import), two processes' bars would overwrite each other
            before = os.environ.get("TQDM_DISABLE")
            os.environ["TQDM_DISABLE"] = "1"
            try:
                futures = {pool.submit(_worker_run, specs[i], i): i for i in todo}
            finally:
                if before is None:
                    os.environ.pop("TQDM_DISABLE", None)
                else:
                    os.environ["TQDM_DISABLE"] = before
            pending = set(futures)
            while pending:
                done, pending = cf_wait(pending, timeout=self.heartbeat_s, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    prefix = f"[{i + 1}/{n}] {specs[i].label}"
                    try:
                        dt = float(fut.result())
                    except Exception as e:  # one failing run (or dead worker) must not lose the others
                        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
                        self.log(f"{prefix}: FAILED: {detail}")
                        outcomes[i] = RunOutcome(specs[i], "failed", time.monotonic() - start, detail)
                        continue
                    self.log(f"{prefix}: done in {dt:.1f} s (elapsed {_hms(time.monotonic() - start)})")
                    outcomes[i] = RunOutcome(specs[i], "done", dt)
                if not done:
                    while not started_q.empty():
                        started.add(started_q.get())
                    running = [futures[f] for f in pending if futures[f] in started]
                    self.log(f"elapsed {_hms(time.monotonic() - start)}: {n - len(pending)}/{n} finished; running "
                             + ", ".join(specs[i].label for i in sorted(running)))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            self.log("interrupted; finished runs are kept, re-run the sweep to resume")
            raise
        pool.shutdown(wait=True)
        return [o for o in outcomes if o is not None]

    @staticmethod
    def _run_inprocess(spec: RunSpec) -> None:

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
        for item in format_overrides(spec.overrides):
            cmd += ["--set", item]
        if spec.force:
            cmd.append("--force")
        return cmd

    def _run_subprocess(self, spec: RunSpec) -> None:
        cmd = self.train_command(spec)
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise RuntimeError(f"`{shlex.join(cmd)}` exited with {proc.returncode}")


def _ray_run_spec(spec: RunSpec, threads: int) -> float:
    """Body of one Ray task: :func:`spuraug.runs.run_method` of ``spec``; returns its wall time."""

    torch.set_num_threads(max(1, threads))
    t0 = time.monotonic()
    LocalLauncher._run_inprocess(spec)
    return time.monotonic() - t0


class RayLauncher(Launcher):
    """Each run a Ray task on the cluster at ``RAY_ADDRESS`` (else a local Ray), all in flight at once.

    Resource request per run: ``num_gpus`` (default 1 for real datasets when the cluster
    has GPUs, else 0) and ``num_cpus`` (default 1; a fraction packs several runs per core),
    overridable with ``$SPURAUG_RAY_GPUS_PER_RUN`` / ``$SPURAUG_RAY_CPUS_PER_RUN``. Paths are
    made absolute, so the runs write the same ``runs/`` (a filesystem shared by every
    node, docs/scaleout.md) and the sweep then writes the usual version folder. A run
    whose worker died is retried once by Ray (it resumes from ``last.pt``); a run that
    raises is reported as failed and the others go on.
    """

    def __init__(self, num_cpus: float | None = None, num_gpus: float | None = None, max_retries: int = 1,
                 run_fn=None, log=log_line) -> None:

        env_cpus, env_gpus = os.environ.get("SPURAUG_RAY_CPUS_PER_RUN"), os.environ.get("SPURAUG_RAY_GPUS_PER_RUN")
        self.num_cpus = num_cpus if num_cpus is not None else (float(env_cpus) if env_cpus else None)
        self.num_gpus = num_gpus if num_gpus is not None else (float(env_gpus) if env_gpus else None)
        self.max_retries = max_retries
        self.run_fn = run_fn or _ray_run_spec
        self.log = log
        self._queue: list[RunSpec] = []

    def submit(self, spec: RunSpec) -> None:
        self._queue.append(spec)

    def resources(self, spec: RunSpec, cluster: dict) -> dict:
        """The Ray resource request of ``spec``'s task on a cluster with resources ``cluster``."""
        has_gpu = float(cluster.get("GPU", 0.0)) > 0
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if has_gpu and spec.dataset != "toy" else 0.0)
        cpus = self.num_cpus if self.num_cpus is not None else 1.0
        return {"num_cpus": cpus, "num_gpus": gpus}

    @staticmethod
    def absolute(spec: RunSpec) -> RunSpec:

        def ab(p):
            return str(Path(p).resolve()) if p else p

        return replace(spec, runs_dir=ab(spec.runs_dir), data_dir=ab(spec.data_dir),
                       config_file=ab(spec.config_file))

    def wait(self) -> list[RunOutcome]:
        import ray  # deferred: optional dependency (extra 'ray')


        cluster = connect_ray()
        start = time.monotonic()
        n = len(self._queue)
        outcomes: list[RunOutcome | None] = [None] * n
        task = ray.remote(self.run_fn)
        refs = {}
        for i, spec in enumerate(self._queue):
            if spec.is_finished() and not spec.force:
                self.log(f"[{i + 1}/{n}] {spec.label}: already finished, skipped")
                outcomes[i] = RunOutcome(spec, "skipped", 0.0)
                continue
            res = self.resources(spec, cluster)
            ref = task.options(**res, max_retries=self.max_retries, retry_exceptions=False).remote(
                self.absolute(spec), max(1, int(res["num_cpus"])))
            refs[ref] = i
            self.log(f"[{i + 1}/{n}] {spec.label}: submitted to Ray ({res['num_cpus']:g} CPU, {res['num_gpus']:g} GPU)")
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = refs[ready[0]]
                spec = self._queue[i]
                try:
                    dt = float(ray.get(ready[0]))
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # one failing run must not lose the others
                    detail = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
                    self.log(f"[{i + 1}/{n}] {spec.label}: FAILED: {detail}")
                    outcomes[i] = RunOutcome(spec, "failed", time.monotonic() - start, detail)
                    continue
                self.log(f"[{i + 1}/{n}] {spec.label}: done in {dt:.1f} s (elapsed {_hms(time.monotonic() - start)})")
                outcomes[i] = RunOutcome(spec, "done", dt)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            self.log("interrupted; finished runs are kept, re-run the sweep to resume")
            raise
        self._queue = []
        return [o for o in outcomes if o is not None]


LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher, "ray": RayLauncher}


def make_launcher(name: str, **options) -> Launcher:
    """The launcher registered as ``name`` (``"local"``, ``"ray"``; ``"local-subprocess"`` runs each in its own process)."""
    if name == "local-subprocess":
        return LocalLauncher(mode="subprocess", **options)
    if name not in LAUNCHERS:
        raise ValueError(f"unknown launcher {name!r}; known: {', '.join([*LAUNCHERS, 'local-subprocess'])}")
    return LAUNCHERS[name](**options)
