"""Cached, resumable artifacts of the DDB stages.

Every stage writes one folder ``<root>/<stage>-<key>/`` whose ``key`` hashes exactly
what the stage's output depends on (its own configuration plus the keys of the
artifacts it reads), so a change anywhere upstream lands in a new folder and nothing
computed before is overwritten. Each folder carries ``manifest.json`` (counts, model
ids and revisions, seeds, configuration hash, wall time) and a ``done`` marker
written last. Files inside are written atomically (temporary name, then rename), so a
killed stage leaves either a whole file or none.

Time is counted over every attempt (:class:`AttemptClock`, ``attempts.json``): a killed
attempt's seconds up to its last heartbeat count, so a stage's ``wall_time_s`` and
``images_per_s`` after kills are the honest figures (outputs over all the time spent).
The manifest lists every file's size; a finished stage whose file was truncated or
deleted since is treated as unfinished (one line names the file) and redone.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from spuraug import atomic
from spuraug.records import StageManifest

MANIFEST = "manifest.json"
DONE = "done"
ATTEMPTS = "attempts.json"
#: Files of a stage folder that are not its outputs (not size-checked).
_BOOKKEEPING = (MANIFEST, DONE, ATTEMPTS, "key.json")


def config_hash(obj: Any, length: int = 12) -> str:
    """A short stable hash of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def write_json_sorted(path: Path, obj: Any) -> None:
    """A DDB artifact's JSON file: sorted keys, anything else as ``str``."""
    atomic.write_json(path, obj, sort_keys=True, default=str)


class AttemptClock:
    """The seconds of every attempt at one piece of work, kept in ``path`` (a JSON list).

    Entering appends a new attempt; a daemon thread rewrites its elapsed seconds every
    ``interval`` seconds (atomically), and leaving (normally or by an exception) writes
    the final figure. A process killed with SIGKILL thus loses at most ``interval`` seconds
    of its attempt. :attr:`total_seconds` is the sum over every attempt so far.
    """

    def __init__(self, path: str | os.PathLike, interval: float = 1.0) -> None:
        self.path = Path(path)
        self.interval = interval
        self.attempts: list[dict] = []
        self._t0 = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            print(f"{self.path}: unreadable (torn?); earlier attempts' time is not counted", file=sys.stderr)
            return []
        return [a for a in data if isinstance(a, dict)] if isinstance(data, list) else []

    def tick(self) -> None:
        """Persist the current attempt's elapsed seconds."""
        with self._lock:
            self.attempts[-1]["seconds"] = round(time.perf_counter() - self._t0, 3)
            write_json_sorted(self.path, self.attempts)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except OSError:  # the folder was moved away: nothing to keep
                return

    def __enter__(self) -> AttemptClock:
        self.attempts = self._load()
        self._t0 = time.perf_counter()
        self.attempts.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0})
        self.tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"clock:{self.path}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.tick()
        except OSError:
            pass

    @property
    def total_seconds(self) -> float:
        return float(sum(float(a.get("seconds") or 0.0) for a in self.attempts))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(source_id: str) -> str:
    """A file-name-safe, collision-free version of a dataset example id.

    Ids of real datasets are relative paths (``001.Albatross/x.jpg``); slashes and other
    characters are replaced, and a short hash of the original id keeps two ids that
    differ only in those characters apart.
    """
    text = str(source_id)
    cleaned = _UNSAFE.sub("_", text).strip("._") or "id"
    if cleaned == text and len(text) <= 80:
        return text
    return f"{cleaned[-60:]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


