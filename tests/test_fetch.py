"""`spuraug data fetch` without the network: failing and local downloaders are injected."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from real_fixtures import make_celeba, make_metashift, make_waterbirds

from spuraug.cli import main
from spuraug.data import fetch as fetch_mod
from spuraug.data.fetch import MIRRORS, FetchError, Mirror, RemoteFile, fetch


def tar_of(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as t:
        t.add(folder, arcname=folder.name)
    return dest


def zip_of(base: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(base.rglob("*")):
            z.write(p, p.relative_to(base.parent).as_posix())
    return dest


class Offline:
    """A downloader (and WILDS downloader) that records calls and always fails."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, url_or_name, dest):
        self.calls.append(url_or_name)
        raise OSError("[Errno -3] Temporary failure in name resolution")


class ServeLocal:
    """Fails on the first ``fail_first`` calls, then copies ``archive`` to the destination."""

    def __init__(self, archive: Path, fail_first: int = 1):
        self.archive, self.fail_first, self.calls = archive, fail_first, []

    def __call__(self, url, dest):
        self.calls.append(url)
        if len(self.calls) <= self.fail_first:
            raise FetchError(f"{url}: HTTP Error 404: Not Found")
        shutil.copyfile(self.archive, dest)


@pytest.mark.parametrize("name", ["waterbirds", "celeba", "metashift"])
def test_offline_tries_every_mirror_then_says_what_to_download(tmp_path, name):
    down, wilds = Offline(), Offline()
    buf = io.StringIO()
    rc = fetch(name, tmp_path / "data", downloader=down, wilds_download=wilds, out=buf)
    text = buf.getvalue()
    assert rc == 1
    n_file_mirrors = sum(1 for m in MIRRORS[name] if m.wilds_name is None)
    assert len([c for c in down.calls]) >= n_file_mirrors
    assert len(wilds.calls) == sum(1 for m in MIRRORS[name] if m.wilds_name is not None)
    assert "every source failed" in text and "Download " + name + " by hand" in text
    for m in MIRRORS[name]:
        assert m.name in text
        for f in m.files:
            assert f.url in text
    assert "name resolution" in text
    assert f"spuraug data check --dataset {name} --data-dir {tmp_path / 'data'}" in text


