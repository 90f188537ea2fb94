"""SUBG and RWG (Idrissi et al. 2022): what each epoch trains on, and small end-to-end runs."""

import json

import numpy as np
import pytest

from baselines.subg import subg_indices
from spuraug import engine
from spuraug.data import get_dataset
from spuraug.runs import read_metrics, run_dir, run_method


@pytest.fixture
def tiny(tiny_toy_runs):
    return {**tiny_toy_runs}


@pytest.fixture
def epochs_seen(monkeypatch):
    """Every epoch's index order the engine's sampler yields, with its source."""
    seen: list[tuple[engine.TrainSource, list[int]]] = []
    original = engine._EpochSampler.__iter__

    def spy(self):
        order = list(original(self))
        seen.append((self.source, order))
        return iter(order)

    monkeypatch.setattr(engine._EpochSampler, "__iter__", spy)
    return seen


def test_subg_indices_cut_every_group_to_the_smallest():
    g = np.array([0] * 50 + [1] * 7 + [2] * 30 + [3] * 13)
    ix = subg_indices(g, 4, seed=3)
    assert np.bincount(g[ix], minlength=4).tolist() == [7, 7, 7, 7]
    assert len(set(ix.tolist())) == len(ix)  # without replacement
    assert np.array_equal(ix, subg_indices(g, 4, seed=3))  # one subset per seed
    assert not np.array_equal(ix, subg_indices(g, 4, seed=4))
    # an empty group is ignored, not a cut to size 0 (stated deviation)
    g2 = np.array([0] * 5 + [1] * 3 + [3] * 9)
    assert np.bincount(g2[subg_indices(g2, 4, 0)], minlength=4).tolist() == [3, 3, 0, 3]


def test_subg_trains_on_a_group_balanced_epoch(tmp_path, tiny, epochs_seen):
    r = run_method("toy", "subg", 0, runs_dir=tmp_path, progress=False,
                   overrides={**tiny, "subg.epochs": 2, "subg.batch_size": 16})
    train = get_dataset("toy", "train", n_train=200, n_val=80, n_test=80)
    smallest = int(train.group_counts().min())
    assert r["annotation"] == {"train_group_labels": True, "val_group_labels": True}
    assert r["subg"]["per_group"] == [smallest] * 4
    assert len(epochs_seen) == 2
    for _, order in epochs_seen:  # each epoch: the same subset, every group equally often, reshuffled
        assert np.bincount(train.g[order], minlength=4).tolist() == [smallest] * 4
        assert sorted(order) == sorted(epochs_seen[0][1])
    assert epochs_seen[0][1] != epochs_seen[1][1]
    saved = json.loads((run_dir(tmp_path, "toy", "subg", 0) / "subset.json").read_text())
    assert sorted(saved["indices"]) == sorted(epochs_seen[0][1])
    steps = -(-4 * smallest // 16)
    assert [line["step"] for line in read_metrics(run_dir(tmp_path, "toy", "subg", 0))] == [steps, 2 * steps]


def test_rwg_weights_are_inverse_to_group_sizes(tmp_path, tiny, epochs_seen):
    r = run_method("toy", "rwg", 0, runs_dir=tmp_path, progress=False,
                   overrides={**tiny, "rwg.epochs": 1, "rwg.batch_size": 32})
    train = get_dataset("toy", "train", n_train=200, n_val=80, n_test=80)
    counts = train.group_counts()
    assert r["annotation"] == {"train_group_labels": True, "val_group_labels": True}
    source, order = epochs_seen[0]
    w = np.asarray(source.weights)
    assert np.allclose(w * counts[train.g], w[0] * counts[train.g[0]])  # w_i * n_g(i) is one constant
    assert len(order) == len(train)  # N draws with replacement per epoch
    # every group's total sampling mass is equal, so the majority group no longer dominates
    mass = np.bincount(train.g, weights=w, minlength=4)
    assert np.allclose(mass, mass[0])
    drawn = np.bincount(train.g[order], minlength=4)
    assert drawn.min() > 0.5 * len(train) / 4 and drawn.max() < 1.5 * len(train) / 4
    assert r["rwg"]["group_weights"] == pytest.approx([1.0 / c for c in counts])


def test_rwg_loss_mode_weights_each_loss_by_its_group(tmp_path, tiny, epochs_seen, monkeypatch):
    made = []
    original = engine.WeightedObjective.__init__

    def spy(self, weights):
        original(self, weights)
        made.append(np.asarray(weights))

    monkeypatch.setattr(engine.WeightedObjective, "__init__", spy)
    run_method("toy", "rwg", 0, runs_dir=tmp_path, progress=False,
               overrides={**tiny, "rwg.epochs": 1, "rwg.reweight": "loss"})
    train = get_dataset("toy", "train", n_train=200, n_val=80, n_test=80)
    counts = train.group_counts()
    assert len(made) == 1 and np.allclose(made[0], 1.0 / counts[train.g])
    source, order = epochs_seen[0]
    assert source.weights is None and sorted(order) == list(range(len(train)))  # plain shuffled epoch
