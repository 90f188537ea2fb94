"""The harness's sweep side: summary tables, version folders, provenance, launcher."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math

import pytest
from harness_runs import make_run

from bench.launch import LocalLauncher, RunSpec
from bench.provenance import new_version_dir
from bench.summary import (
    SUMMARY_COLUMNS,
    find_runs,
    load_run,
    read_runs_jsonl,
    records_from_runs_jsonl,
    summarize,
    write_runs_jsonl,
    write_summary,
)
from bench.sweep import ddb_generation_throughput, run_sweep, throughput_line, throughput_markdown


@pytest.fixture
def toy_runs(tmp_path):
    runs = tmp_path / "runs"
    # ERM: three seeds, WGA 60/70/80, avg 90/92/94, adjusted 91/91/94
    for seed, wga, avg, adj in [(0, 60.0, 90.0, 91.0), (1, 70.0, 92.0, 91.0), (2, 80.0, 94.0, 94.0)]:
        make_run(runs, "toy", "erm", seed, wga, avg, adj, group_accs=[99.0, wga, wga + 5, 98.0])
    # JTT: one seed only
    make_run(runs, "toy", "jtt", 0, 85.0, 88.0, 87.0, group_accs=[90.0, 85.0, 86.0, 89.0],
             annotation={"train_group_labels": False, "val_group_labels": True})
    # an unfinished run must not enter the table
    make_run(runs, "toy", "jtt", 1, 10.0, 10.0, 10.0, done=False)
    return runs


def test_summary_matches_hand_computed_mean_and_sample_std(toy_runs):
    records, problems = find_runs(toy_runs, "toy", ["erm", "jtt"], [0, 1, 2])
    assert len(records) == 4
    assert any("jtt/seed1" in p and "not finished" in p for p in problems)
    assert any("jtt/seed2" in p and "missing" in p for p in problems)
    df = summarize(records, method_order=["erm", "jtt"])
    assert list(df.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    # group columns are named by the toy benchmark's group names
    assert list(df.columns[len(SUMMARY_COLUMNS):]) == ["three / land", "three / water", "eight / land", "eight / water"]
    erm = df[df.method == "erm"].iloc[0]
    assert erm.n_seeds == 3
    assert erm.worst_group_acc_mean == pytest.approx(70.0)
    assert erm.worst_group_acc_std == pytest.approx(10.0)  # sqrt(((-10)^2 + 0 + 10^2) / (3 - 1))
    assert erm.avg_acc_std == pytest.approx(2.0)
    assert erm.adjusted_avg_acc_mean == pytest.approx(92.0)
    assert erm.adjusted_avg_acc_std == pytest.approx(math.sqrt(3.0))  # (1 + 1 + 4) / 2
    assert erm["eight / land"] == pytest.approx(75.0)
    jtt = df[df.method == "jtt"].iloc[0]
    assert jtt.n_seeds == 1 and jtt.worst_group_acc_mean == 85.0
    assert math.isnan(jtt.worst_group_acc_std)


def test_empty_groups_are_dropped_from_the_columns(tmp_path):
    make_run(tmp_path, "toy", "erm", 0, 50.0, 60.0, None, group_accs=[None, 70.0, 50.0, None])
    records, _ = find_runs(tmp_path, "toy")
    df = summarize(records)
    assert [c for c in df.columns if c not in SUMMARY_COLUMNS] == ["three / water", "eight / land"]
    assert math.isnan(df.adjusted_avg_acc_mean.iloc[0])


def test_malformed_result_names_file_and_field(tmp_path):
    d = make_run(tmp_path, "toy", "erm", 0, 50.0, 60.0)
    result = json.loads((d / "result.json").read_text())
    del result["test"]["worst_group_acc"]
    (d / "result.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match=r"result\.json.*worst_group_acc"):
        load_run(d)


def test_version_folders_never_overwrite(tmp_path):
    git = {"sha": "abcdef0123", "short_sha": "abcdef0", "dirty": False}
    day = dt.date(2026, 11, 28)
    first = new_version_dir(tmp_path, "toy", git, day)
    (first / "summary.csv").write_text("precious")
    second = new_version_dir(tmp_path, "toy", git, day)
    third = new_version_dir(tmp_path, "toy", git, day)
    assert first.name == "2026-11-28_abcdef0"
    assert second.name == "2026-11-28_abcdef0-2" and third.name == "2026-11-28_abcdef0-3"
    assert (first / "summary.csv").read_text() == "precious"
    dirty = new_version_dir(tmp_path, "toy", {**git, "dirty": True}, day)
    assert dirty.name == "2026-11-28_abcdef0-dirty"


def test_sweep_writes_version_folder_with_provenance(toy_runs, tmp_path, capsys):
    results = tmp_path / "results"
    out, df, outcomes = run_sweep("toy", ["erm", "jtt"], [0, 1, 2], runs_dir=str(toy_runs),
                                  results_dir=str(results), run=False, command="make bench")
    assert out is not None and out.parent == results / "toy"
    assert outcomes == []
    for name in ("summary.csv", "summary.md", "summary.tex", "provenance.json"):
        assert (out / name).is_file(), name
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)
    assert float(rows[0]["worst_group_acc_std"]) == pytest.approx(10.0)
    assert rows[1]["method"] == "jtt" and rows[1]["worst_group_acc_std"] == ""  # one seed: empty std
    md = (out / "summary.md").read_text()
    assert "avg acc (plain)" in md and "adjusted avg acc (train-weighted)" in md and "70.00 ± 10.00" in md
    tex = (out / "summary.tex").read_text()
    assert r"\begin{tabular}" in tex and r"70.00 $\pm$ 10.00" in tex
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("command", "git", "software", "hardware", "seeds", "config_hashes", "annotation",
                "wall_time_s", "ddb_generation_throughput"):
        assert key in prov, key
    assert prov["command"] == "make bench"
    assert set(prov["git"]) == {"sha", "short_sha", "dirty"}
    assert {"python", "torch", "cuda", "packages"} <= set(prov["software"])
    assert {"cpu_model", "gpus"} <= set(prov["hardware"])
    assert prov["config_hashes"]["erm/seed2"] == "hash-erm-2"
    assert prov["annotation"]["jtt"] == {"train_group_labels": False, "val_group_labels": True}
    assert prov["wall_time_s"]["erm/seed0"] == 1.5
    assert any("jtt/seed1" in p for p in prov["sweep"]["missing_or_unfinished"])
    # one runs.jsonl line per finished run (no copies of the run folders), enough to rebuild the table
    assert not (out / "runs").exists()
    lines = read_runs_jsonl(out / "runs.jsonl")
    assert [(r["method"], r["seed"]) for r in lines] == [("erm", 0), ("erm", 1), ("erm", 2), ("jtt", 0)]
    assert lines[2]["config_hash"] == "hash-erm-2" and lines[2]["selected_epoch"] == 1
    assert lines[0]["test"]["worst_group_acc"] == 60.0 and "config" not in lines[0]
    rebuilt = summarize(records_from_runs_jsonl(out), method_order=["erm", "jtt"])
    assert rebuilt.to_csv(index=False) == df.to_csv(index=False)
    printed = capsys.readouterr().out
    assert "70.00 ± 10.00" in printed and str(out) in printed
    # a second sweep writes a second folder
    out2, _, _ = run_sweep("toy", ["erm", "jtt"], [0, 1, 2], runs_dir=str(toy_runs), results_dir=str(results),
                           run=False)
    assert out2 != out and out2.name.startswith(out.name)


def test_parse_overrides():
    from spuraug.config import parse_overrides

    assert parse_overrides(["erm.epochs=2", "erm.lr=1e-3", "dataset.n_train=400", "seed_list=[1, 2]"]) == {
        "erm": {"epochs": 2, "lr": 1e-3}, "dataset": {"n_train": 400}, "seed_list": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["erm.epochs"])


def test_ddb_throughput_read_from_manifests(tmp_path):
    """The throughput rows come from the stage manifests the DDB artifacts write
    (spuraug.records.StageManifest): finished stages only, images and seconds as written."""
    from spuraug.ddb.artifacts import Artifact

    seed_root = tmp_path / "toy" / "ddb_artifacts" / "seed0"
    inpaint = Artifact(seed_root, "inpaint", {"k": 1})
    inpaint.prepare()
    inpaint.finish({"images": 120, "images_per_s": 3.0, "wall_time_s": 40.0, "counts": {"generated": 120}})
    sources = Artifact(seed_root, "sources", {"k": 2})  # no images processed one by one: no row
    sources.prepare()
    sources.finish({"counts": {"sources": 10}, "wall_time_s": 1.0})
    unfinished = Artifact(seed_root, "prune", {"k": 3})
    unfinished.prepare()  # no manifest, no done: no row
    rows = ddb_generation_throughput(tmp_path, "toy")
    assert [(r["stage"], r["images"], r["wall_time_s"], r["images_per_s"]) for r in rows] == [
        ("inpaint", 120.0, 40.0, 3.0)]
    assert rows[0]["manifest"] == str(inpaint.path / "manifest.json")
    assert ddb_generation_throughput(tmp_path, "celeba") == []


def test_ddb_throughput_names_the_seed_and_stage_run_of_each_figure(tmp_path):
    """Issue 18 item 9: every figure of the console line and the Markdown table names the ERM
    seed (or "all seeds" for the shared inversion) and the stage folder it was measured in."""
    from spuraug.ddb.artifacts import Artifact

    root = tmp_path / "toy" / "ddb_artifacts"
    made = {}
    for where, stage, rate in [(root, "invert", 0.5), (root / "seed0", "inpaint", 3.0), (root / "seed2", "inpaint", 4.0)]:
        art = made[(stage, rate)] = Artifact(where, stage, {"rate": rate})
        art.prepare()
        art.finish({"images": 10, "images_per_s": rate, "wall_time_s": 10 / rate})
    rows = ddb_generation_throughput(tmp_path, "toy")
    assert sorted((r["stage"], r["seed"], r["run"]) for r in rows) == sorted([
        ("invert", None, made[("invert", 0.5)].path.name), ("inpaint", 0, made[("inpaint", 3.0)].path.name),
        ("inpaint", 2, made[("inpaint", 4.0)].path.name)])
    line = throughput_line(rows)
    assert f"inpaint 3.000 images/s (seed 0, {made[('inpaint', 3.0)].path.name})" in line
    assert f"inpaint 4.000 images/s (seed 2, {made[('inpaint', 4.0)].path.name})" in line
    assert f"invert 0.500 images/s (all seeds, {made[('invert', 0.5)].path.name})" in line
    md = throughput_markdown(rows)
    assert "| stage | seed | stage run |" in md
    assert f"| inpaint | 2 | {made[('inpaint', 4.0)].path.name} |" in md and "| invert | all seeds |" in md


def _variant_run(runs, method, seed, wga, group_names=None, options=None):
    """A hand-built run whose result.json records the group names of its data (as
    spuraug.runs writes it) or only its config's dataset_options (a result written before)."""
    d = make_run(runs, "toy", method, seed, wga, 90.0, 90.0, group_accs=[91.0, wga, wga + 2, 92.0])
    result = json.loads((d / "result.json").read_text())
    if group_names is not None:
        result["group_names"] = group_names
    if options is not None:
        result["config"] = {**result["config"], "dataset_options": options}
    (d / "result.json").write_text(json.dumps(result))
    return d


