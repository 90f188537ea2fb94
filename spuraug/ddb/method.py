"""DDB as a method of the suite: ``spuraug train --method ddb`` and the sweep harness.

``run`` chains the cached stages (:class:`spuraug.ddb.pipeline.Stages`) from the ERM run
of the same seed, then retrains on :func:`spuraug.engine.fit` into the normal run folder
``runs/<dataset>/ddb/seed<S>/``, so result.json, metrics.jsonl and checkpoints follow the
contract. Annotation: no training group labels; validation group labels for model
selection only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from spuraug import atomic
from spuraug.config import ConfigError
from spuraug.ddb.config import DDBConfig, ddb_config
from spuraug.ddb.pipeline import Stages, kept_arrays, weights_changed
from spuraug.ddb.retrain import AugmentedTrainSet, DDBObjective, GeneratedDataset, reinit_head
from spuraug.engine import TrainSource, select_line
from spuraug.methods import Method, Param, param, register_method
from spuraug.runs import load_model

STAGES: tuple[str, ...] = ("invert", "sources", "segment", "inpaint", "prune", "retrain")


def ddb_dataset_options(resolved: dict) -> dict:
    """The dataset options of DDB's own stages and retraining: the config's ``dataset_options``
    with the ``ddb.dataset_options`` on top (CelebA: ``balance_train: true``, the class-balanced
    training split of the public code's ``data/CelebA.py``). The ERM run keeps the config's."""
    return {**resolved["dataset_options"], **(resolved["hparams"].get("dataset_options") or {})}


def config_from_hparams(hparams: dict, where: str = "ddb", dataset: str | None = None) -> DDBConfig:
    """The :class:`DDBConfig` of a resolved ``ddb`` section (``ConfigError`` naming the key);
    ``dataset`` checks the options that only some datasets allow (``inpaint.backend: oracle``)."""

    try:
        return ddb_config({k: hparams.get(k) or {} for k in STAGES}, where=where, dataset=dataset)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@register_method("ddb")
class DDB(Method):
    """Diffusion Driven Balancing (Yazdan Parast et al., ICCV 2025)."""

    display_name: ClassVar[str] = "DDB"
    citation: ClassVar[str] = (
        "Yazdan Parast, Azam, Akhtar. DDB: Diffusion Driven Balancing to Address Spurious Correlations. ICCV 2025; ArianYp/DDB"
    )
    order: ClassVar[int] = 100
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    uses_erm: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        **{s: param({}, dict, help=f"options of the {s} stage (spuraug/ddb/config.py)") for s in STAGES},
        "selection": param("val_worst_group_acc", choices=("val_worst_group_acc", "val_worst_class_acc", "test_oracle")),
        "dataset_options": param({}, dict, help="dataset options of DDB's stages and retraining over the config's "
                                 "(CelebA: balance_train, as the public data/CelebA.py); ERM keeps the config's"),
    }

    @staticmethod
    def check_hparams(hparams: dict, where: str, dataset: str | None = None) -> None:
        """Validate every stage's options (types, choices, ranges, the dataset's) when the config
        is loaded, before any file is written (:func:`spuraug.config.validate` calls this)."""
        config_from_hparams(hparams, where=where, dataset=dataset)

    def stale_reason(self, ctx, result: dict) -> str | None:
        """A finished DDB run is stale when the weights behind its models changed since (a
        retrained toy zoo, another snapshot in a local folder): same config, other images."""

        cfg = config_from_hparams(ctx.hparams, where=f"{ctx.config['config_file']}: ddb")
        return weights_changed(cfg, (result.get("ddb") or {}).get("stages") or {}, ctx.runs_dir, ctx.dataset)

    def run(self, ctx) -> dict:

        cfg = config_from_hparams(ctx.hparams, where=f"{ctx.config['config_file']}: ddb", dataset=ctx.dataset)
        erm_dir = ctx.ensure_erm()
        stages = Stages(
            ctx.dataset, ctx.seed, cfg, runs_dir=ctx.runs_dir, data_dir=ctx.data_dir,
            dataset_options=ddb_dataset_options(ctx.config), device=str(ctx.device), config_file=ctx.config_file,
            overrides=ctx.overrides, erm_dir=erm_dir,
        )
        manifests = stages.run_all()
        table = stages.prune()
        files, labels, source_classes = kept_arrays(table)
        train = stages.split("train", "train" if cfg.retrain.augment else "eval")
        aug = AugmentedTrainSet(train, GeneratedDataset(files, labels, transform=train.transform))
        model = load_model(erm_dir, cfg.sources.erm_checkpoint)
        if cfg.retrain.reinit_head:
            reinit_head(model, ctx.seed)
        rc = cfg.retrain
        hp = {"optimizer": "adam", "lr": rc.lr, "weight_decay": rc.weight_decay, "momentum": 0.0,
              "epochs": rc.epochs, "lr_schedule": rc.lr_schedule, "selection": ctx.hparams["selection"]}
        fit = ctx.fit(model, {"train": TrainSource(aug, rc.batch_size)},
                      objective=DDBObjective(len(train), rc.gamma,
                                             keys=source_classes if rc.gamma_by == "source" else None),
                      hparams=hp)
        out = ctx.result_from_fit(fit)
        start = start_line(erm_dir, cfg.sources.erm_checkpoint) if rc.keep_start else None
        if start is not None and select_line([start, fit.selected], ctx.hparams["selection"]) is start:
            out = {"selected_epoch": 0, "val": start["val"], "test": start["test"]}  # ties go to the start
            atomic.torch_save(Path(fit.out_dir) / "checkpoints" / "best.pt",
                              load_model(erm_dir, cfg.sources.erm_checkpoint).state_dict())
        out["ddb"] = {
            "erm_run": str(erm_dir),
            "stages": manifests,
            "n_train": len(train),
            "n_generated_kept": len(files),
            "kept_per_label": {str(c): int((labels == c).sum()) for c in range(train.n_classes)},
            "kept_per_source_class": {str(c): int((source_classes == c).sum()) for c in range(train.n_classes)},
            "gamma_by": rc.gamma_by,
            "keep_start": rc.keep_start,
            "selected_start": out["selected_epoch"] == 0,
        }
        return out


def start_line(erm_dir: str | Path, which: str) -> dict | None:
    """The ERM run's epoch line of the weights DDB starts from: its last evaluated epoch for
    ``sources.erm_checkpoint: last``, its selected epoch for ``best``; ``epoch`` set to 0."""

    lines = [json.loads(x) for x in (Path(erm_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not lines:
        return None
    if which == "best":
        result = json.loads((Path(erm_dir) / "result.json").read_text())
        line = next((x for x in lines if x.get("epoch") == result.get("selected_epoch")), None)
    else:
        line = lines[-1]
    return None if line is None or "val" not in line else {**line, "epoch": 0}
