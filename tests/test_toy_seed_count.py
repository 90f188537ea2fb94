"""bench.studies.toy_seed_count on hand-built run folders with known worst-group accuracies."""

from __future__ import annotations

import json

import pytest
from harness_runs import make_run


def test_seed_count_pairs_by_seed_and_splits_tuned_from_fresh(tmp_path):
    from bench.studies.toy_seed_count import main

    dfr = [95.0, 96.0, 94.0, 95.0, 97.0, 93.0]
    # DDB = DFR + 1 on every seed except seed 1 (-1): paired difference mean 2/3, std known.
    ddb = [96.0, 95.0, 95.0, 96.0, 98.0, 94.0]
    for s, (a, b) in enumerate(zip(dfr, ddb)):
        make_run(tmp_path, "toy", "dfr", s, a, 96.0)
        make_run(tmp_path, "toy", "ddb", s, b, 96.0)
    out = tmp_path / "seeds.json"
    assert main([str(tmp_path), "--methods", "dfr", "ddb", "--seeds", *map(str, range(6)),
                 "--tuned-seeds", "0", "1", "2", "--out", str(out), "--quiet"]) == 0
    rep = json.loads(out.read_text())["test_worst_group"]
    assert rep["dfr"]["all"]["mean"] == pytest.approx(95.0)
    assert rep["dfr"]["tuned"]["mean"] == pytest.approx(95.0) and rep["dfr"]["fresh"]["mean"] == pytest.approx(95.0)
    assert rep["ddb"]["tuned"]["n"] == 3 and rep["ddb"]["fresh"]["n"] == 3
    d = rep["ddb"]["minus_dfr"]
    assert (d["wins"], d["ties"], d["losses"]) == (5, 0, 1)
    assert d["difference"]["mean"] == pytest.approx(2 / 3, abs=0.01)
    # std of [1, -1, 1, 1, 1, 1] = 0.8165; 95% t half-width with 5 dof = 2.5706 * 0.8165 / sqrt(6)
    assert d["difference"]["std"] == pytest.approx(0.82, abs=0.01)
    assert d["difference"]["ci95"] == pytest.approx(2.5706 * 0.8165 / 6 ** 0.5, abs=0.01)
    assert 0.05 < d["paired_t_p"] < 0.2  # t = 2.0, 5 dof: p = 0.102
    fresh = rep["ddb"]["minus_dfr_fresh"]
    assert fresh["seeds"] == [3, 4, 5] and fresh["wins"] == 3 and fresh["difference"]["mean"] == pytest.approx(1.0)
    assert "minus_dfr" not in rep["dfr"]
    # make_run writes the test metrics as validation metrics too
    assert json.loads(out.read_text())["val_worst_group"]["ddb"]["all"]["mean"] == pytest.approx(sum(ddb) / 6, abs=0.01)


def test_seed_count_keeps_named_sweeps_side_by_side(tmp_path):
    from bench.studies.toy_seed_count import main

    for s, (a, b) in enumerate([(95.0, 93.0), (96.0, 94.0)]):
        make_run(tmp_path / "old", "toy", "dfr", s, a, 96.0)
        make_run(tmp_path / "old", "toy", "ddb", s, b, 96.0)
        make_run(tmp_path / "new", "toy", "ddb", s, b + 2, 96.0)
    out = tmp_path / "seeds.json"
    assert main([str(tmp_path / "old"), "--methods", "dfr", "ddb", "--seeds", "0", "1", "--name", "old",
                 "--out", str(out), "--quiet"]) == 0
    assert main([str(tmp_path / "new"), "--methods", "ddb", "--seeds", "0", "1", "--against", "ddb",
                 "--name", "new", "--out", str(out), "--quiet"]) == 0
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"old", "new"}
    assert variants["old"]["test_worst_group"]["ddb"]["minus_dfr"]["difference"]["mean"] == pytest.approx(-2.0)
    assert variants["new"]["test_worst_group"]["ddb"]["all"]["mean"] == pytest.approx(95.5)


def test_seed_count_names_missing_runs_and_unknown_baseline(tmp_path, capsys):
    from bench.studies.toy_seed_count import main, summarise

    make_run(tmp_path, "toy", "dfr", 0, 95.0, 96.0)
    assert main([str(tmp_path), "--methods", "dfr", "ddb", "--seeds", "0"]) == 2
    assert "ddb/seed0: missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--against 'jtt'"):
        summarise({"dfr": {0: 95.0, 1: 96.0}}, [0], "jtt")


def test_update_json_merges_under_the_lock_and_writes_nan_as_null(tmp_path):
    """bench.provenance.update_json, the keyed records' read-modify-write (toy_seed_count --name,
    toy_calibration): starts from {} for a new file, keeps other keys, holds the file's lock."""
    from filelock import FileLock, Timeout

    from bench.provenance import update_json

    out = tmp_path / "sub" / "record.json"
    update_json(out, lambda d: {**d, "a": 1})
    seen = []

    def add_b(d):
        seen.append(dict(d))
        with pytest.raises(Timeout):  # the lock is held while the update runs
            FileLock(str(out.parent / ".record.json.lock")).acquire(timeout=0.05)
        return {**d, "b": float("nan")}

    assert update_json(out, add_b)["a"] == 1
    assert seen == [{"a": 1}]
    assert json.loads(out.read_text()) == {"a": 1, "b": None}
