"""spuraug.weights: file selection, cache status on fake caches, fetch with the network stubbed out."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from spuraug import weights
from spuraug.cli import main
from spuraug.weights import TorchCheckpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# The files of stabilityai/stable-diffusion-2-base's repository that matter for selection.
SD_LISTING = [
    ".gitattributes", "README.md", "512-base-ema.ckpt", "512-base-ema.safetensors", "model_index.json",
    "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "v2-1_512-nonema-pruned.ckpt", "images/sample.png",
]


def entry(name: str):
    return weights.get_weights([name])[0]


def make_cached_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """A hub cache entry laid out as huggingface_hub writes it: refs/main, blobs, snapshot symlinks."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo / "snapshots" / commit


def test_every_benchmark_model_is_listed():
    ids = {e.id for e in weights.benchmark_weights()}
    assert ids == {
        "stabilityai/stable-diffusion-2-base", "stabilityai/stable-diffusion-2-inpainting",
        "IDEA-Research/grounding-dino-base", "facebook/sam2.1-hiera-small", "CIDAS/clipseg-rd64-refined",
        weights.RESNET50_IMAGENET1K_V1_URL,
    }


def test_resnet_url_is_torchvisions_imagenet1k_v1():
    from torchvision.models import ResNet50_Weights

    ckpt = entry("resnet50-imagenet")
    assert ckpt.url == ResNet50_Weights.IMAGENET1K_V1.url
    assert ckpt.sha256_prefix == "0676ba61"


def test_select_files_diffusers_keeps_components_and_safetensors_only():
    selected = weights.select_files(entry("sd2-base"), SD_LISTING, fp16=True)
    assert "model_index.json" in selected
    assert "unet/diffusion_pytorch_model.safetensors" in selected
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in selected
    assert "tokenizer/merges.txt" in selected
    # no single-file checkpoints, no .bin next to safetensors, no docs or images
    for dropped in ("512-base-ema.ckpt", "512-base-ema.safetensors", "v2-1_512-nonema-pruned.ckpt",
                    "unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin", "README.md",
                    ".gitattributes", "images/sample.png"):
        assert dropped not in selected
    no_fp16 = weights.select_files(entry("sd2-base"), SD_LISTING)  # the default: DDB casts fp32 files
    assert not [f for f in no_fp16 if ".fp16." in f]
    assert "vae/diffusion_pytorch_model.safetensors" in no_fp16


def test_select_files_transformers_falls_back_to_bin_without_safetensors():
    clipseg = entry("clipseg")
    only_bin = ["config.json", "pytorch_model.bin", "tf_model.h5", "vocab.json", "preprocessor_config.json"]
    assert weights.select_files(clipseg, only_bin) == ["config.json", "preprocessor_config.json",
                                                        "pytorch_model.bin", "vocab.json"]
    both = only_bin + ["model.safetensors", "sub/other.safetensors"]
    assert weights.select_files(clipseg, both) == ["config.json", "model.safetensors",
                                                    "preprocessor_config.json", "vocab.json"]


def test_hub_status_on_a_fake_cache(tmp_path):
    sam = entry("sam")
    files = {"config.json": b"{}", "model.safetensors": b"x" * 1000, "preprocessor_config.json": b"{ }"}
    snapshot = make_cached_repo(tmp_path, sam.repo_id, files)
    status = weights.hub_model_status(sam, tmp_path)
    assert status.state == "cached" and status.ok
    assert status.size_bytes == sum(len(v) for v in files.values())
    assert status.location == snapshot

    clipseg = entry("clipseg")
    make_cached_repo(tmp_path, clipseg.repo_id, {"config.json": b"{}"})
    status = weights.hub_model_status(clipseg, tmp_path)
    assert status.state == "incomplete"
    assert status.missing_files == ["model.safetensors or pytorch_model.bin"]

    status = weights.hub_model_status(entry("grounding-dino"), tmp_path)
    assert status.state == "missing" and "not in the hub cache" in status.detail


