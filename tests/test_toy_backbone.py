"""The pretrained toy backbone (spuraug.toyworld.backbone) and how a toy_cnn config loads it."""

import pytest
import torch

from spuraug.models import WeightsMissingError
from spuraug.runs import build_model_from_config
from spuraug.toyworld.backbone import BackboneRecipe, pretrain_backbone, save_backbone
from spuraug.toyworld.world import WorldConfig

TINY = BackboneRecipe(width=8, steps=4, batch=8, world=WorldConfig(n_per_kind=2, seed=0), checkpoint_every=2)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bb") / "backbone"
    model = pretrain_backbone(TINY, work=folder.parent / "work", progress=False)
    save_backbone(model, folder, TINY, heldout_digit_accuracy=0.0)
    return folder, model


def test_a_toy_cnn_config_loads_the_pretrained_body_and_a_new_head(tiny_backbone):
    folder, model = tiny_backbone
    net = build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": True, "weights": str(folder)}, 2)
    saved = model.state_dict()
    for k, v in net.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 2  # the benchmark's 2-way head, not the 10 digit kinds
        else:
            assert torch.equal(v, saved[k]), k
    scratch = build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": False, "weights": str(folder)}, 2)
    assert not torch.equal(scratch.body[0][0].weight, saved["body.0.0.weight"])


