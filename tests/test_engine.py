"""The training engine and run folders: determinism, resume, done marker, NaN, hooks."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spuraug import engine
from spuraug.data import get_dataset
from spuraug.models import ToyCNN
from spuraug.runs import load_model, read_metrics, run_dir, run_method

TIMING = ("images_per_s", "step_time_s", "peak_mem_mb")


@pytest.fixture
def tiny(tiny_toy_runs):
    return {**tiny_toy_runs, "erm.epochs": 2, "erm.batch_size": 32, "erm.lr": 0.05}


def _strip(lines):
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def _splits(small_toy):
    opts = {"n_train": small_toy.n_train, "n_val": small_toy.n_val, "n_test": small_toy.n_test,
            "correlation": small_toy.correlation}
    return (get_dataset("toy", "train", transform="train", **opts),
            {"val": get_dataset("toy", "val", **opts), "test": get_dataset("toy", "test", **opts)})


def _fit(small_toy, out_dir, epochs=3, objective=None, step_callback=None, seed=0, schedule="constant"):
    train, evals = _splits(small_toy)
    torch.manual_seed(seed)
    model = ToyCNN(2, width=8)
    opt = engine.build_optimizer(model.parameters(), "sgd", 0.05, 1e-4)
    return engine.fit(model, engine.TrainSource(train, 32), opt, epochs, evals, objective=objective,
                      out_dir=out_dir, seed=seed, device="cpu", progress=False, step_callback=step_callback,
                      lr_scheduler=engine.build_lr_schedule(opt, schedule, epochs))


def test_same_seed_same_metrics_and_weights(tmp_path, tiny):
    a = run_method("toy", "erm", 0, runs_dir=tmp_path / "a", overrides=tiny, progress=False)
    b = run_method("toy", "erm", 0, runs_dir=tmp_path / "b", overrides=tiny, progress=False)
    run_method("toy", "erm", 1, runs_dir=tmp_path / "c", overrides=tiny, progress=False)
    la, lb = (read_metrics(run_dir(tmp_path / r, "toy", "erm", s)) for r, s in (("a", 0), ("b", 0)))
    assert len(la) == 2 and _strip(la) == _strip(lb)
    assert a["test"] == b["test"] and a["config_hash"] == b["config_hash"]
    ma = load_model(run_dir(tmp_path / "a", "toy", "erm", 0))
    mb = load_model(run_dir(tmp_path / "b", "toy", "erm", 0))
    mc = load_model(run_dir(tmp_path / "c", "toy", "erm", 1))
    assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mc.state_dict().values()))
    # contract fields
    for key in ("dataset", "method", "seed", "selection", "selected_epoch", "annotation", "val", "test",
                "config_hash", "wall_time_s", "config"):
        assert key in a
    assert a["annotation"] == {"train_group_labels": False, "val_group_labels": True}
    assert {"epoch", "step", "train_loss", "images_per_s", "step_time_s", "peak_mem_mb", "val", "test"} <= set(la[0])
    assert "groups" in la[0]["val"] and la[0]["val"]["groups"][0]["n"] > 0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, small_toy, schedule):
    full = _fit(small_toy, tmp_path / "full", schedule=schedule)
    if schedule == "cosine":  # each epoch's rate is logged: 0.05 * (1 + cos(pi * (e - 1) / 3)) / 2
        assert [line["lr"] for line in full.history] == pytest.approx([0.05, 0.0375, 0.0125])
    else:
        assert all("lr" not in line for line in full.history)

    class Crash(Exception):
        pass

    def crash(epoch, step):
        if epoch == 2 and step == 9:
            raise Crash

    with pytest.raises(Crash):
        _fit(small_toy, tmp_path / "crashed", step_callback=crash, schedule=schedule)
    assert engine.load_state(tmp_path / "crashed/checkpoints/last.pt")["epoch"] == 1
    resumed = _fit(small_toy, tmp_path / "crashed", schedule=schedule)
    assert resumed.resumed_from_epoch == 1
    assert _strip(full.history) == _strip(resumed.history)
    assert _strip(read_metrics(tmp_path / "full")) == _strip(read_metrics(tmp_path / "crashed"))
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)
    best_full = engine.load_state(tmp_path / "full/checkpoints/best.pt")
    best_res = engine.load_state(tmp_path / "crashed/checkpoints/best.pt")
    assert all(torch.equal(best_full[k], best_res[k]) for k in best_full)


def _same_run(a, b):
    assert _strip(read_metrics(a)) == _strip(read_metrics(b))
    for name in ("last", "best"):
        sa, sb = (engine.load_state(d / "checkpoints" / f"{name}.pt") for d in (a, b))
        ma, mb = sa.get("model", sa), sb.get("model", sb)
        assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_torn_last_metrics_line_is_dropped_with_one_line(tmp_path, small_toy, capsys):
    _fit(small_toy, tmp_path / "full", epochs=2)
    _fit(small_toy, tmp_path / "torn", epochs=1)
    metrics = tmp_path / "torn" / "metrics.jsonl"
    with open(metrics, "a") as f:  # a crash in the middle of an append
        f.write('{"epoch": 2, "step": 14, "train_lo')
    resumed = _fit(small_toy, tmp_path / "torn", epochs=2)
    assert resumed.resumed_from_epoch == 1
    said = [s for s in capsys.readouterr().err.splitlines() if "torn" in s]
    assert len(said) == 1 and str(metrics) in said[0]
    _same_run(tmp_path / "full", tmp_path / "torn")
    # a damaged line that is not the last one is an error naming the file and the line
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0][:20] + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1"):
        engine.read_jsonl(metrics)


def test_metrics_file_is_replaced_whole_never_appended(tmp_path, small_toy, monkeypatch):
    opened = []
    real_open = open

    def spy(file, mode="r", *args, **kwargs):
        opened.append((str(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    _fit(small_toy, tmp_path / "run", epochs=2)
    assert not [f for f, mode in opened if f.endswith("metrics.jsonl") and "a" in mode]
    assert len(read_metrics(tmp_path / "run")) == 2


def test_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path, small_toy, capsys):
    _fit(small_toy, tmp_path / "full", epochs=3)

    class Crash(Exception):
        pass

    def crash(epoch, step):
        if epoch == 3:
            raise Crash

    with pytest.raises(Crash):  # killed in epoch 3: last.pt holds epoch 2, last.previous.pt epoch 1
        _fit(small_toy, tmp_path / "cut", epochs=3, step_callback=crash)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated (a torn copy, a full disk)
    with pytest.raises(engine.UnreadableCheckpoint, match="last.pt"):
        engine.load_state(last)
    resumed = _fit(small_toy, tmp_path / "cut", epochs=3)
    assert resumed.resumed_from_epoch == 1  # epoch 2 is trained again from the previous checkpoint
    said = [s for s in capsys.readouterr().err.splitlines() if "unreadable" in s]
    assert len(said) == 1 and str(last) in said[0] and "epoch 1" in said[0]
    _same_run(tmp_path / "full", tmp_path / "cut")


def test_unreadable_checkpoint_without_a_previous_one_restarts(tmp_path, small_toy, capsys):
    _fit(small_toy, tmp_path / "full", epochs=2)
    _fit(small_toy, tmp_path / "cut", epochs=1)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    last.write_bytes(b"")  # empty: nothing to fall back to
    resumed = _fit(small_toy, tmp_path / "cut", epochs=2)
    assert resumed.resumed_from_epoch == 0
    said = [s for s in capsys.readouterr().err.splitlines() if "unreadable" in s]
    assert len(said) == 1 and str(last) in said[0] and "from epoch 1" in said[0]
    _same_run(tmp_path / "full", tmp_path / "cut")


def test_done_run_is_skipped_forced_run_keeps_the_old_one(tmp_path, tiny):
    first = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    d = run_dir(tmp_path, "toy", "erm", 0)
    assert (d / "done").is_file() and (d / "checkpoints/last.pt").is_file() and (d / "checkpoints/best.pt").is_file()
    stamp = (d / "result.json").stat().st_mtime_ns
    again = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    assert again == json.loads((d / "result.json").read_text()) and again["wall_time_s"] == first["wall_time_s"]
    assert (d / "result.json").stat().st_mtime_ns == stamp
    # another config in the same folder: refused, nothing touched
    from spuraug.runs import RunConfigMismatch

    with pytest.raises(RunConfigMismatch, match="--force"):
        run_method("toy", "erm", 0, runs_dir=tmp_path, overrides={**tiny, "erm.lr": 0.01}, progress=False)
    assert (d / "result.json").stat().st_mtime_ns == stamp
    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, force=True, progress=False)
    previous = d.with_name(".seed0.previous")
    assert json.loads((previous / "result.json").read_text())["wall_time_s"] == first["wall_time_s"]
    assert (d / "done").is_file()


def test_stale_finished_run_is_redone_and_the_old_one_kept(tmp_path, tiny, monkeypatch, capsys):
    from spuraug.methods import get_method
    from spuraug.runs import is_current

    first = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    assert is_current("toy", "erm", 0, tmp_path, overrides=tiny)
    monkeypatch.setattr(get_method("erm"), "stale_reason", lambda self, ctx, result: "the weights changed")
    assert not is_current("toy", "erm", 0, tmp_path, overrides=tiny)
    again = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides=tiny, progress=False)
    d = run_dir(tmp_path, "toy", "erm", 0)
    assert "the weights changed" in capsys.readouterr().err
    previous = d.with_name(".seed0.previous")
    assert json.loads((previous / "result.json").read_text())["wall_time_s"] == first["wall_time_s"]
    # trained again: a new result file written after the kept one (not wall times: two tiny runs can tie)
    assert (d / "done").is_file() and again == json.loads((d / "result.json").read_text())
    assert (d / "result.json").stat().st_mtime_ns > (previous / "result.json").stat().st_mtime_ns


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, small_toy):
    class NaNAtEpoch2(engine.Objective):
        def __call__(self, losses, batch):
            return losses.mean() * (float("nan") if self.epoch == 2 else 1.0)

    obj = NaNAtEpoch2()
    obj.epoch = 1

    def cb(epoch, step):
        obj.epoch = 2 if step >= 7 else 1  # 7 steps = one epoch of 200 images in batches of 32

    with pytest.raises(engine.NonFiniteLossError, match=r"epoch 2.*last.pt \(epoch 1\)"):
        _fit(small_toy, tmp_path, objective=obj, step_callback=cb)
    assert engine.load_state(tmp_path / "checkpoints/last.pt")["epoch"] == 1
    assert [line["epoch"] for line in read_metrics(tmp_path)] == [1]


def test_per_example_losses_match_cross_entropy(small_toy):
    _, evals = _splits(small_toy)
    torch.manual_seed(0)
    model = ToyCNN(2, width=8).eval()
    ds = evals["val"]
    losses = engine.per_example_losses(model, ds, "cpu", batch_size=16)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        ref = F.cross_entropy(model(x), torch.as_tensor(ds.y), reduction="none").numpy()
    assert losses.shape == (len(ds),) and np.allclose(losses, ref, atol=1e-5)


def test_second_source_reaches_the_objective(small_toy):
    """The hook DDB's retraining uses: batches of a second source arrive tagged by source."""
    train, evals = _splits(small_toy)
    extra = train.subset(np.flatnonzero(train.y == 1)[:10])
    seen = []

    class Spy(engine.Objective):
        def __call__(self, losses, batch):
            seen.append((batch.source.tolist(), batch.y[batch.source == 1].tolist(), batch.source_names))
            gen = batch.source == 1
            return losses[~gen].mean() + 6.0 * losses[gen].mean()

    model = ToyCNN(2, width=8)
    opt = engine.build_optimizer(model.parameters(), "adam", 1e-4)
    engine.fit(model, {"train": engine.TrainSource(train, 32), "generated": engine.TrainSource(extra, 4)},
               opt, 1, objective=Spy(), device="cpu", progress=False)
    assert len(seen) == 7  # the main source defines the epoch
    sources, ys, names = seen[0]
    assert sources.count(1) == 4 and sources.count(0) == 32 and names == ("train", "generated")
    assert ys == [1, 1, 1, 1]
    # the 10 extra examples are cycled in batches of 4, 4, 2, 4, 4, 2, 4
    assert [s.count(1) for s, _, _ in seen] == [4, 4, 2, 4, 4, 2, 4]