VARIANT = {"digits": [4, 9], "backgrounds": ["sky", "brick"]}
VARIANT_NAMES = ["four / sky", "four / brick", "nine / sky", "nine / brick"]


def test_group_columns_name_the_groups_of_the_data_run(tmp_path):
    """Issue 18 item 9: with dataset_options.digits=[4,9] backgrounds=[sky,brick] the group
    columns read "four / sky ... nine / brick", from the names the run recorded, or from its
    config's dataset_options (a result written before the field), never the toy's defaults."""
    runs = tmp_path / "runs"
    _variant_run(runs, "erm", 0, 40.0, group_names=VARIANT_NAMES)
    _variant_run(runs, "erm", 1, 50.0, options=VARIANT)  # older result: names from its config
    records, _ = find_runs(runs, "toy", ["erm"], [0, 1])
    df = summarize(records)
    assert list(df.columns[len(SUMMARY_COLUMNS):]) == VARIANT_NAMES
    assert len(df) == 1 and df.n_seeds.iloc[0] == 2 and df["four / brick"].iloc[0] == pytest.approx(45.0)
    # the version folder's runs.jsonl (no config) keeps the names: the table rebuilds alike
    out = tmp_path / "v"
    out.mkdir()
    write_runs_jsonl(records, out)
    lines = read_runs_jsonl(out / "runs.jsonl")
    assert lines[0]["group_names"] == VARIANT_NAMES
    write_summary(df, out)
    assert "four / sky" in (out / "summary.md").read_text() and "three / land" not in (out / "summary.md").read_text()