class Artifact:
    """One stage's output folder: ``root/<stage>-<key>``."""

    def __init__(self, root: Path, stage: str, key_material: dict) -> None:
        self.stage = stage
        self.key_material = key_material
        self.key = config_hash(key_material)
        self.path = Path(root) / f"{stage}-{self.key}"

    def __repr__(self) -> str:
        return f"Artifact({self.stage!r}, {self.path})"

    @property
    def done(self) -> bool:
        """``done`` present and every output file the manifest lists still whole (checked
        once per process; a damaged stage loses its ``done`` and the damaged files, with one
        line, so the stage redoes them)."""
        if not (self.path / DONE).is_file():
            return False
        if self.path in _VERIFIED:
            return True
        damaged = self.damaged_files()
        if damaged:
            for rel in damaged:  # the file and its sidecars (x.png + x.json): the item is redone whole
                f = self.path / rel
                for sib in f.parent.glob(f"{glob.escape(f.stem)}.*") if f.parent.is_dir() else ():
                    if sib.name not in _BOOKKEEPING:
                        sib.unlink(missing_ok=True)
            (self.path / DONE).unlink(missing_ok=True)
            print(f"{self.stage} stage {self.path}: {damaged[0]}"
                  + (f" and {len(damaged) - 1} more file(s)" if len(damaged) > 1 else "")
                  + " truncated, damaged or missing; redoing them", file=sys.stderr)
            return False
        _VERIFIED.add(self.path)
        return True

    def damaged_files(self) -> list[str]:
        """The files the manifest lists whose size changed (or which are gone); a manifest
        that cannot be read counts as damaged."""
        try:
            files = json.loads((self.path / MANIFEST).read_text()).get("files")
        except FileNotFoundError:
            return [MANIFEST]
        except (OSError, ValueError, AttributeError):
            return [MANIFEST]
        bad = []
        for rel, size in (files or {}).items():
            f = self.path / rel
            if not f.is_file() or f.stat().st_size != size:
                bad.append(rel)
        return bad

    def manifest(self) -> dict:
        p = self.path / MANIFEST
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except ValueError:
            print(f"{p}: unreadable (torn?); starting a new manifest", file=sys.stderr)
            return {}

    def output_files(self) -> dict[str, int]:
        """Every output file under the folder and its size (bookkeeping and temporaries left out)."""
        out = {}
        for f in sorted(self.path.rglob("*")):
            rel = f.relative_to(self.path).as_posix()
            if f.is_file() and f.name not in _BOOKKEEPING and not f.name.endswith(".tmp"):
                out[rel] = f.stat().st_size
        return out

    def lock(self) -> FileLock:
        """The inter-process lock of this stage folder (``.<stage>-<key>.lock`` beside it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path.parent / f".{self.path.name}.lock"))

    def prepare(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        key_file = self.path / "key.json"
        if not key_file.is_file():
            write_json_sorted(key_file, self.key_material)
        return self.path

    def finish(self, manifest: dict) -> None:
        """Write the manifest (merged with what an earlier, interrupted attempt recorded) and ``done``."""
        old = self.manifest()
        merged = {**old, **manifest}
        merged.setdefault("stage", self.stage)
        merged["config_hash"] = self.key
        # ``manifest["wall_time_s"]`` (from :func:`timed`) already sums every attempt; a
        # manifest of an older version may still hold an interrupted attempt's partial time.
        merged["wall_time_s"] = float(old.get("wall_time_s_partial", 0.0)) + float(manifest.get("wall_time_s", 0.0))
        merged.pop("wall_time_s_partial", None)
        merged["files"] = self.output_files()
        StageManifest.from_dict(merged, str(self.path / MANIFEST)).write(self.path / MANIFEST)
        atomic.write_text(self.path / DONE, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")


def one_process_at_a_time(artifact_of: str):
    """Decorator of a pipeline stage method: while one process computes the stage folder
    ``getattr(self, artifact_of)()``, another that needs the same folder waits on its lock
    (:meth:`Artifact.lock`) and then finds it done, instead of computing it a second time into
    the same folder. DDB runs of other seeds share the inversion, and a sweep's worker
    processes start them at once (bench/launch.py). Locks are taken downstream first (a stage,
    then the stages it reads), so two processes cannot wait on each other."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            art = getattr(self, artifact_of)()
            if art.done:
                return fn(self, *args, **kwargs)
            with art.lock():
                return fn(self, *args, **kwargs)

        return wrapper

    return deco


#: Stage folders whose files were checked in this process.
_VERIFIED: set[Path] = set()


@contextmanager
def timed(artifact: Artifact) -> Iterator[dict]:
    """Measure the wall time of a stage body over every attempt (:class:`AttemptClock` in
    ``attempts.json``: an interrupted or killed attempt's time is kept); on success
    ``info["wall_time_s"]`` is the sum over all attempts and ``info["attempts"]`` their count."""
    info: dict = {"t0": time.perf_counter()}
    with AttemptClock(artifact.path / ATTEMPTS) as clock:
        yield info
    info["wall_time_s"] = clock.total_seconds
    info["attempts"] = len(clock.attempts)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
