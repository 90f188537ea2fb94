"""The same `spuraug train` commands on the real datasets' on-disk formats (tiny fixtures)."""

import json

import pytest
import torch
from real_fixtures import make_celeba, make_metashift, make_waterbirds

from spuraug.cli import main
from spuraug.models import WeightsMissingError
from spuraug.runs import build_model_from_config, run_method

COUNTS = {"train": (6, 2, 2, 6), "val": (4, 4, 4, 4), "test": (2, 2, 2, 2)}
TINY = {"model": {"name": "toy_cnn", "width": 4, "pretrained": False}, "loader.num_workers": 0,
        "erm.epochs": 1, "erm.batch_size": 8, "groupdro.epochs": 1, "groupdro.batch_size": 8,
        "jtt.epochs": 1, "jtt.stage1_epochs": 1, "jtt.batch_size": 8, "jtt.stage1_batch_size": 8,
        "jtt.lambda_up": 2, "dfr.final_repeats": 2}


def test_every_baseline_runs_on_the_waterbirds_format(tmp_path):
    make_waterbirds(tmp_path / "data", COUNTS)
    for method in ("erm", "groupdro", "jtt", "dfr"):  # JTT and DFR reuse the ERM run
        r = run_method("waterbirds", method, 0, runs_dir=tmp_path / "runs", data_dir=str(tmp_path / "data"),
                       overrides=TINY, progress=False)
        assert r["dataset"] == "waterbirds" and r["method"] == method
        assert [g["n"] for g in r["test"]["groups"]] == [2, 2, 2, 2]
        assert r["config"]["model"]["name"] == "toy_cnn"
    assert sorted(p.name for p in (tmp_path / "runs/waterbirds").iterdir()) == ["dfr", "erm", "groupdro", "jtt"]


@pytest.mark.parametrize("dataset", ["celeba", "metashift"])
def test_erm_runs_on_celeba_and_metashift_formats(tmp_path, dataset):
    (make_celeba if dataset == "celeba" else make_metashift)(tmp_path / "data")
    r = run_method(dataset, "erm", 0, runs_dir=tmp_path / "runs", data_dir=str(tmp_path / "data"),
                   overrides=TINY, progress=False)
    assert r["selected_epoch"] == 1 and r["test"]["avg_acc"] is not None


def test_resnet50_loads_weights_from_a_file_and_says_what_is_missing(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    state = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = build_model_from_config({"name": "resnet50", "pretrained": True, "weights": str(path)}, 2)
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsMissingError, match="--weights"):
        build_model_from_config({"name": "resnet50", "pretrained": True, "weights": None}, 2)


@pytest.mark.slow
def test_cli_trains_resnet50_with_weights_file(tmp_path, capsys):
    """The real-dataset command unchanged: ResNet-50 at 224 px, --weights PATH (random weights)."""
    from torchvision.models import resnet50

    torch.save(resnet50(weights=None).state_dict(), tmp_path / "w.pth")
    make_waterbirds(tmp_path / "data", {"train": (1, 1, 1, 1), "val": (1, 1, 1, 1), "test": (1, 1, 1, 1)})
    args = ["train", "--dataset", "waterbirds", "--method", "erm", "--data-dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "runs"), "--weights", str(tmp_path / "w.pth"), "--set", "erm.epochs=1",
            "--set", "erm.batch_size=4", "--set", "loader.num_workers=0", "--set", "eval.batch_size=4"]
    assert main(args) == 0
    cfg = json.loads((tmp_path / "runs/waterbirds/erm/seed0/config.json").read_text())
    assert cfg["model"]["name"] == "resnet50" and cfg["model"]["weights"] == str(tmp_path / "w.pth")
    missing = ["train", "--dataset", "waterbirds", "--method", "erm", "--data-dir", str(tmp_path / "data"),
               "--out", str(tmp_path / "runs2"), "--weights", str(tmp_path / "nope.pth")]
    assert main(missing) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err
