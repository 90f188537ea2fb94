"""DDB's stages on tiny models built from configs and saved like real checkpoints.

Every model is loaded through spuraug.ddb.hub, the code that loads the real ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models as tiny
import torch
from PIL import Image

from spuraug.ddb import hub, inpaint, invert, prune, segment
from spuraug.ddb.config import InpaintConfig, InvertConfig, SegmentConfig, ddb_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "sd9": tiny.save_stable_diffusion(root / "sd9", in_channels=9, image_size=16),
        "sd4": tiny.save_stable_diffusion(root / "sd4", in_channels=4, image_size=16),
        "clipseg": tiny.save_clipseg(root / "clipseg"),
        "sam": tiny.save_sam(root / "sam"),
        "sam2": tiny.save_sam2(root / "sam2"),
        "gdino": tiny.save_grounding_dino(root / "gdino"),
    }


def _images(n: int, size=(20, 24), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)) for _ in range(n)]


# ------------------------------------------------------------------ inversion
@pytest.mark.parametrize("unet", ["sd4", "sd9"])
def test_inversion_trains_only_the_new_row(models, tmp_path, unet):
    comps = invert.load_sd_components(str(models[unet]))
    before = {
        name: {k: v.clone() for k, v in getattr(comps, name).state_dict().items()}
        for name in ("text_encoder", "unet", "vae")
    }
    n_vocab = len(comps.tokenizer)
    ids = invert.add_tokens(comps, ["<class-0>", "<class-1>"], "digit")
    assert ids == [n_vocab, n_vocab + 1]
    init_id = comps.tokenizer.encode("digit", add_special_tokens=False)[0]
    cfg = InvertConfig(resolution=16, max_train_steps=3, gradient_accumulation_steps=2, initializer_token="digit",
                       noun="digit", learning_rate=5e-2)
    vec = invert.train_token(comps, _images(3), "<class-0>", ids[0], cfg, tmp_path, device="cpu")

    for name in ("unet", "vae"):
        after = getattr(comps, name).state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name]), name
    te_after = comps.text_encoder.state_dict()
    emb_key = next(k for k in te_after if k.endswith("token_embedding.weight"))
    for k, v in before["text_encoder"].items():
        if k != emb_key:
            assert torch.equal(v, te_after[k]), k
    emb = te_after[emb_key]
    assert torch.equal(emb[:n_vocab], before["text_encoder"][emb_key])
    # the learned row moved away from its initializer; the matrix itself was not touched
    assert torch.equal(emb[ids[0]], emb[init_id])
    assert not torch.allclose(vec, emb[init_id])

    saved = invert.load_learned_embeds(tmp_path / invert.EMBEDS_FILE)
    assert list(saved) == ["<class-0>"] and saved["<class-0>"].shape == (1, emb.shape[1])
    assert torch.equal(saved["<class-0>"][0], vec)


def test_learned_embeds_load_in_diffusers(models, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    vec = torch.randn(32)
    invert.save_learned_embeds(tmp_path / invert.EMBEDS_FILE, "<class-1>", vec)
    pipe = hub.load(StableDiffusionInpaintPipeline, str(models["sd9"]), safety_checker=None,
                    requires_safety_checker=False)
    pipe.load_textual_inversion(str(tmp_path / invert.EMBEDS_FILE), token="<class-1>")
    tid = pipe.tokenizer.convert_tokens_to_ids("<class-1>")
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[tid], vec)


def test_inversion_resumes_from_checkpoint(models, tmp_path):
    cfg = InvertConfig(resolution=16, max_train_steps=4, gradient_accumulation_steps=1, initializer_token="digit",
                       noun="digit", checkpoint_every=2, learning_rate=5e-2)

    def fresh():
        comps = invert.load_sd_components(str(models["sd9"]))
        ids = invert.add_tokens(comps, ["<c0>"], "digit")
        return comps, ids[0]

    comps, tid = fresh()
    full = invert.train_token(comps, _images(2), "<c0>", tid, cfg, tmp_path / "full")

    comps, tid = fresh()
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def crashing_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = crashing_step
    try:
        with pytest.raises(KeyboardInterrupt):
            invert.train_token(comps, _images(2), "<c0>", tid, cfg, tmp_path / "resumed")
    finally:
        torch.optim.AdamW.step = real_step
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    comps, tid = fresh()
    resumed = invert.train_token(comps, _images(2), "<c0>", tid, cfg, tmp_path / "resumed")
    assert torch.allclose(full, resumed, atol=1e-6)
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


def test_initializer_must_be_one_token(models):
    comps = invert.load_sd_components(str(models["sd9"]))
    with pytest.raises(ValueError, match="initializer_token"):
        invert.add_tokens(comps, ["<x>"], "zebraphone")


def _capture_unet_inputs(comps) -> list[torch.Tensor]:
    """Record the UNet's input of every forward pass."""
    seen: list[torch.Tensor] = []
    real = comps.unet.forward

    def forward(sample, *a, **k):
        seen.append(sample.detach().clone())
        return real(sample, *a, **k)

    comps.unet.forward = forward
    return seen


