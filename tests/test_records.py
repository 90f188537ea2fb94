"""The record schema (spuraug/records.py): files on disk read and round-trip unchanged;
a malformed file is an error naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spuraug.records import EpochLine, RecordError, RunResult, StageManifest

ROOT = Path(__file__).resolve().parents[1]


def _committed(name: str, limit: int = 40) -> list[Path]:
    return sorted((ROOT / "results").rglob(name))[:limit]


def test_committed_run_lines_read_and_round_trip_unchanged():
    """Every line of the committed version folders' runs.jsonl is a result.json without the
    config it repeats: it reads as a RunResult and writes back the same keys in the same order."""
    paths = _committed("runs.jsonl")
    assert paths, "no committed runs.jsonl under results/"
    for path in paths:
        for line in path.read_text().splitlines():
            raw = json.loads(line)
            rec = RunResult.from_dict(raw, str(path))
            out = rec.to_dict()
            out.pop("config", None)
            assert out == raw and list(out) == list(raw), path
            assert rec.test["worst_group_acc"] == raw["test"]["worst_group_acc"]


def test_written_records_are_what_was_built(tmp_path):
    line = EpochLine(epoch=3, step=30, train_loss=0.5, extra={"val": {"worst_group_acc": 1.0}})
    assert list(line.to_dict()) == ["epoch", "step", "train_loss", "images_per_s", "step_time_s", "peak_mem_mb", "val"]
    assert line.split("val") == {"worst_group_acc": 1.0} and line.split("test") is None
    m = StageManifest(stage="inpaint", config_hash="abc", wall_time_s=10.0, images=20, images_per_s=2.0,
                      extra={"counts": {"generated": 20}})
    m.write(tmp_path / "manifest.json")
    assert json.loads((tmp_path / "manifest.json").read_text()) == m.to_dict()
    assert StageManifest.read(tmp_path / "manifest.json") == m


@pytest.mark.parametrize("text, match", [
    ('{"dataset": "toy", "method": "erm", "seed": 0}', r"result.json: missing field 'test'"),
    ('{"dataset": "toy", "method": "erm", "seed": 0, "test": {"avg_acc": 1}}',
     r"result.json: field 'test' has no 'worst_group_acc'"),
    ('{"dataset": "toy", "method": "erm", "seed": 0, "te', r"result.json: not valid JSON"),
    ("[1, 2]", r"result.json: expected a JSON object"),
])
def test_malformed_result_names_file_and_field(tmp_path, text, match):
    p = tmp_path / "result.json"
    p.write_text(text)
    with pytest.raises(RecordError, match=match):
        RunResult.read(p)


def test_stage_manifest_without_stage_and_missing_file(tmp_path):
    p = tmp_path / "manifest.json"
    p.write_text('{"wall_time_s_partial": 3.0}')  # what an interrupted stage leaves
    with pytest.raises(RecordError, match=r"manifest.json: missing field 'stage'"):
        StageManifest.read(p)
    with pytest.raises(RecordError, match=r"nothere.json: missing"):
        StageManifest.read(tmp_path / "nothere.json")
