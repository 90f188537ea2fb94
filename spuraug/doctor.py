"""``spuraug doctor``: is this machine (or container) ready to run the benchmark?

Checks, without touching the network: the GPU and CUDA as torch sees them, installed
package versions against ``requirements/lock.txt``, the pretrained weights in the caches
(:mod:`spuraug.weights`), every dataset's presence and validity (the same check as
``spuraug data check``), and the toy model zoo. Every missing piece comes with what to do.
The exit code is 0 even when pieces are missing, unless ``--strict``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

import spuraug
from spuraug import weights
from spuraug.data import commands as data_commands
from spuraug.data.base import DataError
from spuraug.data.registry import dataset_names, get_spec, resolve_data_dir
from spuraug.errors import UserError
from spuraug.toyworld import zoo
from spuraug.weights import hf_hub_cache, torch_checkpoint_dir

AREAS = ("system", "gpu", "packages", "weights", "datasets", "toy zoo")
#: Packages that only a CUDA build of torch needs (absent from the CPU image on purpose).
_GPU_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


@dataclass
class Check:
    """One finding: ``ok`` pieces need nothing; the others say what to do in ``fix``."""

    area: str
    name: str
    ok: bool
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------- GPU


def check_gpu() -> list[Check]:
    """torch's build, CUDA availability and the visible devices."""

    checks = [Check("gpu", "torch", True, f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}")]
    if torch.version.cuda is None:
        checks.append(Check(
            "gpu", "cuda", False, "this torch is a CPU build: no GPU can be used",
            "for DDB on the real datasets use the GPU image (`make image`, then `make bench DOCKER=1 GPU=1 ...`) "
            "or install the CUDA build pinned in requirements/lock.txt (`make setup`)",
        ))
        return checks
    if not torch.cuda.is_available():
        checks.append(Check(
            "gpu", "cuda", False, "no CUDA device visible (no GPU, no driver, or the container was started without GPUs)",
            "the toy benchmark and the baselines run on the CPU; for DDB on the real datasets run on a GPU machine "
            "(NVIDIA driver for CUDA 13; in Docker the NVIDIA Container Toolkit and `make bench DOCKER=1 GPU=1`)",
        ))
        return checks
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        checks.append(Check(
            "gpu", f"cuda:{i}", True,
            f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}",
        ))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    checks.append(Check("gpu", "cudnn", cudnn is not None, f"cuDNN {cudnn}" if cudnn else "cuDNN not available",
                        "" if cudnn else "reinstall torch from requirements/lock.txt (it ships cuDNN)"))
    return checks


# --------------------------------------------------------------------------- packages


