"""GroupDRO (Sagawa et al., ICLR 2020): minimise a worst-group loss through online group weights.

Per step, with ``L_g`` the batch's mean loss of group ``g`` (0 for groups absent from
the batch) and ``n_g`` the training group sizes::

    q_g <- q_g * exp(eta * (L_g + C / sqrt(n_g)));   q <- q / sum(q)
    loss = sum_g q_g * L_g

``C`` is the optional generalisation adjustment (applied only when ``C > 0``, as in the
authors' ``loss.py``); batches are drawn group-balanced (weights ``1/n_g``, with
replacement, one epoch = ``len(train)`` draws) unless ``group_balanced_sampling`` is off.
Uses group labels in training and validation.

``robust: false`` is the authors' run without ``--robust`` (kohpangwei/group_DRO
``run_expt.py`` / ``train.py``: ``LossComputer(is_robust=args.robust)``; ``loss.py``
``LossComputer.loss``: without ``is_robust`` the loss is ``per_sample_losses.mean()`` and
the group weights are neither updated nor used). It is ERM on GroupDRO's sampler and recipe;
with ``group_balanced_sampling: false`` too, plain ERM with GroupDRO's recipe (the
regression ``bench/mutation.py`` injects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from spuraug.engine import Batch, Objective, TrainSource, group_balanced_weights
from spuraug.methods import TRAIN_PARAMS, Method, Param, param, register_method, train_transform


class GroupDROObjective(Objective):
    """The online GroupDRO objective; its group weights ``q`` are saved with the run."""

    def __init__(
        self,
        n_groups: int,
        n_attributes: int,
        eta: float,
        train_group_counts: Sequence[int] | None = None,
        adjustment: float = 0.0,
        robust: bool = True,
    ) -> None:
        self.robust = bool(robust)
        self.n_groups = n_groups
        self.n_attributes = n_attributes
        self.eta = float(eta)
        self.q = torch.full((n_groups,), 1.0 / n_groups)
        counts = torch.as_tensor(
            np.asarray(train_group_counts if train_group_counts is not None else np.ones(n_groups)),
            dtype=torch.float32,
        )
        self.adjust = float(adjustment) / counts.clamp_min(1).sqrt() if adjustment > 0 else torch.zeros(n_groups)

    def group_losses(self, losses: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss per group in the batch (0 where absent) and examples per group."""
        keep = batch.source == 0
        g = batch.y[keep] * self.n_attributes + batch.a[keep]
        one_hot = F.one_hot(g, self.n_groups).to(losses.dtype)
        count = one_hot.sum(0)
        return (one_hot.t() @ losses[keep]) / count.clamp_min(1), count

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        if not self.robust:  # loss.py without is_robust: the mean per-example loss, q untouched
            return losses.mean()
        group_loss, _ = self.group_losses(losses, batch)
        q = self.q.to(losses.device)
        adjusted = group_loss.detach() + self.adjust.to(losses.device)
        q = q * torch.exp(self.eta * adjusted)
        q = q / q.sum()
        self.q = q.detach()
        return group_loss @ q

    def state_dict(self) -> dict:
        return {"q": self.q.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "q" in state:
            self.q = state["q"].detach().clone().float()

    def log(self) -> dict:
        return {"group_weights": [round(float(v), 6) for v in self.q.cpu()]}


@register_method("groupdro")
class GroupDRO(Method):
    """GroupDRO on the engine (online group weights, optional adjustment, balanced sampling)."""

    display_name: ClassVar[str] = "GroupDRO"
    citation: ClassVar[str] = (
        "Sagawa, Koh, Hashimoto, Liang. Distributionally Robust Neural Networks. ICLR 2020; kohpangwei/group_DRO"
    )
    order: ClassVar[int] = 10
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": True, "val_group_labels": True}
    params: ClassVar[dict[str, Param]] = {
        **TRAIN_PARAMS,
        "eta": param(0.01, float, ge=0, help="robust step size of the group weights"),
        "generalization_adjustment": param(0.0, float, ge=0, help="C of the C/sqrt(n_g) group-size prior"),
        "group_balanced_sampling": param(True, bool),
        "robust": param(True, bool, help="the robust (online group-weighted) loss; false: the mean per-example "
                                         "loss, the authors' run without --robust (kohpangwei/group_DRO loss.py)"),
    }

    def annotation_for(self, hparams: dict) -> dict[str, bool]:
        """Training group labels are used by the robust loss or the group-balanced sampler only."""
        ann = super().annotation_for(hparams)
        if not hparams.get("robust", True) and not hparams.get("group_balanced_sampling", True):
            ann["train_group_labels"] = False
        return ann

    def run(self, ctx) -> dict:
        hp = ctx.hparams
        train = ctx.load_split("train", train_transform(hp))
        counts = train.group_counts()
        weights = group_balanced_weights(train.g, train.n_groups) if hp["group_balanced_sampling"] else None
        source = TrainSource(train, hp["batch_size"], weights=weights, num_samples=len(train))
        objective = GroupDROObjective(
            train.n_groups, train.n_attributes, hp["eta"], counts, hp["generalization_adjustment"], hp["robust"]
        )
        fit = ctx.fit(ctx.build_model(), {"train": source}, objective=objective)
        return ctx.result_from_fit(fit)
