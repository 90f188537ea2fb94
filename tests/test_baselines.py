"""GroupDRO, JTT and DFR: their defining computations by hand, and small end-to-end runs."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from baselines.dfr import (
    PAPER_C_GRID,
    balanced_subset,
    fit_final_head,
    fold_head,
    l1_logistic_regression,
    tune_c,
    tune_c_on_fit_split,
)
from baselines.groupdro import GroupDROObjective
from baselines.jtt import error_set, upsampled_indices
from spuraug.engine import Batch
from spuraug.methods import get_method
from spuraug.runs import _context, load_model, read_metrics, run_dir, run_method


@pytest.fixture
def tiny(tiny_toy_runs):
    return {**tiny_toy_runs, "erm.epochs": 2, "erm.batch_size": 32, "erm.keep_epochs": [1]}


def _batch(y, a):
    y, a = torch.tensor(y), torch.tensor(a)
    return Batch(x=torch.zeros(len(y)), y=y, a=a, index=torch.arange(len(y)), source=torch.zeros(len(y), dtype=torch.long))


def test_groupdro_weight_update_by_hand():
    # groups g = 2y + a: (0,0)->0 (0,1)->1 (1,0)->2 (1,1)->3; group 2 absent from the batch
    batch = _batch([0, 0, 0, 1], [0, 0, 1, 1])
    losses = torch.tensor([1.0, 3.0, 0.5, 2.0], requires_grad=True)
    obj = GroupDROObjective(n_groups=4, n_attributes=2, eta=0.1)
    loss = obj(losses, batch)
    group_loss = [2.0, 0.5, 0.0, 2.0]  # means per group, 0 where absent
    q = [0.25 * math.exp(0.1 * v) for v in group_loss]
    q = [v / sum(q) for v in q]
    assert torch.allclose(obj.q, torch.tensor(q), atol=1e-6)
    assert loss.item() == pytest.approx(sum(w * v for w, v in zip(q, group_loss)), rel=1e-6)
    loss.backward()  # d loss / d loss_i = q_g(i) / n_g(i)
    assert torch.allclose(losses.grad, torch.tensor([q[0] / 2, q[0] / 2, q[1], q[3]]), atol=1e-6)
    # the weights carry over to the next step
    obj(torch.tensor([1.0, 3.0, 0.5, 2.0]), batch)
    q2 = [w * math.exp(0.1 * v) for w, v in zip(q, group_loss)]
    assert torch.allclose(obj.q, torch.tensor([v / sum(q2) for v in q2]), atol=1e-6)
    state = obj.state_dict()
    fresh = GroupDROObjective(4, 2, 0.1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.q, obj.q)


def test_groupdro_generalisation_adjustment_favours_small_groups():
    batch = _batch([0, 0, 1, 1], [0, 1, 0, 1])
    counts = [100, 4, 1, 25]
    obj = GroupDROObjective(4, 2, eta=1.0, train_group_counts=counts, adjustment=2.0)
    obj(torch.ones(4), batch)  # equal losses: only C / sqrt(n_g) separates the groups
    expected = np.exp(1.0 * (1 + 2.0 / np.sqrt(counts)))
    assert np.allclose(obj.q.numpy(), expected / expected.sum(), atol=1e-6)
    assert obj.q.argmax().item() == 2


def test_groupdro_not_robust_is_the_batch_mean_loss():
    """kohpangwei/group_DRO loss.py without is_robust: per_sample_losses.mean(), q untouched."""
    batch = _batch([0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1])  # 5 examples of group 0, 1 of group 3
    values = [1.0, 1.0, 1.0, 1.0, 1.0, 4.0]
    losses = torch.tensor(values, requires_grad=True)
    plain = GroupDROObjective(4, 2, eta=0.1, robust=False)
    loss = plain(losses, batch)
    assert loss.item() == pytest.approx(sum(values) / len(values))  # 1.5
    loss.backward()
    assert torch.allclose(losses.grad, torch.full((6,), 1 / 6))
    assert torch.equal(plain.q, torch.full((4,), 0.25))  # the weights never move
    assert plain.log() == {"group_weights": [0.25] * 4}
    # the robust loss weights the groups, not the examples: it differs on this imbalanced batch
    q = np.exp(1.0 * np.array([1.0, 0.0, 0.0, 4.0]))  # group means 1 and 4, eta 1
    robust = GroupDROObjective(4, 2, eta=1.0)(torch.tensor(values), batch)
    assert robust.item() == pytest.approx(float(q @ [1.0, 0.0, 0.0, 4.0] / q.sum()), rel=1e-6)
    assert robust.item() > 3.0  # the batch mean is 1.5


@pytest.mark.parametrize("robust, sampling, train_labels",
                         [(True, True, True), (False, True, True), (True, False, True), (False, False, False)])
def test_groupdro_annotation_follows_robust_and_sampling(robust, sampling, train_labels):
    from spuraug.methods import get_method

    hp = {"robust": robust, "group_balanced_sampling": sampling, "selection": "val_worst_group_acc"}
    assert get_method("groupdro")().annotation_for(hp) == {"train_group_labels": train_labels,
                                                           "val_group_labels": True}


def test_jtt_error_set_and_upsampling():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]])
    y = np.array([0, 0, 1, 1, 1])
    errors = error_set(logits, y)
    assert errors.tolist() == [1, 2, 3]
    idx = upsampled_indices(5, errors, lambda_up=4)
    counts = np.bincount(idx, minlength=5)
    assert counts.tolist() == [1, 4, 4, 4, 1] and len(idx) == 5 + 3 * 3
    # the reference run_expt.py: train_data + Subset(aug_indices * up_weight): 1 + lambda_up copies
    extra = np.bincount(upsampled_indices(5, errors, lambda_up=4, copies="extra"), minlength=5)
    assert extra.tolist() == [1, 5, 5, 5, 1]


def test_jtt_train_pass_recorder_keeps_the_training_mode_predictions_of_the_last_pass():
    from baselines.jtt import TrainPassRecorder

    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    rec = TrainPassRecorder(model, 4)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = Batch(x=x, y=torch.tensor([0, 0]), a=torch.zeros(2, dtype=torch.long), index=torch.tensor([3, 1]),
              source=torch.zeros(2, dtype=torch.long))
    model.train()
    loss = rec(torch.nn.functional.cross_entropy(model(x), b.y, reduction="none"), b)
    assert rec.pred.tolist() == [-1, 1, -1, 0] and loss.ndim == 0
    model.eval()  # evaluation passes between epochs are not recorded
    model(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    rec(torch.zeros(2), b)
    assert rec.pred.tolist() == [-1, 1, -1, 0]
    rec.remove()


def test_jtt_run_reuses_erm_and_saves_its_error_set(tmp_path, tiny):
    over = {**tiny, "jtt.stage1_epochs": 1, "jtt.epochs": 1, "jtt.lambda_up": 3, "jtt.batch_size": 32,
            "jtt.stage1_batch_size": 32, "jtt.error_set_from": "eval_pass", "erm.lr_schedule": "constant"}
    # ERM with a cosine schedule is not JTT's constant-rate stage 1: not reused
    cosine = _context("toy", "jtt", 0, tmp_path / "x", None, None, {**over, "erm.lr_schedule": "cosine"}, progress=False)
    assert get_method("jtt")().erm_checkpoint(cosine) is None
    result = run_method("toy", "jtt", 0, runs_dir=tmp_path, overrides=over, progress=False)
    erm_dir = run_dir(tmp_path, "toy", "erm", 0)
    assert (erm_dir / "done").is_file() and (erm_dir / "checkpoints/epoch001.pt").is_file()
    d = run_dir(tmp_path, "toy", "jtt", 0)
    errors = json.loads((d / "error_set.json").read_text())
    assert errors["stage1"].endswith("epoch001.pt") and not (d / "stage1").exists()
    # the error set is what the reused stage-1 model gets wrong, with the ids of those examples
    from spuraug.data import get_dataset
    from spuraug.engine import predict

    ds = get_dataset("toy", "train", n_train=200, n_val=80, n_test=80)
    logits = predict(load_model(erm_dir, "epoch001"), ds, "cpu")
    assert errors["indices"] == np.flatnonzero(logits.argmax(1) != ds.y).tolist()
    assert errors["ids"] == [ds.ids[i] for i in errors["indices"]]
    assert result["annotation"] == {"train_group_labels": False, "val_group_labels": True}
    assert result["error_set"]["n_errors"] == len(errors["indices"])


def test_jtt_trains_its_own_stage1_when_the_recipe_differs(tmp_path, tiny):
    over = {**tiny, "jtt.stage1_epochs": 1, "jtt.epochs": 1, "jtt.stage1_lr": 0.01, "jtt.batch_size": 32,
            "jtt.stage1_batch_size": 32}
    run_method("toy", "jtt", 0, runs_dir=tmp_path, overrides=over, progress=False)
    d = run_dir(tmp_path, "toy", "jtt", 0)
    assert (d / "stage1/checkpoints/last.pt").is_file()
    assert not run_dir(tmp_path, "toy", "erm", 0).exists()


def test_jtt_error_set_from_the_logged_training_pass(tmp_path, tiny):
    """error_set_from: train_pass (reference): stage 1 is trained here even when its recipe is
    ERM's, and the error set is the logged pass's mistakes, saved beside stage 1."""
    over = {**tiny, "jtt.stage1_epochs": 1, "jtt.epochs": 1, "jtt.batch_size": 32, "jtt.stage1_batch_size": 32,
            "jtt.error_set_from": "train_pass"}
    run_method("toy", "jtt", 0, runs_dir=tmp_path, overrides=over, progress=False)
    d = run_dir(tmp_path, "toy", "jtt", 0)
    pred = np.load(d / "stage1/train_pass_pred.npy")
    from spuraug.data import get_dataset

    ds = get_dataset("toy", "train", n_train=200, n_val=80, n_test=80)
    errors = json.loads((d / "error_set.json").read_text())
    assert errors["indices"] == np.flatnonzero(pred != ds.y).tolist() and "training pass 1" in errors["stage1"]
    assert not run_dir(tmp_path, "toy", "erm", 0).exists()


def test_balanced_subset_equalises_groups():
    g = np.array([0] * 10 + [1] * 3 + [3] * 7)  # group 2 is empty: ignored
    ix = balanced_subset(g, 4, np.random.default_rng(0))
    assert np.bincount(g[ix], minlength=4).tolist() == [3, 3, 0, 3]
    assert len(set(ix.tolist())) == len(ix)


def _synthetic(n_per_group=60, d=20, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 0, 1, 1], n_per_group)
    a = np.repeat([0, 1, 0, 1], n_per_group)
    x = rng.normal(size=(len(y), d))
    x[:, 0] += signal * (2 * y - 1)  # the core feature
    x[:, 1] += 3.0 * (2 * a - 1)  # the spurious feature
    return x, y, 2 * y + a


def test_dfr_c_selection_on_synthetic_embeddings():
    x, y, g = _synthetic(signal=1.5)
    best, scores = tune_c(x, y, g, 4, PAPER_C_GRID, repeats=1, rng=np.random.default_rng(0))
    assert list(scores) == list(PAPER_C_GRID) and best == max(scores, key=scores.get)
    # C = 0.01 zeroes every coefficient: one class is always wrong
    assert scores[0.01] == 0.0 and scores[best] > 60
    # perfectly separable data: every C ties and the first of the grid wins (paper's argmax)
    x2, y2, g2 = _synthetic(signal=50.0)
    best2, scores2 = tune_c(x2, y2, g2, 4, [0.7, 0.3], repeats=2, rng=np.random.default_rng(0))
    assert scores2 == {0.7: 200.0, 0.3: 200.0} and best2 == 0.7


def test_dfr_final_head_folds_standardisation_into_a_linear_layer():
    x, y, g = _synthetic(signal=1.5)
    rng = np.random.default_rng(1)
    coef, intercept, mean, scale = fit_final_head(x, y, g, 4, 0.3, repeats=5, rng=rng)
    # the average of the repeats, each fit on a balanced subset of the standardised data
    rng = np.random.default_rng(1)
    xs = (x - x.mean(0)) / x.std(0)
    ref = [l1_logistic_regression(0.3).fit(xs[ix], y[ix]).coef_ for ix in
           (balanced_subset(g, 4, rng) for _ in range(5))]
    assert np.allclose(coef, np.mean(ref, axis=0), atol=1e-6)
    w, b = fold_head(coef, intercept, mean, scale, 2)
    folded = (x @ w.T + b).argmax(1)
    direct = (((x - mean) / scale) @ coef.T + intercept).ravel() > 0
    assert np.array_equal(folded, direct.astype(int))


def test_dfr_final_scaler_is_fit_on_the_given_training_embeddings():
    """dfr_on_validation_eval fits StandardScaler on all_embeddings["train"], not on validation."""
    x, y, g = _synthetic(signal=1.5)
    train_x = x * 3.0 + 5.0  # another scale and offset than validation
    coef, _, mean, scale = fit_final_head(x, y, g, 4, 0.3, repeats=2, rng=np.random.default_rng(0), scaler_x=train_x)
    assert np.allclose(mean, train_x.mean(0)) and np.allclose(scale, train_x.std(0))
    _, _, mean_v, _ = fit_final_head(x, y, g, 4, 0.3, repeats=2, rng=np.random.default_rng(0))
    assert np.allclose(mean_v, x.mean(0)) and not np.allclose(mean_v, mean)


def test_dfr_tune_c_on_the_training_split_scores_on_validation():
    """dfr_train_subset_tune: fit on one (balanced) training subset, score each C on all of validation."""
    x_val, y_val, g_val = _synthetic(signal=1.5, seed=1)
    x_tr, y_tr, g_tr = _synthetic(n_per_group=200, signal=1.5, seed=2)
    keep = np.flatnonzero((g_tr == 0) | (g_tr == 3) | (np.arange(len(g_tr)) % 20 == 0))  # 95% spurious
    x_tr, y_tr, g_tr = x_tr[keep], y_tr[keep], g_tr[keep]
    best, scores = tune_c_on_fit_split(x_tr, y_tr, g_tr, x_val, y_val, g_val, 4, PAPER_C_GRID,
                                       np.random.default_rng(0), balance=True)
    assert list(scores) == list(PAPER_C_GRID) and best == max(scores, key=scores.get)
    # the score is the worst-group accuracy on validation of the head fit on the balanced training subset
    ix = balanced_subset(g_tr, 4, np.random.default_rng(0))
    scaler = StandardScaler().fit(x_tr[ix])
    clf = l1_logistic_regression(best).fit(scaler.transform(x_tr[ix]), y_tr[ix])
    pred = clf.predict(scaler.transform(x_val))
    assert scores[best] == pytest.approx(min(100 * np.mean(pred[g_val == k] == y_val[g_val == k]) for k in range(4)))
    # without balancing, the spurious training split teaches the background: a minority group fails
    _, unbalanced = tune_c_on_fit_split(x_tr, y_tr, g_tr, x_val, y_val, g_val, 4, PAPER_C_GRID,
                                        np.random.default_rng(0), balance=False, scaler_x=x_tr)
    assert max(unbalanced.values()) < scores[best] - 10


@pytest.mark.parametrize("fit_split, balance, train_labels",
                         [("val", True, False), ("val", False, False), ("train", True, True), ("train", False, False)])
def test_dfr_annotation_follows_the_fit_split(fit_split, balance, train_labels):
    from spuraug.methods import get_method

    ann = get_method("dfr")().annotation_for({"fit_split": fit_split, "balance_val": balance})
    assert ann == {"train_group_labels": train_labels, "val_group_labels": True}


def test_new_method_keys_go_through_the_override_parser_and_bad_values_name_the_key():
    from spuraug.config import ConfigError, load_config, parse_overrides

    cfg = load_config("toy", "dfr", None, parse_overrides(["dfr.fit_split=train", "dfr.balance_val=false"]))
    assert cfg["hparams"]["fit_split"] == "train" and cfg["hparams"]["balance_val"] is False
    assert cfg["config_hash"] != load_config("toy", "dfr")["config_hash"]
    assert load_config("toy", "dfr")["hparams"]["fit_split"] == "val"
    cfg = load_config("toy", "groupdro", None, parse_overrides(["groupdro.robust=false"]))
    assert cfg["hparams"]["robust"] is False and load_config("toy", "groupdro")["hparams"]["robust"] is True
    with pytest.raises(ConfigError, match=r"dfr.fit_split: expected one of val, train, got 'test'"):
        load_config("toy", "dfr", None, parse_overrides(["dfr.fit_split=test"]))
    with pytest.raises(ConfigError, match=r"groupdro.robust: expected bool, got str 'maybe'"):
        load_config("toy", "groupdro", None, parse_overrides(["groupdro.robust=maybe"]))


def test_dfr_and_groupdro_runs(tmp_path, tiny):
    over = {**tiny, "dfr.final_repeats": 3, "groupdro.epochs": 1, "groupdro.batch_size": 32}
    dfr = run_method("toy", "dfr", 0, runs_dir=tmp_path, overrides=over, progress=False)
    d = run_dir(tmp_path, "toy", "dfr", 0)
    assert dfr["annotation"] == {"train_group_labels": False, "val_group_labels": True}
    assert dfr["dfr"]["C"] in PAPER_C_GRID and (d / "embeddings.npz").is_file()
    emb = np.load(d / "embeddings.npz")
    assert emb["train_x"].shape == (tiny["dataset_options"]["n_train"], 16)  # the scaler's training embeddings
    assert emb["val_x"].shape == (80, 16)  # width 8 -> 16 features
    # best.pt is the ERM backbone with the DFR head: it reproduces the reported test metrics
    from spuraug.data import get_dataset
    from spuraug.engine import evaluate

    test = get_dataset("toy", "test", n_train=200, n_val=80, n_test=80)
    m = evaluate(load_model(d), test, "cpu")
    assert m["worst_group_acc"] == pytest.approx(dfr["test"]["worst_group_acc"])
    assert m["avg_acc"] == pytest.approx(dfr["test"]["avg_acc"])

    # fit_split train (DFR^Tr_Tr) without balancing: the head is fit on the training embeddings
    import shutil

    import baselines.dfr as dfr_module

    seen = {}

    def spy(x, y, g, *args, **kwargs):
        seen.update(x=x, balance=args[4])
        return fit_final_head(x, y, g, *args, **kwargs)

    other = tmp_path / "train_fit"
    shutil.copytree(run_dir(tmp_path, "toy", "erm", 0), run_dir(other, "toy", "erm", 0))  # the same ERM run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dfr_module, "fit_final_head", spy)
        tr = run_method("toy", "dfr", 0, runs_dir=other, overrides={**over, "dfr.fit_split": "train",
                        "dfr.balance_val": False}, progress=False)
    assert np.array_equal(seen["x"], emb["train_x"]) and seen["balance"] is False
    assert tr["dfr"]["fit_split"] == "train" and tr["dfr"]["val_metrics_in_sample"] is False
    assert tr["dfr"]["erm_run"] == str(run_dir(other, "toy", "erm", 0)) and tr["dfr"]["C"] in PAPER_C_GRID
    assert tr["annotation"] == {"train_group_labels": False, "val_group_labels": True}
    assert dfr["dfr"]["fit_split"] == "val" and dfr["dfr"]["val_metrics_in_sample"] is True

    dro = run_method("toy", "groupdro", 0, runs_dir=tmp_path, overrides=over, progress=False)
    assert dro["annotation"] == {"train_group_labels": True, "val_group_labels": True}
    line = read_metrics(run_dir(tmp_path, "toy", "groupdro", 0))[0]
    q = line["objective"]["group_weights"]
    assert len(q) == 4 and sum(q) == pytest.approx(1.0, abs=1e-4) and max(q) > 0.25


def test_selection_by_worst_class_needs_no_val_group_labels(tmp_path, tiny):
    r = run_method("toy", "erm", 0, runs_dir=tmp_path, overrides={**tiny, "erm.epochs": 1,
                   "erm.selection": "val_worst_class_acc"}, progress=False)
    assert r["selection"] == "val_worst_class_acc"
    assert r["annotation"] == {"train_group_labels": False, "val_group_labels": False}


@pytest.mark.parametrize("augment", [True, False])
def test_augment_chooses_the_training_transform(tmp_path, tiny, monkeypatch, augment):
    """``augment: false`` (group_DRO/JTT commands without --augment_data) trains on the eval
    transform; ``true`` on the random train transform."""
    import baselines.groupdro as gd

    seen = []
    orig = gd.TrainSource

    def spy(dataset, *args, **kwargs):
        seen.append(dataset.transform)
        return orig(dataset, *args, **kwargs)

    monkeypatch.setattr(gd, "TrainSource", spy)
    over = {**tiny, "groupdro.epochs": 1, "groupdro.batch_size": 32, "groupdro.augment": augment}
    run_method("toy", "groupdro", 0, runs_dir=tmp_path, overrides=over, progress=False)
    assert [t.train for t in seen] == [augment]  # ToyTransform(train=True) draws random shifts


def test_real_configs_augment_as_the_references():
    """ERM and DDB's retraining augment (DFR base-model commands, DDB train.py); GroupDRO and JTT
    do not (their reference commands omit --augment_data)."""
    from spuraug.config import load_config

    for ds in ("waterbirds", "celeba", "metashift"):
        assert load_config(ds, "erm")["hparams"]["augment"] is True
        assert load_config(ds, "groupdro")["hparams"]["augment"] is False
        assert load_config(ds, "jtt")["hparams"]["augment"] is False
        assert load_config(ds, "ddb")["hparams"]["retrain"]["augment"] is True