def test_runs_on_other_groups_are_not_merged_under_one_header(tmp_path):
    """A method run on the default data (seed 0) and on a variant (seed 1) gives two rows,
    each with values under its own group columns only: no mean over two different datasets."""
    runs = tmp_path / "runs"
    _variant_run(runs, "erm", 0, 10.0)  # an old result without names or options: the defaults
    _variant_run(runs, "erm", 1, 50.0, group_names=VARIANT_NAMES)
    records, _ = find_runs(runs, "toy", ["erm"], [0, 1])
    df = summarize(records)
    assert list(df.columns[len(SUMMARY_COLUMNS):]) == [
        "three / land", "three / water", "eight / land", "eight / water", *VARIANT_NAMES]
    assert list(df.n_seeds) == [1, 1] and list(df.worst_group_acc_mean) == [10.0, 50.0]
    default, variant = df.iloc[0], df.iloc[1]
    assert default["three / water"] == 10.0 and math.isnan(default["four / brick"])
    assert variant["four / brick"] == 50.0 and math.isnan(variant["three / water"])


def test_a_real_variant_run_records_its_group_names(tmp_path):
    """A real tiny ERM run on digits [4, 9] / backgrounds [sky, brick] writes the names of its
    groups into result.json, and the sweep's summary reads them."""
    tiny = {"dataset_options": {"n_train": 120, "n_val": 40, "n_test": 40, **VARIANT},
            "erm": {"epochs": 1, "keep_epochs": []}}
    vdir, df, outcomes = run_sweep("toy", ["erm"], [0], runs_dir=str(tmp_path / "runs"),
                                   results_dir=str(tmp_path / "results"), overrides=tiny, log=lambda *a: None)
    assert [o.status for o in outcomes] != ["failed"]
    result = json.loads((tmp_path / "runs" / "toy" / "erm" / "seed0" / "result.json").read_text())
    assert result["group_names"] == VARIANT_NAMES
    assert list(df.columns[len(SUMMARY_COLUMNS):]) == VARIANT_NAMES
    assert "four / sky" in (vdir / "summary.md").read_text()


