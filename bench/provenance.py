"""Where a result came from: git state, software versions, hardware, and version folders."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from filelock import FileLock

from spuraug import atomic
from spuraug.records import read_json

#: Distributions whose versions every provenance record lists.
PACKAGES: tuple[str, ...] = (
    "spuraug", "torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "pillow",
    "diffusers", "transformers", "accelerate", "captum", "matplotlib", "ray",
)


def git_state(repo: str | Path = ".") -> dict:
    """``{"sha", "short_sha", "dirty"}`` of the checkout at ``repo``.

    ``dirty`` is true when tracked files differ from the commit (untracked files are
    ignored). Outside a git checkout: sha ``"nogit"`` and dirty ``None``.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"sha": "nogit", "short_sha": "nogit", "dirty": None}
    return {"sha": sha, "short_sha": sha[:7], "dirty": dirty}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, ``None`` when absent."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """CPU model and count, and the visible accelerators (names), via torch."""
    info: dict = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        info["cuda_available"] = torch.cuda.is_available()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        info["cuda_available"], info["gpus"] = False, []
    return info


def software() -> dict:
    """Python, torch and CUDA versions plus :data:`PACKAGES`."""
    info: dict = {"python": sys.version.split()[0], "python_executable": sys.executable}
    try:
        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        info["torch"] = info["cuda"] = None
    info["packages"] = package_versions()
    return info


def machine_id() -> str:
    """A stable, readable name for this kind of machine: CPU model, core count, GPU model.

    ``$SPURAUG_MACHINE_ID`` overrides it. Host names are left out on purpose: CI
    containers get a new one every run, yet their throughput is comparable.
    """
    if os.environ.get("SPURAUG_MACHINE_ID"):
        return os.environ["SPURAUG_MACHINE_ID"]
    hw = hardware()
    parts = [hw["cpu_model"], f"{hw['cpu_count']}c", *hw["gpus"][:1]]
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower()).strip("-")
    slug = re.sub(r"-(r|tm|cpu)-", "-", slug)
    if len(slug) > 60:
        slug = slug[:50] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return slug or "unknown-machine"


def new_version_dir(results_dir: str | Path, dataset: str, git: dict | None = None,
                    date: _dt.date | None = None) -> Path:
    """Create and return a fresh ``results/<dataset>/<YYYY-MM-DD>_<short-sha>[-dirty][-N]/``.

    The folder is created atomically with ``mkdir``; if the name is taken (an earlier
    sweep the same day at the same commit) ``-2``, ``-3``, ... is appended, so an existing
    version is never overwritten.
    """
    git = git if git is not None else git_state()
    date = date or _dt.date.today()
    base = f"{date.isoformat()}_{git['short_sha']}" + ("-dirty" if git.get("dirty") else "")
    parent = Path(results_dir) / dataset
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = parent / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON (NaN written as null) via a temporary file, then rename."""
    def clean(o):
        if isinstance(o, float) and o != o:
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    atomic.write_json(path, clean(obj), default=str)


def update_json(path: str | Path, update: Callable[[dict], dict]) -> dict:
    """Read-modify-write a study's keyed record: ``update(current)`` (``{}`` when ``path`` does
    not exist yet) returns the new content, written by :func:`write_json`, all under
    ``path``'s file lock so that two studies filling one record at once lose no entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        new = update(read_json(path) if path.exists() else {})
        write_json(path, new)
    return new


def emit_report(report: dict, out: str | Path | None = None, quiet: bool = False) -> dict:
    """A probe's ending: print ``report`` as indented JSON (unless ``quiet``), write it to
    ``out`` (when given) with :func:`write_json`, return it."""
    if not quiet:
        print(json.dumps(report, indent=2, default=str))
    if out:
        write_json(Path(out), report)
    return report

