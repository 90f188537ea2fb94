"""JTT, Just Train Twice (Liu et al., ICML 2021).

Stage 1 trains ERM for ``T = stage1_epochs`` epochs; the *error set* is the training
examples that model misclassifies (eval transform). Stage 2 trains a fresh model with
the error set upweighted by ``lambda_up``: by upsampling (the authors' code repeats
each error example ``lambda_up`` times in the epoch) or, with ``upweight: loss``, by a
per-example loss weight. Model selection uses validation group labels only.

When the stage-1 recipe (optimizer, lr, weight decay, momentum, batch size) equals the
config's ERM recipe and ERM keeps the epoch-``T`` model (``erm.keep_epochs``, or
``T`` = ERM's last epoch), stage 1 is taken from the ERM run of the same seed instead
of being trained again. The error set is saved as ``error_set.json`` (indices and ids).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from spuraug import engine
from spuraug.engine import TrainSource, WeightedObjective
from spuraug.methods import TRAIN_PARAMS, Method, Param, param, register_method, train_transform

STAGE1_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "batch_size")
#: Keys both stages share with the ERM recipe for stage 1 to be taken from the ERM run.
SHARED_KEYS = ("augment",)


def error_set(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the examples whose arg-max prediction differs from the label."""
    return np.flatnonzero(np.asarray(logits).argmax(1) != np.asarray(y)).astype(np.int64)


def upsampled_indices(n: int, errors: np.ndarray, lambda_up: int) -> np.ndarray:
    """Every index once plus each error index ``lambda_up - 1`` more times (JTT's upsampling)."""
    extra = np.repeat(np.asarray(errors, dtype=np.int64), max(int(lambda_up) - 1, 0))
    return np.concatenate([np.arange(n, dtype=np.int64), extra])


@register_method("jtt")
class JTT(Method):
    """JTT on the engine: ERM stage 1, error set, upweighted stage 2."""

    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    uses_erm: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        **TRAIN_PARAMS,
        "stage1_epochs": param(1, int, help="T: epochs of the stage-1 ERM model"),
        "stage1_optimizer": param("sgd", choices=("sgd", "adam", "adamw")),
        "stage1_lr": param(1e-3, float),
        "stage1_weight_decay": param(1e-4, float),
        "stage1_momentum": param(0.9, float),
        "stage1_batch_size": param(32, int),
        "lambda_up": param(50, int, help="how many times an error-set example counts"),
        "upweight": param("upsample", choices=("upsample", "loss")),
        "reuse_erm": param(True, bool, help="take stage 1 from the ERM run when the recipes match"),
    }

    def stage1_recipe(self, hp: dict) -> dict:
        return {k: hp[f"stage1_{k}"] for k in STAGE1_KEYS}

    def erm_checkpoint(self, ctx) -> str | None:
        """The ERM run's checkpoint name usable as stage 1, or None when the recipes differ."""
        hp, erm = ctx.hparams, ctx.config["erm"]
        if not hp["reuse_erm"] or self.stage1_recipe(hp) != {k: erm[k] for k in STAGE1_KEYS} or any(
            hp[k] != erm[k] for k in SHARED_KEYS
        ):
            return None
        t = hp["stage1_epochs"]
        if t == erm["epochs"]:
            return "last"
        if t in [int(e) for e in erm["keep_epochs"]]:
            return f"epoch{t:03d}"
        return None

    def run(self, ctx) -> dict:
        from spuraug.runs import load_model

        hp = ctx.hparams
        train_eval = ctx.load_split("train", "eval")
        which = self.erm_checkpoint(ctx)
        if which is not None:
            erm_dir = ctx.ensure_erm()
            stage1 = load_model(erm_dir, which)
            stage1_from = f"{erm_dir}/checkpoints/{which}.pt"
        else:
            recipe = {**self.stage1_recipe(hp), "epochs": hp["stage1_epochs"], "selection": hp["selection"]}
            source = TrainSource(ctx.load_split("train", train_transform(hp)), recipe["batch_size"])
            stage1 = ctx.fit(ctx.build_model(), {"train": source}, hparams=recipe, out_dir=ctx.dir / "stage1").model
            stage1_from = f"{ctx.dir / 'stage1'} (last epoch, {hp['stage1_epochs']})"
        logits = engine.predict(stage1, train_eval, ctx.device, ctx.config["eval"]["batch_size"],
                                num_workers=ctx.num_workers)
        errors = error_set(logits, train_eval.y)
        groups = np.bincount(train_eval.g[errors], minlength=train_eval.n_groups).tolist()
        engine.atomic_write_json(
            {"indices": errors.tolist(), "ids": [train_eval.ids[i] for i in errors], "n_errors": len(errors),
             "n_train": len(train_eval), "errors_per_group": groups, "stage1": stage1_from},
            ctx.dir / "error_set.json",
        )
        train = ctx.load_split("train", train_transform(hp))
        if hp["upweight"] == "upsample":
            source = TrainSource(train, hp["batch_size"], indices=upsampled_indices(len(train), errors, hp["lambda_up"]))
            objective = None
        else:
            w = np.ones(len(train))
            w[errors] = hp["lambda_up"]
            source = TrainSource(train, hp["batch_size"])
            objective = WeightedObjective(w)
        fit = ctx.fit(ctx.build_model(), {"train": source}, objective=objective)
        out = ctx.result_from_fit(fit)
        out["error_set"] = {"n_errors": int(len(errors)), "errors_per_group": groups, "stage1": stage1_from}
        return out