def test_object_loss_region_masks_the_region_like_the_inpainting_pipeline(models, tmp_path):
    """loss_region=object: the UNet sees the region as its mask channel and the image with
    the region blanked (image * (mask < 0.5), VAE-encoded) as its masked-image latents."""
    comps = invert.load_sd_components(str(models["sd9"]))
    tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
    images = _images(2, size=(16, 16))
    region = np.zeros((16, 16), bool)
    region[4:12, 0:8] = True  # a block of the left half
    cfg = InvertConfig(resolution=16, max_train_steps=2, gradient_accumulation_steps=1, initializer_token="digit",
                       noun="digit", loss_region="object", learning_rate=5e-2)
    seen = _capture_unet_inputs(comps)
    invert.train_token(comps, images, "<c0>", tid, cfg, tmp_path, regions=[region, region])
    scale = comps.vae.config.scaling_factor
    with torch.no_grad():
        pix = torch.stack([invert.preprocess(im, 16) for im in images])
        blank = comps.vae.encode(pix * torch.from_numpy(~region).float()).latent_dist.mean * scale
    mask_lat = torch.nn.functional.interpolate(torch.from_numpy(region).float()[None, None], size=seen[0].shape[-2:])
    for x in seen:
        assert torch.equal(x[:, 4:5], mask_lat.expand(len(x), -1, -1, -1))
        assert any(torch.allclose(x[0, 5:], blank[k], atol=1e-5) for k in range(2))