def test_cli_fetch_offline_exits_nonzero_and_prints_sources(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPURAUG_OFFLINE", "1")
    rc = main(["data", "fetch", "--dataset", "waterbirds", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "SPURAUG_OFFLINE=1" in out
    assert "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz" in out
    assert "wilds.get_dataset('waterbirds'" in out


def test_mirror_fallback_unpacks_tarball_and_checks(tmp_path):
    src = make_waterbirds(tmp_path / "src")
    archive = tar_of(src, tmp_path / "wb.tar.gz")
    data = tmp_path / "data"
    down = ServeLocal(archive, fail_first=1)
    buf = io.StringIO()
    rc = fetch("waterbirds", data, downloader=down, wilds_download=Offline(), partial=True, out=buf)
    text = buf.getvalue()
    assert rc == 0, text
    assert down.calls == [m.files[0].url for m in MIRRORS["waterbirds"][:2]]  # first mirror failed, second served
    assert (data / "waterbird_complete95_forest2water2" / "metadata.csv").is_file()
    assert "HTTP Error 404" in text and "train" in text and "3498" in text  # check table with published counts
    assert not list((data / ".downloads").iterdir())  # archive removed once unpacked
    # complete-count check: a partial copy is not accepted without partial=True
    assert fetch("waterbirds", data, downloader=Offline(), wilds_download=Offline(), out=io.StringIO()) == 1


def test_existing_copy_is_checked_without_downloading(tmp_path):
    make_waterbirds(tmp_path)
    down = Offline()
    buf = io.StringIO()
    assert fetch("waterbirds", tmp_path, downloader=down, wilds_download=down, partial=True, out=buf) == 0
    assert down.calls == [] and "not downloading" in buf.getvalue()


def test_wilds_mirror_layout_is_accepted(tmp_path):
    src = tmp_path / "wilds_src"
    make_waterbirds(src, folder="waterbirds_v1.0")

    def wilds_download(wilds_name, data_dir):
        assert wilds_name == "waterbirds"
        shutil.copytree(src / "waterbirds_v1.0", Path(data_dir) / "waterbirds_v1.0")

    rc = fetch("waterbirds", tmp_path / "d", downloader=Offline(), wilds_download=wilds_download,
               partial=True, out=io.StringIO())
    assert rc == 0


def test_celeba_wilds_then_official_files_with_md5(tmp_path):
    src = make_celeba(tmp_path / "src", "original", folder="x")
    zip_path = zip_of(src / "img_align_celeba", tmp_path / "img_align_celeba.zip")
    served = {
        "img_align_celeba.zip": zip_path,
        "list_attr_celeba.txt": src / "list_attr_celeba.txt",
        "list_eval_partition.txt": src / "list_eval_partition.txt",
    }
    md5 = {k: hashlib.md5(p.read_bytes()).hexdigest() for k, p in served.items()}
    official = Mirror(
        "official (local copy)",
        tuple(RemoteFile(f"https://example.invalid/{k}", k, md5[k]) for k in served),
        target="celeba",
    )
    mirrors = (MIRRORS["celeba"][0], official)
    assert MIRRORS["celeba"][0].wilds_name == "celebA"

    def downloader(url, dest):
        shutil.copyfile(served[url.rsplit("/", 1)[1]], dest)

    data = tmp_path / "data"
    buf = io.StringIO()
    rc = fetch("celeba", data, downloader=downloader, wilds_download=Offline(), mirrors=mirrors, partial=True, out=buf)
    assert rc == 0, buf.getvalue()
    assert (data / "celeba" / "img_align_celeba" / "000001.jpg").is_file()
    assert (data / "celeba" / "list_attr_celeba.txt").is_file()


def test_checksum_mismatch_rejects_a_mirror(tmp_path):
    src = make_celeba(tmp_path / "src", "original", folder="x")
    files = ("list_attr_celeba.txt", "list_eval_partition.txt")
    bad = Mirror("corrupt host", tuple(RemoteFile(f"https://a.invalid/{f}", f, "0" * 32) for f in files), target="celeba")
    buf = io.StringIO()

    def downloader(url, dest):
        shutil.copyfile(src / url.rsplit("/", 1)[1], dest)

    rc = fetch("celeba", tmp_path / "d", downloader=downloader, wilds_download=Offline(), mirrors=(bad,), out=buf)
    assert rc == 1 and "differs from the published 00000000000000000000000000000000" in buf.getvalue()
    assert not (tmp_path / "d" / ".downloads" / files[0]).exists()  # the corrupt file is not kept


def test_official_celeba_checksums_are_torchvisions():
    # The MD5s come from torchvision's CelebA downloader: keep them in step with it.
    from torchvision.datasets import CelebA

    known = {fname: md5 for _, md5, fname in CelebA.file_list}
    official = MIRRORS["celeba"][1]
    assert official.files and all(known[f.filename] == f.md5 for f in official.files)


def test_metashift_zip_unpacks_to_disc_layout(tmp_path):
    src = make_metashift(tmp_path / "src")  # src/metashifts/MetaDatasetCatDog
    archive = zip_of(src.parent, tmp_path / "metashifts.zip")
    data = tmp_path / "data"
    buf = io.StringIO()
    rc = fetch("metashift", data, downloader=ServeLocal(archive, fail_first=0), out=buf)
    assert rc == 0, buf.getvalue()  # no published counts: nothing to differ from
    assert (data / "metashifts" / "MetaDatasetCatDog" / "test" / "dog" / "dog(shelf)").is_dir()
    assert "cat / shelf" in buf.getvalue()


def test_archive_without_the_layout_fails_over(tmp_path):
    junk = tmp_path / "junk"
    (junk / "readme").mkdir(parents=True)
    (junk / "readme" / "x.txt").write_text("moved")
    archive = tar_of(junk / "readme", tmp_path / "j.tar.gz")
    buf = io.StringIO()
    rc = fetch("waterbirds", tmp_path / "d", downloader=ServeLocal(archive, fail_first=0),
               wilds_download=Offline(), out=buf)
    assert rc == 1 and "downloaded, but the expected layout is not there" in buf.getvalue()


def test_unpack_refuses_paths_outside_the_target(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(FetchError, match="outside"):
        fetch_mod.unpack(evil, tmp_path / "t")
    assert not (tmp_path / "outside.txt").exists()
    evil_tar = tmp_path / "evil.tar.gz"
    with tarfile.open(evil_tar, "w:gz") as t:
        info = tarfile.TarInfo("../outside2.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(FetchError, match="unsafe"):
        fetch_mod.unpack(evil_tar, tmp_path / "t")
    assert not (tmp_path / "outside2.txt").exists()


def test_http_download_refuses_network_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SPURAUG_OFFLINE", "1")
    with pytest.raises(FetchError, match="SPURAUG_OFFLINE"):
        fetch_mod.http_download("https://nlp.stanford.edu/x", tmp_path / "x")
    with pytest.raises(FetchError, match="SPURAUG_OFFLINE"):
        fetch_mod.wilds_package_download("waterbirds", tmp_path)


@pytest.fixture
def local_http(tmp_path):
    """A plain HTTP server on localhost serving tmp_path/www (no Range support, like many hosts)."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_restarts_when_range_is_ignored_and_rejects_web_pages(tmp_path, local_http, monkeypatch):
    monkeypatch.delenv("SPURAUG_OFFLINE", raising=False)
    www, base = local_http
    payload = bytes(range(256)) * 50
    (www / "w.tar.gz").write_bytes(payload)
    dest = tmp_path / "w.tar.gz"
    (tmp_path / "w.tar.gz.part").write_bytes(b"stale partial bytes")
    fetch_mod.http_download(f"{base}/w.tar.gz", dest)
    assert dest.read_bytes() == payload and not (tmp_path / "w.tar.gz.part").exists()
    (www / "moved.html").write_text("<html>this file has moved</html>")
    with pytest.raises(FetchError, match="web page"):
        fetch_mod.http_download(f"{base}/moved.html", tmp_path / "m.zip")
    with pytest.raises(FetchError, match="404"):
        fetch_mod.http_download(f"{base}/missing.zip", tmp_path / "n.zip")


def test_broken_existing_copy_is_reported_not_overwritten(tmp_path):
    root = make_waterbirds(tmp_path)
    (root / "045.Northern_Fulmar").rename(root / "moved_away")
    buf = io.StringIO()
    rc = fetch("waterbirds", tmp_path, downloader=Offline(), wilds_download=Offline(), partial=True, out=buf)
    assert rc == 1 and "image files are missing" in buf.getvalue() and "already there" in buf.getvalue()
    assert (root / "moved_away").is_dir()
