"""``spuraug ddb {invert,sources,segment,inpaint,prune,retrain,run}``: DDB's stages from the shell.

Each stage runs alone (computing missing inputs first) and resumes after an
interruption; ``run`` chains all of them and retrains (the same as
``spuraug train --method ddb``). Options come from the ``ddb:`` section of
``spuraug/configs/<dataset>.yaml``; ``--set stage.option=value`` overrides one
(``--set inpaint.batch_size=16``), and the model options have shortcuts.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from spuraug.config import ConfigError, check_seed, load_config, parse_overrides
from spuraug.ddb.hub import ModelMissingError
from spuraug.ddb.method import config_from_hparams, ddb_dataset_options
from spuraug.ddb.pipeline import Stages
from spuraug.errors import UserError
from spuraug.runs import run_method
from spuraug.train_cli import check_out_dir, check_runtime_options

STAGE_COMMANDS = ("invert", "sources", "segment", "inpaint", "prune", "retrain", "run")

_HELP = {
    "invert": "textual inversion: one learned token per class (shared by every ERM seed)",
    "sources": "the K lowest-ERM-loss training images of each class",
    "segment": "object masks of the sources from a text prompt (Grounding DINO + SAM, or CLIPSeg)",
    "inpaint": "repaint each source's object as the other class with Stable Diffusion inpainting "
               "(toy: or the oracle, inpaint.backend=oracle)",
    "prune": "bicephalous pruning: ERM probability vs Psi_i and Integrated Gradients inside the mask",
    "retrain": "retrain the ERM network on original + kept samples (a normal run folder)",
    "run": "every stage, then retraining (same as `spuraug train --method ddb`)",
}


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The nested config overrides of the command line: ``--set STAGE.OPTION=VALUE`` items
    and the shortcut options, all read by :func:`spuraug.config.parse_overrides` under ``ddb.``."""

    items = []
    for item in args.set or []:
        if "." not in item.partition("=")[0]:
            raise ConfigError(f"--set {item!r}: expected STAGE.OPTION=VALUE, e.g. inpaint.batch_size=16")
        items.append(item)
    shortcuts = {
        "invert_model": "invert.model", "inpaint_model": "inpaint.model",
        "segment_backend": "segment.backend", "detector_model": "segment.detector",
        "sam_model": "segment.sam", "clipseg_model": "segment.clipseg",
    }
    for attr, key in shortcuts.items():
        v = getattr(args, attr, None)
        if v is not None:
            items.append(f"{key}={json.dumps(v)}")
    for attr in ("engine", "workers"):  # scale-out (docs/scaleout.md): both sharded stages
        v = getattr(args, attr, None)
        if v is not None:
            items += [f"inpaint.{attr}={json.dumps(v)}", f"prune.{attr}={json.dumps(v)}"]
    return parse_overrides(items, prefix="ddb.")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ddb", help="DDB (Diffusion Driven Balancing) stage by stage",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="ddb_command", metavar="STAGE")
    sub.required = True
    for name in STAGE_COMMANDS:
        s = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        s.add_argument("--dataset", required=True, help="toy, waterbirds, celeba or metashift")
        s.add_argument("--seed", type=int, default=0, help="ERM seed (the sources and everything after depend on it)")
        s.add_argument("--data-dir", default=None, help="dataset folder (default $SPURAUG_DATA_DIR or ./data)")
        s.add_argument("--out", default="runs", help="runs folder (artifacts in <out>/<dataset>/ddb_artifacts)")
        s.add_argument("--config", default=None, help="config file (default spuraug/configs/<dataset>.yaml)")
        s.add_argument("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                       help="override one DDB option (repeatable), e.g. --set prune.threshold=0.5")
        s.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: CUDA when present)")
        s.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (1 is fastest on a shared machine)")
        s.add_argument("--invert-model", default=None, help="text-to-image model id or folder for inversion")
        s.add_argument("--inpaint-model", default=None, help="inpainting model id or folder")
        s.add_argument("--segment-backend", default=None, choices=("grounded_sam", "clipseg"))
        s.add_argument("--detector-model", default=None, help="Grounding DINO id or folder")
        s.add_argument("--sam-model", default=None, help="SAM id or folder")
        s.add_argument("--clipseg-model", default=None, help="CLIPSeg id or folder")
        if name in ("inpaint", "prune", "run"):
            s.add_argument("--engine", default=None, choices=("local", "ray"),
                           help="where inpaint/prune run: local (default) or ray (RAY_ADDRESS, else a local Ray)")
            s.add_argument("--workers", type=int, default=None,
                           help="Ray actors (default: one per GPU of the cluster, else one per CPU)")
        if name in ("retrain", "run"):
            s.add_argument("--force", action="store_true", help="redo a finished retraining (kept as .previous)")
        s.set_defaults(handler=handle)


def stages_from_args(args: argparse.Namespace):
    """The :class:`~spuraug.ddb.pipeline.Stages` of the command line's dataset, seed and config."""

    overrides = overrides_from_args(args)
    resolved = load_config(args.dataset, "ddb", args.config, overrides or None)
    cfg = config_from_hparams(resolved["hparams"], where=f"{resolved['config_file']}: ddb", dataset=args.dataset)
    return Stages(args.dataset, args.seed, cfg, runs_dir=args.out, data_dir=args.data_dir,
                  dataset_options=ddb_dataset_options(resolved), device=args.device, config_file=args.config,
                  overrides=overrides or None)


def handle(args: argparse.Namespace) -> int:

    try:
        return _handle(args)
    except (ConfigError, ModelMissingError) as e:
        raise UserError(str(e)) from None


def _handle(args: argparse.Namespace) -> int:

    cmd = args.ddb_command
    check_seed(args.seed)
    check_runtime_options(args)
    check_out_dir(args.out)
    if args.threads:

        torch.set_num_threads(args.threads)
    if cmd in ("retrain", "run"):

        result = run_method(args.dataset, "ddb", args.seed, args.out, args.data_dir, args.config,
                            overrides_from_args(args) or None, force=args.force, device=args.device)
        summary = {k: result.get(k) for k in ("dataset", "method", "seed", "selected_epoch")}
        for split in ("val", "test"):
            m = result.get(split) or {}
            summary[f"{split}_worst_group_acc"] = m.get("worst_group_acc")
            summary[f"{split}_avg_acc"] = m.get("avg_acc")
        summary["n_generated_kept"] = (result.get("ddb") or {}).get("n_generated_kept")
        print(json.dumps(summary, indent=2))
        return 0
    stages = stages_from_args(args)
    if cmd == "invert":
        art = stages.invert()
    elif cmd == "sources":
        stages.sources()
        art = stages.sources_artifact()
    elif cmd == "segment":
        art = stages.segment()
    elif cmd == "inpaint":
        art = stages.inpaint()
    else:
        stages.prune()
        art = stages.prune_artifact()
    m = art.manifest()
    print(json.dumps({"stage": cmd, "path": str(art.path), "counts": m.get("counts"),
                      "wall_time_s": m.get("wall_time_s")}, indent=2))
    print(f"spuraug ddb {cmd}: done -> {art.path}", file=sys.stderr)
    return 0
