import json

import pytest

from spuraug.cli import main


def _write(tmp_path, text, name="p.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_score_json_agrees_with_hand_computation(tmp_path, capsys):
    # toy groups: (0,0) 2/2, (0,1) 1/2, (1,0) 0/1, (1,1) 1/1
    rows = ["y,a,pred,extra", "0,0,0,x", "0,0,0,x", "0,1,0,x", "0,1,1,x", "1,0,0,x", "1,1,1,x"]
    p = _write(tmp_path, "\n".join(rows) + "\n")
    assert main(["score", "--dataset", "toy", "--predictions", str(p), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["worst_group_acc"] == 0.0
    assert r["avg_acc"] == pytest.approx(100 * 4 / 6)
    assert r["mean_group_acc"] == pytest.approx((100 + 50 + 0 + 100) / 4)
    assert r["worst_class_acc"] == pytest.approx(50.0)
    from spuraug.data.toy import ToyConfig, split_group_counts

    w = split_group_counts(ToyConfig(), "train")
    assert r["adjusted_avg_acc"] == pytest.approx((w[0] * 100 + w[1] * 50 + w[2] * 0 + w[3] * 100) / sum(w))
    assert r["groups"] == [
        {"y": 0, "a": 0, "n": 2, "acc": 100.0},
        {"y": 0, "a": 1, "n": 2, "acc": 50.0},
        {"y": 1, "a": 0, "n": 1, "acc": 0.0},
        {"y": 1, "a": 1, "n": 1, "acc": 100.0},
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("y,a\n0,0\n", "missing column(s) pred"),
        ("y,a,pred\n0,0,0\n1,x,0\n", "line 3: column 'a' is not an integer"),
        ("y,a,pred\n0,0,2\n", "line 2: column 'pred' = 2 is out of range"),
        ("y,a,pred\n", "no predictions"),
    ],
)
def test_score_rejects_malformed_files(tmp_path, capsys, text, message):
    p = _write(tmp_path, text)
    assert main(["score", "--dataset", "toy", "--predictions", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(p) in err
    assert len(err.splitlines()) == 1


def test_data_check_toy_prints_three_splits_by_four_groups(capsys):
    assert main(["data", "check", "--dataset", "toy"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.split() and line.split()[0] in ("train", "val", "test")]
    assert [r.split()[0] for r in rows] == ["train", "val", "test"]
    assert all(len(r.split()) == 1 + 4 + 1 for r in rows)
    assert rows[0].split()[1:] == ["1596", "84", "36", "684", "2400"]