def test_selection_rules_pick_the_right_line():
    def m(wga, wca):
        return {"worst_group_acc": wga, "worst_class_acc": wca}

    lines = [{"epoch": 1, "val": m(10, 90), "test": m(50, 0)}, {"epoch": 2, "val": m(30, 60), "test": m(40, 0)},
             {"epoch": 3, "val": m(30, 70), "test": m(20, 0)}]
    assert engine.select_line(lines)["epoch"] == 2  # first maximum wins ties
    assert engine.select_line(lines, "val_worst_class_acc")["epoch"] == 1
    assert engine.select_line(lines, "test_oracle")["epoch"] == 1
    with pytest.raises(KeyError, match="unknown selection rule"):
        engine.select_line(lines, "best_guess")


def test_dfr_on_an_erm_run_with_a_truncated_checkpoint_says_one_line(tmp_path, tiny, capsys):
    from spuraug.cli import main

    run_method("toy", "erm", 0, runs_dir=tmp_path, overrides={**tiny, "erm.epochs": 1}, progress=False)
    last = run_dir(tmp_path, "toy", "erm", 0) / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    capsys.readouterr()
    sets = [x for k, v in {**tiny, "erm.epochs": 1}.items() if k != "dataset_options"
            for x in ("--set", f"{k}={v}")]
    sets += [x for k, v in tiny["dataset_options"].items() for x in ("--set", f"dataset_options.{k}={v}")]
    rc = main(["train", "--dataset", "toy", "--method", "dfr", "--out", str(tmp_path), *sets])
    err = capsys.readouterr().err
    assert rc == 2 and str(last) in err and "Traceback" not in err
    assert len([s for s in err.strip().splitlines() if "last.pt" in s]) == 1
