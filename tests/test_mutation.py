"""The mutation test of the accuracy gate (bench/mutation.py): its plan goes through the config
validator, and its report tells a caught regression, a missed one and a clean pass apart
(measurements stubbed: no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import check, mutation
from bench.mutation import MUTATIONS, Mutation, mutated_overrides
from spuraug.config import ConfigError, load_config
from spuraug.ddb.method import config_from_hparams
from spuraug.methods import get_method

GATED = ("erm", "groupdro", "jtt", "dfr", "ddb")


def _value_at(resolved: dict, method: str, key: str):
    """The value a ``--set`` key of ``method`` takes effect with (``jtt.lambda_up`` -> hparams;
    DDB's stage options with their defaults, as its stages read them)."""
    section, *path = key.split(".")
    node = resolved["hparams"] if section == method else resolved[section]
    if section == "ddb":
        node = config_from_hparams(node).to_dict()
    for part in path:
        node = node[part]
    return node


@pytest.mark.parametrize("mut", MUTATIONS, ids=lambda m: m.label)
def test_each_mutation_is_accepted_by_the_validator_and_changes_only_its_method(mut):
    clean = load_config("toy", mut.method, None, check.CI_OVERRIDES)
    resolved = load_config("toy", mut.method, None, mutated_overrides(mut))  # raises on a rejected override
    assert resolved["config_hash"] != clean["config_hash"]
    assert resolved["dataset_options"] == clean["dataset_options"]  # the CI sweep's data, unchanged
    for item in mut.overrides:
        key, value = item.split("=", 1)
        got = _value_at(resolved, mut.method, key)
        assert got != _value_at(clean, mut.method, key), f"{item} is the clean value: no mutation"
        assert json.dumps(got) == json.dumps(yaml.safe_load(value)) or str(got).lower() == value.lower()
    if mutation.starts_from_erm(mut.method):  # the ERM run it starts from is the clean one
        assert mutation.config_hash("erm", mutated_overrides(mut)) == mutation.config_hash("erm", check.CI_OVERRIDES)


@pytest.mark.parametrize("mut", MUTATIONS, ids=lambda m: m.label)
def test_each_mutation_sets_keys_of_its_own_method_only(mut):
    """A mutation is applied to its method alone (``bench.mutation`` runs only that method)."""
    for item in mut.overrides:
        section, key = item.split("=", 1)[0].split(".", 1)
        assert section == mut.method, f"{item}: not a key of {mut.method}"
        assert key.split(".")[0] in get_method(mut.method).params


def test_groupdro_and_dfr_mutations_remove_their_use_of_group_labels_in_training():
    """GroupDRO without its robust loss and sampler, DFR refit on the unbalanced training split: what
    is left uses group labels in training no more than ERM does, the method's core removed (eta 0 or
    balance_val=false alone left a group-balanced loss / a class-balanced validation fit on the toy)."""
    for method, want in (("groupdro", {"robust": False, "group_balanced_sampling": False}),
                         ("dfr", {"fit_split": "train", "balance_val": False})):
        mut = next(m for m in MUTATIONS if m.method == method)
        hp = load_config("toy", method, None, mutated_overrides(mut))["hparams"]
        assert {k: hp[k] for k in want} == want
        assert get_method(method)().annotation_for(hp)["train_group_labels"] is False
    assert not any("groupdro.eta" in o for m in MUTATIONS for o in m.overrides)


def test_every_gated_method_has_a_mutation():
    assert {m.method for m in MUTATIONS if m.required} == set(GATED)  # a required one each, not only probes
    assert len({m.label for m in MUTATIONS}) == len(MUTATIONS)
    assert all(m.why_probe for m in MUTATIONS if not m.required)


def test_dry_run_prints_the_plan_and_a_bad_override_exits_2(tmp_path, monkeypatch, capsys):
    ref = _reference(tmp_path)
    assert mutation.main(["--reference", str(ref), "--dry-run", "--runs-dir", str(tmp_path / "r"), "--clean", "2"]) == 0
    out = capsys.readouterr().out
    assert "clean 1: erm jtt" in out and "jtt-no_upweighting: --set jtt.lambda_up=1" in out
    assert "copies erm from clean0" in out and not (tmp_path / "r").exists()
    monkeypatch.setattr(mutation, "MUTATIONS", (Mutation("jtt", "bad", ("jtt.lambda_up=0",), "nothing"),))
    assert mutation.main(["--reference", str(ref), "--dry-run"]) == 2
    assert "jtt.lambda_up" in capsys.readouterr().err


# -- the report, with stubbed measurements ------------------------------------------------------

REF = {"_meta": {"overrides": check.CI_OVERRIDES, "git": {"short_sha": "abc1234"}},
       "erm": {"worst_group_acc": 50.0, "avg_acc": 90.0, "tolerance": 5.0},
       "jtt": {"worst_group_acc": 70.0, "avg_acc": 85.0, "tolerance": 5.0}}


def _reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(REF))
    return path


