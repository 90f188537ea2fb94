"""``spuraug data fetch``: download a real dataset from its documented sources.

Each dataset has an ordered list of mirrors (:data:`MIRRORS`); they are tried in turn
until one yields the layout the loader reads. A mirror is either a set of files to
download (checked against an MD5 where one is published) and unpack, or the WILDS
package's own downloader. After a success, ``spuraug data check`` runs on the result.
When every mirror fails (no network, a host gone), the command prints what to download
by hand and where to put it, and exits with 1.

Hosts do move: docs/datasets.md lists every source with its history. Downloads go to
``<data-dir>/.downloads/``; an interrupted download resumes from its ``.part`` file
(HTTP range request) on the next run, and archives are deleted once unpacked.
Setting ``SPURAUG_OFFLINE=1`` forbids network use (the test suite does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from spuraug.data import celeba, metashift, waterbirds
from spuraug.data.base import DataError
from spuraug.data.check import check_dataset, format_counts

#: ``downloader(url, destination_file)``: writes the file or raises.
Downloader = Callable[[str, Path], None]
#: ``wilds_download(wilds_dataset_name, data_dir)``: the WILDS package's downloader.
WildsDownload = Callable[[str, Path], None]

DOWNLOAD_FOLDER = ".downloads"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class FetchError(RuntimeError):
    """One mirror failed (network, checksum, unexpected content)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a mirror: where it is, what to call it, its MD5 when one is published."""

    url: str
    filename: str
    md5: str | None = None


@dataclass(frozen=True)
class Mirror:
    """One complete source of a dataset."""

    #: Who hosts it, for messages.
    name: str
    #: Files to download; archives among them are unpacked, other files copied.
    files: tuple[RemoteFile, ...] = ()
    #: Folder below ``--data-dir`` to unpack into ("" = ``--data-dir`` itself).
    target: str = ""
    #: When set, the WILDS package downloads the dataset of this name instead.
    wilds_name: str | None = None
    #: Where the address comes from (code or page read), for the docs and messages.
    cited: str = ""


def gdrive_url(file_id: str) -> str:
    """Direct-download address of a public Google Drive file (skips the virus-scan page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


_WATERBIRDS_TAR = "waterbird_complete95_forest2water2.tar.gz"

#: The sources of each dataset, in the order they are tried.
MIRRORS: dict[str, tuple[Mirror, ...]] = {
    "waterbirds": (
        Mirror(
            "Stanford NLP (the group_DRO tarball)",
            (RemoteFile(f"https://nlp.stanford.edu/data/dro/{_WATERBIRDS_TAR}", _WATERBIRDS_TAR),),
            cited="github.com/kohpangwei/group_DRO README",
        ),
        Mirror(
            "Stanford CS downloads (the same tarball)",
            (RemoteFile(f"https://downloads.cs.stanford.edu/nlp/data/dro/{_WATERBIRDS_TAR}", _WATERBIRDS_TAR),),
            cited="github.com/Wuyxin/DISC disc/download_datasets.py",
        ),
        Mirror(
            "WILDS package (CodaLab bundle 0x505056d5cdea4e4eaa0e242cbfe2daa4)",
            wilds_name="waterbirds",
            cited="wilds 2.0 wilds/datasets/waterbirds_dataset.py",
        ),
    ),
    "celeba": (
        Mirror(
            "WILDS package (CodaLab bundle 0xfe55077f5cd541f985ebf9ec50473293, about 1.3 GB)",
            wilds_name="celebA",
            cited="wilds 2.0 wilds/datasets/celebA_dataset.py",
        ),
        Mirror(
            "CelebA official Google Drive (file ids and MD5s as in torchvision.datasets.CelebA)",
            (
                RemoteFile(gdrive_url("0B7EVK8r0v71pZjFTYXZWM3FlRnM"), "img_align_celeba.zip", "00d2c5bc6d35e252742224ab0c1e8fcb"),
                RemoteFile(gdrive_url("0B7EVK8r0v71pblRyaVFSWGxPY0U"), "list_attr_celeba.txt", "75e246fa4810816ffd6ee81facbd244c"),
                RemoteFile(gdrive_url("0B7EVK8r0v71pY0NSMzRuSXJEVkk"), "list_eval_partition.txt", "d32c9cbf5e040fd4025c592c306e6668"),
            ),
            target="celeba",
            cited="torchvision 0.29 torchvision/datasets/celeba.py (file_list)",
        ),
    ),
    "metashift": (
        Mirror(
            "DISC's metashifts.zip (Google Drive)",
            (RemoteFile(gdrive_url("1WySOxBRkxAUlSokgZrC-0JaWZwcG5UMT"), "metashifts.zip"),),
            cited="github.com/Wuyxin/DISC disc/download_datasets.py",
        ),
        Mirror(
            "LISA's MetaShift link (Google Drive)",
            (RemoteFile(gdrive_url("1Fr2HxUOL3_QUDHU5B3MMH7dgFu_u_gJ_"), "metashift_lisa.zip"),),
            cited="github.com/huaxiuyao/LISA README",
        ),
    ),
}

_MODULES = {"waterbirds": waterbirds, "celeba": celeba, "metashift": metashift}


def offline() -> bool:
    """Whether ``SPURAUG_OFFLINE=1`` forbids network use."""
    return os.environ.get("SPURAUG_OFFLINE") == "1"


def http_download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` with a progress bar, resuming a ``.part`` file.

    Raises :class:`FetchError` when offline, on HTTP/network errors and when the host
    answers with a web page instead of the file (moved file, exceeded quota, sign-in).
    """
    if offline():
        raise FetchError("network use is disabled (SPURAUG_OFFLINE=1)")
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "spuraug-data-fetch"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            if "text/html" in r.headers.get("Content-Type", ""):
                raise FetchError(f"{url} answered with a web page, not the file (moved, quota exceeded or sign-in needed)")
            if start and r.status != 206:
                start = 0  # the server ignored the range: start over
            length = r.headers.get("Content-Length")
            total = int(length) + start if length else None
            with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr
            ) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise FetchError(f"{url}: {e}") from e
    part.replace(dest)


def wilds_package_download(wilds_name: str, data_dir: Path) -> None:
    """Let the WILDS package download ``wilds_name`` into ``data_dir/<wilds_name>_v1.0``."""
    if offline():
        raise FetchError("network use is disabled (SPURAUG_OFFLINE=1)")
    import wilds  # deferred: heavy, only real-data loading needs it

    # WILDS prints and swallows download errors; the layout check that follows catches them.
    wilds.get_dataset(dataset=wilds_name, root_dir=str(data_dir), download=True)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def unpack(archive: Path, target: Path) -> None:
    """Unpack a .tar(.gz)/.tgz/.zip ``archive`` into ``target``, refusing members that
    would land outside it."""
    target.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            root = target.resolve()
            for member in z.namelist():
                dest = (target / member).resolve()
                if dest != root and root not in dest.parents:
                    raise FetchError(f"{archive}: member {member!r} would be written outside {target}")
            z.extractall(target)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as t:
            try:
                t.extractall(target, filter="data")
            except tarfile.FilterError as e:
                raise FetchError(f"{archive}: unsafe member refused ({e})") from e
    else:
        raise FetchError(f"{archive}: not an archive this command can unpack")


def _download_file(f: RemoteFile, downloads: Path, downloader: Downloader) -> Path:
    dest = downloads / f.filename
    if not (dest.is_file() and (f.md5 is None or md5sum(dest) == f.md5)):
        downloader(f.url, dest)
    if not dest.is_file():
        raise FetchError(f"{f.url}: nothing was downloaded to {dest}")
    if f.md5 is not None:
        actual = md5sum(dest)
        if actual != f.md5:
            dest.unlink()
            raise FetchError(f"{dest.name}: MD5 {actual} differs from the published {f.md5} (corrupt or changed file)")
    return dest


def _run_mirror(mirror: Mirror, data_dir: Path, downloader: Downloader, wilds_download: WildsDownload) -> None:
    if mirror.wilds_name is not None:
        wilds_download(mirror.wilds_name, data_dir)
        return
    downloads = data_dir / DOWNLOAD_FOLDER
    downloads.mkdir(parents=True, exist_ok=True)
    paths = [_download_file(f, downloads, downloader) for f in mirror.files]
    target = data_dir / mirror.target
    target.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.name.lower().endswith(ARCHIVE_SUFFIXES):
            print(f"  unpacking {p.name} into {target}", file=sys.stderr)
            unpack(p, target)
        else:
            shutil.copyfile(p, target / p.name)
    for p in paths:
        p.unlink()


def manual_instructions(name: str, data_dir: Path, mirrors: tuple[Mirror, ...]) -> str:
    """What to download by hand, from where, and where to put it."""
    module = _MODULES[name]
    lines = [f"Download {name} by hand from any of these sources:"]
    for m in mirrors:
        if m.wilds_name is not None:
            lines.append(
                f"  - {m.name}: python -c \"import wilds; wilds.get_dataset('{m.wilds_name}', "
                f"root_dir='{data_dir}', download=True)\""
            )
        else:
            for f in m.files:
                check = f" (MD5 {f.md5})" if f.md5 else ""
                lines.append(f"  - {m.name}: {f.url} -> {f.filename}{check}")
            lines.append(f"    unpack into {data_dir / m.target}")
    lines.append(f"Expected result: {module.EXPECTED}, under {data_dir}")
    lines.append(f"Other sources: {module.SOURCE}")
    lines.append(f"Then verify: spuraug data check --dataset {name} --data-dir {data_dir} --deep")
    return "\n".join(lines)


def fetch(
    name: str,
    data_dir: str | os.PathLike,
    *,
    downloader: Downloader | None = None,
    wilds_download: WildsDownload | None = None,
    mirrors: tuple[Mirror, ...] | None = None,
    partial: bool = False,
    out: TextIO | None = None,
) -> int:
    """Download dataset ``name`` into ``data_dir`` from the first mirror that works, then
    run ``data check`` on it. Returns an exit code: 0 when the data is in place and its
    counts equal the published ones (or ``partial``), 1 otherwise.

    A copy already in place is checked without downloading. ``downloader``,
    ``wilds_download`` and ``mirrors`` replace the network parts (tests use them).
    """

    out = out if out is not None else sys.stdout
    if name not in MIRRORS:
        raise DataError(f"no download sources for dataset {name!r}; known: {', '.join(MIRRORS)}")
    data_dir = Path(data_dir)
    mirrors = MIRRORS[name] if mirrors is None else mirrors
    downloader = downloader or http_download
    wilds_download = wilds_download or wilds_package_download
    find_root = _MODULES[name].find_root
    downloaded = False
    try:
        root = find_root(data_dir)
        print(f"{name}: found at {root}; not downloading", file=out)
    except DataError:
        root = None
    if root is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        failures = []
        for mirror in mirrors:
            print(f"{name}: trying {mirror.name}", file=out)
            try:
                _run_mirror(mirror, data_dir, downloader, wilds_download)
                root = find_root(data_dir)
                downloaded = True
                break
            except DataError:
                failures.append(f"{mirror.name}: downloaded, but the expected layout is not there")
            except Exception as e:  # any failure of a host is a reason to try the next one
                failures.append(f"{mirror.name}: {type(e).__name__}: {e}")
            print(f"  failed: {failures[-1]}", file=out)
        if root is None:
            print(f"{name}: every source failed:", file=out)
            for f in failures:
                print(f"  - {f}", file=out)
            print(manual_instructions(name, data_dir, mirrors), file=out)
            return 1
        print(f"{name}: in place at {root}", file=out)
    try:
        splits = check_dataset(name, str(data_dir))
    except DataError as e:
        print(f"{name}: data check failed: {e}", file=out)
        if not downloaded:
            print(f"{name}: the copy at {root} was already there; complete it, or move it away and re-run "
                  "to download a fresh one", file=out)
        return 1
    table, matches = format_counts(name, splits)
    print(table, file=out)
    if not matches:
        print(f"{name}: counts differ from the published ones (incomplete or different copy)", file=out)
        return 0 if partial else 1
    return 0
