"""bench.gpu.reference_loop --smoke: every part runs with tiny models on the CPU and the record
holds what a GPU session reports (the GPU numbers themselves come from a device session)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("captum")


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_reference_loop_smoke(tmp_path, capsys):
    from bench import plan
    from bench.gpu import reference_loop as rl

    out = tmp_path / "ref.json"
    rec = rl.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(rec))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(rec))
    assert rec["smoke"] and rec["device"] == "cpu"
    ref, staged = rec["reference"], rec["staged"]
    assert ref["images"] == 4 and ref["batch_size"] == 2 and ref["images_per_s"] > 0
    assert staged["images"] == 4 and set(staged["stages"]) == {"segment", "inpaint", "prune"}
    assert staged["seconds"] == pytest.approx(sum(s["seconds"] for s in staged["stages"].values()))
    assert rec["ratio"] == pytest.approx(staged["images_per_s"] / ref["images_per_s"])
    train = rec["train"]
    assert train["bare"]["eager"]["images_per_s"] > 0 and train["bare"]["eager"]["channels_last"]
    for loader in ("loader_cpu_decode", "loader_gpu_decode"):
        assert train[loader]["images"] > 0 and train[loader]["images_per_s"] > 0
    assert train["real"]["images_per_s"] > 0 and train["real"]["ratio_to_best_bare"] > 0
    # a smoke record never feeds the plan
    assert plan._rates_of_file(out, tmp_path) == []


def test_gpu_decode_matches_the_train_transform_shape(tmp_path):
    import torch
    from torchvision.io import read_file

    from bench.gpu import reference_loop as rl
    from bench.train_throughput import write_waterbirds_like

    root = write_waterbirds_like(tmp_path, n_train=2, n_val=0, n_test=0, size=48)
    files = sorted(root.rglob("*.jpg"))
    x = rl.gpu_decode_batch([read_file(str(f)) for f in files], torch.device("cpu"), size=32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert -3 < float(x.mean()) < 3  # normalised, not raw bytes
