"""bench.studies.toy_zoo_diff: per-file weight differences between two zoo builds."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from bench.studies.toy_zoo_diff import main, tensor_diffs, zoo_diff


def test_tensor_diffs_reports_identity_and_the_largest_difference():
    a = {"w": torch.tensor([1.0, -4.0]), "b": torch.tensor([0.5])}
    assert tensor_diffs(a, {k: v.clone() for k, v in a.items()}) == {
        "tensors": 2, "bit_identical": True, "max_abs_diff": 0.0, "max_rel_diff": 0.0, "only_in_a": [], "only_in_b": []}
    b = {"w": torch.tensor([1.0, -4.5]), "b": torch.tensor([0.5]), "extra": torch.zeros(1)}
    d = tensor_diffs(a, b)
    assert not d["bit_identical"] and d["max_abs_diff"] == pytest.approx(0.5)
    assert d["max_rel_diff"] == pytest.approx(0.5 / 4.0) and d["only_in_b"] == ["extra"]
    with pytest.raises(ValueError, match="w: shapes differ"):
        tensor_diffs(a, {"w": torch.zeros(3)})


def test_zoo_diff_walks_both_folders(tmp_path, capsys):
    for name, scale in (("a", 1.0), ("b", 1.0 + 2**-20)):
        (tmp_path / name / "vae").mkdir(parents=True)
        save_file({"w": torch.ones(3) * scale}, str(tmp_path / name / "vae" / "m.safetensors"))
    save_file({"w": torch.ones(1)}, str(tmp_path / "a" / "only.safetensors"))
    rep = zoo_diff(tmp_path / "a", tmp_path / "b")
    assert list(rep["files"]) == ["vae/m.safetensors"] and rep["only_in_a"] == ["only.safetensors"]
    assert not rep["files"]["vae/m.safetensors"]["bit_identical"]
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r.json")]) == 0
    assert "vae/m.safetensors: differs" in capsys.readouterr().out and (tmp_path / "r.json").is_file()
