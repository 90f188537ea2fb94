"""spuraug doctor: names every missing piece and what to do; exit codes; lock comparison."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from spuraug import doctor
from spuraug.cli import UserError, main
from spuraug.data.registry import dataset_names, get_spec


@pytest.fixture
def empty_machine(tmp_path, monkeypatch):
    """No weights in the caches, no datasets: what this CPU machine looks like."""
    for name in ("hf", "ckpt", "data"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("SPURAUG_DATA_DIR", str(tmp_path / "data"))
    return ["--hf-cache", str(tmp_path / "hf"), "--checkpoint-dir", str(tmp_path / "ckpt")]


def test_doctor_names_missing_pieces_and_fixes(empty_machine, capsys):
    import torch

    assert main(["doctor", *empty_machine]) == 0  # missing pieces are not an error by default
    out = capsys.readouterr().out
    for model in ("stabilityai/stable-diffusion-2-base", "stabilityai/stable-diffusion-2-inpainting",
                  "IDEA-Research/grounding-dino-base", "facebook/sam2.1-hiera-small", "CIDAS/clipseg-rd64-refined",
                  "resnet50-0676ba61.pth"):
        assert model in out
    assert "[missing] sd2-base" in out and "`spuraug weights fetch sd2-base`" in out and "make weights" in out
    real = [n for n in dataset_names() if get_spec(n).needs_data_dir]
    for name in real:
        assert f"[missing] {name}" in out
        assert f"spuraug data fetch --dataset {name}" in out
    assert "[ok] toy: generated on the fly" in out
    if not torch.cuda.is_available():
        assert "[missing] cuda" in out and "GPU=1" in out
    assert "what to do:" in out
    todo = out.split("what to do:")[1].strip().splitlines()
    # one numbered item per [missing] line, each with a fix
    assert len(todo) == out.count("[missing]")
    assert all(line.strip().split(":", 1)[1].strip() for line in todo)


def test_doctor_strict_fails_when_something_is_missing(empty_machine, capsys):
    assert main(["doctor", "--strict", "--only", "weights", *empty_machine]) == 1
    out = capsys.readouterr().out
    assert "weights:" in out and "datasets:" not in out and "gpu:" not in out


def test_doctor_strict_passes_when_the_checked_pieces_are_there(tmp_path, capsys):
    lock = tmp_path / "lock.txt"
    lock.write_text("".join(f"{name}=={version(name)}\n" for name in ("numpy", "pytest", "torch")))
    assert main(["doctor", "--strict", "--only", "packages", "--lock", str(lock)]) == 0
    assert "all 3 pinned packages match" in capsys.readouterr().out


def test_read_lock_and_mismatches(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# comment\n--index-url https://example.invalid\n"
        f"pytest=={version('pytest')}\nnumpy==0.0.1\nno-such-package-spuraug==1.0\n"
        f"torch=={version('torch').split('+')[0]}\n"
    )
    assert doctor.read_lock(lock) == {"pytest": version("pytest"), "numpy": "0.0.1",
                                      "no-such-package-spuraug": "1.0", "torch": version("torch").split("+")[0]}
    checks = {c.name: c for c in doctor.check_packages(lock)}
    differing = checks["versions"].detail.split(": ", 1)[1]
    assert not checks["versions"].ok and differing == f"numpy {version('numpy')} (lock 0.0.1)"  # torch's +cu130 ignored
    assert not checks["installed"].ok and "no-such-package-spuraug" in checks["installed"].detail
    assert "make setup" in checks["versions"].fix

    lock.write_text("numpy>=1\n")
    with pytest.raises(UserError, match="lock.txt:1"):
        doctor.read_lock(lock)


def test_dataset_with_wrong_counts_is_reported(monkeypatch, tmp_path):
    """A dataset that loads but whose group counts differ from the published ones is a missing piece."""
    import spuraug.data.commands as commands
    from spuraug.data.toy import ToyConfig, ToyDataset

    real = [n for n in dataset_names() if get_spec(n).needs_data_dir]
    if not real:
        pytest.skip("no real dataset registered in this checkout")
    small = {s: ToyDataset(s, ToyConfig(n_train=8, n_val=8, n_test=8)) for s in ("train", "val", "test")}
    monkeypatch.setattr(commands, "check_dataset", lambda name, data_dir=None, **kw: small)
    checks = {c.name: c for c in doctor.check_datasets(tmp_path)}
    name = real[0]
    assert not checks[name].ok and "differ from the published" in checks[name].detail
    assert f"spuraug data check --dataset {name}" in checks[name].fix


def test_toy_zoo_is_reported(capsys):
    checks = doctor.check_toy_zoo()
    assert checks
    for c in checks:
        assert c.ok or "make toy-zoo" in c.fix


def test_cuda_only_pins_are_skipped_under_cpu_torch(tmp_path, monkeypatch):
    """The CPU image has no nvidia-*/cuda-*/triton packages on purpose; the doctor must not flag them."""
    import torch

    lock = tmp_path / "lock.txt"
    lock.write_text(f"numpy=={version('numpy')}\nnvidia-not-installed==1.0\ncuda-not-installed==2.0\ntriton==0.0.1\n")
    monkeypatch.setattr(torch.version, "cuda", None)
    checks = doctor.check_packages(lock)
    assert [c.ok for c in checks] == [True, True]
    assert "all 1 pinned packages match" in checks[1].detail and "3 CUDA-only pins skipped" in checks[1].detail
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert any(c.name == "installed" and not c.ok for c in doctor.check_packages(lock))


def test_unwritable_output_folder_is_a_missing_piece(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    checks = {c.name: c for c in doctor.check_system((tmp_path / "runs", tmp_path / "a-file" / "results"))}
    assert checks[str(tmp_path / "runs")].ok  # does not exist yet, but can be created
    bad = checks[str(tmp_path / "a-file" / "results")]
    assert not bad.ok and "not writable" in bad.detail and "--user" in bad.fix


def test_doctor_json(empty_machine, capsys):
    import json

    assert main(["doctor", "--only", "weights", "--json", *empty_machine]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {f["area"] for f in found} == {"weights"} and len(found) == 6
    assert all(not f["ok"] and "make weights" in f["fix"] for f in found)


def test_jemalloc_check_reads_the_process_maps(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    off = doctor.check_jemalloc(maps, candidates=(str(lib),))
    assert not off.ok and "not preloaded" in off.detail and f"LD_PRELOAD={lib}" in off.fix
    absent = doctor.check_jemalloc(maps, candidates=(str(tmp_path / "none.so"),))
    assert not absent.ok and "libjemalloc2" in absent.fix
    maps.write_text(maps.read_text() + f"7f02-7f03 r-xp 00000000 08:01 2 {lib}\n")
    on = doctor.check_jemalloc(maps, candidates=())
    assert on.ok and str(lib) in on.detail


def test_doctor_sees_a_preloaded_jemalloc():
    import os
    import subprocess
    import sys

    lib = next((p for p in doctor.JEMALLOC_PATHS if os.path.isfile(p)), None)
    if lib is None:
        pytest.skip("libjemalloc2 is not installed here")
    code = "from spuraug import doctor; c = doctor.check_jemalloc(); print(c.ok, c.detail)"
    env = {**os.environ, "LD_PRELOAD": lib}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    env.pop("LD_PRELOAD")
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert on.stdout.startswith("True active") and off.stdout.startswith("False installed"), (on, off)