class FakeMeasure:
    """bench.check.measure without training: the reference's values, minus ``drop`` worst-group
    points for the runs folders named in ``drop``; writes a finished run folder as a run would."""

    def __init__(self, drop: dict[str, float]):
        self.drop = drop
        self.calls: list[tuple[str, list[str], dict]] = []

    def __call__(self, runs_dir, methods, seeds, overrides=None, log=print):
        runs_dir = Path(runs_dir)
        self.calls.append((runs_dir.name, list(methods), overrides))
        got, hashes = {}, {}
        for m in methods:
            wga = REF[m]["worst_group_acc"] - self.drop.get(runs_dir.name, 0.0)
            got[m] = {"worst_group_acc": wga, "avg_acc": REF[m]["avg_acc"]}
            for s in seeds:
                h = mutation.config_hash(m, overrides)
                d = runs_dir / "toy" / m / f"seed{s}"
                d.mkdir(parents=True, exist_ok=True)
                (d / "result.json").write_text(json.dumps({"config_hash": h, "test": got[m]}))
                (d / "done").write_text("done\n")
                hashes[f"{m}/seed{s}"] = h
        return got, {"failed": [], "config_hashes": hashes}


def _main(tmp_path, fake, clean="2"):
    docs = tmp_path / "harness.md"
    if not docs.exists():
        docs.write_text("# The harness\n\n## Mutation test of the gate\n\nprose kept\n\n## Next section\n")
    code = mutation.main(["--reference", str(_reference(tmp_path)), "--methods", "erm", "jtt", "--clean", clean,
                          "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "check"),
                          "--docs", str(docs)], measure=fake)
    (record,) = sorted((tmp_path / "check").glob("mutation_*.json"))[-1:]
    return code, json.loads(record.read_text()), docs.read_text()


def test_report_marks_caught_mutations_and_clean_passes(tmp_path, capsys):
    fake = FakeMeasure({"erm-one_epoch": 12.0, "jtt-no_upweighting": 30.0})
    code, report, docs = _main(tmp_path, fake)
    assert code == 0 and report["passed"]
    muts = {m["mutation"]: m for m in report["mutations"]}
    assert set(muts) == {"one_epoch", "no_upweighting"}
    for m in muts.values():
        assert m["gate"] == "FAIL" and m["ok"] and m["reason"] == "regression" and m["expected"] == "FAIL"
        assert m["hash_differs_from_clean"]
    wga = next(r for r in muts["no_upweighting"]["rows"] if r["metric"] == "worst_group_acc")
    assert (wga["expected"], wga["got"], wga["diff"], wga["tolerance"], wga["status"]) == (
        70.0, 40.0, -30.0, 5.0, "REGRESSION")
    assert [c["gate"] for c in report["clean"]] == ["PASS", "PASS"] and all(c["ok"] for c in report["clean"])
    assert all(report["isolation"].values())
    # the gate ran on the mutated method only, with the CI overrides and the mutation
    calls = {name: (methods, ov) for name, methods, ov in fake.calls}
    assert [name for name, _, _ in fake.calls] == ["clean0", "erm-one_epoch", "jtt-no_upweighting", "clean1"]
    assert calls["jtt-no_upweighting"][0] == ["jtt"] and calls["jtt-no_upweighting"][1]["jtt"]["lambda_up"] == 1
    assert {k: v for k, v in calls["jtt-no_upweighting"][1].items() if k != "jtt"} == {
        k: v for k, v in check.CI_OVERRIDES.items() if k != "jtt"}
    assert calls["clean0"] == (["erm", "jtt"], check.CI_OVERRIDES)
    # the clean ERM run was copied into JTT's folder, not into ERM's own mutation
    assert muts["no_upweighting"]["copied_from_clean0"] and not muts["one_epoch"]["copied_from_clean0"]
    assert (tmp_path / "runs" / "jtt-no_upweighting" / "toy" / "erm" / "seed0" / "done").is_file()
    # the table went into the docs section, between its markers, the rest kept
    assert "prose kept" in docs and docs.index("## Mutation test of the gate") < docs.index(mutation.TABLE_START)
    assert docs.index(mutation.TABLE_END) < docs.index("## Next section")
    flat = " ".join(docs.split())
    assert "| jtt-no_upweighting | jtt.lambda_up=1 | worst_group_acc | 70.00 | 40.00 | -30.00 | 5.00 | REGRESSION" in flat
    assert "caught" in docs and "clean 1: jtt" in docs
    # a second report replaces the table, it does not add one
    _main(tmp_path, FakeMeasure({"erm-one_epoch": 12.0, "jtt-no_upweighting": 30.0}))
    assert (tmp_path / "harness.md").read_text().count(mutation.TABLE_START) == 1
    assert "mutation test PASSED" in capsys.readouterr().out


