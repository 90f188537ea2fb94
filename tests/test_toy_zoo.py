"""The toy zoo: the recipe (retrained shortened, through the same code) and the committed models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spuraug.toyworld.recipe import CLIPSEG_DIR, ORACLE_DIR, PIPELINE_DIR, ZooRecipe, build_zoo
from spuraug.toyworld.zoo import ZOO_DIR


@pytest.fixture(scope="module")
def short_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    manifest = build_zoo(out, ZooRecipe.short(), work_dir=out / "work", progress=False, threads=1)
    return out, manifest


def _inpaint(pipe, images, masks, prompt, steps=2):
    return pipe(
        prompt=[prompt] * len(images),
        image=[Image.fromarray(a) for a in images],
        mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks],
        height=64, width=64, num_inference_steps=steps, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images


def test_short_recipe_builds_every_model_in_library_format(short_zoo, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    from spuraug.toyworld.oracle import load_oracle, predict

    out, manifest = short_zoo
    assert manifest["recipe"] == ZooRecipe.short().to_json()
    assert set(manifest["models"].values()) == {PIPELINE_DIR, CLIPSEG_DIR, ORACLE_DIR}
    assert any(k.endswith("diffusion_pytorch_model.safetensors") for k in manifest["files"])

    pipe = StableDiffusionInpaintPipeline.from_pretrained(out / PIPELINE_DIR, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9 and pipe.vae_scale_factor == 4
    imgs = np.full((2, 64, 64, 3), 128, np.uint8)
    masks = np.zeros((2, 64, 64), bool)
    masks[:, 16:48, 16:48] = True
    res = _inpaint(pipe, imgs, masks, "a photo of a eight digit")
    assert res.shape == (2, 64, 64, 3) and np.isfinite(res).all()

    # Textual inversion adds a token and a row to the text encoder.
    n_tok = len(pipe.tokenizer)
    emb = torch.randn(pipe.text_encoder.config.hidden_size)
    torch.save({"<class-1>": emb}, tmp_path / "learned_embeds.bin")
    pipe.load_textual_inversion(str(tmp_path / "learned_embeds.bin"))
    assert len(pipe.tokenizer) == n_tok + 1
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[-1], emb)
    res = _inpaint(pipe, imgs[:1], masks[:1], "a photo of a <class-1> digit")
    assert np.isfinite(res).all()

    seg = CLIPSegForImageSegmentation.from_pretrained(out / CLIPSEG_DIR)
    proc = CLIPSegProcessor.from_pretrained(out / CLIPSEG_DIR)
    enc = proc(text=["digit", "digit"], images=[Image.fromarray(a) for a in imgs], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = seg(**enc).logits
    assert logits.shape[-2:] == (64, 64)

    d, b = predict(load_oracle(out / ORACLE_DIR), imgs)
    assert d.shape == (2,) and b.shape == (2,)


def test_build_is_skipped_when_the_manifest_matches(short_zoo, monkeypatch):
    import spuraug.toyworld.recipe as recipe_mod

    out, manifest = short_zoo

    def boom(*a, **k):
        raise AssertionError("retrained although the manifest matches")

    monkeypatch.setattr(recipe_mod, "train_vae", boom)
    assert build_zoo(out, ZooRecipe.short(), work_dir=out / "work", progress=False, threads=1) == manifest
    # A changed file is noticed: the build runs again (and would retrain a missing stage).
    weights = out / PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"x")
    import shutil

    shutil.rmtree(out / "work" / "vae")
    with pytest.raises(AssertionError, match="retrained"):
        build_zoo(out, ZooRecipe.short(), work_dir=out / "work", progress=False, threads=1)


# ------------------------------------------------------------------ the committed zoo

committed = pytest.mark.skipif(not (ZOO_DIR / "manifest.json").exists(), reason="toy zoo not built (make toy-zoo)")


@committed
def test_committed_zoo_matches_its_manifest():
    from spuraug.toyworld.recipe import ZOO_PARTS, file_hashes

    manifest = json.loads((ZOO_DIR / "manifest.json").read_text())
    assert manifest["files"] == file_hashes(ZOO_DIR, ZOO_PARTS)
    total = sum((ZOO_DIR / k).stat().st_size for k in manifest["files"])
    assert total < 20 * 2**20


@committed
def test_committed_segmenter_beats_chance_on_world_images():
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    from spuraug.toyworld.quality import segmentation_iou
    from spuraug.toyworld.world import WorldConfig, generate_world
    from spuraug.toyworld.zoo import resolve_model_id

    world = generate_world(WorldConfig(n_per_kind=1, seed=123))  # a seed the zoo never saw
    imgs, true = world.images[:24], world.masks[:24]
    folder = resolve_model_id("spuraug/toy-clipseg")
    seg = CLIPSegForImageSegmentation.from_pretrained(folder).eval()
    proc = CLIPSegProcessor.from_pretrained(folder)
    enc = proc(text=["digit"] * len(imgs), images=[Image.fromarray(a) for a in imgs], return_tensors="pt",
               padding=True)
    with torch.no_grad():
        pred = (seg(**enc).logits.sigmoid() > 0.5).numpy()
    iou = segmentation_iou(pred, true)
    chance = segmentation_iou(np.ones_like(true), true)  # "everything is the object"
    assert iou > 0.5 and iou > 3 * chance


@committed
def test_committed_inpainter_keeps_pixels_outside_the_mask_and_oracle_reads_world():
    from spuraug.toyworld.check import dilate_masks, inpaint, load_inpainter
    from spuraug.toyworld.oracle import load_oracle, predict
    from spuraug.toyworld.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(n_per_kind=1, seed=123))
    oracle = load_oracle()
    d, b = predict(oracle, world.images)
    assert (d == world.digits).mean() > 0.8 and (b == world.backgrounds).mean() > 0.9

    imgs, masks = world.images[:8], dilate_masks(world.masks[:8], 3)
    pipe = load_inpainter()
    err = {}
    for g in (1.0, 3.0):  # no guidance; DDB's toy guidance (spuraug/configs/toy.yaml)
        out = inpaint(pipe, imgs, masks, ["a photo of a five digit"] * 8, steps=10, guidance_scale=g)
        e = np.abs(out.astype(np.float32) - imgs.astype(np.float32)).mean(axis=-1)
        err[g] = (e[~masks].mean(), e[masks].mean())
    # Without guidance only the VAE's error remains outside the mask (8.7 / 255 for the committed
    # zoo); guidance amplifies the word's spill over it (17.1 at 3, 25.9 at 5; docs/toyworld.md,
    # "Quality"); DDB pastes the source's pixels back there. Inside, a new object was painted.
    (outside1, inside1), (outside3, inside3) = err[1.0], err[3.0]
    assert outside1 < 12 and inside1 > 3 * outside1
    assert outside3 < 20 and inside3 > 2 * outside3


@committed
def test_committed_inpainter_at_low_strength_keeps_the_source_colour_and_draws_the_new_digit():
    """DDB's toy strength (spuraug/configs/toy.yaml ddb.inpaint.strength): starting from the
    source's noised latents keeps the source object's colour, which the learned tokens otherwise
    replace by one colour per class, while the asked-for digit is still drawn
    (docs/toyworld.md, "Inpainting strength")."""
    from spuraug.toyworld.check import box_masks, inpaint, load_inpainter, object_colors
    from spuraug.toyworld.oracle import load_oracle, predict
    from spuraug.toyworld.render import DIGIT_WORDS
    from spuraug.toyworld.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(n_per_kind=4, seed=123))
    world = world.subset(np.nonzero(np.isin(world.digits, (3, 8)))[0])
    other = np.where(world.digits == 3, 8, 3)
    regions = box_masks(world.masks, grow=2)  # DDB's toy mask_mode box, mask_dilation 2
    assert (object_colors(world.images, regions) == world.colors).mean() > 0.8  # the reading works
    pipe, oracle = load_inpainter(), load_oracle()
    prompts = [f"a photo of a {DIGIT_WORDS[d]} digit" for d in other]
    kept, drawn = {}, {}
    for strength in (1.0, 0.4):
        out = inpaint(pipe, world.images, regions, prompts, steps=20, guidance_scale=3.0, strength=strength)
        kept[strength] = (object_colors(out, regions) == world.colors).mean()
        drawn[strength] = (predict(oracle, out)[0] == other).mean()
    # 48 world images: colour kept 0.12 (chance 1/8) at 1.0, 0.48 at 0.4; the other digit read
    # in 0.85 and 0.90 of the edits.
    assert kept[0.4] > 0.3 and kept[0.4] > 2 * kept[1.0]
    assert drawn[0.4] > 0.7


def test_box_masks_cover_each_objects_grown_box():
    from spuraug.toyworld.check import box_masks

    m = np.zeros((2, 16, 16), bool)
    m[0, 4:6, 7:9] = True
    out = box_masks(m, grow=1)
    assert out[0].sum() == 4 * 4 and out[0, 3:7, 6:10].all()
    assert not out[1].any()  # no object, no box


@committed
def test_text_usage_probe_errors_grow_with_noise():
    from spuraug.toyworld.check import text_usage_gap

    rep = text_usage_gap(n=24, timesteps=(100, 900))["x0_error_on_object_cells"]
    low, high = rep["100"], rep["900"]
    assert 0 < low["true"] < high["true"] and 0 < low["other"] < high["other"]
    assert high["gap"] == pytest.approx(high["other"] - high["true"], abs=1e-4)


@committed
def test_committed_inpainter_uses_the_digit_word():
    """A wrong digit word must cost x0 error on the object's cells at high noise (the zoo of
    recipe dec614d54763 failed this: its gap was -0.0008 at t = 900 on 192 images)."""
    from spuraug.toyworld.check import text_usage_gap

    gap = text_usage_gap(n=96, timesteps=(900,))["x0_error_on_object_cells"]["900"]
    assert gap["gap"] > 0.005 and gap["gap"] / gap["true"] > 0.01


def test_vae_roundtrip_keeps_images_close_and_is_what_the_pipeline_decodes():
    from spuraug.data.toy import ToyConfig, ToyDataset
    from spuraug.toyworld.check import vae_roundtrip

    imgs = ToyDataset("test", ToyConfig()).images[:6]
    out = vae_roundtrip(imgs)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    mae = np.abs(out.astype(float) - imgs.astype(float)).mean()
    assert 0.5 < mae < 30, mae  # not the identity, not noise: the committed VAE's error is ~14/255
    assert np.array_equal(vae_roundtrip(imgs), out)  # deterministic (latent mean, no sampling)
    # another batch size changes the float kernels' rounding only
    assert np.abs(vae_roundtrip(imgs[:3]).astype(int) - out[:3].astype(int)).max() <= 2


def test_vae_probe_trains_a_variant_and_reads_round_trips(tmp_path):
    from bench.studies.toy_vae_probe import main

    rep = main(["--variant", "tiny", "vae_steps=2", "vae_channels=[8,16,16]", "--n-eval", "4",
                "--work", str(tmp_path), "--out", str(tmp_path / "r.json")])
    v = rep["variants"]["tiny"]
    assert v["changes"] == {"vae_steps": 2, "vae_channels": [8, 16, 16]} and v["n"] == 4
    assert (tmp_path / "tiny" / "config.json").is_file() and 0 <= v["digit_acc"] <= 1
    assert set(rep["committed"]["digit_acc_by_digit"]) == {"3", "8"} and (tmp_path / "r.json").is_file()
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        main(["--variant", "bad", "vae_steps", "--n-eval", "4", "--work", str(tmp_path)])


def test_zoo_cli_recipe_changes_are_checked_fields():
    from spuraug.toyworld.zoo.__main__ import with_fields

    r = with_fields(ZooRecipe(), ["vae_steps=2000", "vae_channels=[32,64,64]"])
    assert r.vae_steps == 2000 and r.vae_channels == (32, 64, 64) and r.unet_steps == ZooRecipe().unet_steps
    assert r.key() != ZooRecipe().key()  # another recipe: its own work folder and manifest
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        with_fields(ZooRecipe(), ["vae_stepz=1"])
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        with_fields(ZooRecipe(), ["vae_steps"])


def test_zoo_time_projection_fits_fixed_plus_per_step_and_runs_the_real_build(tmp_path):
    from bench.studies.toy_zoo_time import STEP_FIELDS, main, project, scaled
    from spuraug.toyworld.backbone import BackboneRecipe

    a = {"steps": {"vae": 10, "unet": 10}, "stage_s": {"vae": 3.0, "unet": 12.0}, "world_s": 1.0, "wall_s": 17.0}
    b = {"steps": {"vae": 20, "unet": 20}, "stage_s": {"vae": 5.0, "unet": 22.0}, "world_s": 1.0, "wall_s": 29.5}
    p = project({"vae": 1000, "unet": 100}, a, b)
    assert p["stages"]["vae"] == {"steps": 1000, "per_step_s": 0.2, "fixed_s": 1.0, "projected_s": 201.0}
    assert p["stages"]["unet"]["projected_s"] == 102.0 and p["other_s"] == 1.5
    assert p["projected_total_s"] == 201.0 + 102.0 + 1.0 + 1.5
    with pytest.raises(ValueError, match="more steps"):
        project({"vae": 1}, b, a)
    r = scaled(ZooRecipe(), 0.05)
    assert r.vae_steps == 100 and r.unet_steps == 120 and r.seg_steps == 15 and r.oracle_steps == 75
    rep = main(["--short", "--fraction", "0.5", "--threads", "1", "--quiet", "--out", str(tmp_path / "t.json")])
    # what `make toy-zoo` trains: the zoo's stages and the pretrained backbone
    assert set(rep["stages"]) == set(STEP_FIELDS) | {"backbone"} and rep["projected_total_s"] > 0
    assert rep["stages"]["backbone"]["steps"] == BackboneRecipe.short().steps
    assert rep["builds"]["b"]["steps"]["backbone"] == 2 * rep["builds"]["a"]["steps"]["backbone"]
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["recipe_key"] == ZooRecipe.short().key()
    assert written["backbone_recipe_key"] == BackboneRecipe.short().key()


def test_latent_probe_learns_to_name_digits_and_its_loss_stays_inside_the_mask():
    """The UNet's digit-naming loss: its probe learns from latents alone, the loss reaches the
    x0 prediction only inside the mask, and an empty caption contributes nothing."""
    from dataclasses import replace

    from spuraug.toyworld.recipe import digit_naming_loss, train_latent_probe

    g = torch.Generator().manual_seed(0)
    n = 256
    digits = np.arange(n) % 2
    z0 = 0.3 * torch.randn(n, 4, 16, 16, generator=g)
    z0[:, 0, 4:10, 4:10] += torch.from_numpy(np.where(digits == 1, 1.5, -1.5)).float().view(-1, 1, 1)
    probe = train_latent_probe(z0, torch.from_numpy(digits), replace(ZooRecipe.short(), probe_steps=150))
    assert not any(p.requires_grad for p in probe.parameters())
    acc = (probe(z0).argmax(1).numpy() == digits).mean()
    assert acc > 0.95, acc

    pred = torch.randn(8, 4, 16, 16, generator=g, requires_grad=True)
    m_lat = torch.zeros(8, 1, 16, 16)
    m_lat[:, :, 2:12, 2:12] = 1.0
    y = torch.from_numpy(digits[:8])
    named = torch.tensor([True] * 6 + [False] * 2)
    loss = digit_naming_loss(probe, pred, z0[:8], m_lat, y, named)
    loss.backward()
    grad = pred.grad
    assert grad[:, :, 2:12, 2:12][:6].abs().sum() > 0  # inside the mask, captioned samples
    assert torch.all(grad * (1 - m_lat) == 0)  # nothing outside the mask
    assert torch.all(grad[6:] == 0)  # nothing from empty captions
    none = digit_naming_loss(probe, pred, z0[:8], m_lat, y, torch.zeros(8, dtype=torch.bool))
    assert float(none) == 0.0


def test_digit_naming_loss_changes_the_trained_unet_and_needs_x0_prediction(short_zoo, tmp_path):
    from dataclasses import replace

    _, manifest = short_zoo
    base = ZooRecipe.short()
    other = replace(base, digit_loss_weight=0.0 if base.digit_loss_weight > 0 else 0.5, probe_steps=2)
    out = tmp_path / "zoo"
    m2 = build_zoo(out, other, work_dir=tmp_path / "work", progress=False, threads=1)
    unet = f"{PIPELINE_DIR}/unet/diffusion_pytorch_model.safetensors"
    vae = f"{PIPELINE_DIR}/vae/diffusion_pytorch_model.safetensors"
    assert m2["files"][vae] == manifest["files"][vae]  # the same VAE under both ...
    assert m2["files"][unet] != manifest["files"][unet]  # ... and the loss changed the UNet
    with pytest.raises(ValueError, match="prediction_type"):
        build_zoo(tmp_path / "eps", replace(base, digit_loss_weight=0.5, prediction_type="epsilon"),
                  work_dir=tmp_path / "work-eps", progress=False, threads=1)


def test_a_recipe_with_the_digit_loss_off_is_written_as_before_the_loss_existed():
    """The digit-naming loss's fields are left out of the recipe (and its key) while the loss is
    off, so a zoo trained before them is still recognised as up to date."""
    from dataclasses import replace

    from spuraug.toyworld.recipe import DIGIT_LOSS_FIELDS

    off = replace(ZooRecipe(), digit_loss_weight=0.0)
    on = replace(ZooRecipe(), digit_loss_weight=0.1)
    assert not set(DIGIT_LOSS_FIELDS) & set(off.to_json())
    assert set(DIGIT_LOSS_FIELDS) <= set(on.to_json())
    assert off.key() != on.key() != replace(on, digit_loss_max_t=700).key()
    assert off.key() == replace(off, probe_steps=5).key()  # no effect while off, no new key


def test_digit_loss_study_collects_each_variants_recipe_probes_and_ddb_point(tmp_path):
    from bench.studies.toy_digit_loss import collect

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    recipe = ZooRecipe(digit_loss_weight=0.2)
    (zoo / "manifest.json").write_text(json.dumps({"recipe_key": recipe.key(), "recipe": recipe.to_json(),
                                                   "stage_train_s": {"unet": 12.5}}))
    probe = {"composition_success": 0.5, "source_digit_rate": 0.1, "mae_outside_mask": 9.876}
    check = {"n": 64, "text_to_image_digit_rate": 0.25, "inpainting_benchmark_box": {
        "other_class_word": probe, "random_other_word": {**probe, "composition_success": 0.75},
        "initializer_word_digit": {"other_class_rate": 0.125}}}
    (tmp_path / "check.json").write_text(json.dumps(check))
    stat = {"mean": 1.0, "std": 0.0, "n": 3}
    ddb = {"overrides": {"ddb.inpaint.guidance_scale": 3}, "command": "x",
           "curve": [{"oracle_mix": 0.0, "composition_success_all": {**stat, "mean": 0.9},
                      "composition_success_kept": stat, "ddb_test_worst_group_acc": {**stat, "mean": 88.0},
                      "erm_test_worst_group_acc": stat}],
           "per_mix": {"0": {"0": {"ddb": {"test_worst_group_acc": 87.0, "val_worst_group_acc": 86.0}, "n_generated_kept": 590},
                             "1": {"ddb": {"test_worst_group_acc": 89.0, "val_worst_group_acc": 90.0}, "n_generated_kept": 597}}}}
    (tmp_path / "ddb.json").write_text(json.dumps(ddb))
    rows = collect([f"w02={zoo},{tmp_path / 'check.json'},{tmp_path / 'ddb.json'}", f"bare={zoo}"], ["bare=no probes"])
    row = rows["w02"]
    assert row["recipe_key"] == recipe.key() and row["digit_loss"]["digit_loss_weight"] == 0.2
    assert row["check_box_masks"]["other_class_word"] == 0.5 and row["check_box_masks"]["random_other_word"] == 0.75
    assert row["check_box_masks"]["mae_outside_mask"] == 9.88
    assert row["ddb_learned"]["composition_success_all"]["mean"] == 0.9
    assert row["ddb_learned"]["per_seed_worst_group"] == {"0": 87.0, "1": 89.0}
    assert row["ddb_learned"]["per_seed_val_worst_group"] == {"0": 86.0, "1": 90.0}
    assert row["ddb_learned"]["ddb_val_worst_group_acc"]["mean"] == 88.0  # what selection reads
    assert row["ddb_learned"]["n_generated_kept"] == {"0": 590, "1": 597}
    assert "check_box_masks" not in rows["bare"] and "ddb_learned" not in rows["bare"]
    assert rows["bare"]["note"] == "no probes" and "note" not in row
    with pytest.raises(SystemExit, match="NAME=ZOO_FOLDER"):
        collect([str(zoo)])


def test_a_zoo_assembled_from_cached_stages_names_no_local_path(short_zoo, tmp_path):
    """build_zoo reading every stage back from its work folder writes the same model configs as
    the run that trained them: none names the folder it was read from."""
    out, _ = short_zoo
    again = tmp_path / "zoo"
    build_zoo(again, ZooRecipe.short(), work_dir=out / "work", progress=False, threads=1)
    for part in ("unet", "vae", "text_encoder"):
        config = f"{PIPELINE_DIR}/{part}/config.json"
        assert "_name_or_path" not in json.loads((again / config).read_text()), config
        if part in ("unet", "vae"):
            assert (again / config).read_bytes() == (out / config).read_bytes(), config


def test_edit_colours_study_parses_variants_and_measures_hue_entropy():
    from bench.studies.toy_edit_colours import hue_entropy, parse_variant
    from spuraug.ddb.config import InpaintConfig

    assert hue_entropy(np.arange(8)) == pytest.approx(3.0)  # the world's uniform hues
    assert hue_entropy(np.zeros(10, np.int64)) == 0.0  # one colour for every edit
    assert hue_entropy(np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    base = InpaintConfig(strength=1.0, mask_mode="box", mask_dilation=2)
    name, cfg, sampler = parse_variant("lowmask=strength=0.4;mask_mode=mask;mask_dilation=4;sampler=ddpm", base)
    assert (name, cfg.strength, cfg.mask_mode, cfg.mask_dilation, sampler) == ("lowmask", 0.4, "mask", 4, "ddpm")
    assert parse_variant("same=", base)[1:] == (base, "default")
    with pytest.raises(SystemExit, match="not one of"):
        parse_variant("x=sampler=euler_a", base)
    with pytest.raises(SystemExit, match="not FIELD=VALUE"):
        parse_variant("x=strenght=0.4", base)
    with pytest.raises(SystemExit, match="expected NAME="):
        parse_variant("no_equals_sign", base)
