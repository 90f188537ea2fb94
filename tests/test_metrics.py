import numpy as np
import pytest

from spuraug.metrics import evaluate_predictions, group_accuracies


def test_group_accuracies_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    a = np.array([0, 0, 1, 0, 1, 1, 1])
    pred = np.array([0, 1, 0, 0, 1, 1, 0])
    groups = group_accuracies(y, a, pred, 2, 2)
    assert [g["n"] for g in groups] == [2, 1, 1, 3]
    assert [g["correct"] for g in groups] == [1, 1, 0, 2]
    assert groups[0]["acc"] == 50.0 and groups[2]["acc"] == 0.0


def test_all_metrics_by_hand():
    # groups (0,0): 3/4 right, (0,1): 1/2, (1,0): 2/2, (1,1): 0/2
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    a = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0, 0])
    r = evaluate_predictions(y, a, pred, 2, 2, train_group_counts=[70, 10, 10, 10])
    assert r["worst_group_acc"] == 0.0
    assert r["avg_acc"] == pytest.approx(60.0)
    assert r["mean_group_acc"] == pytest.approx((75 + 50 + 100 + 0) / 4)
    assert r["adjusted_avg_acc"] == pytest.approx((70 * 75 + 10 * 50 + 10 * 100 + 10 * 0) / 100)
    # class 0: 4/6, class 1: 2/4
    assert r["worst_class_acc"] == pytest.approx(50.0)


def test_empty_group_is_skipped_and_weights_renormalised():
    y = np.array([0, 0, 1])
    a = np.array([0, 0, 1])
    pred = np.array([0, 1, 1])
    r = evaluate_predictions(y, a, pred, 2, 2, train_group_counts=[1, 1, 1, 1])
    assert r["worst_group_acc"] == 50.0
    assert r["adjusted_avg_acc"] == pytest.approx(75.0)
    assert r["groups"][1]["acc"] is None


def test_rejects_wrong_train_counts_and_empty_input():
    with pytest.raises(ValueError, match="expected 4"):
        evaluate_predictions([0], [0], [0], 2, 2, train_group_counts=[1, 2])
    with pytest.raises(ValueError):
        evaluate_predictions([], [], [], 2, 2)
