"""Pretrained weights of the real benchmark: what it uses, where they are cached, and ``spuraug weights``.

The real benchmark loads every model by its public id through the libraries' own caches:
Hugging Face models from the hub cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``) and the
ImageNet ResNet-50 from torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``).
``spuraug weights fetch`` fills both caches on a machine with network (``make weights``);
afterwards every run works offline with ``HF_HUB_OFFLINE=1``. ``spuraug weights list`` and
``spuraug weights verify`` only read the caches, never the network.

Only what the code loads is fetched: a diffusers pipeline's components (no single-file
``.ckpt`` checkpoints), a transformers model's top-level files, and in each folder the
``.safetensors`` weights (``.bin`` only where a folder has no safetensors).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch.hub
from torch.hub import get_dir

from spuraug.errors import UserError

#: Suffixes fetched from a hub repository (configs, tokenizer files, weights).
_KEPT_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: What to do when weights are missing, named by every message of this module.
FIX_FETCH = "run `make weights` (or `spuraug weights fetch`) on a machine with network, then copy the caches"


@dataclass(frozen=True)
class HubModel:
    """A Hugging Face repository the real benchmark loads with ``from_pretrained``."""

    name: str
    repo_id: str
    #: What the benchmark uses it for (docs/ddb.md).
    role: str
    #: ``"diffusers"`` (a pipeline folder with component subfolders) or ``"transformers"``.
    layout: str
    #: Diffusers component folders to fetch; transformers models use the top level only.
    components: tuple[str, ...] = ()
    #: Files that must be cached for the model to load; each entry lists alternatives.
    required: tuple[tuple[str, ...], ...] = ()

    kind = "huggingface"

    @property
    def id(self) -> str:
        return self.repo_id


@dataclass(frozen=True)
class TorchCheckpoint:
    """A checkpoint torch hub keeps in ``$TORCH_HOME/hub/checkpoints`` (torchvision's weights)."""

    name: str
    url: str
    role: str
    #: The leading hex digits of the file's SHA-256 (torchvision puts them in the file name).
    sha256_prefix: str = field(default="")

    kind = "torch-hub"

    @property
    def id(self) -> str:
        return self.url

    @property
    def filename(self) -> str:
        return os.path.basename(self.url)


def _diffusers_required(components: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    required: list[tuple[str, ...]] = [("model_index.json",)]
    for c in components:
        if c in ("unet", "vae"):
            stem = f"{c}/diffusion_pytorch_model"
            required.append((f"{c}/config.json",))
            required.append((f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"))
        elif c == "text_encoder":
            required.append((f"{c}/config.json",))
            required.append((f"{c}/model.safetensors", f"{c}/model.fp16.safetensors", f"{c}/pytorch_model.bin"))
        elif c == "scheduler":
            required.append(("scheduler/scheduler_config.json",))
        elif c == "tokenizer":
            required.append(("tokenizer/vocab.json", "tokenizer/tokenizer.json"))
    return tuple(required)


_SD_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae", "feature_extractor")
_TRANSFORMERS_REQUIRED = (("config.json",), ("model.safetensors", "pytorch_model.bin"))


#: torchvision's ResNet50_Weights.IMAGENET1K_V1.url (the papers' backbone); a test keeps them equal.
RESNET50_IMAGENET1K_V1_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def _hash_prefix(url: str) -> str:
    # torch.hub.HASH_REGEX: torchvision file names end in -<first hex digits of sha256>.
    m = re.search(r"-([a-f0-9]*)\.", os.path.basename(url))
    return m.group(1) if m else ""


def benchmark_weights() -> list[HubModel | TorchCheckpoint]:
    """Every pretrained model the real benchmark uses (docs/ddb.md), in pipeline order."""
    resnet_url = RESNET50_IMAGENET1K_V1_URL
    return [
        TorchCheckpoint(
            "resnet50-imagenet", resnet_url, "ImageNet ResNet-50 backbone (torchvision IMAGENET1K_V1) of every method",
            sha256_prefix=_hash_prefix(resnet_url),
        ),
        HubModel(
            "sd2-base", "stabilityai/stable-diffusion-2-base", "DDB textual inversion (text-to-image model)",
            "diffusers", _SD_COMPONENTS, _diffusers_required(_SD_COMPONENTS),
        ),
        HubModel(
            "sd2-inpainting", "stabilityai/stable-diffusion-2-inpainting", "DDB inpainting of the masked object",
            "diffusers", _SD_COMPONENTS, _diffusers_required(_SD_COMPONENTS),
        ),
        HubModel(
            "grounding-dino", "IDEA-Research/grounding-dino-base", "DDB segmentation: box from a text prompt (LangSAM's)",
            "transformers", required=_TRANSFORMERS_REQUIRED,
        ),
        HubModel(
            "sam", "facebook/sam2.1-hiera-small", "DDB segmentation: mask from the box (LangSAM's SAM 2.1)",
            "transformers", required=_TRANSFORMERS_REQUIRED,
        ),
        HubModel(
            "clipseg", "CIDAS/clipseg-rd64-refined", "DDB segmentation alternative (text-prompted masks)",
            "transformers", required=_TRANSFORMERS_REQUIRED,
        ),
    ]


def get_weights(names: Iterable[str] | None = None) -> list[HubModel | TorchCheckpoint]:
    """The entries of :func:`benchmark_weights` named in ``names`` (all when ``None``)."""
    entries = benchmark_weights()
    if not names:
        return entries
    by_name = {e.name: e for e in entries} | {e.id: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:

        raise UserError(f"unknown weights {', '.join(unknown)}; known: {', '.join(e.name for e in entries)}")
    return [by_name[n] for n in names]


# --------------------------------------------------------------------------- caches


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def torch_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), resolved now."""

    return Path(get_dir()) / "checkpoints"


def select_files(model: HubModel, repo_files: Iterable[str], fp16: bool = False) -> list[str]:
    """The files of a repository listing that the benchmark needs, sorted.

    Keeps configs, tokenizer files and weights; for a diffusers pipeline only the top-level
    non-weight files and the listed component folders (so no multi-GB single-file
    checkpoints); in each folder ``.safetensors`` weights, ``.bin`` only where a folder has
    none; the ``.fp16.`` weight variants only with ``fp16`` (DDB loads the full-precision
    files and casts them, so they are not needed by default).
    """
    files = [f for f in repo_files if f.endswith(_KEPT_SUFFIXES)]

    def folder(f: str) -> str:
        return str(PurePosixPath(f).parent) if "/" in f else ""

    def wanted(f: str) -> bool:
        d = folder(f)
        if model.layout == "diffusers":
            if d == "":
                return not f.endswith(_WEIGHT_SUFFIXES)
            return d in model.components
        return d == ""

    files = [f for f in files if wanted(f)]
    with_safetensors = {folder(f) for f in files if f.endswith(".safetensors")}
    kept = []
    for f in files:
        if f.endswith(".bin") and folder(f) in with_safetensors:
            continue
        if not fp16 and ".fp16." in f:
            continue
        kept.append(f)
    return sorted(kept)


@dataclass
class WeightsStatus:
    """What the caches hold of one entry: ``state`` is ``cached``, ``incomplete``, ``missing`` or ``corrupt``."""

    entry: HubModel | TorchCheckpoint
    state: str
    size_bytes: int = 0
    location: Path | None = None
    missing_files: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "cached"


def _repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def _snapshot(cache_dir: Path, repo_id: str) -> Path | None:
    ref = _repo_folder(cache_dir, repo_id) / "refs" / "main"
    if not ref.is_file():
        return None
    snap = _repo_folder(cache_dir, repo_id) / "snapshots" / ref.read_text().strip()
    return snap if snap.is_dir() else None


def _folder_size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        if p.is_file():  # follows the cache's symlinks to blobs
            total += p.stat().st_size
    return total


def hub_model_status(model: HubModel, cache_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Whether ``model``'s required files are in the hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache  # deferred: slow import, only weight fetching needs it

    cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache()
    snapshot = _snapshot(cache, model.repo_id)
    if snapshot is None:
        return WeightsStatus(model, "missing", location=_repo_folder(cache, model.repo_id),
                             detail=f"not in the hub cache {cache}")
    missing = []
    for alternatives in model.required:
        if not any(isinstance(try_to_load_from_cache(model.repo_id, f, cache_dir=cache), str)
                   for f in alternatives):
            missing.append(" or ".join(alternatives))
    size = _folder_size(snapshot)
    if missing:
        return WeightsStatus(model, "incomplete", size, snapshot, missing,
                             detail=f"{len(missing)} required file(s) missing: {'; '.join(missing)}")
    return WeightsStatus(model, "cached", size, snapshot)


def sha256_prefix_matches(path: Path, prefix: str) -> bool:
    """Whether the file's SHA-256 starts with ``prefix`` (torch hub's check; empty prefix: no check)."""
    if not prefix:
        return True
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(prefix)


def checkpoint_status(ckpt: TorchCheckpoint, checkpoint_dir: str | os.PathLike | None = None,
                      check_hash: bool = False) -> WeightsStatus:
    """Whether the checkpoint file is in torch hub's folder (and, with ``check_hash``, intact)."""
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else torch_checkpoint_dir()
    path = folder / ckpt.filename
    if not path.is_file():
        return WeightsStatus(ckpt, "missing", location=path, missing_files=[ckpt.filename],
                             detail=f"no {ckpt.filename} in torch hub's folder {folder}")
    size = path.stat().st_size
    if check_hash and not sha256_prefix_matches(path, ckpt.sha256_prefix):
        return WeightsStatus(ckpt, "corrupt", size, path,
                             detail=f"{path}: SHA-256 does not start with {ckpt.sha256_prefix}; delete it and fetch again")
    return WeightsStatus(ckpt, "cached", size, path)


def weights_status(entries: Iterable[HubModel | TorchCheckpoint] | None = None,
                   hf_cache: str | os.PathLike | None = None,
                   checkpoint_dir: str | os.PathLike | None = None,
                   check_hash: bool = False) -> list[WeightsStatus]:
    """The cache status of each entry (all benchmark weights by default); reads only local files."""
    out = []
    for e in entries if entries is not None else benchmark_weights():
        if isinstance(e, HubModel):
            out.append(hub_model_status(e, hf_cache))
        else:
            out.append(checkpoint_status(e, checkpoint_dir, check_hash=check_hash))
    return out


def human_size(n: int) -> str:
    """Bytes as a short human-readable string (binary units)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def format_status_table(statuses: list[WeightsStatus]) -> str:
    """One line per entry: name, state, size, id, where."""
    lines = [f"{'name':<18} {'state':<10} {'size':>10}  id / location"]
    for s in statuses:
        size = human_size(s.size_bytes) if s.size_bytes else "-"
        lines.append(f"{s.entry.name:<18} {s.state:<10} {size:>10}  {s.entry.id}")
        lines.append(f"{'':<18} {'':<10} {'':>10}    {s.location if s.location else ''}")
        if not s.ok and s.detail:
            lines.append(f"{'':<18} {'':<10} {'':>10}    {s.detail}")
    total = sum(s.size_bytes for s in statuses)
    lines.append(f"{'total':<18} {'':<10} {human_size(total):>10}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- fetch (network)


_TRUE = ("1", "ON", "YES", "TRUE")
_FALSE = ("0", "OFF", "NO", "FALSE")


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "SPURAUG_OFFLINE"))


def network_allowed() -> bool:
    """Whether a command that only loads models may download them.

    Loading stays offline unless asked: only ``HF_HUB_OFFLINE=0`` or ``SPURAUG_OFFLINE=0``
    (what ``make weights`` sets) or ``SPURAUG_ONLINE=1`` allow it. With the variables unset, a
    missing model fails at once with one line naming the id and ``make weights`` instead of
    retrying the hub for minutes. ``spuraug weights fetch`` downloads regardless (it is the ask).
    """
    if _offline():
        return False
    return (os.environ.get("SPURAUG_ONLINE", "").upper() in _TRUE
            or any(os.environ.get(v, "").upper() in _FALSE for v in ("HF_HUB_OFFLINE", "SPURAUG_OFFLINE")))


def fetch_hub_model(model: HubModel, cache_dir: str | os.PathLike | None = None, fp16: bool = False) -> WeightsStatus:
    """Download the files :func:`select_files` picks into the hub cache; resumes partial downloads."""
    from huggingface_hub import (  # deferred: slow import, only weight fetching needs it
        HfApi,
        snapshot_download,
    )
    from huggingface_hub.errors import (  # deferred: slow import, only weight fetching needs it
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )


    cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache()
    try:
        repo_files = HfApi().list_repo_files(model.repo_id)
        selected = select_files(model, repo_files, fp16=fp16)
        if not selected:
            raise UserError(f"{model.repo_id}: the repository lists none of the files the benchmark loads")
        snapshot_download(model.repo_id, allow_patterns=selected, cache_dir=cache)
    except GatedRepoError as e:
        raise UserError(f"{model.repo_id} is gated: accept its licence on the hub, then set HF_TOKEN ({e})") from e
    except RepositoryNotFoundError as e:
        raise UserError(f"{model.repo_id}: repository not found on the hub ({e})") from e
    except HfHubHTTPError as e:
        raise UserError(f"{model.repo_id}: download failed ({e}); re-run to resume") from e
    return hub_model_status(model, cache)


def fetch_checkpoint(ckpt: TorchCheckpoint, checkpoint_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Download the checkpoint into torch hub's folder, checking its SHA-256 prefix."""

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else torch_checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ckpt.filename
    if not path.is_file():
        torch.hub.download_url_to_file(ckpt.url, str(path), hash_prefix=ckpt.sha256_prefix or None, progress=True)
    return checkpoint_status(ckpt, folder, check_hash=True)


# --------------------------------------------------------------------------- CLI


def _list(args: argparse.Namespace) -> int:
    statuses = weights_status(get_weights(args.names), args.hf_cache, args.checkpoint_dir,
                              check_hash=args.command_name == "verify")
    print(f"hub cache: {Path(args.hf_cache) if args.hf_cache else hf_hub_cache()}")
    print(f"torch hub checkpoints: {Path(args.checkpoint_dir) if args.checkpoint_dir else torch_checkpoint_dir()}")
    print(format_status_table(statuses))
    bad = [s for s in statuses if not s.ok]
    if bad:
        print(f"{len(bad)} of {len(statuses)} missing or incomplete ({', '.join(s.entry.name for s in bad)}): {FIX_FETCH}",
              file=sys.stderr)
        return 1 if args.command_name == "verify" else 0
    print(f"all {len(statuses)} cached; runs work offline with HF_HUB_OFFLINE=1")
    return 0


def _fetch(args: argparse.Namespace) -> int:

    if _offline():
        raise UserError("fetching needs the network but HF_HUB_OFFLINE/SPURAUG_OFFLINE is set; "
                        "run `HF_HUB_OFFLINE=0 spuraug weights fetch` (what `make weights` does)")
    statuses = []
    for entry in get_weights(args.names):
        print(f"fetching {entry.name} ({entry.id})", file=sys.stderr, flush=True)
        if isinstance(entry, HubModel):
            statuses.append(fetch_hub_model(entry, args.hf_cache, fp16=args.fp16))
        else:
            statuses.append(fetch_checkpoint(entry, args.checkpoint_dir))
    print(format_status_table(statuses))
    bad = [s for s in statuses if not s.ok]
    if bad:
        for s in bad:
            print(f"{s.entry.name}: {s.state}: {s.detail}", file=sys.stderr)
        return 1
    print(f"all {len(statuses)} fetched and verified; runs work offline with HF_HUB_OFFLINE=1")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, verify or fetch the pretrained weights the real benchmark uses")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    for action, help_text, handler in (
        ("list", "show which weights are cached and their sizes (no network)", _list),
        ("verify", "like list, also check checkpoint hashes; exit 1 if anything is missing (no network)", _list),
        ("fetch", "download every model into the caches, verify and print sizes (needs network)", _fetch),
    ):
        a = wsub.add_parser(action, help=help_text)
        a.add_argument("names", nargs="*", metavar="NAME",
                       help=f"only these ({', '.join(e.name for e in benchmark_weights())}); default all")
        a.add_argument("--hf-cache", default=None, help="hub cache folder (default $HF_HUB_CACHE or $HF_HOME/hub)")
        a.add_argument("--checkpoint-dir", default=None,
                       help="torch hub checkpoint folder (default $TORCH_HOME/hub/checkpoints)")
        if action == "fetch":
            a.add_argument("--fp16", action="store_true",
                           help="also fetch the pipelines' fp16 weight variants (DDB does not load them)")
        a.set_defaults(handler=handler, command_name=action)
