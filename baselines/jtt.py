"""JTT, Just Train Twice (Liu et al., ICML 2021).

Stage 1 trains ERM for ``T = stage1_epochs`` epochs; the *error set* is the training
examples that model misclassifies. Stage 2 trains a fresh model with the error set
upweighted by ``lambda_up``: by upsampling or, with ``upweight: loss``, by a per-example
loss weight. Model selection uses validation group labels only.

Which predictions define the error set (``error_set_from``):

- ``train_pass`` (default, the reference code): the predictions logged while stage 1
  trains its epoch ``T`` (anniesch/jtt ``train.py`` ``run_epoch`` writes
  ``output_train_epoch_<T>.csv`` from the training loop: train mode, each batch predicted
  just before its optimizer step; ``process_training.py`` reads that file's
  ``y_pred != y_true`` as ``wrong_1_times``). The reference numbers epochs from 0, so its
  ``--final_epoch 60`` is the 61st training pass; here ``T`` counts passes from 1.
  Stage 1 is always trained here (a reused ERM run has not logged its passes).
- ``eval_pass``: one eval-mode pass with the eval transform over the model after ``T``
  epochs. When the stage-1 recipe (optimizer, lr, weight decay, momentum, batch size,
  augment) equals the config's ERM recipe and ERM keeps the epoch-``T`` model
  (``erm.keep_epochs``, or ``T`` = ERM's last epoch), stage 1 is then taken from the ERM
  run of the same seed instead of being trained again.

How many times an error example appears in a stage-2 epoch (``upsample_copies``):
``extra`` (default, the reference ``run_expt.py``: ``ConcatDataset([train_data,
Subset(train_data, list(aug_indices) * up_weight)])``, so 1 + ``lambda_up`` times) or
``total`` (``lambda_up`` times in all, the paper's wording "upsample by lambda_up").
The error set is saved as ``error_set.json`` (indices and ids).
"""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import torch

from spuraug import atomic, engine
from spuraug.engine import Batch, Objective, TrainSource, WeightedObjective
from spuraug.methods import TRAIN_PARAMS, Method, Param, param, register_method, train_transform
from spuraug.runs import load_model

STAGE1_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "batch_size")
#: Keys both stages share with the ERM recipe for stage 1 to be taken from the ERM run.
SHARED_KEYS = ("augment",)