def _finished_with_default_config(d):
    """Give a hand-built run folder the config hash of the default config of its method."""
    from spuraug.runs import load_config

    cfg = json.loads((d / "config.json").read_text())
    h = load_config("toy", cfg["method"])["config_hash"]
    for name in ("config.json", "result.json"):
        doc = json.loads((d / name).read_text())
        doc["config_hash"] = h
        (d / name).write_text(json.dumps(doc))
    return d


def test_local_launcher_does_not_skip_a_finished_run_of_another_config(tmp_path, monkeypatch):
    """A finished folder made with other settings (or, for DDB, other weights) is run, not
    reported as if it were this config's: run_method then refuses it or redoes it."""
    calls = []
    monkeypatch.setattr(LocalLauncher, "_run_inprocess", staticmethod(lambda spec: calls.append(spec.label)))
    _finished_with_default_config(make_run(tmp_path, "toy", "erm", 0, 50.0, 60.0))
    assert RunSpec("toy", "erm", 0, runs_dir=str(tmp_path)).is_finished()
    assert not RunSpec("toy", "erm", 0, runs_dir=str(tmp_path), overrides={"erm": {"epochs": 3}}).is_finished()
    la = LocalLauncher(log=lambda line: None)
    la.submit(RunSpec("toy", "erm", 0, runs_dir=str(tmp_path), overrides={"erm": {"epochs": 3}}))
    assert [o.status for o in la.wait()] == ["done"] and calls == ["toy/erm/seed0"]
    logs = []
    la = LocalLauncher(log=logs.append)
    la.submit(RunSpec("toy", "erm", 0, runs_dir=str(tmp_path), overrides={"erm": {"epochs": 3}}))
    la.wait()
    assert logs[0].startswith("[1/1] toy/erm/seed0: finished with other settings or inputs, not skipped")
    # a stale run (the method says its inputs changed) is not finished either
    from spuraug.methods import get_method

    monkeypatch.setattr(get_method("erm"), "stale_reason", lambda self, ctx, result: "weights changed")
    assert not RunSpec("toy", "erm", 0, runs_dir=str(tmp_path)).is_finished()


