"""RWG, group reweighting (Idrissi, Arjovsky, Pezeshki, Lopez-Paz, CLeaR 2022).

"Simple data balancing achieves competitive worst-group-accuracy": ERM in which every
group (class x attribute) of the training set counts equally. The authors' code
(facebookresearch/BalancingGroups ``datasets.py``, ``get_loaders`` for ``rwg``) does it by
sampling: a ``WeightedRandomSampler`` with per-example weight ``N / n_g`` (``n_g`` the
size of the example's group), with replacement, ``N`` draws per epoch; the loss is the
plain mean. That is ``reweight: sample`` here (the engine's weighted source). With
``reweight: loss`` the epoch is the shuffled training set and each example's loss is
weighted ``1 / n_g`` (normalised over the batch) instead: the same expected gradient.
Uses group labels in training (the weights) and in validation (model selection).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from spuraug.engine import TrainSource, WeightedObjective, group_balanced_weights
from spuraug.methods import TRAIN_PARAMS, Method, Param, param, register_method


@register_method("rwg")
class RWG(Method):
    """ERM with every training group weighted inversely to its size."""

    display_name: ClassVar[str] = "RWG"
    citation: ClassVar[str] = (
        "Idrissi, Arjovsky, Pezeshki, Lopez-Paz. Simple data balancing achieves competitive "
        "worst-group-accuracy. CLeaR 2022; facebookresearch/BalancingGroups"
    )
    order: ClassVar[int] = 50
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": True, "val_group_labels": True}
    params: ClassVar[dict[str, Param]] = {
        **TRAIN_PARAMS,
        "reweight": param("sample", choices=("sample", "loss"),
                          help="sample: draw groups equally often (the authors' code); loss: weight each loss 1/n_g"),
    }

    def run(self, ctx) -> dict:
        hp = ctx.hparams
        train = ctx.load_split("train", "train")
        weights = group_balanced_weights(train.g, train.n_groups)
        if hp["reweight"] == "sample":
            source = TrainSource(train, hp["batch_size"], weights=weights, num_samples=len(train))
            objective = None
        else:
            source = TrainSource(train, hp["batch_size"])
            objective = WeightedObjective(weights)
        fit = ctx.fit(ctx.build_model(), {"train": source}, objective=objective)
        out = ctx.result_from_fit(fit)
        out["rwg"] = {"reweight": hp["reweight"],
                      "group_weights": [float(1.0 / c) if c else 0.0 for c in np.asarray(train.group_counts())]}
        return out
