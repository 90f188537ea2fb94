"""The toy's oracle generator (``ddb.inpaint.backend: oracle``, spuraug/ddb/oracle_edit.py):
the edit, its determinism, the oracle/learned mix, the config checks, and a tiny DDB run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models as tiny
import yaml
from PIL import Image

from spuraug.config import ConfigError, load_config
from spuraug.data.toy import ToyConfig, ToyDataset
from spuraug.ddb.config import InpaintConfig, ddb_config
from spuraug.ddb.inpaint import Plan, Source, edited_region, region_from_mask, sample_seed
from spuraug.ddb.oracle_edit import fill_from_surroundings, oracle_edit, oracle_share, split_plan
from spuraug.models import ToyCNN
from spuraug.toyworld.oracle import ORACLE_MODEL_ID, load_oracle, predict
from spuraug.toyworld.render import BACKGROUNDS, digit_instances

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CFG = ToyConfig(n_train=40, n_val=8, n_test=8)


@pytest.fixture(scope="module")
def train() -> ToyDataset:
    return ToyDataset("train", CFG)


def _edit(train: ToyDataset, i: int, seed: int, mode: str = "box", dilation: int = 2):
    m = train.mask(i)
    region = np.asarray(region_from_mask(m, (64, 64), dilation, mode)) > 127
    target = CFG.digits[1 - int(train.y[i])]
    out, info = oracle_edit(train.images[i], m, region, target, seed)
    return out, info, region, target


def test_oracle_edit_draws_the_target_digit_and_keeps_everything_outside_the_region(train):
    oracle = load_oracle(ORACLE_MODEL_ID)
    outs, targets, backgrounds = [], [], []
    for i in range(len(train)):
        out, info, region, target = _edit(train, i, sample_seed(0, str(i), 1 - int(train.y[i])))
        assert (out[~region] == train.images[i][~region]).all(), i  # not one pixel outside the region
        assert (out[region] != train.images[i][region]).any(), i
        assert info["oracle_digit"] == target
        assert info["oracle_instance"] in digit_instances(target, "world")  # never a benchmark instance
        assert info["oracle_instance"] not in digit_instances(target, "benchmark")
        outs.append(out)
        targets.append(target)
        backgrounds.append(CFG.backgrounds[int(train.a[i])])
    digits, bgs = predict(oracle, np.stack(outs))
    # The zoo's oracle reads the sources' own digits at about 96%; the edits as the target digit
    # nearly as often, and the source's background everywhere.
    assert (digits == np.array(targets)).mean() >= 0.8
    assert (np.array([BACKGROUNDS[b] for b in bgs]) == np.array(backgrounds)).mean() >= 0.95


def test_oracle_edit_is_a_function_of_its_seed(train):
    a, info_a, _, _ = _edit(train, 0, 123)
    b, info_b, _, _ = _edit(train, 0, 123)
    c, info_c, _, _ = _edit(train, 0, 124)
    assert (a == b).all() and info_a == info_b
    assert (a != c).any()


def test_oracle_edit_fits_in_a_mask_shaped_region(train):
    """mask_mode: mask repaints the old silhouette only: the digit is drawn inside it."""
    out, _, region, _ = _edit(train, 1, 7, mode="mask", dilation=0)
    assert (out[~region] == train.images[1][~region]).all()


def test_fill_reproduces_a_smooth_background_and_leaves_the_rest():
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.stack([4.0 * yy, 4.0 * xx, np.full_like(yy, 100.0)], -1).astype(np.float32)
    hole = np.zeros((32, 32), bool)
    hole[10:20, 12:22] = True
    filled = fill_from_surroundings(image, hole)
    assert (filled[~hole] == image[~hole]).all()
    assert np.abs(filled[hole] - image[hole]).max() < 12  # a linear ramp is close to harmonic
    assert np.abs(filled[hole] - image[hole]).mean() < 4
    with pytest.raises(ValueError, match="whole image"):
        fill_from_surroundings(image, np.ones((32, 32), bool))


def _plan(n: int) -> list[Plan]:
    src = [Source(f"s{i}", i, i % 2, i, lambda: None, Path("m.png")) for i in range(n)]
    return [Plan(f"s{i}__to{1 - s.source_class}", s, 1 - s.source_class, 0) for i, s in enumerate(src)]


def test_mix_picks_the_expected_share_deterministically_and_nested():
    plan = _plan(2000)
    chosen = {}
    for mix in (0.0, 0.25, 0.5, 0.75, 1.0):
        oracle, learned = split_plan(plan, mix, base_seed=0)
        again, _ = split_plan(list(reversed(plan)), mix, base_seed=0)
        assert {p.sample_id for p in oracle} == {p.sample_id for p in again}  # a function of the id, not the order
        assert len(oracle) + len(learned) == len(plan)
        assert abs(len(oracle) / len(plan) - mix) < 0.04, mix
        chosen[mix] = {p.sample_id for p in oracle}
    assert chosen[0.0] == set() and len(chosen[1.0]) == len(plan)
    assert chosen[0.25] <= chosen[0.5] <= chosen[0.75]  # a larger mix adds oracle edits, never swaps
    other, _ = split_plan(plan, 0.5, base_seed=1)
    assert {p.sample_id for p in other} != chosen[0.5]
    assert 0 <= oracle_share(0, "s1", 0) < 1


def test_config_checks_name_the_field_and_value():
    cfg = ddb_config({"inpaint": {"backend": "oracle", "oracle_mix": 0.5}}, dataset="toy")
    assert cfg.inpaint.backend == "oracle" and cfg.inpaint.oracle_mix == 0.5
    assert ddb_config({"inpaint": {"backend": "oracle", "oracle_mix": 1}}).inpaint.oracle_mix == 1.0
    assert ddb_config({}).inpaint.backend == "diffusers"
    with pytest.raises(ValueError, match=r"ddb\.inpaint\.backend: expected one of diffusers, oracle, got 'oracel'"):
        ddb_config({"inpaint": {"backend": "oracel"}})
    with pytest.raises(ValueError, match=r"ddb\.inpaint\.oracle_mix: expected a number <= 1, got 1\.5"):
        ddb_config({"inpaint": {"backend": "oracle", "oracle_mix": 1.5}})
    with pytest.raises(ValueError, match=r"ddb\.inpaint\.oracle_mix: expected a number >= 0, got -0\.1"):
        ddb_config({"inpaint": {"backend": "oracle", "oracle_mix": -0.1}})
    with pytest.raises(ValueError, match=r"ddb\.inpaint\.oracle_mix: 0\.5 applies only with inpaint\.backend: oracle"):
        ddb_config({"inpaint": {"oracle_mix": 0.5}})
    with pytest.raises(ValueError, match=r"ddb\.inpaint\.backend: 'oracle' .* dataset 'waterbirds' is not"):
        ddb_config({"inpaint": {"backend": "oracle"}}, dataset="waterbirds")


def test_loading_a_config_rejects_the_oracle_on_a_real_dataset():
    with pytest.raises(ConfigError, match=r"inpaint\.backend: 'oracle'.*'waterbirds'"):
        load_config("waterbirds", "ddb", None, {"ddb.inpaint.backend": "oracle"})
    resolved = load_config("toy", "ddb", None, {"ddb.inpaint.backend": "oracle"})
    assert resolved["hparams"]["inpaint"]["backend"] == "oracle"


# ------------------------------------------------------------------ DDB end to end
def _config(root: Path, inpaint: dict, sd: Path | None) -> Path:
    cs = tiny.save_clipseg(root / "clipseg")
    model = str(sd) if sd is not None else str(root / "no-such-model")  # the oracle alone never loads it
    cfg = tiny.tiny_ddb_toy_config(model, str(cs), [6, 6], {"batch_size": 4, "mask_mode": "box", **inpaint})
    path = root / "toy_oracle.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ddb_with_oracle_edits_runs_without_inversion(tmp_path):
    from spuraug.runs import run_method

    config = _config(tmp_path, {"backend": "oracle"}, sd=None)
    runs = tmp_path / "runs"
    result = run_method("toy", "ddb", 0, runs_dir=runs, config_file=config, device="cpu", progress=False)
    assert 0 <= result["test"]["worst_group_acc"] <= 100
    info = result["ddb"]
    assert info["stages"]["invert"]["done"] is False and "inversion skipped" in info["stages"]["invert"]["skipped"]
    assert not list((runs / "toy" / "ddb_artifacts").glob("invert-*"))
    inp = Path(info["stages"]["inpaint"]["path"])
    manifest = json.loads((inp / "manifest.json").read_text())
    assert manifest["backend"] == "oracle" and "inversion skipped" in manifest["inversion"]
    assert manifest["counts"]["oracle"] == manifest["counts"]["generated"] == manifest["images"] == 12
    assert manifest["counts"]["learned"] == 0 and manifest["wall_time_s"] > 0
    samples = pd.read_csv(inp / "samples.csv")
    assert (samples.generator == "oracle").all() and (samples.label == samples.target_class).all()
    train = ToyDataset("train", ToyConfig(n_train=200, n_val=80, n_test=80))
    for r in samples.itertuples():  # the written file is the oracle's edit at the planned seed, in the stage's region
        assert r.oracle_digit == train.config.digits[r.target_class] and r.seed == sample_seed(0, r.source_id, r.target_class)
        region = np.asarray(edited_region(Path(r.mask), InpaintConfig(mask_mode="box"))) > 127
        want, _ = oracle_edit(train.images[r.source_position], train.mask(r.source_position), region,
                              r.oracle_digit, r.seed)
        with Image.open(inp / r.file) as im:
            assert (np.asarray(im.convert("RGB")) == want).all()
    table = pd.read_csv(Path(info["stages"]["prune"]["path"]) / "table.csv")
    assert info["n_generated_kept"] == int(table["keep"].sum()) and len(table) == 12


def test_ddb_oracle_mix_makes_both_kinds_of_edit(tmp_path):
    from spuraug.ddb.method import config_from_hparams
    from spuraug.ddb.pipeline import Stages

    sd = tiny.save_stable_diffusion(tmp_path / "sd9", in_channels=9, image_size=16)
    config = _config(tmp_path, {"backend": "oracle", "oracle_mix": 0.5}, sd=sd)
    raw = yaml.safe_load(config.read_text())
    clf = ToyCNN(2, width=8)
    stages = Stages("toy", 0, config_from_hparams(raw["ddb"], dataset="toy"), runs_dir=tmp_path / "runs",
                    dataset_options=raw["dataset_options"], classifier=clf, device="cpu")
    stages.run_all()
    inp = stages.inpaint_artifact()
    samples = pd.read_csv(inp.path / "samples.csv", dtype={"source_id": str})
    oracle, learned = split_plan(stages.plan(), 0.5, 0)
    assert set(samples.sample_id[samples.generator == "oracle"]) == {p.sample_id for p in oracle}
    assert set(samples.sample_id[samples.generator == "diffusers"]) == {p.sample_id for p in learned}
    assert len(oracle) > 0 and len(learned) > 0 and len(samples) == len(stages.plan())
    assert stages.invert_artifact().done  # learned edits need the tokens
    m = json.loads((inp.path / "manifest.json").read_text())
    assert m["counts"]["oracle"] == len(oracle) and m["counts"]["learned"] == len(learned)
    assert "inversion" not in m and m["tokens"]


def test_toy_oracle_study_splits_its_reading_by_generator(tmp_path):
    from bench.studies.ddb_toy_oracle import generators

    inp = tmp_path / "inpaint-x"
    (inp / "images").mkdir(parents=True)
    pd.DataFrame({"sample_id": ["a", "b", "c"], "generator": ["oracle", "diffusers", "oracle"]}).to_csv(
        inp / "samples.csv", index=False)
    old = tmp_path / "inpaint-old"  # written before the oracle: no generator column
    (old / "images").mkdir(parents=True)
    pd.DataFrame({"sample_id": ["d"]}).to_csv(old / "samples.csv", index=False)
    table = pd.DataFrame({"sample_id": ["c", "d", "a", "b"],
                          "generated_path": [str(inp / "images" / "c.png"), str(old / "images" / "d.png"),
                                             str(inp / "images" / "a.png"), str(inp / "images" / "b.png")]})
    assert list(generators(table)) == ["oracle", "diffusers", "oracle", "diffusers"]


def test_edit_quality_study_smoke(tmp_path):
    """bench.studies.ddb_edit_quality at tiny sizes on the toy zoo: two mixes share the ERM run
    and the stage folders, each mix's edits are made by the expected generators."""
    import json as _json

    from bench.studies.ddb_edit_quality import main

    out = tmp_path / "curve.json"
    rep = main(["--runs-dir", str(tmp_path / "runs"), "--seeds", "0", "--mixes", "0.5", "1", "--no-progress",
                "--quiet", "--out", str(out), "--set", "dataset_options.n_train=200", "dataset_options.n_val=80",
                "dataset_options.correlation=0.95", "model.pretrained=false",
                "dataset_options.n_test=80", "erm.epochs=1", "ddb.invert.max_train_steps=1", "ddb.invert.n_images=2",
                "ddb.sources.k=[3,3]", "ddb.prune.n_steps=2", "ddb.retrain.epochs=1"])
    assert _json.loads(out.read_text())["curve"] == rep["curve"]
    assert [p["oracle_mix"] for p in rep["curve"]] == [0.5, 1.0]
    half, full = rep["per_mix"]["0.5"]["0"], rep["per_mix"]["1"]["0"]
    assert set(full["composition_success"]["by_generator"]) == {"oracle"}
    assert full["composition_success"]["n"] == 6 and 0 <= full["composition_success"]["all"] <= 1
    gens = half["composition_success"]["by_generator"]
    assert sum(g["n"] for g in gens.values()) == 6 and set(gens) <= {"oracle", "diffusers"}
    assert half["erm"] == full["erm"]  # one ERM run, shared
    runs = tmp_path / "runs"
    assert len(list((runs / "toy" / "ddb_artifacts" / "seed0").glob("segment-*"))) == 1  # masks made once
    assert len(list((runs / "toy" / "ddb_artifacts" / "seed0").glob("inpaint-*"))) == 2