def test_a_sweep_whose_run_hit_another_config_leaves_that_run_out_of_its_table(tmp_path, monkeypatch):
    """A run folder finished under another config makes this sweep's run stop with
    RunConfigMismatch; the folder's old result.json must not appear in the new table as if
    this sweep's config had made it."""
    from spuraug.runs import RunConfigMismatch

    runs = tmp_path / "runs"
    _finished_with_default_config(make_run(runs, "toy", "erm", 0, 50.0, 60.0))
    overrides = {"erm": {"epochs": 3}, "jtt": {"epochs": 3}}
    from spuraug.runs import load_config

    jtt_hash = load_config("toy", "jtt", None, overrides)["config_hash"]
    d = make_run(runs, "toy", "jtt", 0, 80.0, 85.0)
    for name in ("config.json", "result.json"):
        doc = json.loads((d / name).read_text())
        doc["config_hash"] = jtt_hash
        (d / name).write_text(json.dumps(doc))

    def refuse(spec):  # ERM's folder holds the default config's run; JTT's is this config's
        if spec.method == "erm":
            raise RunConfigMismatch(f"{spec.label}: holds a run with another config")

    monkeypatch.setattr(LocalLauncher, "_run_inprocess", staticmethod(refuse))
    logs = []
    out, df, outcomes = run_sweep("toy", ["erm", "jtt"], [0], runs_dir=str(runs), results_dir=str(tmp_path / "res"),
                                  overrides=overrides, workers=1, log=logs.append)
    assert [o.status for o in outcomes][0] == "failed"
    assert list(df.method) == ["jtt"]  # the stale ERM result is not in the table
    stale = [line for line in logs if "not in the table" in line and "erm/seed0" in line]
    assert stale and "not this sweep's" in stale[0]
    prov = json.loads((out / "provenance.json").read_text())
    assert "toy/erm/seed0" not in prov["config_hashes"] and "erm/seed0" not in prov["config_hashes"]


def test_local_launcher_skips_finished_and_survives_failures(tmp_path, monkeypatch):
    calls = []

    def fake_run(spec):
        calls.append(spec.label)
        if spec.method == "broken":
            raise RuntimeError("boom")
        make_run(tmp_path, spec.dataset, spec.method, spec.seed, 50.0, 60.0)

    monkeypatch.setattr(LocalLauncher, "_run_inprocess", staticmethod(fake_run))
    _finished_with_default_config(make_run(tmp_path, "toy", "erm", 0, 50.0, 60.0))  # already finished
    logs = []
    la = LocalLauncher(log=logs.append)
    for m, s in [("erm", 0), ("broken", 0), ("erm", 1)]:
        la.submit(RunSpec("toy", m, s, runs_dir=str(tmp_path)))
    outcomes = la.wait()
    assert [o.status for o in outcomes] == ["skipped", "failed", "done"]
    assert calls == ["toy/broken/seed0", "toy/erm/seed1"]
    assert "boom" in outcomes[1].error
    assert logs[0].startswith("[1/3] toy/erm/seed0: already finished")
    assert any(line.startswith("[3/3] toy/erm/seed1: done in") for line in logs)


@pytest.mark.parametrize("extra, needle", [
    (["--set", "erm.epochs=-3"], "erm.epochs: expected a number >= 1, got -3"),
    (["--set", "jtt.lambda_up=0"], "jtt.lambda_up: expected a number >= 1"),
    (["--seeds", "0", "-1"], "seed -1"),
    (["--set", "erm.epochs"], "expected KEY=VALUE"),
])
def test_sweep_checks_every_config_before_running(tmp_path, capsys, extra, needle):
    """`make bench SET=...`: a bad value is one line and exit 2 before any run or folder."""
    from bench.sweep import main as sweep_main

    runs, results = tmp_path / "runs", tmp_path / "results"
    rc = sweep_main(["--dataset", "toy", "--methods", "erm", "jtt", "--runs-dir", str(runs),
                     "--results-dir", str(results), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not runs.exists() and not results.exists()


def test_make_bench_runs_the_benchmark_methods_by_default_and_others_when_named():
    """Without METHODS=, the sweep runs DDB next to ERM, GroupDRO, JTT and DFR (issue 18 item 7);
    SUBG and RWG are registered and run when named."""
    from bench.sweep import BENCHMARK_METHODS, default_methods
    from spuraug.methods import method_names

    assert default_methods() == ["erm", "groupdro", "jtt", "dfr", "ddb"] == list(BENCHMARK_METHODS)
    assert {"subg", "rwg"} <= set(method_names()) - set(default_methods())