def error_set(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the examples whose arg-max prediction differs from the label."""
    return np.flatnonzero(np.asarray(logits).argmax(1) != np.asarray(y)).astype(np.int64)


def upsampled_indices(n: int, errors: np.ndarray, lambda_up: int, copies: str = "total") -> np.ndarray:
    """Every index once plus each error index ``lambda_up`` more times (``copies="extra"``, the
    reference run_expt.py) or ``lambda_up - 1`` more times (``"total"``: lambda_up in all)."""
    repeat = int(lambda_up) if copies == "extra" else int(lambda_up) - 1
    extra = np.repeat(np.asarray(errors, dtype=np.int64), max(repeat, 0))
    return np.concatenate([np.arange(n, dtype=np.int64), extra])


class TrainPassRecorder(Objective):
    """The mean loss (ERM), recording each training example's arg-max prediction from the
    training pass itself (train mode, before the step), as the reference ``run_epoch`` logs
    them. A forward hook on ``model`` keeps the last training-mode output; after ``fit``
    ``pred[i]`` is the prediction of example ``i`` in the last epoch (every example is seen
    once per epoch); -1 where never seen."""

    def __init__(self, model: torch.nn.Module, n: int) -> None:
        self.pred = np.full(int(n), -1, dtype=np.int64)
        self._last: torch.Tensor | None = None
        self._hook = model.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if module.training:
            self._last = output.detach()

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self._last is not None and len(self._last) == len(batch.y):
            main = (batch.source == 0).cpu().numpy()
            idx = batch.index.cpu().numpy()[main]
            self.pred[idx] = self._last.float().argmax(1).cpu().numpy()[main]
        return losses.mean()

    def remove(self) -> None:
        self._hook.remove()


@register_method("jtt")
class JTT(Method):
    """JTT on the engine: ERM stage 1, error set, upweighted stage 2."""

    display_name: ClassVar[str] = "JTT"
    citation: ClassVar[str] = (
        "Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn. Just Train Twice. ICML 2021; anniesch/jtt"
    )
    order: ClassVar[int] = 20
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    uses_erm: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        **TRAIN_PARAMS,
        "stage1_epochs": param(1, int, ge=1, help="T: epochs of the stage-1 ERM model"),
        "stage1_optimizer": param("sgd", choices=("sgd", "adam", "adamw")),
        "stage1_lr": param(1e-3, float, gt=0),
        "stage1_weight_decay": param(1e-4, float, ge=0),
        "stage1_momentum": param(0.9, float, ge=0, le=1),
        "stage1_batch_size": param(32, int, ge=1),
        "lambda_up": param(50, int, ge=1, help="how many times an error-set example counts"),
        "upweight": param("upsample", choices=("upsample", "loss")),
        "error_set_from": param("train_pass", choices=("train_pass", "eval_pass"),
                                help="predictions logged in stage 1's training epoch T (reference) or one eval pass"),
        "upsample_copies": param("extra", choices=("extra", "total"),
                                 help="extra: 1 + lambda_up copies of an error (reference run_expt.py); total: lambda_up"),
        "reuse_erm": param(True, bool, help="take stage 1 from the ERM run when the recipes match"),
    }

    def stage1_recipe(self, hp: dict) -> dict:
        return {k: hp[f"stage1_{k}"] for k in STAGE1_KEYS}

    def erm_checkpoint(self, ctx) -> str | None:
        """The ERM run's checkpoint name usable as stage 1, or None when the recipes differ."""
        hp, erm = ctx.hparams, ctx.config["erm"]
        if hp["error_set_from"] == "train_pass" or not hp["reuse_erm"]:
            return None
        if self.stage1_recipe(hp) != {k: erm[k] for k in STAGE1_KEYS} or any(hp[k] != erm[k] for k in SHARED_KEYS):
            return None
        if erm.get("lr_schedule", "constant") != "constant":  # JTT's stage 1 trains at one rate throughout
            return None
        t = hp["stage1_epochs"]
        if t == erm["epochs"]:
            return "last"
        if t in [int(e) for e in erm["keep_epochs"]]:
            return f"epoch{t:03d}"
        return None

    def run(self, ctx) -> dict:

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
            model = ctx.build_model()
            recorder = TrainPassRecorder(model, len(train_eval)) if hp["error_set_from"] == "train_pass" else None
            try:
                stage1 = ctx.fit(model, {"train": source}, objective=recorder, hparams=recipe,
                                 out_dir=ctx.dir / "stage1").model
            finally:
                if recorder is not None:
                    recorder.remove()
            stage1_from = f"{ctx.dir / 'stage1'} (last epoch, {hp['stage1_epochs']})"
        if hp["error_set_from"] == "train_pass":
            saved = ctx.dir / "stage1" / "train_pass_pred.npy"
            if (recorder.pred >= 0).all():
                buf = io.BytesIO()
                np.save(buf, recorder.pred)
                atomic.write_bytes(saved, buf.getvalue())
            elif saved.is_file():  # stage 1 had finished before this (resumed) run
                recorder.pred = np.load(saved)
            else:
                raise RuntimeError(f"{ctx.dir / 'stage1'}: stage 1 finished without its logged training pass; "
                                   "delete that folder to train stage 1 again")
            logits = np.eye(train_eval.n_classes)[recorder.pred]
            stage1_from += f", predictions logged in training pass {hp['stage1_epochs']}"
        else:
            logits = engine.predict(stage1, train_eval, ctx.device, ctx.config["eval"]["batch_size"],
                                    num_workers=ctx.num_workers)
        errors = error_set(logits, train_eval.y)
        groups = np.bincount(train_eval.g[errors], minlength=train_eval.n_groups).tolist()
        atomic.write_json(
            ctx.dir / "error_set.json",
            {"indices": errors.tolist(), "ids": [train_eval.ids[i] for i in errors], "n_errors": len(errors),
             "n_train": len(train_eval), "errors_per_group": groups, "stage1": stage1_from},
        )
        train = ctx.load_split("train", train_transform(hp))
        if hp["upweight"] == "upsample":
            idx = upsampled_indices(len(train), errors, hp["lambda_up"], hp["upsample_copies"])
            source = TrainSource(train, hp["batch_size"], indices=idx)
            objective = None
        else:
            w = np.ones(len(train))
            w[errors] = hp["lambda_up"] + (1 if hp["upsample_copies"] == "extra" else 0)
            source = TrainSource(train, hp["batch_size"])
            objective = WeightedObjective(w)
        fit = ctx.fit(ctx.build_model(), {"train": source}, objective=objective)
        out = ctx.result_from_fit(fit)
        out["error_set"] = {"n_errors": int(len(errors)), "errors_per_group": groups, "stage1": stage1_from}
        return out
