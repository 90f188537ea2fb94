"""Cached, resumable artifacts of the DDB stages.

Every stage writes one folder ``<root>/<stage>-<key>/`` whose ``key`` hashes exactly
what the stage's output depends on (its own configuration plus the keys of the
artifacts it reads), so a change anywhere upstream lands in a new folder and nothing
computed before is overwritten. Each folder carries ``manifest.json`` (counts, model
ids and revisions, seeds, configuration hash, wall time) and a ``done`` marker
written last. Files inside are written atomically (temporary name, then rename), so a
killed stage leaves either a whole file or none.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spuraug import atomic
from spuraug.records import StageManifest

MANIFEST = "manifest.json"
DONE = "done"


def config_hash(obj: Any, length: int = 12) -> str:
    """A short stable hash of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def write_json_sorted(path: Path, obj: Any) -> None:
    """A DDB artifact's JSON file: sorted keys, anything else as ``str``."""
    atomic.write_json(path, obj, sort_keys=True, default=str)


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
        return (self.path / DONE).is_file()

    def manifest(self) -> dict:
        p = self.path / MANIFEST
        return json.loads(p.read_text()) if p.is_file() else {}

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
        # Wall time accumulates over interrupted attempts.
        merged["wall_time_s"] = float(old.get("wall_time_s_partial", 0.0)) + float(manifest.get("wall_time_s", 0.0))
        merged.pop("wall_time_s_partial", None)
        StageManifest.from_dict(merged, str(self.path / MANIFEST)).write(self.path / MANIFEST)
        atomic.write_text(self.path / DONE, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")

    def record_partial_time(self, seconds: float) -> None:
        """Keep the time spent by an interrupted attempt so the final manifest counts it."""
        old = self.manifest()
        old["wall_time_s_partial"] = float(old.get("wall_time_s_partial", 0.0)) + seconds
        write_json_sorted(self.path / MANIFEST, old)


@contextmanager
def timed(artifact: Artifact) -> Iterator[dict]:
    """Measure the wall time of a stage body; on interruption the time spent is kept."""
    info: dict = {"t0": time.perf_counter()}
    try:
        yield info
    except BaseException:
        artifact.record_partial_time(time.perf_counter() - info["t0"])
        raise
    info["wall_time_s"] = time.perf_counter() - info["t0"]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
