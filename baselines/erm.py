"""ERM: plain empirical risk minimisation (the stage-0 model of DFR, JTT and DDB)."""

from __future__ import annotations

from typing import ClassVar

from spuraug.engine import TrainSource
from spuraug.methods import TRAIN_PARAMS, Method, Param, param, register_method, train_transform


@register_method("erm")
class ERM(Method):
    """Mean cross-entropy over shuffled training data; model selection by the configured rule.

    ``keep_epochs`` keeps the model state of those epochs (``checkpoints/epochNNN.pt``)
    so that JTT can take its stage-1 model from this run when its recipe equals ERM's.
    """

    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    params: ClassVar[dict[str, Param]] = {
        **TRAIN_PARAMS,
        "keep_epochs": param([], list, help="epochs whose model state is kept (JTT's stage 1 reuses them)"),
    }

    def run(self, ctx) -> dict:
        hp = ctx.hparams
        model = ctx.build_model()
        train = TrainSource(ctx.load_split("train", train_transform(hp)), hp["batch_size"])
        fit = ctx.fit(model, {"train": train}, keep_epochs=tuple(int(e) for e in hp["keep_epochs"]))
        return ctx.result_from_fit(fit)
