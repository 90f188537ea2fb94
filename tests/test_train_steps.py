"""engine.train_steps with a torch/diffusers learning-rate schedule and diffusers' EMA (the toy
zoo's loop): the schedule's rates, and a resumed loop ending where an uninterrupted one does."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.training_utils import EMAModel

from spuraug.engine import ResumePoint, train_steps
from spuraug.toyworld.recipe import warmup_cosine_factor, warmup_cosine_schedule

STEPS = 12


def test_warmup_cosine_schedule_warms_up_then_decays_to_a_tenth():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine_schedule(opt, 100)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm = min(50, 100 // 5 + 1)  # 21 warm-up steps
    assert rates[0] == pytest.approx(2.0 / warm * (0.1 + 0.9 * 0.5 * 2))
    assert rates == pytest.approx([2.0 * warmup_cosine_factor(s, 100) for s in range(100)], rel=1e-12)
    assert max(rates) == pytest.approx(rates[warm - 1]) and rates[warm - 1] > rates[warm - 2]
    assert rates[-1] == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100))))
    assert all(a >= b for a, b in zip(rates[warm - 1:], rates[warm:]))  # decays after the warm-up


def _train(tmp_path, steps: int, init_seed: int):
    """The zoo's loop on a tiny model (schedule + EMA + resume from ``tmp_path/ck.pt``), built
    from ``init_seed``; returns the model (EMA weights copied in), optimizer and start step."""
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    ema = EMAModel(params, decay=0.9, use_ema_warmup=False)

    def step_loss(step: int) -> torch.Tensor:
        return model(torch.randn(8, 4, generator=torch.Generator().manual_seed(step))).pow(2).mean()

    def restore(ck: dict) -> None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        ema.load_state_dict(ck["ema"])

    start = train_steps(step_loss, opt, steps, lr_scheduler=warmup_cosine_schedule(opt, STEPS),
                        after_step=lambda step: ema.step(params), resume=ResumePoint(tmp_path / "ck.pt"),
                        restore=restore, save_every_steps=1, progress=False,
                        state=lambda done: {"model": model.state_dict(), "opt": opt.state_dict(),
                                            "ema": ema.state_dict(), "step": done})
    ema.copy_to(params)
    return model, opt, start


def _loop(tmp_path, stop_at: int | None, legacy: bool = False):
    """Uninterrupted, or stopped after ``stop_at`` steps and started again as a new process
    would (other initial weights: everything must come from the saved state); ``legacy``: the
    saved state lacks the schedule, as states written before the schedule was saved."""
    if stop_at is None:
        return _train(tmp_path, STEPS, 0)[:2]
    _train(tmp_path, stop_at, 0)
    if legacy:
        ck = torch.load(tmp_path / "ck.pt", weights_only=False)
        del ck["lr_scheduler"]
        torch.save(ck, tmp_path / "ck.pt")
    model, opt, start = _train(tmp_path, STEPS, 1)
    assert start == stop_at
    return model, opt


@pytest.mark.parametrize("legacy", [False, True])
def test_resumed_loop_ends_with_the_uninterrupted_weights_rate_and_ema(tmp_path, legacy):
    (tmp_path / "full").mkdir()
    (tmp_path / "cut").mkdir()
    full_model, full_opt = _loop(tmp_path / "full", None)
    cut_model, cut_opt = _loop(tmp_path / "cut", 5, legacy=legacy)
    for a, b in zip(full_model.parameters(), cut_model.parameters()):
        assert torch.equal(a, b)
    assert full_opt.param_groups[0]["lr"] == cut_opt.param_groups[0]["lr"]
