"""Run configs (spuraug/configs/*.yaml) and the ``spuraug train`` command's bad-input paths."""

import json

import pytest
import yaml

from spuraug.cli import main
from spuraug.config import CONFIG_DIR, ConfigError, load_config, read_citations
from spuraug.methods import get_method

DATASETS = ("toy", "waterbirds", "celeba", "metashift")
MY_SECTIONS = ("dataset_options", "model", "eval", "loader", "erm", "groupdro", "jtt", "dfr")


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_config_loads_for_every_baseline_and_cites_every_value(dataset):
    path = CONFIG_DIR / f"{dataset}.yaml"
    text = path.read_text()
    data = yaml.safe_load(text)
    cites = read_citations(text)
    for section in MY_SECTIONS:
        values = data.get(section) or {}
        for key in values:
            assert cites.get(f"{section}.{key}"), f"{path}: {section}.{key} has no citation comment"
    for method in ("erm", "groupdro", "jtt", "dfr"):
        cfg = load_config(dataset, method)
        assert set(cfg["hparams"]) == set(get_method(method).params)
        assert cfg["sources"] and all(k.split(".")[0] in (*MY_SECTIONS, method) for k in cfg["sources"])
    assert load_config(dataset, "erm")["config_hash"] != load_config(dataset, "groupdro")["config_hash"]