def find_lock_file(lock: str | os.PathLike | None = None) -> Path | None:
    """``lock``, else ``$SPURAUG_LOCK``, else the checkout's or the working folder's requirements/lock.txt."""
    candidates = [lock, os.environ.get("SPURAUG_LOCK"),
                  Path(spuraug.__file__).resolve().parents[1] / "requirements" / "lock.txt",
                  Path("requirements") / "lock.txt"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if lock:

        raise UserError(f"--lock {lock}: no such file")
    return None


def read_lock(path: str | os.PathLike) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a lock file (comments and options skipped)."""
    pins: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)(\s*;.*)?", line)
        if m is None:

            raise UserError(f"{path}:{n}: expected `name==version`, got {line!r}")
        pins[m.group(1)] = m.group(3)
    return pins


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def check_packages(lock: str | os.PathLike | None = None) -> list[Check]:
    """Installed versions of the pinned packages; GPU-only pins are skipped under a CPU build of torch."""

    path = find_lock_file(lock)
    if path is None:
        return [Check("packages", "lock", False, "requirements/lock.txt not found",
                      "pass --lock FILE or set SPURAUG_LOCK (the images set it)")]
    try:
        cpu_torch = torch.version.cuda is None
    except ImportError:  # pragma: no cover - torch is a dependency
        cpu_torch = False
    pins = read_lock(path)
    mismatched, missing, skipped = [], [], 0
    for name, pinned in pins.items():
        if cpu_torch and _GPU_ONLY.match(name.lower()):
            skipped += 1
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            missing.append(name)
            continue
        if _public(installed) != _public(pinned):
            mismatched.append(f"{name} {installed} (lock {pinned})")
    checked = len(pins) - skipped
    fix = "run `make setup` (or `pip install -r requirements/lock.txt`); in an image, rebuild it with `make image`"
    try:
        own = version("spuraug")
    except PackageNotFoundError:
        own = "(not installed: running from a source tree)"
    checks = [Check("packages", "spuraug", True, f"spuraug {own} from {Path(spuraug.__file__).parent}")]
    note = f" ({skipped} CUDA-only pins skipped: CPU build of torch)" if skipped else ""
    if not mismatched and not missing:
        checks.append(Check("packages", "lock", True, f"all {checked} pinned packages match {path}{note}"))
        return checks
    if mismatched:
        checks.append(Check("packages", "versions", False,
                            f"{len(mismatched)} of {checked} differ from {path}: {', '.join(mismatched)}", fix))
    if missing:
        checks.append(Check("packages", "installed", False,
                            f"{len(missing)} of {checked} pinned packages not installed: {', '.join(missing)}", fix))
    return checks


# --------------------------------------------------------------------------- weights


def check_weights(hf_cache: str | os.PathLike | None = None,
                  checkpoint_dir: str | os.PathLike | None = None) -> list[Check]:
    """Which benchmark weights the hub cache and torch hub's folder hold (no network, no hashing)."""

    checks = []
    for s in weights.weights_status(hf_cache=hf_cache, checkpoint_dir=checkpoint_dir):
        if s.ok:
            detail = f"{s.entry.id}: cached, {weights.human_size(s.size_bytes)} in {s.location}"
            checks.append(Check("weights", s.entry.name, True, detail))
        else:
            fix = f"{weights.FIX_FETCH} (just this one: `spuraug weights fetch {s.entry.name}`)"
            checks.append(Check("weights", s.entry.name, False, f"{s.entry.id}: {s.state}: {s.detail}", fix))
    return checks


# --------------------------------------------------------------------------- datasets


def check_datasets(data_dir: str | os.PathLike | None = None) -> list[Check]:
    """Every registered dataset, validated like ``spuraug data check`` (file presence, published counts)."""

    root = resolve_data_dir(data_dir)
    checks = []
    for name in dataset_names():
        spec = get_spec(name)
        if not spec.needs_data_dir:
            checks.append(Check("datasets", name, True, "generated on the fly (no files needed)"))
            continue
        fetch = (f"`spuraug data fetch --dataset {name} --data-dir {root}` on a machine with network, or "
                 f"download it by hand ({spec.info.source or 'see README'}) into {root}/"
                 f"{spec.info.folder_names[0] if spec.info.folder_names else name}")
        try:
            splits = data_commands.check_dataset(name, str(root))
        except DataError as e:
            # The fix already names the source; keep the finding to what was looked for.
            problem = " ".join(str(e).split("where the data comes from")[0].split())
            checks.append(Check("datasets", name, False, f"not usable under {root.resolve()}: {problem}", fetch))
            continue
        except Exception as e:  # a loader bug must not hide the other findings
            checks.append(Check("datasets", name, False, f"check failed: {type(e).__name__}: {e}",
                                f"run `spuraug data check --dataset {name}` for details"))
            continue
        _, matches = data_commands.format_counts(name, splits)
        sizes = ", ".join(f"{split} {len(ds)}" for split, ds in splits.items())
        if matches:
            checks.append(Check("datasets", name, True, f"valid under {root} ({sizes}; published counts)"))
        else:
            checks.append(Check("datasets", name, False,
                                f"present under {root} ({sizes}) but the group counts differ from the published ones",
                                f"run `spuraug data check --dataset {name}` to see the table; re-fetch or complete the copy"))
    return checks


# --------------------------------------------------------------------------- toy zoo


TOY_ZOO_IDS = ("spuraug/toy-sd-inpainting", "spuraug/toy-clipseg")


def check_toy_zoo() -> list[Check]:
    """Whether the toy model zoo (``spuraug.toyworld.zoo``) is built."""
    if importlib.util.find_spec("spuraug.toyworld.zoo") is None:
        return [Check("toy zoo", "module", False, "spuraug.toyworld.zoo is not part of this installation",
                      "update the checkout (the toy-world team provides it), then `make toy-zoo`")]

    checks = []
    for model_id in TOY_ZOO_IDS:
        try:
            folder = Path(zoo.resolve_model_id(model_id))
        except Exception as e:  # the zoo names its own fix; keep it
            checks.append(Check("toy zoo", model_id, False, f"{type(e).__name__}: {e}", "run `make toy-zoo`"))
            continue
        if folder.is_dir() and any(folder.iterdir()):
            checks.append(Check("toy zoo", model_id, True, f"built in {folder}"))
        else:
            checks.append(Check("toy zoo", model_id, False, f"{folder} is missing or empty", "run `make toy-zoo`"))
    return checks


# --------------------------------------------------------------------------- report


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or, if it does not exist yet, in its nearest parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


#: Where Debian/Ubuntu/Fedora put libjemalloc.so.2 (the Makefile and docker/entrypoint.sh look alike).
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def jemalloc_loaded(maps: str | os.PathLike = "/proc/self/maps") -> str | None:
    """The jemalloc library mapped into this process (``/proc/self/maps``), else None."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "libjemalloc" in os.path.basename(path):
            return path
    return None


def check_jemalloc(maps: str | os.PathLike = "/proc/self/maps",
                   candidates: tuple[str, ...] = JEMALLOC_PATHS) -> Check:
    """Whether jemalloc is this process's allocator (issue 21: the CPU training loop runs ~2.5x
    faster with it); when it is not, where it is installed and how to preload it."""
    loaded = jemalloc_loaded(maps)
    if loaded:
        return Check("system", "jemalloc", True, f"active in this process ({loaded})")
    found = next((c for c in candidates if Path(c).is_file()), None)
    if found:
        return Check("system", "jemalloc", False, f"installed ({found}) but not preloaded in this process",
                     f"the make targets and the container entrypoint preload it; for a direct command "
                     f"`export LD_PRELOAD={found}` (CPU training is ~2.5x faster with it, docs/harness.md)")
    return Check("system", "jemalloc", False, "not installed: glibc's malloc is used",
                 "install it (Debian/Ubuntu: `apt-get install libjemalloc2`; the images have it); the make "
                 "targets then preload it (CPU training is ~2.5x faster with it, docs/harness.md)")


def check_system(output_dirs: tuple[str | os.PathLike, ...] = ("runs", "results")) -> list[Check]:
    """Where this runs, which caches it uses, and whether the run and result folders are writable."""

    in_container = Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
    offline = os.environ.get("HF_HUB_OFFLINE", "unset (downloads allowed)")
    checks = [
        Check("system", "python", True, f"Python {platform.python_version()} on {platform.platform()}"
              + (" (in a container)" if in_container else "")),
        Check("system", "caches", True, f"hub cache {hf_hub_cache()}; torch hub {torch_checkpoint_dir()}; "
              f"HF_HUB_OFFLINE={offline}"),
        check_jemalloc(),
    ]
    for folder in map(Path, output_dirs):
        where = folder.resolve()
        if _writable(folder):
            checks.append(Check("system", str(folder), True, f"{where} is writable"))
        else:
            checks.append(Check(
                "system", str(folder), False, f"{where} is not writable by uid {os.getuid()}",
                "in a container run as the owner of the mounted folder (`make ... DOCKER=1` passes "
                "--user $(id -u):$(id -g)); otherwise fix the folder's owner or permissions",
            ))
    return checks


def collect(data_dir: str | os.PathLike | None = None, lock: str | os.PathLike | None = None,
            hf_cache: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None,
            areas: tuple[str, ...] = AREAS) -> list[Check]:
    """All findings of the requested ``areas``, in :data:`AREAS` order."""
    runners = {
        "system": check_system,
        "gpu": check_gpu,
        "packages": lambda: check_packages(lock),
        "weights": lambda: check_weights(hf_cache, checkpoint_dir),
        "datasets": lambda: check_datasets(data_dir),
        "toy zoo": check_toy_zoo,
    }
    checks: list[Check] = []
    for area in AREAS:
        if area in areas:
            checks.extend(runners[area]())
    return checks


def format_report(checks: list[Check]) -> str:
    """Findings grouped by area, then a numbered to-do list of the missing pieces."""
    lines = []
    for area in AREAS:
        found = [c for c in checks if c.area == area]
        if not found:
            continue
        lines.append(f"{area}:")
        for c in found:
            lines.append(f"  [{'ok' if c.ok else 'missing'}] {c.name}: {c.detail}")
    todo = [c for c in checks if not c.ok]
    lines.append("")
    if todo:
        lines.append(f"{len(todo)} missing piece(s); what to do:")
        for i, c in enumerate(todo, 1):
            lines.append(f"  {i}. {c.area} / {c.name}: {c.fix}")
    else:
        lines.append("everything is in place")
    return "\n".join(lines)


def _doctor(args: argparse.Namespace) -> int:
    areas = tuple(args.only) if args.only else AREAS
    checks = collect(args.data_dir, args.lock, args.hf_cache, args.checkpoint_dir, areas)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        print(format_report(checks))
    sys.stdout.flush()
    return 1 if args.strict and any(not c.ok for c in checks) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check GPU, packages, weights, datasets and the toy zoo; say what to do")
    p.add_argument("--data-dir", default=None, help="folder holding the datasets (default $SPURAUG_DATA_DIR or ./data)")
    p.add_argument("--lock", default=None, help="lock file to compare against (default requirements/lock.txt)")
    p.add_argument("--hf-cache", default=None, help="hub cache folder (default $HF_HUB_CACHE or $HF_HOME/hub)")
    p.add_argument("--checkpoint-dir", default=None, help="torch hub checkpoints (default $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--only", nargs="+", choices=AREAS, metavar="AREA", help=f"check only these: {', '.join(AREAS)}")
    p.add_argument("--strict", action="store_true", help="exit 1 when anything is missing")
    p.add_argument("--json", action="store_true", help="print the findings as JSON (area, name, ok, detail, fix)")
    p.set_defaults(handler=_doctor)
