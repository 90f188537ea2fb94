"""The toy world corpus, the project tokenizer, the quality functions and zoo resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spuraug.toyworld.render import BACKGROUNDS, COLOR_WORDS, DIGIT_WORDS, digit_instances
from spuraug.toyworld.world import WorldConfig, caption, caption_words, generate_world


def test_world_is_balanced_deterministic_and_masked():
    cfg = WorldConfig(n_per_kind=2, seed=3)
    w = generate_world(cfg)
    assert len(w) == 2 * 10 * len(BACKGROUNDS)
    counts = np.zeros((10, len(BACKGROUNDS)), int)
    np.add.at(counts, (w.digits, w.backgrounds), 1)
    assert (counts == 2).all()
    assert w.images.shape == (len(w), 64, 64, 3) and w.images.dtype == np.uint8
    assert w.masks.any(axis=(1, 2)).all() and not w.masks.all(axis=(1, 2)).any()
    generate_world.cache_clear()
    again = generate_world(cfg)
    assert np.array_equal(again.images, w.images) and np.array_equal(again.masks, w.masks)
    other = generate_world(WorldConfig(n_per_kind=2, seed=4))
    assert not np.array_equal(other.images, w.images)


def test_world_disk_cache_round_trips(tmp_path):
    cfg = WorldConfig(n_per_kind=1, seed=9)
    a = generate_world(cfg, cache_dir=str(tmp_path))
    assert list(tmp_path.glob("world-*.npz"))
    generate_world.cache_clear()
    b = generate_world(cfg, cache_dir=str(tmp_path))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.digits, b.digits)


def test_world_uses_instances_disjoint_from_the_benchmark():
    for d in range(10):
        assert not set(digit_instances(d, "world")) & set(digit_instances(d, "benchmark"))


def test_captions_name_digit_and_background():
    assert caption(8, "water") == "a photo of a eight digit on water"
    assert caption(3) == "a photo of a three digit"
    with pytest.raises(ValueError, match="background"):
        caption(3, "lava")
    assert caption(3, "water", color="red") == "a photo of a red three digit on water"
    assert caption(3, color="blue") == "a photo of a blue three digit"
    with pytest.raises(ValueError, match="colour 'mauve'"):
        caption(3, color="mauve")
    w = generate_world(WorldConfig(n_per_kind=1, seed=0))
    i = 5
    assert DIGIT_WORDS[w.digits[i]] in w.caption(i) and BACKGROUNDS[w.backgrounds[i]] in w.caption(i)
    assert COLOR_WORDS[w.colors[i]] in w.caption(i, color=True).split()
    assert not set(COLOR_WORDS) & set(w.caption(i).split())


def test_world_colour_words_name_the_objects_hue():
    from scipy import ndimage

    from spuraug.toyworld.render import color_index

    assert [color_index(c) for c in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1))] == [0, 3, 5, 7]
    w = generate_world(WorldConfig(n_per_kind=1, seed=2))
    assert set(np.unique(w.colors)) <= set(range(len(COLOR_WORDS))) and len(np.unique(w.colors)) >= 6
    # The hue of the object's inner pixels (no background blended in) gives the same word.
    read = []
    for img, m in zip(w.images, w.masks):
        inner = ndimage.binary_erosion(m, iterations=1)
        read.append(color_index(img[inner if inner.any() else m].mean(axis=0) / 255.0))
    assert (np.asarray(read) == w.colors).mean() >= 0.9


def test_captions_for_training_name_the_colour_at_the_recipe_share():
    from dataclasses import replace

    from spuraug.toyworld.recipe import ZooRecipe, _captions_for

    w = generate_world(WorldConfig(n_per_kind=2, seed=0))
    idx = np.arange(len(w))
    for share in (0.0, 1.0):
        caps = _captions_for(w, idx, np.random.default_rng(0), replace(ZooRecipe(), color_caption_share=share))
        named = [c for c in caps if c]
        assert named and len(named) < len(caps)  # caption dropout leaves some empty
        has_colour = [bool(set(c.split()) & set(COLOR_WORDS)) for c in named]
        assert all(has_colour) if share else not any(has_colour)
        for c, i in zip(caps, idx):
            if c and share:
                assert f"{COLOR_WORDS[w.colors[i]]} {DIGIT_WORDS[w.digits[i]]} digit" in c


def test_tokenizer_has_one_token_per_caption_word_and_accepts_new_tokens(tmp_path):
    from transformers import CLIPTokenizer

    from spuraug.toyworld.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(tmp_path / "files", caption_words())
    tok.save_pretrained(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    ids = tok("a photo of a eight digit on water").input_ids
    assert tok.convert_ids_to_tokens(ids)[1:-1] == [w + "</w>" for w in "a photo of a eight digit on water".split()]
    # A word outside the vocabulary still tokenizes (byte symbols), never to <unk>.
    assert tok.unk_token_id not in tok("a photo of a bird").input_ids[1:-1]
    n = len(tok)
    assert tok.add_tokens(["<class-0>"]) == 1 and len(tok) == n + 1
    assert n in tok("a photo of a <class-0> digit").input_ids


def test_segmentation_iou_counts_overlap():
    from spuraug.toyworld.quality import segmentation_iou

    true = np.zeros((2, 4, 4), bool)
    true[0, :2] = True  # 8 pixels
    true[1, :, :1] = True  # 4 pixels
    pred = np.zeros_like(true)
    pred[0, :1] = True  # 4 of 8 -> 0.5
    pred[1] = true[1]  # 1.0
    assert segmentation_iou(pred, true) == pytest.approx(0.75)
    assert segmentation_iou(pred.astype(np.uint8) * 255, true, per_image=True) == pytest.approx([0.5, 1.0])
    assert segmentation_iou(np.zeros((1, 3, 3)), np.zeros((1, 3, 3))) == 1.0
    with pytest.raises(ValueError, match="shape"):
        segmentation_iou(pred, true[:, :3])


class _FixedOracle(torch.nn.Module):
    """Reads every image as digit = its red channel mean // 20, background = green // 40."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        u8 = (x + 1) * 127.5
        d = (u8[:, 0].mean(dim=(1, 2)) // 20).long().clamp(0, 9)
        b = (u8[:, 1].mean(dim=(1, 2)) // 40).long().clamp(0, len(BACKGROUNDS) - 1)
        return torch.nn.functional.one_hot(d, 10).float(), torch.nn.functional.one_hot(b, len(BACKGROUNDS)).float()


def test_composition_success_needs_both_digit_and_background():
    from PIL import Image

    from spuraug.toyworld.quality import composition_report, composition_success

    imgs = np.zeros((4, 64, 64, 3), np.uint8)
    imgs[:, :, :, 0] = [[[8 * 20 + 5]], [[8 * 20 + 5]], [[3 * 20 + 5]], [[8 * 20 + 5]]]
    imgs[:, :, :, 1] = [[[1 * 40 + 5]], [[1 * 40 + 5]], [[1 * 40 + 5]], [[0 * 40 + 5]]]
    oracle = _FixedOracle()
    # image 0, 1: eight on water (index 1); image 2: wrong digit; image 3: wrong background
    assert composition_success(imgs, 8, "water", oracle=oracle) == pytest.approx(0.5)
    rep = composition_report([Image.fromarray(a) for a in imgs], "eight", 1, oracle=oracle)
    assert rep["digit_rate"] == pytest.approx(0.75) and rep["background_rate"] == pytest.approx(0.75)
    per_image = composition_success(imgs, [8, 8, 3, 8], ["water", "water", "water", "land"], oracle=oracle)
    assert per_image == pytest.approx(1.0)
    with pytest.raises(ValueError, match="background"):
        composition_success(imgs, 8, "lava", oracle=oracle)
    with pytest.raises(ValueError, match="2 digit values for 4 images"):
        composition_success(imgs, [8, 3], 1, oracle=oracle)


def test_resolve_model_id(tmp_path, monkeypatch):
    from spuraug.toyworld import zoo

    assert zoo.resolve_model_id("stabilityai/stable-diffusion-2-inpainting") == "stabilityai/stable-diffusion-2-inpainting"
    with pytest.raises(ValueError, match="unknown toy model id"):
        zoo.resolve_model_id("spuraug/toy-nothing")
    monkeypatch.setenv("SPURAUG_TOY_ZOO", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make toy-zoo"):
        zoo.resolve_model_id("spuraug/toy-clipseg")
    (tmp_path / "toy-clipseg").mkdir()
    (tmp_path / "toy-clipseg" / "config.json").write_text("{}")
    assert zoo.resolve_model_id("spuraug/toy-clipseg") == str(tmp_path / "toy-clipseg")


def test_variance_explained_and_box_crops_on_constructed_cases():
    from spuraug.toyworld.quality import box_crops, variance_explained

    rng = np.random.default_rng(0)
    keys = np.repeat(np.arange(4), 50)
    means = rng.normal(size=(4, 3))
    assert variance_explained(means[keys], keys) == pytest.approx(1.0)
    noise = rng.normal(size=(200, 3))
    assert variance_explained(noise, keys) < 0.05  # ~ groups / N for unrelated keys
    mixed = means[keys] + noise  # equal parts signal and noise -> about half
    assert 0.3 < variance_explained(mixed, keys) < 0.8
    # A box crop sees only the object's box, at any array resolution (here 1/4 of the mask's).
    masks = np.zeros((1, 16, 16), bool)
    masks[0, 8:16, 0:8] = True
    arr = np.zeros((1, 1, 4, 4), np.float32)
    arr[0, 0, 2:, :2] = 7.0
    crop = box_crops(arr, masks, size=4)
    assert crop.shape == (1, 1, 4, 4) and np.allclose(crop, 7.0)
    with pytest.raises(ValueError, match="mask 0 is empty"):
        box_crops(arr, np.zeros((1, 16, 16), bool))


def test_training_timesteps_are_uniform_at_power_one_and_tilted_to_high_noise_below():
    from spuraug.toyworld.recipe import sample_timesteps

    def draw(power):
        return sample_timesteps(20000, power, torch.Generator().manual_seed(0))

    uniform, tilted = draw(1.0), draw(0.4)
    for t in (uniform, tilted):
        assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    assert abs(float(uniform.float().mean()) - 499.5) < 10
    assert abs(float((uniform >= 700).float().mean()) - 0.3) < 0.02
    # P(999 u^0.4 >= 700) = 1 - 0.7^2.5 ~ 0.59: more than half the steps at high noise.
    assert abs(float((tilted >= 700).float().mean()) - (1 - 0.7 ** 2.5)) < 0.02
    assert torch.equal(draw(0.4), tilted)  # same generator seed, same timesteps


def test_unet_loss_weights_object_cells_and_fully_masked_samples():
    from dataclasses import replace

    from spuraug.toyworld.recipe import ZooRecipe, unet_loss

    rec = replace(ZooRecipe(), object_loss_weight=0.0, full_mask_loss_weight=1.0)
    target = torch.zeros(2, 4, 16, 16)
    pred = torch.zeros(2, 4, 16, 16)
    pred[0] = 1.0  # sample 0 is off by 1 everywhere, sample 1 is exact
    obj = torch.zeros(2, 16, 16, dtype=torch.bool)
    a = torch.full((2, 1, 1, 1), 0.5)
    partial, full0 = torch.tensor([False, False]), torch.tensor([True, False])
    assert float(unet_loss(pred, target, a, obj, partial, rec)) == pytest.approx(0.5)
    # Sample 0 fully masked at weight 0.1: its share of the batch loss shrinks tenfold.
    assert float(unet_loss(pred, target, a, obj, full0, replace(rec, full_mask_loss_weight=0.1))) == pytest.approx(0.05)
    assert float(unet_loss(pred, target, a, obj, partial, replace(rec, full_mask_loss_weight=0.1))) == pytest.approx(0.5)
    # Object weighting: an error only on object cells counts (1 + w) / mean(cell weight) times.
    pred2 = torch.zeros(2, 4, 16, 16)
    obj2 = torch.zeros(2, 16, 16, dtype=torch.bool)
    obj2[:, :4, :4] = True  # 16 of 256 cells
    pred2[:, :, :4, :4] = 1.0
    plain = float(unet_loss(pred2, target, a, obj2, partial, rec))
    weighted = float(unet_loss(pred2, target, a, obj2, partial, replace(rec, object_loss_weight=4.0)))
    assert plain == pytest.approx(16 / 256)
    assert weighted == pytest.approx(16 / 256 * 5 / (1 + 4 * 16 / 256))
