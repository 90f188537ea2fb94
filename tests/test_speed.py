"""Issue 21's knobs: channels-last on the CPU, ``loader.num_workers: auto``."""

from __future__ import annotations

import pytest
import torch

from spuraug import engine
from spuraug.config import ConfigError, load_config
from spuraug.models import ResNet50, ToyCNN

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_channels_last_default_follows_the_device_and_the_model():
    toy = ToyCNN(2, width=8)
    assert engine.use_channels_last(toy, CUDA) is True
    assert engine.use_channels_last(toy, CPU) is True  # measured faster on 2 CPU cores (ToyCNN.cpu_channels_last)
    assert engine.use_channels_last(toy, CPU, channels_last=True) is True
    assert engine.use_channels_last(toy, CUDA, channels_last=False) is False
    assert engine.use_channels_last(ResNet50(2, pretrained=False), CPU) is ResNet50.cpu_channels_last


def _tiny_fit(channels_last: bool | None):
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 64, 64, generator=g)
    y = torch.randint(0, 2, (16,), generator=g)
    data = TensorDataset(x, y, y, torch.arange(16))
    torch.manual_seed(0)
    model = ToyCNN(2, width=8)
    opt = engine.build_optimizer(model.parameters(), "sgd", 0.1)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    engine.fit(model, engine.TrainSource(data, 8), opt, 1, progress=False, device="cpu", channels_last=channels_last)
    conv = model.body[0][0].weight
    return model, seen, conv


def test_fit_on_cpu_in_channels_last_trains_the_same_model():
    ref, seen_ref, conv_ref = _tiny_fit(False)
    cl, seen_cl, conv_cl = _tiny_fit(None)  # the toy CNN's CPU default: channels-last
    assert all(seen_ref) and not any(seen_cl)  # channels-last batches are not contiguous NCHW
    assert conv_cl.is_contiguous(memory_format=torch.channels_last) and not conv_cl.is_contiguous()
    assert conv_ref.is_contiguous()
    for a, b in zip(ref.parameters(), cl.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_num_workers_auto_uses_the_cores_available(monkeypatch):
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert engine.resolve_num_workers("auto", "cpu") == 1
    assert engine.resolve_num_workers("auto", "cuda") == 1
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert engine.resolve_num_workers("auto", "cpu") == 4
    assert engine.resolve_num_workers("auto", "cuda") == 16
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert engine.resolve_num_workers("auto", "cuda") == 11
    assert engine.resolve_num_workers(3, "cpu") == 3
    for bad in ("many", -1, True):
        with pytest.raises(ValueError, match="loader.num_workers"):
            engine.resolve_num_workers(bad, "cpu")


def test_config_accepts_num_workers_auto_and_names_a_bad_value(tmp_path, monkeypatch):
    cfg = load_config("toy", "erm", overrides={"loader.num_workers": "auto"})
    assert cfg["loader"]["num_workers"] == "auto"
    assert cfg["config_hash"] == load_config("toy", "erm")["config_hash"]  # a runtime key
    with pytest.raises(ConfigError, match=r"loader.num_workers: expected an integer >= 0 or auto, got 'many'"):
        load_config("toy", "erm", overrides={"loader.num_workers": "many"})
    with pytest.raises(ConfigError, match=r"loader.num_workers: expected an integer >= 0 or auto, got -2"):
        load_config("toy", "erm", overrides={"loader.num_workers": -2})
    from spuraug.runs import RunContext

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    ctx = RunContext("toy", "erm", 0, cfg, tmp_path, tmp_path, device=CPU)
    assert ctx.num_workers == 2
