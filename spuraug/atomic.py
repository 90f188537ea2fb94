"""The suite's one way to write a file: readers see the old file or the whole new one.

Every writer makes a temporary file in the target's folder, writes, flushes and fsyncs
it, then renames it over the target with :func:`os.replace` (atomic on POSIX and
Windows within one file system). A failure removes the temporary file and leaves the
target untouched. :func:`append_line` is the one append: a JSON line written with one
``write`` call and fsynced, so an interrupted append leaves at most a torn last line.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["append_jsonl", "append_line", "save_image", "torch_save", "write_bytes", "write_json", "write_text"]


def write_bytes(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], Any]) -> None:
    """Write ``data`` (bytes, or a function that writes to the open binary handle) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False, default: Callable | None = None) -> None:
    """Write ``obj`` as JSON indented by 2, with a final newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n")


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path``."""

    write_bytes(path, lambda handle: torch.save(obj, handle))


def save_image(path: str | os.PathLike, image: Any) -> None:
    """Save a PIL image (format from the suffix: PNG, JPEG; PNG otherwise)."""
    buf = io.BytesIO()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    image.save(buf, format=fmt)
    write_bytes(path, buf.getvalue())


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` plus a newline to ``path`` in one write, then fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        handle.write((line.rstrip("\n") + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append ``obj`` as one JSON line to ``path``."""
    append_line(path, json.dumps(obj))
