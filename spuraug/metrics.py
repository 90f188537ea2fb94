"""Group metrics of the spurious-correlation literature, in pure numpy.

All accuracies are percentages. The three averages differ and papers mix them up:

- ``avg_acc``: plain accuracy over the evaluated examples (SubpopBench).
- ``adjusted_avg_acc``: per-group test accuracy weighted by the TRAINING group
  proportions (the "average accuracy" of the GroupDRO, JTT, DFR and WILDS papers on
  Waterbirds, whose test split is group-balanced unlike its training split).
- ``mean_group_acc``: unweighted mean over groups.

``worst_group_acc`` and ``worst_class_acc`` are minima over groups / classes that have
at least one example.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES: tuple[str, ...] = (
    "worst_group_acc",
    "avg_acc",
    "adjusted_avg_acc",
    "mean_group_acc",
    "worst_class_acc",
)


def group_accuracies(
    y: np.ndarray, a: np.ndarray, pred: np.ndarray, n_classes: int, n_attributes: int
) -> list[dict]:
    """Per-group counts and accuracy, groups ordered by ``g = y * n_attributes + a``.

    Each entry is ``{"y", "a", "n", "correct", "acc"}``; ``acc`` is ``None`` for an
    empty group.
    """
    y, a, pred = (np.asarray(v, dtype=np.int64) for v in (y, a, pred))
    g = y * n_attributes + a
    n_groups = n_classes * n_attributes
    n = np.bincount(g, minlength=n_groups)
    correct = np.bincount(g, weights=(pred == y).astype(np.float64), minlength=n_groups)
    out = []
    for k in range(n_groups):
        yy, aa = divmod(k, n_attributes)
        acc = 100.0 * correct[k] / n[k] if n[k] else None
        out.append({"y": yy, "a": aa, "n": int(n[k]), "correct": int(correct[k]), "acc": acc})
    return out


def evaluate_predictions(
    y: np.ndarray,
    a: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    n_attributes: int,
    train_group_counts: Sequence[int] | None = None,
) -> dict:
    """Every metric of :data:`METRIC_NAMES` plus ``groups`` (see :func:`group_accuracies`).

    ``train_group_counts`` weights ``adjusted_avg_acc``; without it, that metric is
    ``None``. Groups absent from the evaluated data are skipped by every minimum and
    mean; in the adjusted average their training weight is dropped and the rest
    renormalised.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("no examples to evaluate")
    groups = group_accuracies(y, a, pred, n_classes, n_attributes)
    present = [gr for gr in groups if gr["n"] > 0]
    accs = np.array([gr["acc"] for gr in present])
    class_accs = []
    for c in range(n_classes):
        in_c = y == c
        if in_c.any():
            class_accs.append(100.0 * float(np.mean(pred[in_c] == c)))
    adjusted = None
    if train_group_counts is not None:
        w = np.asarray(train_group_counts, dtype=np.float64)
        if len(w) != n_classes * n_attributes:
            raise ValueError(
                f"train_group_counts has {len(w)} entries, expected {n_classes * n_attributes}"
            )
        mask = np.array([gr["n"] > 0 for gr in groups])
        if w[mask].sum() > 0:
            adjusted = float(np.dot(w[mask], accs) / w[mask].sum())
    return {
        "worst_group_acc": float(accs.min()),
        "avg_acc": 100.0 * float(np.mean(pred == y)),
        "adjusted_avg_acc": adjusted,
        "mean_group_acc": float(accs.mean()),
        "worst_class_acc": float(min(class_accs)),
        "groups": groups,
    }