def test_report_flags_a_missed_mutation_and_a_failing_clean_run(tmp_path):
    # JTT without upweighting within the tolerance (4 < 5 points): the gate missed it
    code, report, docs = _main(tmp_path, FakeMeasure({"erm-one_epoch": 12.0, "jtt-no_upweighting": 4.0}))
    assert code == 1 and not report["passed"]
    missed = next(m for m in report["mutations"] if m["method"] == "jtt")
    assert missed["gate"] == "PASS" and not missed["ok"]
    assert "| jtt-no_upweighting | jtt.lambda_up=1 | worst_group_acc | 70.00 | 66.00 | -4.00 | 5.00 | ok | PASS | FAIL | WRONG" in " ".join(docs.split())
    # a clean run that regresses is not a pass
    code, report, _ = _main(tmp_path, FakeMeasure({"erm-one_epoch": 12.0, "jtt-no_upweighting": 30.0,
                                                   "clean1": 9.0}))
    assert code == 1 and [c["ok"] for c in report["clean"]] == [True, False]


def test_a_probe_is_reported_but_does_not_decide_the_verdict(tmp_path, monkeypatch):
    probe = mutation.Mutation("jtt", "probe_small", ("jtt.lambda_up=2",), "part of the upweighting",
                              required=False, why_probe="a test probe")
    monkeypatch.setattr(mutation, "MUTATIONS", (*MUTATIONS, probe))
    # the probe moves JTT by 1 point: within the tolerance, not caught, and the test still passes
    code, report, docs = _main(tmp_path, FakeMeasure({"erm-one_epoch": 12.0, "jtt-no_upweighting": 30.0,
                                                      "jtt-probe_small": 1.0}))
    assert code == 0 and report["passed"]
    p = next(m for m in report["mutations"] if m["mutation"] == "probe_small")
    assert (p["required"], p["expected"], p["gate"], p["caught"]) == (False, "probe", "PASS", False)
    flat = " ".join(docs.split())
    assert "| jtt-probe_small | jtt.lambda_up=2 | worst_group_acc | 70.00 | 69.00 | -1.00 | 5.00 | ok | PASS | probe | not caught (probe) |" in flat
    assert "Probe jtt-probe_small (not caught), not required: a test probe." in flat
    assert "Every required mutation failed the gate: yes" in flat
    # a required mutation that is missed still fails the test, probe or no probe
    code, report, _ = _main(tmp_path, FakeMeasure({"erm-one_epoch": 12.0, "jtt-no_upweighting": 2.0,
                                                   "jtt-probe_small": 30.0}))
    assert code == 1 and not report["passed"]
    assert next(m for m in report["mutations"] if m["mutation"] == "probe_small")["caught"]


def test_a_method_outside_the_reference_is_refused(tmp_path, capsys):
    code = mutation.main(["--reference", str(_reference(tmp_path)), "--methods", "dfr", "--clean", "0",
                          "--runs-dir", str(tmp_path / "runs"), "--docs", ""], measure=FakeMeasure({}))
    assert code == 2 and "dfr: not in the reference" in capsys.readouterr().err


def test_mutated_runs_never_write_into_a_clean_folder(tmp_path):
    """Copies, not links: a file a mutated run rewrites in the copied ERM folder leaves clean0's alone."""
    clean = tmp_path / "clean0" / "toy" / "erm" / "seed0"
    clean.mkdir(parents=True)
    (clean / "done").write_text("done\n")
    (clean / "result.json").write_text("{}")
    mut = next(m for m in MUTATIONS if m.method == "jtt")
    copied = mutation.copy_clean_inputs(tmp_path / "clean0", tmp_path / mut.label, mut, [0])
    assert copied == [str(tmp_path / mut.label / "toy" / "erm" / "seed0")]
    with open(Path(copied[0]) / "result.json", "w") as f:  # in place, as a careless writer would
        f.write('{"changed": true}')
    assert (clean / "result.json").read_text() == "{}"
    with pytest.raises(ConfigError):
        mutation.run_mutation_test(REF, ["subg"], [0], 0, tmp_path, measure=FakeMeasure({}))
