"""ERM: plain empirical risk minimisation (the stage-0 model of DFR, JTT and DDB)."""

from __future__ import annotations

from typing import ClassVar

from spuraug.engine import TrainSource
from spuraug.methods import TRAIN_PARAMS, Method, Param, param, register_method, train_transform

_SGD = {"optimizer": "sgd", "momentum": 0.9}
#: The ERM recipes of the literature, per dataset: ``erm.recipe: <name>`` sets these values
#: (an explicit ``erm.<key>`` override still wins; a config file that names a recipe must
#: agree with it). ``custom``: the section's own values (the toy).
RECIPES: dict[str, dict[str, dict]] = {
    # Sagawa et al. 2020, kohpangwei/group_DRO README ERM commands: CUB "--lr 0.001 --batch_size 128
    # --weight_decay 0.0001 --n_epochs 300", CelebA "--lr 0.0001 --batch_size 128 --weight_decay 0.0001
    # --n_epochs 50", no --augment_data. The ERM rows of the JTT paper are this recipe's numbers.
    "sagawa2020": {
        "waterbirds": {**_SGD, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 300, "batch_size": 128, "augment": False},
        "celeba": {**_SGD, "lr": 1e-4, "weight_decay": 1e-4, "epochs": 50, "batch_size": 128, "augment": False},
    },
    # Kirichenko et al. 2023, PolinaKirichenko/deep_feature_reweighting README base models: Waterbirds
    # "--num_epochs=100 --weight_decay=1e-3 --batch_size=32 --init_lr=1e-3 --augment_data", CelebA
    # "--num_epochs=50 --weight_decay=1e-4 --batch_size=128 --init_lr=1e-3 --augment_data".
    "kirichenko2023": {
        "waterbirds": {**_SGD, "lr": 1e-3, "weight_decay": 1e-3, "epochs": 100, "batch_size": 32, "augment": True},
        "celeba": {**_SGD, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 50, "batch_size": 128, "augment": True},
    },
    # DDB's first stage: the DaC ERM checkpoints the public DDB README links (DDB paper, ERM stage):
    # the DFR recipe with batch 128 on Waterbirds (and MetaShift, which reuses it).
    "ddb2025": {
        "waterbirds": {**_SGD, "lr": 1e-3, "weight_decay": 1e-3, "epochs": 100, "batch_size": 128, "augment": True},
        "celeba": {**_SGD, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 50, "batch_size": 128, "augment": True},
        "metashift": {**_SGD, "lr": 1e-3, "weight_decay": 1e-3, "epochs": 100, "batch_size": 128, "augment": True},
    },
}


def recipe_values(name: str, dataset: str) -> dict | None:
    """The values of ERM recipe ``name`` on ``dataset``; None for ``custom`` or an unknown pair."""
    return RECIPES.get(name, {}).get(dataset)


@register_method("erm")
class ERM(Method):
    """Mean cross-entropy over shuffled training data; model selection by the configured rule.

    ``keep_epochs`` keeps the model state of those epochs (``checkpoints/epochNNN.pt``)
    so that JTT can take its stage-1 model from this run when its recipe equals ERM's.
    """

    display_name: ClassVar[str] = "ERM"
    citation: ClassVar[str] = (
        "Vapnik 1992 (empirical risk minimisation); recipe of Sagawa et al. 2020, kohpangwei/group_DRO"
    )
    order: ClassVar[int] = 0
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    params: ClassVar[dict[str, Param]] = {
        **TRAIN_PARAMS,
        "keep_epochs": param([], list, help="epochs whose model state is kept (JTT's stage 1 reuses them)"),
        "recipe": param("custom", choices=("custom", *RECIPES),
                        help="a named ERM recipe of the literature (baselines/erm.py RECIPES) or custom"),
    }

    def run(self, ctx) -> dict:
        hp = ctx.hparams
        model = ctx.build_model()
        train = TrainSource(ctx.load_split("train", train_transform(hp)), hp["batch_size"])
        fit = ctx.fit(model, {"train": train}, keep_epochs=tuple(int(e) for e in hp["keep_epochs"]))
        return ctx.result_from_fit(fit)
