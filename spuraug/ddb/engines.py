"""Where sharded per-sample work runs: in this process (``local``) or on Ray actors (``ray``).

One interface, :func:`run_sharded`: a list of :class:`Shard` (sample ids plus a payload
built on the driver just before dispatch) goes to workers built from a picklable
:class:`WorkerSpec`; each worker's ``run(payload)`` writes one output per sample id
(atomically, skipping samples already complete) and returns ``{sample_id: output path}``.
The union of those maps is returned.

Exactly-once outputs do not rely on the engine: a worker skips every sample whose output
already exists and writes each file atomically, so re-running a shard (after a worker
died mid-shard, or after the whole job was interrupted) only writes what is missing.
The Ray engine retries a shard whose actor died (``ray.kill``, OOM, node loss) on a fresh
actor, up to ``max_retries`` times; an exception raised by the worker's own code is a
bug, not a lost worker, and is re-raised at once.

Results do not depend on the engine or the number of workers because every per-sample
random seed comes from the sample id (:func:`spuraug.ddb.inpaint.sample_seed`) and shards
are fixed chunks of a fixed plan, aligned with the stage's batches.
"""

from __future__ import annotations

import abc
import importlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ENGINES: tuple[str, ...] = ("local", "ray")
#: Ray's session folder for a locally started Ray (Unix socket paths must stay short).
RAY_TMP_DIR = "/tmp/spuraug_ray"


@dataclass
class Shard:
    """A fixed chunk of a stage's plan: its sample ids and a payload builder.

    ``make_payload()`` runs on the driver just before the shard is dispatched (so only
    the shards in flight hold their inputs in memory); ``is_complete()`` tells whether
    every sample's output is already on disk (complete shards are never dispatched).
    """

    index: int
    sample_ids: tuple[str, ...]
    make_payload: Callable[[], Any]
    is_complete: Callable[[], bool] = lambda: False


@dataclass
class WorkerSpec:
    """A picklable recipe for a worker: a class (or its ``module:qualname``) and its keyword arguments.

    The class is built once per worker (it loads its model there) and must have
    ``run(payload) -> dict[str, str]`` (sample id -> written output).
    """

    target: str | type
    kwargs: dict = field(default_factory=dict)

    def build(self):
        if not isinstance(self.target, str):
            return self.target(**self.kwargs)
        module, _, name = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj(**self.kwargs)


@dataclass
class EngineReport:
    """What an engine did: shards run/skipped, retries after lost workers, worker count, timings."""

    engine: str
    workers: int
    shards: int = 0
    shards_skipped: int = 0
    retries: int = 0
    startup_s: float = 0.0
    wall_time_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"engine": self.engine, "workers": self.workers, "shards": self.shards,
                "shards_skipped": self.shards_skipped, "retries": self.retries,
                "startup_s": round(self.startup_s, 3), "wall_time_s": round(self.wall_time_s, 3), **self.extra}


class Engine(abc.ABC):
    """Runs shards on workers; see :func:`run_sharded`."""

    name: str = "?"
    last_report: EngineReport | None = None

    @abc.abstractmethod
    def map(self, spec: WorkerSpec, shards: Sequence[Shard],
            on_shard_done: Callable[[Shard, dict], None] | None = None) -> dict[str, str]:
        """Run every incomplete shard; returns ``{sample_id: output}`` of the shards run."""


class LocalEngine(Engine):
    """One worker in this process; shards in order."""

    name = "local"

    def map(self, spec: WorkerSpec, shards: Sequence[Shard],
            on_shard_done: Callable[[Shard, dict], None] | None = None) -> dict[str, str]:
        t0 = time.perf_counter()
        report = EngineReport("local", 1)
        todo = [s for s in shards if not s.is_complete()]
        report.shards_skipped = len(shards) - len(todo)
        out: dict[str, str] = {}
        if todo:
            worker = spec.build()
            report.startup_s = time.perf_counter() - t0
            for shard in todo:
                written = worker.run(shard.make_payload())
                out.update(written)
                report.shards += 1
                report.extra.setdefault("shard_done_s", []).append(round(time.perf_counter() - t0, 3))
                if on_shard_done is not None:
                    on_shard_done(shard, written)
        report.wall_time_s = time.perf_counter() - t0
        self.last_report = report
        return out