def _write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, match",
    [
        ("erm:\n  lrr: 0.1\n", r"bad.yaml: erm.lrr: unknown key"),
        ("erm:\n  lr: fast\n", r"bad.yaml: erm.lr: expected float, got str 'fast'"),
        ("erm:\n  epochs: 2.5\n", r"bad.yaml: erm.epochs: expected int"),
        ("erm:\n  epochs: true\n", r"bad.yaml: erm.epochs: expected int, got bool"),
        ("groupdro:\n  group_balanced_sampling: 1\n", r"groupdro.group_balanced_sampling: expected bool"),
        ("erm:\n  selection: best\n", r"erm.selection: expected one of val_worst_group_acc"),
        ("model:\n  name: vit\n", r"model.name: expected one of"),
        ("optimiser:\n  lr: 1\n", r"bad.yaml: optimiser: unknown section"),
        ("dataset_options:\n  n_trian: 5\n", r"dataset_options.n_trian: unknown key"),
        ("dataset_options:\n  correlation: high\n", r"dataset_options.correlation: expected float"),
        ("erm: [1, 2]\n", r"bad.yaml: erm: expected a mapping"),
        ("erm:\n  lr: [\n", r"bad.yaml: not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config("toy", "erm", _write(tmp_path, text))


def test_overrides_are_validated_and_applied():
    cfg = load_config("toy", "erm", overrides={"erm.lr": 0.5, "model": {"width": 4, "pretrained": False}})
    assert cfg["hparams"]["lr"] == 0.5 and cfg["model"]["width"] == 4 and cfg["model"]["name"] == "toy_cnn"
    assert cfg["config_hash"] != load_config("toy", "erm")["config_hash"]
    with pytest.raises(ConfigError, match=r"overrides.*erm.lr: expected float"):
        load_config("toy", "erm", overrides={"erm.lr": "x"})
    with pytest.raises(KeyError, match="unknown method 'sgd'"):
        load_config("toy", "sgd")


def test_cli_bad_inputs_exit_2_and_touch_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--dataset", "mnist", "--method", "erm", "--out", str(out)]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err
    assert main(["train", "--dataset", "toy", "--method", "magic", "--out", str(out)]) == 2
    assert "unknown method 'magic'; known methods: erm" in capsys.readouterr().err
    bad = _write(tmp_path, "erm:\n  lrr: 1\n")
    assert main(["train", "--dataset", "toy", "--method", "erm", "--config", str(bad), "--out", str(out)]) == 2
    assert "bad.yaml: erm.lrr: unknown key" in capsys.readouterr().err
    assert main(["train", "--dataset", "toy", "--method", "erm", "--set", "erm.epochs=two", "--out", str(out)]) == 2
    assert "erm.epochs: expected int" in capsys.readouterr().err
    assert not out.exists()
    # missing data: a real dataset in an empty folder
    rc = main(["train", "--dataset", "waterbirds", "--method", "erm", "--data-dir", str(tmp_path / "nodata"),
               "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "spuraug train: error:" in err and "Traceback" not in err
    assert not out.exists()  # the data is checked before a run folder is made


def test_cli_nan_loss_exit_2_keeps_the_finished_run(tmp_path, capsys, small_toy):
    out = tmp_path / "runs"
    tiny = ["--set", f"dataset_options={{n_train: {small_toy.n_train}, n_val: {small_toy.n_val}, "
            f"n_test: {small_toy.n_test}}}", "--set", "model.width=4", "--set", "model.pretrained=false", "--set", "erm.epochs=1"]
    assert main(["train", "--dataset", "toy", "--method", "erm", "--out", str(out), *tiny]) == 0
    done = out / "toy/erm/seed0"
    result = (done / "result.json").read_text()
    capsys.readouterr()
    assert main(["train", "--dataset", "toy", "--method", "erm", "--out", str(out), *tiny]) == 0
    assert "already done" in capsys.readouterr().out
    # the same seed with an exploding learning rate in another runs folder: NaN -> exit 2
    rc = main(["train", "--dataset", "toy", "--method", "erm", "--out", str(tmp_path / "nan"), *tiny,
               "--set", "erm.lr=1e30", "--set", "erm.momentum=0.0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "training loss became" in err and "Last good checkpoint" in err
    assert not (tmp_path / "nan/toy/erm/seed0/done").exists()
    assert (done / "result.json").read_text() == result and json.loads(result)["method"] == "erm"


# -- ranges, the one override parser, one-line errors (issue 20 item 5) ------------------------

@pytest.mark.parametrize(
    "text, match",
    [
        ("erm:\n  epochs: 0\n", r"bad.yaml: erm.epochs: expected a number >= 1, got 0"),
        ("erm:\n  batch_size: -2\n", r"erm.batch_size: expected a number >= 1, got -2"),
        ("erm:\n  lr: 0.0\n", r"erm.lr: expected a number > 0, got 0.0"),
        ("erm:\n  momentum: 1.5\n", r"erm.momentum: expected a number <= 1, got 1.5"),
        ("eval:\n  batch_size: 0\n", r"eval.batch_size: expected a number >= 1"),
        ("dataset_options:\n  correlation: 1.2\n", r"dataset_options.correlation: expected a number <= 1"),
        ("dataset_options:\n  n_train: 0\n", r"dataset_options.n_train: expected a number >= 1"),
        ("ddb:\n  inpaint:\n    num_inference_steps: -5\n", r"ddb.inpaint.num_inference_steps: expected a number >= 1"),
        ("ddb:\n  inpaint:\n    strength: 0.0\n", r"ddb.inpaint.strength: expected a number > 0"),
        ("ddb:\n  inpaint:\n    strength: 0.4\n    num_inference_steps: 2\n",
         r"ddb.inpaint.strength: 0.4 x num_inference_steps 2 leaves no denoising step"),
        ("ddb:\n  retrain:\n    epochs: 0\n", r"ddb.retrain.epochs: expected a number >= 1"),
        ("ddb:\n  sources:\n    k: [10, -1]\n", r"ddb.sources.k: expected numbers >= 0"),
        ("ddb:\n  segment:\n    box_threshold: 2\n", r"ddb.segment.box_threshold: expected a number <= 1"),
        ("", r"bad.yaml: config file is empty"),
        ("# only a comment\n", r"bad.yaml: config file is empty"),
    ],
)
def test_values_out_of_range_are_config_errors(tmp_path, text, match):
    method = "ddb" if text.startswith("ddb") else "erm"
    with pytest.raises(ConfigError, match=match):
        load_config("toy", method, _write(tmp_path, text))


def test_yaml_floats_in_exponent_form_are_floats(tmp_path):
    cfg = load_config("toy", "erm", _write(tmp_path, "model:\n  name: toy_cnn\nerm:\n  lr: 1e-4\n"))
    assert cfg["hparams"]["lr"] == 1e-4


def test_one_override_parser_round_trips_and_names_bad_items():
    from spuraug.config import format_overrides, parse_overrides

    nested = {"erm": {"lr": 1e-05, "epochs": 2, "keep_epochs": []}, "model": {"weights": None},
              "ddb": {"invert": {"tokens": ["<a>", "<b c>"], "noun": "bird: x"}}, "q": {"s": "3"}}
    assert parse_overrides(format_overrides(nested)) == nested
    assert parse_overrides(["inpaint.batch_size=4"], prefix="ddb.") == {"ddb": {"inpaint": {"batch_size": 4}}}
    for bad in (["erm.epochs"], ["=3"], ["erm..lr=1"]):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_overrides(bad)
    with pytest.raises(ConfigError, match=r"--set erm.lr=\[1,"):
        parse_overrides(["erm.lr=[1,"])


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--dataset", "toy", "--method", "erm", "--seed", "-1"], "seed -1: expected an integer >= 0"),
        (["train", "--dataset", "toy", "--method", "erm", "--seed", "0", "-2"], "seed -2"),
        (["train", "--dataset", "toy", "--method", "erm", "--set", "erm.epochs=-3"], "erm.epochs: expected a number >= 1"),
        (["train", "--dataset", "toy", "--method", "erm", "--set", "erm.epochs=0"], "erm.epochs: expected a number >= 1"),
        (["train", "--dataset", "toy", "--method", "erm", "--set", "erm.batch_size=0"], "erm.batch_size"),
        (["train", "--dataset", "toy", "--method", "jtt", "--set", "erm.batch_size=0"], "erm.batch_size"),
        (["train", "--dataset", "toy", "--method", "ddb", "--set", "ddb.inpaint.num_inference_steps=-5"],
         "ddb.inpaint.num_inference_steps: expected a number >= 1, got -5"),
        (["ddb", "inpaint", "--dataset", "toy", "--set", "inpaint.num_inference_steps=-5"],
         "ddb.inpaint.num_inference_steps: expected a number >= 1, got -5"),
        (["ddb", "run", "--dataset", "toy", "--set", "retrain.epochs=0"], "ddb.retrain.epochs"),
        (["ddb", "invert", "--dataset", "toy", "--seed", "-1"], "seed -1"),
        (["ddb", "invert", "--dataset", "toy", "--set", "inpaint=3"], "expected STAGE.OPTION=VALUE"),
        (["train", "--dataset", "toy", "--method", "erm", "--threads", "-1"], "--threads -1"),
        (["train", "--dataset", "toy", "--method", "erm", "--device", "gpu7"], "--device 'gpu7'"),
        (["ddb", "invert", "--dataset", "toy", "--device", "nonsense"], "--device 'nonsense'"),
    ],
)
def test_cli_bad_values_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "runs"
    assert main([*argv, "--out", str(out)]) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()  # no config.json (or anything) left to block the next run


@pytest.mark.parametrize("kind", ["empty", "binary", "folder"])
def test_cli_bad_config_file_one_line_exit_2(tmp_path, capsys, kind):
    path = tmp_path / "c.yaml"
    if kind == "empty":
        path.write_text("")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    else:
        path.mkdir()
    out = tmp_path / "runs"
    assert main(["train", "--dataset", "toy", "--method", "erm", "--config", str(path), "--out", str(out)]) == 2
    _one_line_error(capsys, str(path), {"empty": "is empty", "binary": "not a text", "folder": "is a folder"}[kind])
    assert not out.exists()


def test_cli_out_that_is_a_file_or_read_only_one_line_exit_2(tmp_path, capsys):
    import os

    f = tmp_path / "afile"
    f.write_text("keep me\n")
    for out in (f, f / "sub"):
        assert main(["train", "--dataset", "toy", "--method", "erm", "--out", str(out)]) == 2
        _one_line_error(capsys, f"--out {out}")
    assert main(["ddb", "invert", "--dataset", "toy", "--out", str(f)]) == 2
    _one_line_error(capsys, f"--out {f}")
    assert f.read_text() == "keep me\n"
    if os.geteuid() != 0:  # root writes to read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["train", "--dataset", "toy", "--method", "erm", "--out", str(ro / "runs")]) == 2
            _one_line_error(capsys, "read-only")
        finally:
            ro.chmod(0o700)


def test_python_m_spuraug_cli_errors_are_one_line(tmp_path):
    """Through `python -m spuraug.cli` the UserError a command module raises is the class
    main() catches (the module is not loaded twice as __main__ and spuraug.cli)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for argv in (["train", "--dataset", "mnist", "--method", "erm"],
                 ["train", "--dataset", "toy", "--method", "erm", "--seed", "-1"],
                 ["weights", "verify", "nosuchmodel"]):
        proc = subprocess.run([sys.executable, "-m", "spuraug.cli", *argv, "--out", str(tmp_path / "r")]
                              if argv[0] == "train" else [sys.executable, "-m", "spuraug.cli", *argv],
                              capture_output=True, text=True, env=env, timeout=300)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)


def test_erm_recipe_profiles_switch_every_value_and_overrides_still_win():
    """erm.recipe names one of the literature's ERM recipes (baselines/erm.py RECIPES)."""
    from baselines.erm import RECIPES

    ddb = load_config("waterbirds", "erm")["hparams"]
    assert ddb["recipe"] == "ddb2025" and ddb["weight_decay"] == 1e-3 and ddb["epochs"] == 100
    sag = load_config("waterbirds", "erm", overrides={"erm.recipe": "sagawa2020"})["hparams"]
    assert {k: sag[k] for k in RECIPES["sagawa2020"]["waterbirds"]} == RECIPES["sagawa2020"]["waterbirds"]
    assert sag["epochs"] == 300 and sag["weight_decay"] == 1e-4 and sag["augment"] is False
    celeba = load_config("celeba", "erm", overrides={"erm.recipe": "sagawa2020"})["hparams"]
    assert celeba["lr"] == 1e-4
    mixed = load_config("waterbirds", "erm", overrides={"erm.recipe": "sagawa2020", "erm.epochs": 2})["hparams"]
    assert mixed["epochs"] == 2 and mixed["weight_decay"] == 1e-4
    # methods that start from ERM see the same recipe
    assert load_config("waterbirds", "dfr", overrides={"erm.recipe": "kirichenko2023"})["erm"]["batch_size"] == 32
    with pytest.raises(ConfigError, match="no values for dataset 'metashift'"):
        load_config("metashift", "erm", overrides={"erm.recipe": "sagawa2020"})


def test_a_config_file_must_agree_with_the_erm_recipe_it_names(tmp_path):
    text = (CONFIG_DIR / "waterbirds.yaml").read_text().replace("  epochs: 100  #", "  epochs: 90  #", 1)
    bad = tmp_path / "waterbirds.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"erm\.epochs: 90 differs from recipe 'ddb2025'"):
        load_config("waterbirds", "erm", config_file=bad)