def test_object_loss_region_ignores_the_prediction_off_the_object(models, tmp_path):
    """Only the object's cells enter the loss: a UNet whose output is changed off the
    object (even inside the repainted region) learns the same token; changed on it, a
    different one."""
    cfg = InvertConfig(resolution=16, max_train_steps=2, gradient_accumulation_steps=1, initializer_token="digit",
                       noun="digit", loss_region="object", learning_rate=5e-2)
    obj = np.zeros((16, 16), bool)
    obj[0:8, 0:8] = True  # the top-left quarter: latent cells [0:h/2, 0:w/2]
    region = np.zeros((16, 16), bool)
    region[:, 0:8] = True  # the left half is repainted

    def learn(shift_where: str | None) -> torch.Tensor:
        comps = invert.load_sd_components(str(models["sd9"]))
        tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
        real = comps.unet.forward

        def forward(sample, *a, **k):
            out = real(sample, *a, **k)
            if shift_where is not None:
                bump = torch.zeros_like(out.sample)
                h, w = out.sample.shape[-2:]
                sl = (slice(None), slice(None), slice(0, h // 2), slice(0, w // 2))
                if shift_where == "outside":
                    bump += 3.0 * out.sample.detach().sign()  # a large, grad-free change ...
                    bump[sl] = 0.0  # ... everywhere but the region
                else:
                    bump[sl] = 3.0
                out.sample = out.sample + bump
            return out

        comps.unet.forward = forward
        return invert.train_token(comps, _images(2, size=(16, 16)), "<c0>", tid, cfg,
                                  tmp_path / str(shift_where), regions=[region, region], objects=[obj, obj])

    plain = learn(None)
    assert torch.allclose(learn("outside"), plain, atol=1e-6)
    assert not torch.allclose(learn("inside"), plain, atol=1e-4)


def test_region_loss_takes_the_whole_region_whatever_object_is_given(models, tmp_path):
    """loss_region=region is loss_region=object with the region as the object: the given
    object masks are not used, and the token differs from the object-loss one."""
    kw = dict(resolution=16, max_train_steps=2, gradient_accumulation_steps=1, initializer_token="digit",
              noun="digit", learning_rate=5e-2)
    obj = np.zeros((16, 16), bool)
    obj[0:8, 0:8] = True
    region = np.zeros((16, 16), bool)
    region[:, 0:8] = True

    def learn(loss_region, objects, name):
        comps = invert.load_sd_components(str(models["sd9"]))
        tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
        return invert.train_token(comps, _images(2, size=(16, 16)), "<c0>", tid,
                                  InvertConfig(**kw, loss_region=loss_region), tmp_path / name,
                                  regions=[region, region], objects=objects)

    as_object = learn("object", [region, region], "object-region")
    assert torch.allclose(learn("region", [obj, obj], "region"), as_object, atol=1e-6)
    assert not torch.allclose(learn("object", [obj, obj], "object"), as_object, atol=1e-4)


def test_object_loss_region_without_a_found_object_is_whole_image_inversion(models, tmp_path):
    kw = dict(resolution=16, max_train_steps=2, gradient_accumulation_steps=1, initializer_token="digit",
              noun="digit", learning_rate=5e-2)

    def learn(cfg, regions, name):
        comps = invert.load_sd_components(str(models["sd9"]))
        tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
        return invert.train_token(comps, _images(2), "<c0>", tid, cfg, tmp_path / name, regions=regions)

    whole = learn(InvertConfig(**kw), None, "image")
    none_found = learn(InvertConfig(**kw, loss_region="object"), [None, np.zeros((20, 24), bool)], "object")
    assert torch.allclose(whole, none_found, atol=1e-6)


@pytest.mark.parametrize("loss_region", ["image", "object"])
def test_fused_accumulation_learns_the_same_token(models, tmp_path, loss_region):
    """fuse_accumulation runs the 4 micro-batches as one pass with the same random draws
    and per-micro-batch losses: the token differs by rounding only."""
    region = np.zeros((16, 16), bool)
    region[2:10, 3:12] = True

    def learn(fuse: bool) -> torch.Tensor:
        comps = invert.load_sd_components(str(models["sd9"]))
        tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
        cfg = InvertConfig(resolution=16, max_train_steps=5, gradient_accumulation_steps=4, initializer_token="digit",
                           noun="digit", learning_rate=5e-2, loss_region=loss_region, fuse_accumulation=fuse)
        passes = _capture_unet_inputs(comps)
        vec = invert.train_token(comps, _images(3, size=(16, 16)), "<c0>", tid, cfg, tmp_path / str(fuse),
                                 regions=[region] * 3)
        assert [len(x) for x in passes] == ([4] * 5 if fuse else [1] * 20)
        return vec

    unfused, fused = learn(False), learn(True)
    assert torch.allclose(unfused, fused, atol=1e-4)
    comps = invert.load_sd_components(str(models["sd9"]))
    init = comps.text_encoder.get_input_embeddings().weight[comps.tokenizer.encode("digit", add_special_tokens=False)[0]]
    assert (unfused - init).abs().max() > 100 * (unfused - fused).abs().max()  # the token did move


def test_object_loss_region_errors_name_the_option(models, tmp_path):
    cfg = InvertConfig(resolution=16, max_train_steps=1, gradient_accumulation_steps=1, initializer_token="digit",
                       noun="digit", loss_region="object")
    comps = invert.load_sd_components(str(models["sd4"]))
    tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
    with pytest.raises(ValueError, match="loss_region.*9-channel"):
        invert.train_token(comps, _images(2), "<c0>", tid, cfg, tmp_path / "a", regions=[None, None])
    comps = invert.load_sd_components(str(models["sd9"]))
    tid = invert.add_tokens(comps, ["<c0>"], "digit")[0]
    with pytest.raises(ValueError, match="one region per image"):
        invert.train_token(comps, _images(2), "<c0>", tid, cfg, tmp_path / "b", regions=[None])
    with pytest.raises(ValueError, match="ddb.invert.loss_region"):
        ddb_config({"invert": {"loss_region": "background"}})


# ------------------------------------------------------------------ segmentation
@pytest.mark.parametrize("backend,sam", [("grounded_sam", "sam2"), ("grounded_sam", "sam"), ("clipseg", "sam2")])
def test_segment_writes_masks_beside_source_ids_and_resumes(models, tmp_path, backend, sam):
    cfg = SegmentConfig(backend=backend, detector=str(models["gdino"]), sam=str(models[sam]),
                        clipseg=str(models["clipseg"]), box_threshold=0.0, text_threshold=0.0,
                        clipseg_threshold=0.0, batch_size=2)
    seg = segment.build_segmenter(cfg, "cpu")
    if backend == "grounded_sam":  # SAM 2.1 (LangSAM's) or SAM v1, chosen by the checkpoint's model_type
        assert type(seg.sam).__name__ == ("Sam2Model" if sam == "sam2" else "SamModel")
    imgs = _images(3, size=(40, 48))
    ids = ["a/b.jpg", "c", "d e"]
    calls = []

    def counting(images, prompt):
        calls.append(len(images))
        return seg(images, prompt)

    counts = segment.segment_sources([(i, lambda im=im: im) for i, im in zip(ids, imgs)], counting, "digit",
                                     tmp_path / "masks", batch_size=2)
    assert counts == {"sources": 3, "found": 3, "not_found": 0}
    for sid in ids:
        m = segment.load_mask(tmp_path / "masks", sid)
        assert m is not None and m.shape == (40, 48) and m.dtype == bool and m.any()
        meta = json.loads((tmp_path / "masks" / f"{segment.safe_name(sid)}.json").read_text())
        assert meta["source_id"] == sid and meta["found"]
    n_calls = len(calls)
    segment.segment_sources([(i, lambda im=im: im) for i, im in zip(ids, imgs)], counting, "digit",
                            tmp_path / "masks")
    assert len(calls) == n_calls  # nothing recomputed


def test_segment_defaults_are_langsams_models():
    """LangSAM (luca-medeiros/lang-segment-anything), which the public code calls: GDINO base + SAM 2.1 small."""
    cfg = ddb_config().segment
    assert (cfg.detector, cfg.sam) == ("IDEA-Research/grounding-dino-base", "facebook/sam2.1-hiera-small")


def test_segment_records_sources_without_object(tmp_path):
    def nothing(images, prompt):
        return [(None, 0.1) for _ in images]

    counts = segment.segment_sources([("x", lambda: _images(1)[0])], nothing, "bird.", tmp_path)
    assert counts == {"sources": 1, "found": 0, "not_found": 1}
    assert segment.load_mask(tmp_path, "x") is None


# ------------------------------------------------------------------ inpainting
def _sources(tmp_path: Path, n: int = 4) -> list[inpaint.Source]:
    out = []
    for k, im in enumerate(_images(n)):
        m = np.zeros((20, 24), np.uint8)
        m[4 + k : 12 + k, 5:15] = 255
        Image.fromarray(m).save(tmp_path / f"m{k}.png")
        out.append(inpaint.Source(f"src{k}", k, k % 2, k // 2, lambda im=im: im, tmp_path / f"m{k}.png"))
    return out


def _inpaint_cfg(models, **kw) -> InpaintConfig:
    return InpaintConfig(model=str(models["sd9"]), resolution=16, num_inference_steps=2, batch_size=2,
                         prompt="a photo of a {token} digit", device="cpu", **kw)


def test_inpaint_keeps_background_records_and_labels(models, tmp_path):
    cfg = _inpaint_cfg(models)
    pipe = inpaint.load_inpaint_pipeline(cfg, None, "cpu")
    srcs = _sources(tmp_path)
    plan = inpaint.make_plan(srcs, 2, cfg.seed)
    table = inpaint.inpaint(pipe, plan, ["<class-0>", "<class-1>"], cfg, tmp_path / "out")
    assert len(table) == 4
    for rec, src in zip(table.to_dict("records"), sorted(srcs, key=lambda s: (s.source_class, s.rank))):
        assert rec["source_id"] == src.source_id and rec["source_class"] == src.source_class
        assert rec["target_class"] == 1 - src.source_class == rec["label"]  # the paper: the NEW class
        assert rec["prompt"] == f"a photo of a <class-{1 - src.source_class}> digit"
        assert rec["seed"] == inpaint.sample_seed(cfg.seed, src.source_id, rec["target_class"])
        assert rec["strength"] == cfg.strength == 1.0  # recorded with the other sampling settings
        out = np.asarray(Image.open(tmp_path / "out" / rec["file"]))
        orig = np.asarray(src.load_image())
        mask = np.asarray(Image.open(src.mask_file)) > 127
        assert out.shape == orig.shape
        assert np.array_equal(out[~mask], orig[~mask])  # background kept exactly
        assert not np.array_equal(out[mask], orig[mask])  # the object was repainted


def test_inpaint_without_paste_back_changes_background(models, tmp_path):
    cfg = _inpaint_cfg(models, paste_back=False)
    pipe = inpaint.load_inpaint_pipeline(cfg, None, "cpu")
    srcs = _sources(tmp_path, 2)
    table = inpaint.inpaint(pipe, inpaint.make_plan(srcs, 2, 0), ["<a>", "<b>"], cfg, tmp_path / "out")
    out = np.asarray(Image.open(tmp_path / "out" / table.file[0]))
    src = next(s for s in srcs if s.source_id == table.source_id[0])
    mask = np.asarray(Image.open(src.mask_file)) > 127
    assert not np.array_equal(out[~mask], np.asarray(src.load_image())[~mask])


def test_speed_options_change_kernels_not_the_unet_output(models):
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    pipe = inpaint.load_inpaint_pipeline(_inpaint_cfg(models, fuse_qkv=True, channels_last=True), None, "cpu")
    unet = pipe.unet
    procs = set(type(p) for p in unet.attn_processors.values())
    assert procs == {FusedAttnProcessor2_0}
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 8, 8, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        fast = unet(x, 10, text, return_dict=False)[0]
        plain = inpaint.speed_up(unet)  # both switched off again: the same module, plain kernels
        assert plain is unet and set(type(p) for p in unet.attn_processors.values()) == {AttnProcessor2_0}
        assert unet.conv_in.weight.is_contiguous()
        ref = unet(x, 10, text, return_dict=False)[0]
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    compiled = inpaint.speed_up(unet, compile=True)  # compilation itself is lazy (first call)
    assert compiled is not unet and compiled._orig_mod is unet
    with pytest.raises(ValueError, match="uncompiled"):
        inpaint.speed_up(compiled)


def test_attention_option_picks_the_sdpa_kernel(models, monkeypatch):
    import torch.nn.functional as F

    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    pipe = inpaint.load_inpaint_pipeline(_inpaint_cfg(models, attention="math", fuse_qkv=True), None, "cpu")
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 9, 8, 8, generator=g), torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        math_out = unet(x, 10, text, return_dict=False)[0]
        assert seen and set(seen) == {(False, True)}  # the math kernel alone, inside every attention call
        seen.clear()
        inpaint.speed_up(unet)  # auto: torch's own choice again
        auto_out = unet(x, 10, text, return_dict=False)[0]
    assert seen and set(seen) == {(True, True)} and torch.backends.cuda.flash_sdp_enabled()
    torch.testing.assert_close(math_out, auto_out, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="inpaint.attention: 'fast'"):
        inpaint.speed_up(unet, attention="fast")


def test_seeds_depend_on_sample_id_not_order(tmp_path):
    srcs = _sources(tmp_path)
    a = {p.sample_id: p.seed for p in inpaint.make_plan(srcs, 2, 0)}
    b = {p.sample_id: p.seed for p in inpaint.make_plan(srcs[::-1][:2], 2, 0)}
    assert all(a[k] == v for k, v in b.items()) and len(set(a.values())) == len(a)
    assert inpaint.sample_seed(1, "src0", 1) != inpaint.sample_seed(0, "src0", 1)


def test_inpaint_resumes_after_crash_without_duplicates(models, tmp_path):
    cfg = _inpaint_cfg(models)
    pipe = inpaint.load_inpaint_pipeline(cfg, None, "cpu")
    srcs = _sources(tmp_path, 5)
    plan = inpaint.make_plan(srcs, 2, 0)
    inpaint.inpaint(pipe, plan, ["<a>", "<b>"], cfg, tmp_path / "clean")

    written = []

    def crash_after_three(sample_id):
        written.append(sample_id)
        if len(written) == 3:  # mid-batch: the second chunk has one of its two samples
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        inpaint.inpaint(pipe, plan, ["<a>", "<b>"], cfg, tmp_path / "crashed", on_written=crash_after_three)
    assert len(list((tmp_path / "crashed" / "images").glob("*.json"))) == 3
    resumed = []
    table = inpaint.inpaint(pipe, plan, ["<a>", "<b>"], cfg, tmp_path / "crashed", on_written=resumed.append)
    assert len(resumed) == 2 and not set(resumed) & set(written)
    assert len(table) == 5 and table.sample_id.is_unique
    files = sorted(p.name for p in (tmp_path / "crashed" / "images").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "clean" / "images").iterdir())
    assert not any(name.endswith(".tmp") for name in files)
    for name in files:
        if name.endswith(".png"):
            a = np.asarray(Image.open(tmp_path / "clean" / "images" / name))
            b = np.asarray(Image.open(tmp_path / "crashed" / "images" / name))
            assert np.array_equal(a, b), name


# ------------------------------------------------------------------ pruning
class _RegionModel(torch.nn.Module):
    """Logit 1 = mean of the image's left half, logit 0 = 0: the model looks only at the left half."""

    def forward(self, x):
        left = x[:, :, :, : x.shape[3] // 2].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(left), 4 * left], 1)


def test_integrated_gradients_rho_sits_in_the_mask():
    from torchvision import transforms as T

    tf = T.Compose([T.ToTensor()])
    orig = Image.fromarray(np.full((8, 8, 3), 50, np.uint8))
    left = np.asarray(orig).copy()
    left[:, :4] = 200  # change where the model looks
    right = np.asarray(orig).copy()
    right[:, 4:] = 200  # change where it does not
    mask_left = Image.fromarray(np.pad(np.full((8, 4), 255, np.uint8), ((0, 0), (0, 4))))
    scores = prune.score_samples(
        _RegionModel(), [Image.fromarray(left), Image.fromarray(right)], [orig, orig], [mask_left, mask_left],
        source_class=[0, 0], ig_target=[1, 1], transform=tf, n_steps=20, internal_batch_size=7,
    )
    delta = 4 * (200 - 50) / 255  # f_1(edited) - f_1(original): the whole left half moved by 150/255
    assert scores[0]["rho_raw"] == pytest.approx(delta, rel=1e-3)
    assert scores[0]["attr_total"] == pytest.approx(scores[0]["logit_delta"], rel=1e-3)  # completeness
    assert scores[0]["rho_fraction"] == pytest.approx(1.0, rel=1e-3)
    assert scores[1]["rho_raw"] == pytest.approx(0.0, abs=1e-6)
    assert scores[0]["p_target"] > 0.5 and scores[0]["p"] == pytest.approx(1 - scores[0]["p_target"], abs=1e-6)


def test_pruning_rule_on_constructed_cases():
    table = pd.DataFrame({
        "sample_id": list("abcd"), "source_class": [0, 0, 1, 1],
        "p": [0.2, 0.9, 0.5, 0.5], "psi": [0.8, 0.8, 0.6, 0.6],
        "rho_raw": [0.5, 0.5, 0.3, 0.31], "attr_total": [1.0, 1.0, 0.3, 2.0],
        "rho_fraction": [0.5, 0.5, 1.0, 0.155],
    })
    out = prune.apply_rules(table, threshold=0.3, rho="raw")
    assert out.cond1_keep.tolist() == [True, False, True, True]
    assert out.cond2_keep.tolist() == [True, True, False, True]  # rho <= P is pruned (0.3 is pruned)
    assert out.keep.tolist() == [True, False, False, True]
    frac = prune.apply_rules(table, threshold=0.3, rho="fraction")
    assert frac.keep.tolist() == [True, False, True, False]
    only1 = prune.apply_rules(table, threshold=0.3, use_condition2=False)
    assert only1.keep.tolist() == [True, False, True, True]
    counts = prune.prune_counts(out)
    assert counts["kept"] == 2 and counts["per_source_class"]["1"]["kept_condition2"] == 1


def test_mask_follows_the_classifier_transform():
    from spuraug.data.transforms import waterbirds_transform

    m = np.zeros((300, 400), np.uint8)
    m[100:200, 150:250] = 255
    mk = prune.mask_in_model_space(Image.fromarray(m), waterbirds_transform(False))
    assert mk.shape == (224, 224)
    # squash 400x300 -> 256x256 (x 256/400 across, x 256/300 down), centre-crop 224
    sx, sy = 256 / 400, 256 / 300
    o = (256 - 224) // 2
    assert mk[int(150 * sy) - o, int(200 * sx) - o] and not mk[5, 5]
    assert abs(float(mk.float().mean()) - (100 * sx) * (100 * sy) / 224**2) < 0.02


# ------------------------------------------------------------------ retraining pieces
def test_ddb_objective_weights_generated_classes():
    from spuraug.ddb.retrain import DDBObjective
    from spuraug.engine import Batch

    losses = torch.tensor([1.0, 3.0, 2.0, 4.0, 8.0])
    y = torch.tensor([0, 1, 0, 1, 1])
    index = torch.tensor([0, 5, 10, 11, 12])  # n_train = 10: the last three are generated
    batch = Batch(x=torch.zeros(5), y=y, a=torch.full((5,), -1), index=index, source=torch.zeros(5, dtype=torch.long))
    loss = DDBObjective(10, [6.0, 10.0])(losses, batch)
    assert loss.item() == pytest.approx((1 + 3) / 2 + 6 * 2 + 10 * (4 + 8) / 2)
    no_gen = DDBObjective(100, [6.0, 10.0])(losses, batch)
    assert no_gen.item() == pytest.approx(losses.mean().item())


def test_ddb_gamma_keyed_by_source_class():
    """gamma_by source (public train.py): gamma[c] weighs the edits made FROM class-c sources,
    whatever label they are trained with; gamma_by label moves the weights to the other set."""
    from spuraug.ddb.config import ddb_config
    from spuraug.ddb.retrain import DDBObjective
    from spuraug.engine import Batch

    # n_train = 2; generated 0 and 1 were made from class-0 sources and labelled with the new
    # class 1; generated 2 from a class-1 source, labelled 0 (inpaint.label: new)
    losses = torch.tensor([1.0, 1.0, 2.0, 4.0, 8.0])
    y = torch.tensor([0, 1, 1, 1, 0])
    index = torch.tensor([0, 1, 2, 3, 4])
    batch = Batch(x=torch.zeros(5), y=y, a=torch.full((5,), -1), index=index, source=torch.zeros(5, dtype=torch.long))
    source_class = [0, 0, 1]
    by_source = DDBObjective(2, [6.0, 10.0], keys=source_class)(losses, batch)
    assert by_source.item() == pytest.approx(1.0 + 6 * (2 + 4) / 2 + 10 * 8)
    by_label = DDBObjective(2, [6.0, 10.0])(losses, batch)
    assert by_label.item() == pytest.approx(1.0 + 10 * (2 + 4) / 2 + 6 * 8)
    assert ddb_config().retrain.gamma_by == "source"
    with pytest.raises(ValueError, match="gamma_by"):
        ddb_config({"retrain": {"gamma_by": "target"}})


def test_reinit_head_is_xavier_with_zero_bias():
    from spuraug.ddb.retrain import reinit_head
    from spuraug.models import ToyCNN

    m = ToyCNN(2)
    torch.nn.init.constant_(m.fc.bias, 3.0)
    reinit_head(m, 0)
    bound = (6 / (m.fc.in_features + 2)) ** 0.5
    assert torch.all(m.fc.bias == 0) and m.fc.weight.abs().max() <= bound
    assert m.fc.weight.std() > bound / 4


# ------------------------------------------------------------------ config and errors
def test_config_rejects_unknown_options_and_bad_choices():
    assert ddb_config({"prune": {"threshold": 0.5}}).prune.threshold == 0.5
    with pytest.raises(ValueError, match=r"ddb\.prune\.treshold"):
        ddb_config({"prune": {"treshold": 0.5}})
    with pytest.raises(ValueError, match=r"ddb\.inpaint\.label"):
        ddb_config({"inpaint": {"label": "old"}})
    with pytest.raises(ValueError, match="unknown DDB stage"):
        ddb_config({"inpainting": {}})


def test_missing_model_names_the_id_and_the_fix(tmp_path):
    with pytest.raises(hub.ModelMissingError) as e:
        inpaint.load_inpaint_pipeline(InpaintConfig(), None, "cpu")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-inpainting" in msg and "hf download" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(hub.ModelMissingError, match="grounding-dino-base"):
        segment.build_segmenter(SegmentConfig(), "cpu")
    with pytest.raises(hub.ModelMissingError, match=str(tmp_path)):
        invert.load_sd_components(str(tmp_path))


def test_toy_zoo_ids_load_through_the_zoo_folder(models, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(models["sd9"], tmp_path / "toy-sd-inpainting")
    shutil.copytree(models["clipseg"], tmp_path / "toy-clipseg")
    monkeypatch.setenv("SPURAUG_TOY_ZOO", str(tmp_path))
    assert hub.resolve("spuraug/toy-sd-inpainting") == str(tmp_path / "toy-sd-inpainting")
    assert hub.resolve("stabilityai/stable-diffusion-2-base") == "stabilityai/stable-diffusion-2-base"
    pipe = inpaint.load_inpaint_pipeline(InpaintConfig(model="spuraug/toy-sd-inpainting"), None, "cpu")
    assert pipe.unet.config.in_channels == 9
    comps = invert.load_sd_components("spuraug/toy-sd-inpainting")  # one pipeline folder for both stages
    assert comps.unet.config.in_channels == 9
    seg = segment.build_segmenter(SegmentConfig(backend="clipseg", clipseg="spuraug/toy-clipseg"), "cpu")
    assert len(seg(_images(1), "digit")) == 1
    monkeypatch.setenv("SPURAUG_TOY_ZOO", str(tmp_path / "nowhere"))
    with pytest.raises(hub.ModelMissingError, match="make toy-zoo"):
        hub.resolve("spuraug/toy-clipseg")


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_inversion_supports_every_prediction_type(models, tmp_path, prediction_type):
    comps = invert.load_sd_components(str(models["sd9"]))
    comps.noise_scheduler.register_to_config(prediction_type=prediction_type)  # the toy zoo predicts x0
    ids = invert.add_tokens(comps, ["<c0>"], "digit")
    init = comps.text_encoder.get_input_embeddings().weight[ids[0]].clone()
    cfg = InvertConfig(resolution=16, max_train_steps=2, gradient_accumulation_steps=1, initializer_token="digit",
                       noun="digit", learning_rate=5e-2)
    vec = invert.train_token(comps, _images(2), "<c0>", ids[0], cfg, tmp_path)
    assert torch.isfinite(vec).all() and not torch.allclose(vec, init)


def test_box_mode_repaints_the_mask_bounding_box(models, tmp_path):
    cfg = _inpaint_cfg(models, mask_mode="box")
    pipe = inpaint.load_inpaint_pipeline(cfg, None, "cpu")
    srcs = _sources(tmp_path, 2)
    table = inpaint.inpaint(pipe, inpaint.make_plan(srcs, 2, 0), ["<a>", "<b>"], cfg, tmp_path / "out")
    for rec in table.to_dict("records"):
        src = next(s for s in srcs if s.source_id == rec["source_id"])
        region = np.asarray(inpaint.edited_region(src.mask_file, cfg)) > 127
        ys, xs = np.nonzero(np.asarray(Image.open(src.mask_file)) > 127)
        assert region.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1) and region[ys.min(), xs.min()]
        out = np.asarray(Image.open(tmp_path / "out" / rec["file"]))
        assert np.array_equal(out[~region], np.asarray(src.load_image())[~region])


def test_clean_mask_keeps_the_largest_part_without_holes():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5:8, 5:8] = False  # a hole
    m[15, 15] = m[0, 19] = True  # speckles
    out = segment.clean_mask(m)
    assert out[2:12, 2:12].all() and out.sum() == 100


def test_weights_changed_names_the_stage_whose_model_weights_changed(tmp_path):
    """A finished DDB run whose model folder was overwritten (a retrained toy zoo) is stale;
    the check reads the stage folders under the runs folder it is given (a copy checks its
    own copies) and cannot tell, so says nothing, when a stage folder is gone."""
    from spuraug.ddb.pipeline import artifact_root, weights_changed

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"v1")
    cfg = ddb_config({"invert": {"model": str(model)}, "inpaint": {"model": str(model)},
                      "segment": {"backend": "clipseg", "clipseg": str(model)}})
    runs = tmp_path / "runs"
    root = artifact_root(runs, "toy")
    stages = {}
    for name, sub in (("invert", "invert-a"), ("segment", "seed0/segment-b"), ("inpaint", "seed0/inpaint-c")):
        (root / sub).mkdir(parents=True)
        w = hub.fingerprint(str(model))
        (root / sub / "key.json").write_text(json.dumps({"weights": [w] if name == "segment" else w}))
        stages[name] = {"path": f"elsewhere/toy/ddb_artifacts/{sub}"}  # recorded from another runs folder
    assert weights_changed(cfg, stages, runs, "toy") is None
    (model / "weights.bin").write_bytes(b"v2")
    reason = weights_changed(cfg, stages, runs, "toy")
    assert reason is not None and "invert" in reason and hub.fingerprint(str(model)) in reason
    for sub in ("invert-a", "seed0/segment-b", "seed0/inpaint-c"):
        (root / sub / "key.json").unlink()
    assert weights_changed(cfg, stages, runs, "toy") is None


def test_rho_target_summary_matches_the_reference_keep_share():
    """bench/studies/ddb_rho_targets.py: the P for target "new" keeps the share of edits that target
    "source" with the reference's P = 0.3 keeps (quantile matching on the same edits)."""
    import pandas as pd

    from bench.studies.ddb_rho_targets import summarise

    ids = [str(i) for i in range(10)]
    src = pd.DataFrame({"sample_id": ids, "rho_raw": [-1.0, -0.5, 0.0, 0.1, 0.2, 0.35, 0.4, 0.5, 0.6, 0.7]})
    new = pd.DataFrame({"sample_id": ids[::-1], "rho_raw": [float(v) for v in range(10, 0, -1)]})  # 10 .. 1
    res = summarise({"source": src, "new": new})
    assert res["reference_keep_share"] == pytest.approx(0.5)  # 5 of 10 above 0.3
    p = res["matched_P_for_target_new"]
    assert ((new["rho_raw"] > p).mean()) == pytest.approx(0.5)
    assert res["quantiles"]["source"]["share_above_0.3"] == pytest.approx(0.5)