def test_diffusers_status_names_the_missing_component(tmp_path):
    sd = entry("sd2-inpainting")
    files = {f: b"w" for f in weights.select_files(sd, SD_LISTING, fp16=True) if not f.startswith("unet/diffusion")}
    make_cached_repo(tmp_path, sd.repo_id, files)
    status = weights.hub_model_status(sd, tmp_path)
    assert status.state == "incomplete"
    assert len(status.missing_files) == 1 and "unet/diffusion_pytorch_model.safetensors" in status.missing_files[0]
    make_cached_repo(tmp_path, sd.repo_id, {"unet/diffusion_pytorch_model.fp16.safetensors": b"half"})
    assert weights.hub_model_status(sd, tmp_path).ok


def test_checkpoint_status_checks_the_hash_prefix(tmp_path):
    data = b"not really a resnet"
    good = TorchCheckpoint("fake", "https://example.invalid/fake-model-abc.pth", "test",
                           sha256_prefix=hashlib.sha256(data).hexdigest()[:8])
    assert weights.checkpoint_status(good, tmp_path).state == "missing"
    (tmp_path / good.filename).write_bytes(data)
    status = weights.checkpoint_status(good, tmp_path, check_hash=True)
    assert status.ok and status.size_bytes == len(data)

    resnet = entry("resnet50-imagenet")
    (tmp_path / resnet.filename).write_bytes(data)
    assert weights.checkpoint_status(resnet, tmp_path).ok  # presence only
    status = weights.checkpoint_status(resnet, tmp_path, check_hash=True)
    assert status.state == "corrupt" and "0676ba61" in status.detail


def test_cache_dirs_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights.hf_hub_cache() == tmp_path / "hf" / "hub"
    assert weights.torch_checkpoint_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert weights.hf_hub_cache() == tmp_path / "elsewhere"


def test_cli_list_and_verify(tmp_path, capsys):
    hf, ckpt = tmp_path / "hf", tmp_path / "ckpt"
    args = ["--hf-cache", str(hf), "--checkpoint-dir", str(ckpt)]
    assert main(["weights", "list", *args]) == 0
    out, err = capsys.readouterr()
    assert "stabilityai/stable-diffusion-2-inpainting" in out and "missing" in out
    assert "6 of 6 missing" in err and "make weights" in err
    assert main(["weights", "verify", *args]) == 1
    capsys.readouterr()

    make_cached_repo(hf, entry("sam").repo_id, {"config.json": b"{}", "model.safetensors": b"y" * 2048})
    assert main(["weights", "verify", "sam", *args]) == 0
    out, _ = capsys.readouterr()
    assert "cached" in out and "2.0 KiB" in out
    assert main(["weights", "list", "no-such-model", *args]) == 2
    assert "unknown weights no-such-model" in capsys.readouterr().err


