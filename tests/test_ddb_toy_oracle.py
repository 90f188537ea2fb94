"""bench.studies.ddb_toy_oracle's object-colour reading on constructed images."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_object_colour_reads_the_saturated_object_in_the_mask_box(tmp_path):
    from bench.studies.ddb_toy_oracle import _colours_by_target, object_colour

    paths, masks = [], []
    for i, rgb in enumerate(((230, 40, 30), (40, 60, 220))):
        img = np.full((64, 64, 3), 128, np.uint8)  # grey, unsaturated background
        img[20:40, 24:32] = rgb  # a saturated stroke inside the box
        img[0:5, 0:5] = (0, 255, 0)  # a saturated patch outside the box: ignored
        mask = np.zeros((64, 64), np.uint8)
        mask[16:44, 20:36] = 255
        paths.append(str(tmp_path / f"g{i}.png"))
        masks.append(str(tmp_path / f"m{i}.png"))
        Image.fromarray(img).save(paths[-1])
        Image.fromarray(mask).save(masks[-1])
    images = [Image.open(p) for p in paths]
    assert [object_colour(im, m) for im, m in zip(images, masks)] == ["red", "blue"]
    rep = _colours_by_target(images + images[:1], masks + masks[:1], [0, 1, 0])
    assert rep == {"0": {"top": "red", "share": 1.0}, "1": {"top": "blue", "share": 1.0}}
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "empty.png")
    assert object_colour(images[0], str(tmp_path / "empty.png")) == "none"


def test_inversion_probe_runs_the_real_inversion_on_the_zoo(tmp_path):
    """bench.studies.toy_inversion_probe end to end at a few steps: tokens learned through
    train_token from the true masks, repaints read by the oracle, report written."""
    import json

    from bench.studies.toy_inversion_probe import main

    out = tmp_path / "probe.json"
    rep = main(["--loss-region", "object", "--steps", "2", "--n-eval", "4", "--out", str(out)])
    assert json.loads(out.read_text())["token"] == rep["token"]
    tok = rep["token"]
    assert tok["n"] == 4 and set(tok["target_digit_by_target_class"]) == {"0", "1"}
    assert 0.0 <= tok["target_digit"] <= 1.0 and tok["background_kept"] >= 0.5
    assert "true_word" not in rep and rep["args"]["loss_region"] == "object"


def test_roc_auc_and_pruning_separability_on_constructed_tables():
    import numpy as np
    import pandas as pd

    from bench.studies.ddb_toy_oracle import pruning_separability, roc_auc

    good = np.array([True, True, False, False])
    assert roc_auc(good, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0
    assert roc_auc(good, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert roc_auc(good, np.array([1.0, 1.0, 1.0, 1.0])) == 0.5  # ties count half
    assert roc_auc(good, np.array([3.0, 1.0, 2.0, 0.0])) == 0.75
    assert roc_auc(np.array([True, True]), np.array([1.0, 2.0])) is None
    # class 0: a low p marks the good edits (the rule keeps p < Psi); class 1: rho does not separate
    t = pd.DataFrame({"target_class": [0, 0, 0, 0, 1, 1, 1, 1],
                      "p": [0.1, 0.2, 0.9, 0.8, 0.5, 0.5, 0.5, 0.5],
                      "rho_raw": [1.0, 1.0, 1.0, 1.0, 0.1, 5.0, 5.0, 0.1]})
    sep = pruning_separability(t, np.array([1, 1, 0, 0, 1, 0, 1, 0], bool))
    assert sep["0"] == {"n": 4, "good": 2, "auc_p": 1.0, "auc_rho_raw": 0.5}
    assert sep["1"]["auc_p"] == 0.5 and sep["1"]["auc_rho_raw"] == 0.5
    assert "auc_p_target" not in sep["0"]  # a statistic the table lacks is left out


def test_unet_more_steps_probe_continues_the_committed_unet(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    from bench.studies.toy_unet_more_steps import main
    from spuraug.toyworld.zoo import resolve_model_id

    rep = main(["--steps", "2", "--work", str(tmp_path), "--n-eval", "4", "--out", str(tmp_path / "r.json")])
    assert rep["steps_more"] == 2 and (tmp_path / "r.json").is_file()
    for which in ("committed", "continued"):
        assert set(rep[which]) == {"true_word", "initializer_word"}
        assert all(v["n"] == 4 and 0 <= v["target_digit"] <= 1 for v in rep[which].values())
    before = UNet2DConditionModel.from_pretrained(f"{resolve_model_id('spuraug/toy-sd-inpainting')}/unet")
    after = UNet2DConditionModel.from_pretrained(tmp_path / "pipeline" / "unet")
    b, a = before.state_dict(), after.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in b)  # two more steps moved the (EMA) weights ...
    change = sum(float((a[k] - b[k]).norm()) for k in b) / sum(float(b[k].norm()) for k in b)
    assert change < 0.05, change  # ... a little: training resumed from the committed weights
    assert (tmp_path / "pipeline" / "vae" / "config.json").is_file()  # the rest of the pipeline is copied


def test_oracle_agreement_is_one_with_itself_and_less_with_a_perturbed_copy():
    import torch

    from bench.studies.toy_oracle_agreement import agreement
    from spuraug.data.toy import ToyConfig, ToyDataset
    from spuraug.toyworld.oracle import load_oracle

    images = ToyDataset("test", ToyConfig()).images[:64]
    a = load_oracle()
    assert agreement(a, load_oracle(), images) == {"n": 64, "digit": 1.0, "background": 1.0}
    b = load_oracle()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * p.std().clamp_min(1e-3))
    r = agreement(a, b, images)
    assert r["n"] == 64 and r["digit"] < 1.0
    truth = np.array([ToyConfig().digits[y] for y in ToyDataset("test", ToyConfig()).y[:64]])
    with_truth = agreement(a, a, images, truth=truth)
    assert with_truth["acc_a"] == with_truth["acc_b"] > 0.5 and agreement(a, b, images, truth)["acc_b"] < 1.0
