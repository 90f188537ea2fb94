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


def test_score_binary_file_is_one_line(tmp_path, capsys):
    p = tmp_path / "p.csv"
    p.write_bytes(bytes(range(256)) * 4)
    assert main(["score", "--dataset", "toy", "--predictions", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(p) in err and "UTF-8" in err


def test_score_a_folder_is_one_line(tmp_path, capsys):
    assert main(["score", "--dataset", "toy", "--predictions", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err


def test_score_reads_a_utf8_bom_header(tmp_path, capsys):
    rows = ["y,a,pred", "0,0,0", "0,1,1", "1,0,1", "1,1,1"]
    p = tmp_path / "bom.csv"
    p.write_bytes(("\ufeff" + "\n".join(rows) + "\n").encode("utf-8"))
    assert main(["score", "--dataset", "toy", "--predictions", str(p), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["avg_acc"] == pytest.approx(75.0) and r["worst_group_acc"] == 0.0


@pytest.mark.parametrize("header", ["y,a,pred,y", "y,a,pred,pred", "y,y,a,pred"])
def test_score_rejects_a_repeated_column(tmp_path, capsys, header):
    repeated = [c for c in header.split(",") if header.split(",").count(c) > 1][0]
    p = _write(tmp_path, header + "\n" + "\n".join(",".join(["0"] * len(header.split(","))) for _ in range(4)) + "\n")
    assert main(["score", "--dataset", "toy", "--predictions", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"column(s) {repeated} appear more than once" in err


def test_score_names_missing_groups_instead_of_a_partial_worst_group(tmp_path, capsys):
    # groups (0,0) and (1,1) only: the worst over these two would be 100
    p = _write(tmp_path, "y,a,pred\n0,0,0\n0,0,0\n1,1,1\n")
    assert main(["score", "--dataset", "toy", "--predictions", str(p), "--json"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and len(err.splitlines()) == 1
    from spuraug.data.registry import dataset_info

    info = dataset_info("toy")
    names = [info.group_name(0 * 2 + 1), info.group_name(1 * 2 + 0)]
    assert all(n in err for n in names) and "--allow-missing-groups" in err
    # with the flag: scored over the groups present, the missing ones listed, n = 0 in groups
    assert main(["score", "--dataset", "toy", "--predictions", str(p), "--json", "--allow-missing-groups"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["worst_group_acc"] == 100.0 and r["missing_groups"] == names
    assert [g["n"] for g in r["groups"]] == [2, 0, 0, 1]
    assert main(["score", "--dataset", "toy", "--predictions", str(p), "--allow-missing-groups"]) == 0
    assert "over the groups present only" in capsys.readouterr().out