def test_fetch_refuses_offline(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", "fetch", "sam"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_fetch_with_the_hub_stubbed(tmp_path, monkeypatch, capsys):
    """fetch lists the repo, downloads exactly the selected files, then verifies from the cache."""
    import huggingface_hub
    import torch.hub

    listing = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "README.md"]
    requested = {}

    def list_repo_files(self, repo_id, **kw):
        return listing

    def snapshot_download(repo_id, allow_patterns=None, cache_dir=None, **kw):
        requested[repo_id] = list(allow_patterns)
        make_cached_repo(Path(cache_dir), repo_id, {f: f.encode() for f in allow_patterns})
        return str(cache_dir)

    data = b"fake checkpoint bytes"
    fake = TorchCheckpoint("fake", "https://example.invalid/fake-" + hashlib.sha256(data).hexdigest()[:8] + ".pth",
                           "test", sha256_prefix=hashlib.sha256(data).hexdigest()[:8])

    def download_url_to_file(url, dst, hash_prefix=None, progress=True):
        assert url == fake.url and hash_prefix == fake.sha256_prefix
        Path(dst).write_bytes(data)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download_url_to_file)

    status = weights.fetch_hub_model(entry("sam"), tmp_path / "hf")
    assert requested["facebook/sam2.1-hiera-small"] == ["config.json", "model.safetensors"]
    assert status.ok and status.size_bytes == len(b"config.json") + len(b"model.safetensors")
    status = weights.fetch_checkpoint(fake, tmp_path / "ckpt")
    assert status.ok and (tmp_path / "ckpt" / fake.filename).read_bytes() == data

    # the CLI prints the verified sizes and says runs can go offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SPURAUG_OFFLINE", "0")
    rc = main(["weights", "fetch", "clipseg", "--hf-cache", str(tmp_path / "hf")])
    out = capsys.readouterr().out
    assert rc == 0 and "CIDAS/clipseg-rd64-refined" in out and "HF_HUB_OFFLINE=1" in out


@pytest.mark.parametrize("n,text", [(512, "512 B"), (2048, "2.0 KiB"), (5 * 2**20, "5.0 MiB"), (3 * 2**30, "3.0 GiB")])
def test_human_size(n, text):
    assert weights.human_size(n) == text


def _tiny(name: str, folder: Path) -> Path:
    import tiny_models as tiny

    if name == "sd2-base":
        return tiny.save_stable_diffusion(folder, in_channels=4)
    if name == "sd2-inpainting":
        return tiny.save_stable_diffusion(folder, in_channels=9)
    return {"grounding-dino": tiny.save_grounding_dino, "sam": tiny.save_sam2, "clipseg": tiny.save_clipseg}[name](folder)


def _loaders(name: str) -> list[tuple]:
    import diffusers
    import transformers

    if name == "sd2-base":  # what spuraug.ddb.invert loads
        return [(transformers.CLIPTokenizer, "tokenizer"), (transformers.CLIPTextModel, "text_encoder"),
                (diffusers.AutoencoderKL, "vae"), (diffusers.UNet2DConditionModel, "unet"),
                (diffusers.DDPMScheduler, "scheduler")]
    return {
        "sd2-inpainting": [(diffusers.StableDiffusionInpaintPipeline, None)],
        "grounding-dino": [(transformers.AutoProcessor, None), (transformers.GroundingDinoForObjectDetection, None)],
        "sam": [(transformers.Sam2Processor, None), (transformers.Sam2Model, None)],
        "clipseg": [(transformers.CLIPSegProcessor, None), (transformers.CLIPSegForImageSegmentation, None)],
    }[name]


@pytest.mark.parametrize("name", ["sd2-base", "sd2-inpainting", "grounding-dino", "sam", "clipseg"])
def test_selected_files_load_offline_by_repo_id(name, tmp_path):
    """The files `fetch` would pick suffice: DDB's loader finds the model by its real id, offline.

    A tiny model of the same classes (tests/tiny_models.py) plays the hub repository; only the
    files select_files keeps go into a hub cache laid out as huggingface_hub writes it.
    """
    from spuraug.ddb import hub

    model = entry(name)
    repo = _tiny(name, tmp_path / "repo")
    listing = [p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()]
    # a hub repository also carries weights the loaders do not need
    listing += ["pytorch_model.bin", "README.md", "v2-1_512-ema-pruned.ckpt"]
    selected = weights.select_files(model, listing)
    assert "README.md" not in selected and "v2-1_512-ema-pruned.ckpt" not in selected
    cache = tmp_path / "hub"
    make_cached_repo(cache, model.repo_id, {f: (repo / f).read_bytes() for f in selected})
    assert weights.hub_model_status(model, cache).ok
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for cls, subfolder in _loaders(name):
        assert hub.load(cls, model.repo_id, subfolder, cache_dir=str(cache)) is not None
