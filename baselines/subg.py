"""SUBG, group-balanced subsampling (Idrissi, Arjovsky, Pezeshki, Lopez-Paz, CLeaR 2022).

"Simple data balancing achieves competitive worst-group-accuracy": before training, every
group (class x attribute) of the training set is cut at random to the size of the
smallest group; then plain ERM (mean cross-entropy, shuffled epochs) trains on that fixed
subset. As in the authors' code (facebookresearch/BalancingGroups ``datasets.py``,
``GroupDataset.subsample_`` with ``subsample_what="groups"``) the subset is drawn once per
run seed and kept for every epoch. It is saved as ``subset.json`` (indices, ids, size per
group). Uses group labels in training (to subsample) and in validation (model selection).

Deviation, stated: a group absent from the training split is ignored (the authors' code
would cut every group to size 0).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from spuraug import atomic, engine
from spuraug.engine import TrainSource
from spuraug.methods import TRAIN_PARAMS, Method, Param, register_method


def subg_indices(g: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """The run's SUBG training subset (sorted indices): every non-empty group cut at random
    to the smallest group's size, drawn from ``seed``."""
    return np.sort(engine.group_balanced_subset(g, n_groups, np.random.default_rng([seed, 5])))


@register_method("subg")
class SUBG(Method):
    """ERM on a fixed group-balanced subsample of the training set."""

    display_name: ClassVar[str] = "SUBG"
    citation: ClassVar[str] = (
        "Idrissi, Arjovsky, Pezeshki, Lopez-Paz. Simple data balancing achieves competitive "
        "worst-group-accuracy. CLeaR 2022; facebookresearch/BalancingGroups"
    )
    order: ClassVar[int] = 40
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": True, "val_group_labels": True}
    params: ClassVar[dict[str, Param]] = dict(TRAIN_PARAMS)

    def run(self, ctx) -> dict:
        hp = ctx.hparams
        train = ctx.load_split("train", "train")
        subset = subg_indices(train.g, train.n_groups, ctx.seed)
        per_group = np.bincount(train.g[subset], minlength=train.n_groups).tolist()
        atomic.write_json(
            ctx.dir / "subset.json",
            {"indices": subset.tolist(), "ids": [train.ids[i] for i in subset], "n_subset": len(subset),
             "n_train": len(train), "per_group": per_group},
        )
        fit = ctx.fit(ctx.build_model(), {"train": TrainSource(train, hp["batch_size"], indices=subset)})
        out = ctx.result_from_fit(fit)
        out["subg"] = {"n_subset": int(len(subset)), "per_group": per_group}
        return out
