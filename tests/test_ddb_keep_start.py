"""retrain.keep_start: DDB's model selection may pick the ERM model it starts from (epoch 0)."""

import json

import pytest

from spuraug.config import ConfigError, load_config
from spuraug.ddb.method import start_line
from spuraug.engine import select_line


def _line(epoch, val_wga, test_wga):
    return {"epoch": epoch, "val": {"worst_group_acc": val_wga, "avg_acc": 90.0},
            "test": {"worst_group_acc": test_wga, "avg_acc": 90.0}}


@pytest.fixture
def erm_run(tmp_path):
    d = tmp_path / "erm" / "seed0"
    d.mkdir(parents=True)
    lines = [_line(1, 40.0, 41.0), _line(2, 70.0, 68.0), _line(3, 60.0, 62.0)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "result.json").write_text(json.dumps({"selected_epoch": 2}))
    return d


def test_the_start_line_is_that_of_the_checkpoint_ddb_starts_from(erm_run):
    last, best = start_line(erm_run, "last"), start_line(erm_run, "best")
    assert (last["epoch"], last["val"]["worst_group_acc"], last["test"]["worst_group_acc"]) == (0, 60.0, 62.0)
    assert (best["epoch"], best["val"]["worst_group_acc"]) == (0, 70.0)


def test_selection_keeps_the_start_when_no_retrained_epoch_beats_it_on_validation(erm_run):
    start = start_line(erm_run, "last")
    worse, better = _line(5, 55.0, 80.0), _line(6, 61.0, 50.0)
    assert select_line([start, worse], "val_worst_group_acc") is start  # test accuracy plays no part
    assert select_line([start, better], "val_worst_group_acc") is better
    assert select_line([start, _line(7, 60.0, 99.0)], "val_worst_group_acc") is start  # ties go to the start


def test_keep_start_is_a_checked_option_off_by_default_on_the_real_datasets():
    from spuraug.ddb.config import RetrainConfig

    assert RetrainConfig().keep_start is False  # the reference protocol
    assert load_config("waterbirds", "ddb")["hparams"]["retrain"].get("keep_start", False) is False
    with pytest.raises(ConfigError, match="ddb.retrain.keep_start"):
        load_config("toy", "ddb", overrides={"ddb.retrain.keep_start": "maybe"})