def ray_available() -> bool:
    try:
        import ray  # noqa: F401  # deferred: optional dependency (extra 'ray')
    except ImportError:
        return False
    return True


def connect_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> dict:
    """Connect to the Ray cluster at ``RAY_ADDRESS``, or start a local one; returns its resources.

    A local Ray gets ``num_cpus`` (default: this machine's cores), no dashboard and its
    session files under :data:`RAY_TMP_DIR`. An already initialised Ray is reused.
    """
    try:
        import ray  # deferred: optional dependency (extra 'ray')
    except ImportError:  # pragma: no cover - ray is in the lock
        raise RuntimeError("--engine ray needs the `ray` package: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            os.makedirs(RAY_TMP_DIR, exist_ok=True)
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=log_to_driver, _temp_dir=RAY_TMP_DIR)
    return dict(ray.cluster_resources())


class _RayWorker:
    """Actor body: builds the worker once, then runs payloads."""

    def __init__(self, spec: WorkerSpec, env: dict | None = None) -> None:
        os.environ.update(env or {})
        self.worker = spec.build()

    def run(self, payload: Any) -> dict[str, str]:
        return self.worker.run(payload)

    def ping(self) -> int:
        return os.getpid()


class RayEngine(Engine):
    """Shards over Ray actors, each holding one worker (one pipeline).

    ``workers``: number of actors (default: the cluster's GPUs, else its CPUs, at most
    the number of shards). Each actor asks for ``num_gpus`` GPUs (default 1 when the
    cluster has GPUs, else 0) and ``num_cpus`` CPUs (default 1 with a GPU, 0.5 without:
    a 2-core machine cannot reserve a whole CPU per actor plus the driver).
    ``actor_name_prefix`` names the actors (``<prefix>-<k>``) so an operator or a test
    can find them with ``ray.get_actor``.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                 max_retries: int = 3, actor_name_prefix: str | None = None, env: dict | None = None) -> None:
        self.workers = workers
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.actor_name_prefix = actor_name_prefix
        self.env = {"TQDM_DISABLE": "1", **(env or {})}

    def resources(self, cluster: dict) -> tuple[int, float, float]:
        """(workers, num_cpus, num_gpus) per actor for a cluster with resources ``cluster``."""
        gpus = float(cluster.get("GPU", 0.0))
        cpus = float(cluster.get("CPU", 1.0))
        num_gpus = self.num_gpus if self.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        num_cpus = self.num_cpus if self.num_cpus is not None else (1.0 if num_gpus else 0.5)
        if self.workers:
            workers = int(self.workers)
        elif num_gpus:
            workers = max(1, int(gpus // num_gpus))
        else:
            workers = max(1, int(cpus))
        return workers, num_cpus, num_gpus

    def map(self, spec: WorkerSpec, shards: Sequence[Shard],
            on_shard_done: Callable[[Shard, dict], None] | None = None) -> dict[str, str]:
        import ray  # deferred: optional dependency (extra 'ray')
        from ray.exceptions import (  # deferred: optional dependency (extra 'ray')
            ActorDiedError,
            ActorUnavailableError,
            RayActorError,
        )

        lost = (RayActorError, ActorDiedError, ActorUnavailableError)
        t0 = time.perf_counter()
        cluster = connect_ray()
        n_workers, num_cpus, num_gpus = self.resources(cluster)
        todo = deque(s for s in shards if not s.is_complete())
        report = EngineReport("ray", 0, shards_skipped=len(shards) - len(todo),
                              extra={"num_cpus_per_worker": num_cpus, "num_gpus_per_worker": num_gpus,
                                     "cluster": {k: cluster[k] for k in ("CPU", "GPU") if k in cluster}})
        n_workers = min(n_workers, len(todo))
        report.workers = n_workers
        out: dict[str, str] = {}
        if not todo:
            self.last_report = report
            return out
        actor_cls = ray.remote(_RayWorker)
        spec_ref = ray.put(spec)
        generation = [0] * n_workers

        def start(k: int):
            opts = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0, "max_task_retries": 0}
            if self.actor_name_prefix:
                opts["name"] = f"{self.actor_name_prefix}-{k}" + (f"-r{generation[k]}" if generation[k] else "")
            return actor_cls.options(**opts).remote(spec_ref, self.env)

        actors = [start(k) for k in range(n_workers)]
        try:  # every actor built (process, imports, pipeline): the fixed cost of a worker
            ray.get([a.ping.remote() for a in actors])
            report.extra["actors_ready_s"] = round(time.perf_counter() - t0, 3)
        except lost:
            pass  # a worker that cannot start is reported by its first shard below
        attempts: dict[int, int] = {}
        inflight: dict[Any, tuple[int, Shard]] = {}
        idle = deque(range(n_workers))
        first_result = None
        try:
            while todo or inflight:
                while idle and todo:
                    k, shard = idle.popleft(), todo.popleft()
                    if shard.is_complete():  # finished by an earlier attempt
                        report.shards_skipped += 1
                        idle.appendleft(k)
                        continue
                    inflight[actors[k].run.remote(shard.make_payload())] = (k, shard)
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                ref = ready[0]
                k, shard = inflight.pop(ref)
                try:
                    written = ray.get(ref)
                except lost as e:
                    if "creation task" in str(e):  # the worker's __init__ raised: a bug, not a lost worker
                        raise RuntimeError(f"the {self.name} worker could not start: {e}") from e
                    attempts[shard.index] = attempts.get(shard.index, 0) + 1
                    if attempts[shard.index] > self.max_retries:
                        raise RuntimeError(f"shard {shard.index} ({len(shard.sample_ids)} samples) lost its worker "
                                           f"{attempts[shard.index]} times; last error: {e}") from e
                    report.retries += 1
                    generation[k] += 1
                    actors[k] = start(k)  # a fresh actor; the shard goes first in line
                    todo.appendleft(shard)
                    idle.append(k)
                    continue
                if first_result is None:
                    first_result = time.perf_counter()
                    report.startup_s = first_result - t0
                out.update(written)
                report.shards += 1
                report.extra.setdefault("shard_done_s", []).append(round(time.perf_counter() - t0, 3))
                idle.append(k)
                if on_shard_done is not None:
                    on_shard_done(shard, written)
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already dead
                    pass
        report.wall_time_s = time.perf_counter() - t0
        self.last_report = report
        return out


def make_engine(name: str = "local", workers: int | None = None, **options) -> Engine:
    """The engine called ``name`` (``"local"`` or ``"ray"``); ``workers`` 0/None = automatic."""
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine(workers=workers or None, **options)
    raise ValueError(f"engine {name!r}: expected one of {', '.join(ENGINES)}")


def run_sharded(engine: Engine | str, spec: WorkerSpec, shards: Sequence[Shard],
                on_shard_done: Callable[[Shard, dict], None] | None = None) -> dict[str, str]:
    """Run ``shards`` on ``engine``'s workers; returns ``{sample_id: output}`` of the samples written or found.

    Samples of shards complete before the call are not in the result (they were
    written earlier); the caller reads the stage's outputs from disk afterwards.
    """
    eng = make_engine(engine) if isinstance(engine, str) else engine
    return eng.map(spec, shards, on_shard_done)


def chunk(items: Sequence, size: int) -> Iterable[tuple[int, Sequence]]:
    """``(index, items[k*size:(k+1)*size])`` for every chunk."""
    size = max(1, int(size))
    for i, start in enumerate(range(0, len(items), size)):
        yield i, items[start:start + size]
