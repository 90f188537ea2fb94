"""Loading the pretrained models DDB uses, by hub id or local folder, with one clear error.

A model id is one of: a Hugging Face hub id (``stabilityai/stable-diffusion-2-inpainting``),
a local folder in the library's own format (what ``save_pretrained`` writes), or a toy-zoo
id (``spuraug/toy-...``) that :func:`spuraug.toyworld.zoo.resolve_model_id` maps to a
folder. The same ``from_pretrained`` call loads all three, so the code the tests run on
tiny models saved to a temporary folder is the code that loads the real ones.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from spuraug.models import WeightsMissingError
from spuraug.weights import network_allowed

TOY_PREFIX = "spuraug/toy-"


class ModelMissingError(WeightsMissingError):
    """A pretrained model is neither on disk nor downloadable here."""


def resolve(model_id: str) -> str:
    """The path or hub id ``from_pretrained`` should receive for ``model_id``."""
    if str(model_id).startswith(TOY_PREFIX):
        try:
            # deferred: only toy-zoo ids need it; an install without the zoo still loads hub ids
            from spuraug.toyworld.zoo import resolve_model_id
        except ImportError as e:  # the toy zoo module is not installed
            raise ModelMissingError(
                f"model {model_id!r} is a toy-zoo id but spuraug.toyworld.zoo is not available ({e}); "
                "build the zoo with `make toy-zoo`"
            ) from e
        try:
            return str(resolve_model_id(model_id))
        except (FileNotFoundError, ValueError) as e:
            raise ModelMissingError(str(e)) from e
    return str(model_id)


def _offline() -> bool:
    """Loading stays offline unless asked (:func:`spuraug.weights.network_allowed`)."""

    return not network_allowed() or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def missing_message(model_id: str, detail: str = "") -> str:
    where = ("it is not in the Hugging Face cache and loading does not download (run `make weights`, or set "
             "HF_HUB_OFFLINE=0 to let this command download)") if _offline() else "it could not be downloaded"
    msg = (
        f"model {model_id!r} is not available: {where}. Or provide a local copy: on a machine with "
        f"network run `hf download {model_id} --local-dir DIR` (or `huggingface-cli download`), copy DIR "
        "here and pass DIR in place of the id (the `spuraug ddb` --*-model options, or the ddb: section of "
        "spuraug/configs/<dataset>.yaml), or fill the cache that HF_HOME points to."
    )
    if detail:
        msg += f" ({detail})"
    return msg


def load(cls: Any, model_id: str, subfolder: str | None = None, revision: str | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on the resolved ``model_id``; a missing model raises :class:`ModelMissingError`."""
    path = resolve(model_id)
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    if revision is not None and not Path(path).is_dir():
        kwargs["revision"] = revision
    local = Path(path).is_dir()
    if not local and _offline():  # the cache only: no hub retries for minutes (issue 20)
        kwargs.setdefault("local_files_only", True)
    if local and subfolder is not None and not (Path(path) / subfolder).is_dir():
        raise ModelMissingError(f"model folder {path} (for {model_id!r}) has no subfolder {subfolder!r}")
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as e:  # what the hub libraries raise for missing files and offline misses
        first = (str(e).splitlines() or [""])[0][:300]
        if local:
            raise ModelMissingError(
                f"model folder {path} (for {model_id!r}) cannot be loaded by {cls.__name__}: {first}"
            ) from e
        raise ModelMissingError(missing_message(model_id, f"{cls.__name__}: {first}")) from e


def revision_of(model_id: str) -> str:
    """The commit of a hub model in the local cache, ``local:<path>`` for folders, ``unknown`` otherwise."""
    path = resolve(model_id)
    if Path(path).is_dir():
        return f"local:{Path(path).resolve()}"
    try:
        from huggingface_hub import (
            try_to_load_from_cache,  # deferred: slow import, only weight fetching needs it
        )

        for name in ("model_index.json", "config.json", "preprocessor_config.json"):
            hit = try_to_load_from_cache(path, name)
            if isinstance(hit, str):
                return Path(hit).parent.name
    except Exception:  # the revision is informative only  # noqa: BLE001
        pass
    return "unknown"


def fingerprint(model_id: str) -> str:
    """What identifies the weights behind ``model_id``, for cache keys: a cached stage must
    not be reused when the weights behind the same id change (a retrained toy zoo, a local
    folder overwritten with other weights).

    Hub ids: the cached snapshot's commit (``revision_of``). Local folders: a sha256 over
    every file's relative path and content (files over 64 MiB, i.e. real checkpoints, by size
    and modification time, so large folders are not read whole on every run).
    """
    path = Path(resolve(model_id))
    if not path.is_dir():
        return revision_of(model_id)
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    listing = tuple((str(p.relative_to(path)), st.st_size, st.st_mtime_ns) for p in files for st in (p.stat(),))
    return _folder_digest(str(path), listing)


@functools.lru_cache(maxsize=32)
def _folder_digest(path: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    # Cached per (folder, every file's size and mtime): stage keys are computed many times a run.
    h = hashlib.sha256()
    for rel, size, mtime in listing:
        h.update(rel.encode() + b"\0")
        if size > 64 * 2**20:
            h.update(f"{size}:{mtime}".encode())
        else:
            with open(Path(path) / rel, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return "sha256:" + h.hexdigest()[:16]
