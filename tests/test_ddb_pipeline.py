"""DDB end to end on the small toy benchmark with tiny diffusion/segmentation models:
cached artifacts, manifests, the ddb method's run folder, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import tiny_models as tiny
import torch
import yaml

from bench.sweep import ddb_generation_throughput
from spuraug.records import RunConfig, RunResult, StageManifest

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddb_e2e")
    sd = tiny.save_stable_diffusion(root / "sd9", in_channels=9, image_size=16)
    cs = tiny.save_clipseg(root / "clipseg")
    cfg = tiny.tiny_ddb_toy_config(str(sd), str(cs), [3, 2])
    path = root / "toy_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ddb_method_writes_a_run_folder(config_file, tmp_path):
    from spuraug.runs import run_method

    runs = tmp_path / "runs"
    result = run_method("toy", "ddb", 0, runs_dir=runs, config_file=config_file, device="cpu", progress=False)
    d = runs / "toy" / "ddb" / "seed0"
    assert (d / "done").is_file() and (d / "checkpoints" / "best.pt").is_file()
    saved = json.loads((d / "result.json").read_text())
    assert saved["method"] == "ddb" and saved["annotation"] == {"train_group_labels": False, "val_group_labels": True}
    assert 0 <= saved["test"]["worst_group_acc"] <= 100
    # threshold -1e9 and Psi from sources: condition 2 keeps all, condition 1 decides
    info = result["ddb"]
    assert info["n_train"] == 200 and info["stages"]["inpaint"]["counts"]["generated"] == 5
    table = pd.read_csv(Path(info["stages"]["prune"]["path"]) / "table.csv")
    assert info["n_generated_kept"] == int(table["keep"].sum()) == int(table["cond1_keep"].sum())
    assert set(table.columns) >= {"p", "psi", "rho_raw", "rho_fraction", "cond1_keep", "cond2_keep", "keep",
                                  "generated_path", "source_path", "mask_path"}
    assert (table.label == table.target_class).all()
    lines = [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2]

    # artifacts: inversion keyed without the ERM seed, the rest under seed0, manifests complete
    art = runs / "toy" / "ddb_artifacts"
    inv = next(art.glob("invert-*"))
    m = json.loads((inv / "manifest.json").read_text())
    assert m["models"]["text_to_image"]["revision"].startswith("local:") and m["wall_time_s"] > 0
    assert (inv / "class0" / "learned_embeds.safetensors").is_file()
    for stage in ("sources", "segment", "inpaint", "prune"):
        (folder,) = list((art / "seed0").glob(f"{stage}-*"))
        m = json.loads((folder / "manifest.json").read_text())
        assert (folder / "done").is_file() and m["config_hash"] in folder.name and "counts" in m, stage
        sm = StageManifest.read(folder / "manifest.json")  # the schema every reader uses
        assert sm.stage == stage and sm.wall_time_s > 0
        if stage != "sources":  # each stage records the images it processed: 5 sources, 5 samples
            assert sm.images == 5 and sm.images_per_s == pytest.approx(5 / sm.wall_time_s, rel=0.05), stage
    rows = {r["stage"]: r for r in ddb_generation_throughput(runs, "toy")}
    assert set(rows) == {"segment", "inpaint", "prune"} and all(r["images"] == 5 for r in rows.values())
    assert RunResult.read(d / "result.json").extra["ddb"]["n_generated_kept"] == info["n_generated_kept"]
    assert RunConfig.read(d / "config.json").config_hash == saved["config_hash"]
    src = pd.read_csv(next((art / "seed0").glob("sources-*")) / "sources.csv")
    assert src.groupby("source_class").size().tolist() == [3, 2]
    assert (src.groupby("source_class")["loss"].apply(lambda s: s.is_monotonic_increasing)).all()


def test_retraining_follows_the_configured_learning_rate_schedule_and_head(config_file, tmp_path, monkeypatch):
    """retrain.lr_schedule: constant (public train.py) trains every epoch at retrain.lr; cosine
    anneals it per epoch like the other methods' lr_schedule. retrain.reinit_head: true
    re-initialises the ERM model's head (public train.py), false keeps it (the toy config).
    Both from the same generated edits."""
    import spuraug.ddb.method as ddb_method
    from spuraug.config import ConfigError, load_config
    from spuraug.runs import run_method

    reinits = []
    real_reinit = ddb_method.reinit_head
    monkeypatch.setattr(ddb_method, "reinit_head", lambda model, seed: (reinits.append(seed), real_reinit(model, seed)))
    lr = yaml.safe_load(config_file.read_text())["ddb"]["retrain"]["lr"]
    runs = tmp_path / "runs"
    rates, heads = {}, {}
    for schedule, reinit in (("constant", True), ("cosine", False)):
        reinits.clear()
        run_method("toy", "ddb", 0, runs_dir=runs, config_file=config_file, device="cpu", progress=False,
                   overrides={"ddb.retrain.lr_schedule": schedule, "ddb.retrain.reinit_head": reinit}, force=True)
        lines = [json.loads(s) for s in (runs / "toy" / "ddb" / "seed0" / "metrics.jsonl").read_text().splitlines()]
        rates[schedule], heads[reinit] = [ln.get("lr") for ln in lines], list(reinits)
    assert rates["constant"] == [None, None]  # no scheduler: the optimiser's one rate
    assert rates["cosine"] == pytest.approx([lr, lr / 2])  # epoch e of 2: lr * (1 + cos(pi (e-1) / 2)) / 2
    assert heads == {True: [0], False: []}
    assert len(list((runs / "toy" / "ddb_artifacts" / "seed0").glob("inpaint-*"))) == 1  # edits reused
    with pytest.raises(ConfigError, match="ddb.retrain.lr_schedule"):
        load_config("toy", "ddb", overrides={"ddb.retrain.lr_schedule": "step"})


def test_cli_prune_rethresholds_without_regenerating(config_file, tmp_path, capsys):
    from spuraug.cli import main

    out = str(tmp_path / "runs")
    common = ["--dataset", "toy", "--config", str(config_file), "--out", out, "--device", "cpu"]
    # sources need an ERM model: the CLI trains the (1-epoch) ERM run first
    assert main(["ddb", "prune", *common]) == 0
    first = json.loads(capsys.readouterr().out)
    images = sorted((tmp_path / "runs").rglob("inpaint-*/images/*.png"))
    stamps = [p.stat().st_mtime_ns for p in images]
    assert first["counts"]["generated"] == 5 == len(images)
    assert main(["ddb", "prune", *common, "--set", "prune.threshold=1.0e9"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["path"] == first["path"]  # same scores, new verdicts
    assert second["counts"]["kept"] == 0 and second["counts"]["kept_condition2"] == 0
    assert [p.stat().st_mtime_ns for p in images] == stamps


def test_cli_reports_missing_model_in_one_line(config_file, tmp_path, capsys):
    from spuraug.cli import main

    rc = main(["ddb", "invert", "--dataset", "toy", "--config", str(config_file), "--out", str(tmp_path),
               "--invert-model", "stabilityai/stable-diffusion-2-base"])
    err = capsys.readouterr().err
    assert rc == 2 and "stabilityai/stable-diffusion-2-base" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_rejects_unknown_option(config_file, tmp_path, capsys):
    from spuraug.cli import main

    rc = main(["ddb", "segment", "--dataset", "toy", "--config", str(config_file), "--out", str(tmp_path),
               "--set", "segment.treshold=0.5"])
    assert rc == 2 and "segment.treshold" in capsys.readouterr().err


def test_label_choice_switches_without_regenerating(config_file, tmp_path):
    from spuraug.ddb.method import config_from_hparams
    from spuraug.ddb.pipeline import Stages
    from spuraug.models import ToyCNN

    raw = yaml.safe_load(config_file.read_text())
    torch.manual_seed(0)
    clf = ToyCNN(2, width=8)

    def stages(label: str) -> Stages:
        ddb = {**raw["ddb"], "inpaint": {**raw["ddb"]["inpaint"], "label": label}}
        return Stages("toy", 0, config_from_hparams(ddb), runs_dir=tmp_path, device="cpu",
                      dataset_options=raw["dataset_options"], classifier=clf)

    new, source = stages("new"), stages("source")
    t_new = new.prune()
    assert new.inpaint_artifact().path == source.inpaint_artifact().path
    n_images = len(list(new.inpaint_artifact().path.glob("images/*.png")))
    t_src = source.prune()
    assert len(list(source.inpaint_artifact().path.glob("images/*.png"))) == n_images == len(t_new)
    assert (t_new.label == t_new.target_class).all() and (t_src.label == t_src.source_class).all()
    assert (t_new.label != t_src.label).all()


def test_stage_keys_change_when_the_weights_behind_a_model_id_change(config_file, tmp_path):
    """A retrained model saved under the same id or folder must not reuse cached stages."""
    import shutil

    from spuraug.ddb import hub
    from spuraug.ddb.method import config_from_hparams
    from spuraug.ddb.pipeline import Stages
    from spuraug.models import ToyCNN

    raw = yaml.safe_load(config_file.read_text())
    sd = tmp_path / "sd_copy"
    shutil.copytree(raw["ddb"]["inpaint"]["model"], sd)
    ddb = {**raw["ddb"], "inpaint": {**raw["ddb"]["inpaint"], "model": str(sd)},
           "invert": {**raw["ddb"]["invert"], "model": str(sd)}}
    clf = ToyCNN(2, width=8)

    def keys() -> tuple[str, str]:
        st = Stages("toy", 0, config_from_hparams(ddb), runs_dir=tmp_path / "runs", device="cpu",
                    dataset_options=raw["dataset_options"], classifier=clf)
        return st.invert_artifact().path.name, st.inpaint_artifact().path.name

    before = keys()
    assert keys() == before  # stable for the same weights
    unet = next((sd / "unet").glob("*.safetensors"))
    blob = bytearray(unet.read_bytes())
    blob[-1] ^= 0xFF  # same size, other weights
    unet.write_bytes(bytes(blob))
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]
    assert hub.fingerprint(str(sd)).startswith("sha256:")


def test_object_region_inversion_segments_its_images_and_keys_on_the_segmenter(config_file, tmp_path):
    """invert.loss_region=object: the inversion images are segmented with the segment
    stage's backend, shaped like the inpainting mask, saved for inspection, and the
    inversion's cache key follows the segmenter and the mask shape (the paper's "image"
    key does not)."""
    from spuraug.ddb.method import config_from_hparams
    from spuraug.ddb.pipeline import Stages

    raw = yaml.safe_load(config_file.read_text())

    def stages(region: str, **inpaint) -> Stages:
        ddb = {**raw["ddb"], "invert": {**raw["ddb"]["invert"], "loss_region": region},
               "inpaint": {**raw["ddb"]["inpaint"], **inpaint}}
        return Stages("toy", 0, config_from_hparams(ddb), runs_dir=tmp_path, device="cpu",
                      dataset_options=raw["dataset_options"])

    image, obj = stages("image"), stages("object")
    assert image.invert_artifact().key != obj.invert_artifact().key
    assert image.invert_artifact().key == stages("image", mask_mode="box").invert_artifact().key
    assert obj.invert_artifact().key != stages("object", mask_mode="box").invert_artifact().key
    art = obj.invert()
    m = json.loads((art.path / "manifest.json").read_text())
    for c in (0, 1):
        # clipseg_threshold 0 in this config: every image's mask is the whole image
        assert m["classes"][str(c)]["regions_found"] == 3
        masks = sorted((art.path / f"class{c}" / "masks").glob("*.png"))
        assert len(list((art.path / f"class{c}" / "masks").glob("*.json"))) == 3
        assert [p.stem for p in masks] == sorted(str(i) for i in m["classes"][str(c)]["image_ids"])
        assert (art.path / f"class{c}" / "learned_embeds.safetensors").is_file()


def test_region_loss_inversion_takes_the_loss_over_the_whole_repainted_region(config_file, tmp_path, monkeypatch):
    """invert.loss_region=region: the same segmented regions as "object" reach train_token
    (which then takes the loss over the whole region: test_ddb.py), with its own cache key."""
    from spuraug.ddb import invert as inv
    from spuraug.ddb.method import config_from_hparams
    from spuraug.ddb.pipeline import Stages

    raw = yaml.safe_load(config_file.read_text())

    def stages(region: str) -> Stages:
        ddb = {**raw["ddb"], "invert": {**raw["ddb"]["invert"], "loss_region": region}}
        return Stages("toy", 0, config_from_hparams(ddb), runs_dir=tmp_path, device="cpu",
                      dataset_options=raw["dataset_options"])

    calls = []
    real = inv.train_token

    def spy(comps, images, token, token_id, cfg, out, device, regions=None, objects=None, **kw):
        calls.append((cfg.loss_region, regions, objects))
        return real(comps, images, token, token_id, cfg, out, device, regions=regions, objects=objects, **kw)

    monkeypatch.setattr(inv, "train_token", spy)
    assert stages("region").invert_artifact().key != stages("object").invert_artifact().key
    stages("region").invert()
    assert calls and all(lr == "region" and regs is not None and objs is not None for lr, regs, objs in calls)
    region_calls = list(calls)
    calls.clear()
    stages("object").invert()
    assert [lr for lr, _, _ in calls] == ["object"] * len(region_calls)
