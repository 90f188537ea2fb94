"""The CI accuracy gate (bench.check) and a real tiny sweep through spuraug.runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import check
from bench.check import compare, load_reference, measure
from bench.summary import read_runs_jsonl
from bench.sweep import run_sweep

#: A tiny ERM-only sweep: small toy benchmark, one epoch (a few seconds on 2 cores).
TINY = {"dataset_options": {"n_train": 200, "n_val": 80, "n_test": 80}, "erm": {"epochs": 1, "keep_epochs": []}}


def test_compare_passes_within_tolerance_and_flags_regressions():
    ref = {"_meta": {"command": "x"},
           "erm": {"worst_group_acc": 50.0, "avg_acc": 80.0, "tolerance": 2.0},
           "jtt": {"worst_group_acc": 70.0, "avg_acc": 75.0, "tolerance": 2.0}}
    got = {"erm": {"worst_group_acc": 48.5, "avg_acc": 80.0}, "jtt": {"worst_group_acc": 70.0, "avg_acc": 76.9}}
    rows, ok = compare(ref, got)
    assert ok and {r["status"] for r in rows} == {"ok"}
    assert [r["diff"] for r in rows if r["method"] == "erm"] == pytest.approx([-1.5, 0.0])

    rows, ok = compare(ref, {**got, "erm": {"worst_group_acc": 47.9, "avg_acc": 80.0}})
    assert not ok
    assert [r["status"] for r in rows if r["method"] == "erm"] == ["REGRESSION", "ok"]

    better = {**got, "jtt": {"worst_group_acc": 80.0, "avg_acc": 75.0}}
    rows, ok = compare(ref, better)
    assert ok and "better" in {r["status"] for r in rows}
    assert not compare(ref, better, strict=True)[1]

    rows, ok = compare(ref, {"erm": got["erm"]})  # jtt produced nothing
    assert not ok and {r["status"] for r in rows if r["method"] == "jtt"} == {"MISSING"}

    rows, ok = compare(ref, {**got, "ddb": {"worst_group_acc": 1.0, "avg_acc": 1.0}})
    assert ok and {r["status"] for r in rows if r["method"] == "ddb"} == {"no reference"}


def test_reference_file_is_valid_and_names_its_command():
    ref = load_reference(Path(__file__).resolve().parents[1] / check.DEFAULT_REFERENCE)
    assert "bench.check" in ref["_meta"]["command"]
    assert ref["_meta"]["overrides"] == check.CI_OVERRIDES, "reference measured with other CI overrides"
    methods = [m for m in ref if not m.startswith("_")]
    assert "erm" in methods
    for m in methods:
        assert 0 <= ref[m]["worst_group_acc"] <= ref[m]["avg_acc"] <= 100
        assert ref[m]["tolerance"] > 0


def test_pooled_reference_takes_mean_and_spread_over_machines_and_seeds():
    amd = {"dfr": {"worst_group_acc": [41.0, 47.0, 55.0], "avg_acc": [53.0, 59.0, 57.0]}}
    intel = {"dfr": {"worst_group_acc": [23.0, 30.0, 36.0], "avg_acc": [49.0, 50.0, 52.0]}}
    one = check.pooled_entries({"amd": amd}, ["dfr"], 5.0)["dfr"]
    both = check.pooled_entries({"amd": amd, "intel": intel}, ["dfr"], 5.0)["dfr"]
    assert one["worst_group_acc"] == pytest.approx(47.67, abs=0.01) and one["runs"] == 3
    wga = [41.0, 47.0, 55.0, 23.0, 30.0, 36.0]
    assert both["worst_group_acc"] == pytest.approx(sum(wga) / 6, abs=0.01) and both["runs"] == 6
    import statistics
    assert both["tolerance"] == round(2 * statistics.stdev(wga) + 0.05, 1) > one["tolerance"]
    # the other machine's seed-0 run, a regression against the single-machine reference, is
    # one draw of the pooled one
    ref1 = {"dfr": one}
    ref2 = {"dfr": both}
    got = {"dfr": {"worst_group_acc": 23.0, "avg_acc": 49.0}}
    assert not compare(ref1, got)[1] and compare(ref2, got)[1]
    assert check.pooled_entries({"a": {"erm": {"worst_group_acc": [0.0, 0.0], "avg_acc": [50.0, 50.0]}}},
                                ["erm"], 5.0)["erm"]["tolerance"] == 5.0
    with pytest.raises(SystemExit, match="no calibration runs of jtt"):
        check.pooled_entries({"amd": amd}, ["jtt"], 5.0)


def test_per_machine_runs_reads_old_and_new_references():
    old = {"_meta": {"machine": "AMD EPYC", "calibration": {"per_seed": {"erm": {"avg_acc": [50.0]}}}}}
    assert check.per_machine_runs(old) == {"AMD EPYC": {"erm": {"avg_acc": [50.0]}}}
    new = {"_meta": {"machine": "x", "calibration": {"per_machine": {"a": {"erm": {"avg_acc": [1.0]}},
                                                                      "b": {"erm": {"avg_acc": [2.0]}}}}}}
    assert set(check.per_machine_runs(new)) == {"a", "b"}
    assert check.per_machine_runs({"_meta": {}}) == {}


def test_committed_reference_names_its_machine_and_pools_every_calibrated_one():
    """The reference names the machine it was measured on; the gate holds every method, DDB
    included, to <= 5 points (issue 18); when calibration runs of several machines are in it
    (--pool-machines), the expected values are their pooled means."""
    ref = load_reference(Path(__file__).resolve().parents[1] / check.DEFAULT_REFERENCE)
    methods = [m for m in ref if not m.startswith("_")]
    assert ref["_meta"]["machine"] and set(methods) == {"erm", "groupdro", "jtt", "dfr", "ddb"}
    assert all(ref[m]["tolerance"] <= check.MAX_TOLERANCE for m in methods)
    machines = check.per_machine_runs(ref)
    if not machines:  # measured on one machine type (seed 0 only): nothing pooled to check
        assert "calibration" not in ref["_meta"]
        return
    pooled = check.pooled_entries(machines, methods, 5.0)
    for m in methods:
        for metric in check.CHECK_METRICS:
            assert ref[m][metric] == pytest.approx(pooled[m][metric], abs=0.01)
        assert ref[m]["tolerance"] >= pooled[m]["tolerance"] - 1e-9


def test_bad_reference_names_the_field(tmp_path):
    p = tmp_path / "ref.json"
    p.write_text(json.dumps({"erm": {"worst_group_acc": "high", "avg_acc": 1, "tolerance": 1}}))
    with pytest.raises(SystemExit, match=r"ref\.json: erm\.worst_group_acc"):
        load_reference(p)


def test_gate_on_a_real_tiny_sweep(tmp_path, monkeypatch, capsys):
    """A real ERM run (1 seed, 1 epoch, 200 images) through spuraug.runs: the gate passes
    against a reference of what it measures and fails against a perturbed one."""
    runs = tmp_path / "runs"
    got, info = measure(runs, ["erm"], [0], overrides=TINY, log=lambda *a: None)
    assert set(got) == {"erm"} and not info["failed"]
    assert 0.0 <= got["erm"]["worst_group_acc"] <= got["erm"]["avg_acc"] <= 100.0

    monkeypatch.setattr(check, "CI_OVERRIDES", TINY)
    good = {"_meta": {"overrides": TINY}, "erm": {**got["erm"], "tolerance": 0.5}}
    bad = {"_meta": {"overrides": TINY},
           "erm": {"worst_group_acc": got["erm"]["worst_group_acc"] + 10.0, "avg_acc": got["erm"]["avg_acc"],
                   "tolerance": 0.5}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    # --runs-dir reuses the finished run: the gate's comparison is what is tested here
    assert check.main(["--reference", str(tmp_path / "good.json"), "--methods", "erm", "--seeds", "0", "--runs-dir", str(runs)]) == 0
    assert "check PASSED" in capsys.readouterr().out
    assert check.main(["--reference", str(tmp_path / "bad.json"), "--methods", "erm", "--seeds", "0", "--runs-dir", str(runs)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "check FAILED" in out

    # the same finished run feeds a real sweep's version folder (skipped, not retrained)
    vdir, df, outcomes = run_sweep("toy", ["erm"], [0], runs_dir=str(runs), results_dir=str(tmp_path / "results"),
                                   overrides=TINY, log=lambda *a: None)
    assert [o.status for o in outcomes] == ["skipped"]
    assert df.worst_group_acc_mean.iloc[0] == pytest.approx(got["erm"]["worst_group_acc"])
    prov = json.loads((vdir / "provenance.json").read_text())
    assert prov["annotation"]["erm"] == {"train_group_labels": False, "val_group_labels": True}
    # the version folder's runs.jsonl holds the real run's result (its per-epoch lines stay in runs/)
    (line,) = read_runs_jsonl(vdir / "runs.jsonl")
    assert line["method"] == "erm" and line["seed"] == 0 and line["config_hash"] == prov["config_hashes"]["erm/seed0"]
    assert line["test"]["worst_group_acc"] == pytest.approx(got["erm"]["worst_group_acc"])
    assert (runs / "toy" / "erm" / "seed0" / "metrics.jsonl").read_text().strip()


def test_subprocess_launcher_passes_the_same_config():
    """`spuraug train --set ...` built by the subprocess launcher resolves to the config hash
    of the in-process run (so the two launchers share run folders)."""
    from bench.launch import LocalLauncher, RunSpec
    from spuraug.cli import build_parser
    from spuraug.config import load_config, parse_overrides

    cmd = LocalLauncher.train_command(RunSpec("toy", "erm", 3, "some/runs", overrides=TINY))
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[cmd.index("--out") + 1] == "some/runs"
    args = build_parser().parse_args(cmd[3:])
    parsed = parse_overrides(args.set)
    assert parsed["dataset_options"]["n_train"] == 200 and parsed["erm"]["keep_epochs"] == []
    assert load_config("toy", "erm", None, parsed)["config_hash"] == load_config("toy", "erm", None, TINY)["config_hash"]


def test_write_reference_pools_this_machine_with_the_reference_machines(tmp_path, monkeypatch, capsys):
    """--pool-machines on a real tiny sweep: another machine's runs stay, this machine's
    runs are added (and replace an older entry of the same machine), expected = pooled mean."""
    from bench.provenance import hardware

    monkeypatch.setattr(check, "CI_OVERRIDES", TINY)
    here = hardware()["cpu_model"]
    other = {"erm": {"worst_group_acc": [10.0, 30.0], "avg_acc": [60.0, 70.0]}}
    stale = {"erm": {"worst_group_acc": [99.0], "avg_acc": [99.0]}}
    ref_path = tmp_path / "ref.json"
    ref_path.write_text(json.dumps({"_meta": {"machine": "other", "overrides": TINY,
                                              "calibration": {"per_machine": {"other": other, here: stale}}},
                                    "erm": {"worst_group_acc": 20.0, "avg_acc": 65.0, "tolerance": 5.0}}))
    argv = ["--write-reference", "--methods", "erm", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--calibration-seeds", "1",
            "--pool-machines", "--reference", str(ref_path)]
    # the other machine's runs spread by 20 points: a tolerance above 5 is refused unless asked for,
    # and the reference it would have written is printed (nothing measured is lost)
    before = ref_path.read_text()
    assert check.main(argv) == 1
    out, err = capsys.readouterr()
    assert ref_path.read_text() == before
    assert "exceeds --max-tolerance 5.0" in err and '"per_machine"' in out and "tolerance (accuracy points" in out
    assert check.main([*argv, "--max-tolerance", "100"]) == 0  # the runs are reused from --runs-dir
    ref = load_reference(ref_path)
    machines = ref["_meta"]["calibration"]["per_machine"]
    assert machines["other"] == other and len(machines[here]["erm"]["worst_group_acc"]) == 2
    pooled = other["erm"]["worst_group_acc"] + machines[here]["erm"]["worst_group_acc"]
    assert ref["erm"]["worst_group_acc"] == pytest.approx(sum(pooled) / 4, abs=0.01)
    assert ref["erm"]["tolerance"] > 5.0 and ref["_meta"]["max_tolerance"] == 100.0
    with pytest.raises(SystemExit):
        check.main(["--pool-machines", "--reference", str(ref_path)])  # needs --write-reference
    with pytest.raises(SystemExit):  # a default tolerance above the maximum is a usage error
        check.main(["--write-reference", "--tolerance", "8", "--reference", str(ref_path)])


def test_gate_prints_the_tolerance_it_uses(tmp_path, monkeypatch, capsys):
    """`make check` says which tolerance each method is held to (here with stubbed measurements)."""
    ref = {"_meta": {"overrides": check.CI_OVERRIDES},
           "erm": {"worst_group_acc": 50.0, "avg_acc": 80.0, "tolerance": 4.0},
           "ddb": {"worst_group_acc": 60.0, "avg_acc": 85.0, "tolerance": 5.0}}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    got = {"erm": {"worst_group_acc": 50.0, "avg_acc": 80.0}, "ddb": {"worst_group_acc": 54.0, "avg_acc": 85.0}}
    monkeypatch.setattr(check, "measure", lambda *a, **k: (got, {"failed": [], "config_hashes": {}}))
    assert check.main(["--reference", str(tmp_path / "ref.json"), "--runs-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "tolerance (accuracy points, per method): erm 4.0, ddb 5.0" in out
    assert "ddb        worst_group_acc" in out and "REGRESSION" in out


def test_write_reference_covers_ddb_with_the_default_tolerance(tmp_path, monkeypatch, capsys):
    """`--write-reference --methods erm groupdro jtt dfr ddb` writes an entry per method, DDB
    included, each with the 5-point tolerance (measurements stubbed: the launcher running DDB
    is the one of the baselines, bench.check.measure)."""
    methods = ["erm", "groupdro", "jtt", "dfr", "ddb"]
    seen = {}

    def fake_measure(runs_dir, ms, seeds, overrides=None, log=print):
        seen["methods"], seen["overrides"] = list(ms), overrides
        got = {m: {"worst_group_acc": 40.0 + i, "avg_acc": 80.0 + i} for i, m in enumerate(ms)}
        return got, {"failed": [], "config_hashes": {f"{m}/seed0": f"h{m}" for m in ms},
                     "wall_time_s": {f"{m}/seed0": 1.0 for m in ms}, "per_seed": {}}

    monkeypatch.setattr(check, "measure", fake_measure)
    ref_path = tmp_path / "ref.json"
    assert check.main(["--write-reference", "--methods", *methods, "--reference", str(ref_path),
                       "--runs-dir", str(tmp_path)]) == 0
    assert seen["methods"] == methods and seen["overrides"] is None  # None: the CI overrides
    ref = load_reference(ref_path)
    assert [m for m in ref if not m.startswith("_")] == methods
    assert ref["ddb"] == {"worst_group_acc": 44.0, "avg_acc": 84.0, "tolerance": 5.0}
    assert "tolerance (accuracy points, per method): erm 5.0, groupdro 5.0, jtt 5.0, dfr 5.0, ddb 5.0" in (
        capsys.readouterr().out)


def test_other_cpu_type_widens_each_tolerance_to_the_seed_spread(tmp_path, monkeypatch, capsys):
    """On the reference's CPU type the written tolerance holds; on another one each method's
    tolerance becomes max(written, 2 x seed std x sqrt(2/n)) from the reference's own seeds,
    printed, so a chaotic method does not fail CI there while a stable one keeps 5 points."""
    ref = {"_meta": {"overrides": check.CI_OVERRIDES, "machine": "AMD EPYC",
                     "per_seed": {"erm": {"worst_group_acc": [60.0, 61.0, 62.0], "avg_acc": [86.0, 86.0, 86.0]},
                                  "ddb": {"worst_group_acc": [58.0, 75.0, 86.0], "avg_acc": [84.0, 90.0, 86.0]}}},
           "erm": {"worst_group_acc": 61.0, "avg_acc": 86.0, "tolerance": 5.0},
           "ddb": {"worst_group_acc": 73.0, "avg_acc": 86.7, "tolerance": 5.0}}
    widened = check.other_cpu_tolerances(ref, "Intel Xeon")
    assert widened["erm"] == 5.0  # std 1: the written 5 is wider
    assert widened["ddb"] == pytest.approx(round(2 * 14.15 * (2 / 3) ** 0.5 + 0.05, 1), abs=0.1)  # ~23.1
    assert check.other_cpu_tolerances(ref, "AMD EPYC") == {}
    assert check.other_cpu_tolerances({k: v for k, v in ref.items() if k != "_meta"}, "Intel Xeon") == {}

    (tmp_path / "ref.json").write_text(json.dumps(ref))
    got = {"erm": {"worst_group_acc": 61.0, "avg_acc": 86.0}, "ddb": {"worst_group_acc": 62.0, "avg_acc": 86.0}}
    monkeypatch.setattr(check, "measure", lambda *a, **k: (got, {"failed": [], "config_hashes": {}}))
    for machine, code in (("AMD EPYC", 1), ("Intel Xeon", 0)):  # DDB -11: a regression on the same CPU type only
        monkeypatch.setattr(check, "hardware", lambda m=machine: {"cpu_model": m})
        assert check.main(["--reference", str(tmp_path / "ref.json"), "--runs-dir", str(tmp_path)]) == code
        out = capsys.readouterr().out
        assert ("this is 'Intel Xeon'" in out) == (machine == "Intel Xeon")
    got["erm"]["worst_group_acc"] = 55.0  # a stable method's 6-point drop still fails on the other CPU type
    assert check.main(["--reference", str(tmp_path / "ref.json"), "--runs-dir", str(tmp_path)]) == 1


def test_gate_notes_runs_on_another_thread_count_and_reference_records_it(tmp_path, monkeypatch, capsys):
    """The reference records its runs' torch threads; a gate run whose runs used others says so
    (CPU kernels split reductions by thread count: expect more than rounding)."""
    got = {"erm": {"worst_group_acc": 61.0, "avg_acc": 86.0}}
    info = {"failed": [], "config_hashes": {}, "wall_time_s": {"erm/seed0": 1.0}, "per_seed": {},
            "torch_threads": [1]}
    monkeypatch.setattr(check, "measure", lambda *a, **k: (got, info))
    monkeypatch.setattr(check, "hardware", lambda: {"cpu_model": "AMD EPYC"})
    ref_path = tmp_path / "ref.json"
    assert check.main(["--write-reference", "--methods", "erm", "--reference", str(ref_path),
                       "--runs-dir", str(tmp_path)]) == 0
    assert load_reference(ref_path)["_meta"]["torch_threads_per_run"] == [1]
    capsys.readouterr()
    assert check.main(["--reference", str(ref_path), "--runs-dir", str(tmp_path)]) == 0
    assert "torch thread" not in capsys.readouterr().out
    info["torch_threads"] = [2]
    assert check.main(["--reference", str(ref_path), "--runs-dir", str(tmp_path)]) == 0
    assert "the reference's runs used [1] torch thread(s) each, these [2]" in capsys.readouterr().out