def test_pretraining_resumes_after_a_crash_to_the_same_weights(tmp_path, monkeypatch):
    straight = pretrain_backbone(TINY, work=tmp_path / "a", progress=False)
    calls = {"n": 0}
    real_step = torch.optim.SGD.step

    def crashing_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain_backbone(TINY, work=tmp_path / "b", progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 2
    resumed = pretrain_backbone(TINY, work=tmp_path / "b", progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_missing_or_unfit_backbones_are_named(tiny_backbone, tmp_path):
    folder, _ = tiny_backbone
    with pytest.raises(WeightsMissingError, match="model.weights is not set"):
        build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": True, "weights": None}, 2)
    with pytest.raises(WeightsMissingError, match="does not fit model toy_cnn width 16"):
        build_model_from_config({"name": "toy_cnn", "width": 16, "pretrained": True, "weights": str(folder)}, 2)
    with pytest.raises(WeightsMissingError, match="no such file"):
        build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": True,
                                 "weights": str(tmp_path / "nothing.safetensors")}, 2)
    bad = tmp_path / "other.pt"
    torch.save({"body.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsMissingError, match="not the body of a toy_cnn of width 8"):
        build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": True, "weights": str(bad)}, 2)


def test_the_config_hash_follows_the_toy_backbone_file(tiny_backbone, tmp_path):
    from spuraug.config import load_config

    folder, model = tiny_backbone
    over = {"model.pretrained": True, "model.weights": str(folder), "model.width": 8}
    h1 = load_config("toy", "erm", overrides=over)["config_hash"]
    other = tmp_path / "other"
    torch.manual_seed(1)
    save_backbone(type(model)(10, width=8), other, TINY)
    h2 = load_config("toy", "erm", overrides={**over, "model.weights": str(other)})["config_hash"]
    assert h1 != h2  # another backbone file: another run
    copy = tmp_path / "copy"
    save_backbone(model, copy, TINY, heldout_digit_accuracy=0.0)
    assert load_config("toy", "erm", overrides={**over, "model.weights": str(copy)})["config_hash"] == h1


def test_the_ablation_script_end_to_end_on_tiny_models(tmp_path):
    """bench.studies.toy_pretrained_erm: backbone, ERM and DDB from it, oracle report (tiny DDB models)."""
    import json

    import tiny_models as tiny

    from bench.studies.toy_pretrained_erm import main

    sd = tiny.save_stable_diffusion(tmp_path / "sd9", in_channels=9, image_size=16)
    cs = tiny.save_clipseg(tmp_path / "clipseg")
    out = tmp_path / "report.json"
    sets = ["model.width=8", "erm.epochs=1", f"ddb.invert.model={sd}", "ddb.invert.resolution=16",
            "ddb.invert.max_train_steps=2", "ddb.invert.n_images=3", "ddb.sources.k=[3,2]",
            f"ddb.segment.clipseg={cs}", "ddb.segment.clipseg_threshold=0.0", f"ddb.inpaint.model={sd}",
            "ddb.inpaint.resolution=16", "ddb.inpaint.num_inference_steps=3", "ddb.inpaint.batch_size=2",
            "ddb.prune.n_steps=4", "ddb.retrain.epochs=1"]
    rep = main(["--runs-dir", str(tmp_path / "runs"), "--seeds", "0", "--steps", "2", "--world-per-kind", "1",
                "--no-progress", "--out", str(out), "--set", *sets])
    assert json.loads(out.read_text())["seeds"]["0"] == rep["seeds"]["0"]
    bb = rep["backbone"]
    assert 0.0 <= bb["heldout_digit_accuracy"] <= 1.0 and rep["overrides"]["model.pretrained"] is True
    erm_cfg = json.loads((tmp_path / "runs" / "toy" / "erm" / "seed0" / "config.json").read_text())
    assert erm_cfg["model"]["weights"] == bb["folder"] and erm_cfg["model"]["pretrained"] is True
    r = rep["seeds"]["0"]
    assert r["edits"]["all"]["n"] == 5 and set(r["pruning_separability"]) <= {"0", "1"}
    assert 0 <= r["ddb"]["test_worst_group_acc"] <= 100 and 0 <= r["erm"]["test_worst_group_acc"] <= 100


def test_make_toy_zoo_builds_the_backbone_once_and_configs_load_it_by_its_zoo_id(tmp_path, monkeypatch):
    """build_backbone writes toy-backbone/ plus the manifest's "backbone" entry, skips an up-to-date
    one, and ``model.weights: spuraug/toy-backbone`` resolves to it (the toy's ImageNet path)."""
    import json

    from spuraug.toyworld.backbone import build_backbone

    zoo = tmp_path / "zoo"
    entry = build_backbone(zoo, TINY, work_dir=tmp_path / "work", progress=False)
    manifest = json.loads((zoo / "manifest.json").read_text())
    assert manifest["backbone"] == entry and manifest["models"]["spuraug/toy-backbone"] == "toy-backbone"
    assert set(entry["files"]) == {"toy-backbone/config.json", "toy-backbone/model.safetensors"}
    stamp = (zoo / "toy-backbone" / "model.safetensors").stat().st_mtime_ns
    assert build_backbone(zoo, TINY, work_dir=tmp_path / "work", progress=False) == entry
    assert (zoo / "toy-backbone" / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained

    monkeypatch.setenv("SPURAUG_TOY_ZOO", str(zoo))
    net = build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": True,
                                   "weights": "spuraug/toy-backbone"}, 2)
    from safetensors.torch import load_file

    saved = load_file(str(zoo / "toy-backbone" / "model.safetensors"))
    assert torch.equal(net.state_dict()["body.0.0.weight"], saved["body.0.0.weight"])

    monkeypatch.setenv("SPURAUG_TOY_ZOO", str(tmp_path / "empty"))
    with pytest.raises(WeightsMissingError, match="make toy-zoo"):
        build_model_from_config({"name": "toy_cnn", "width": 8, "pretrained": True,
                                 "weights": "spuraug/toy-backbone"}, 2)


def test_the_committed_zoo_holds_the_backbone_the_toy_config_starts_from():
    """spuraug/configs/toy.yaml starts every toy method from the zoo's backbone, whose files match
    the manifest (python -m spuraug.toyworld.zoo check)."""
    from spuraug.config import load_config
    from spuraug.toyworld.zoo.__main__ import main as zoo_main

    cfg = load_config("toy", "erm")["model"]
    assert cfg["pretrained"] is True and cfg["weights"] == "spuraug/toy-backbone"
    net = build_model_from_config(cfg, 2)
    assert net.fc.out_features == 2
    assert zoo_main(["check"]) == 0
