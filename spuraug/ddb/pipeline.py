"""DDB's stages chained through cached artifacts.

Layout under the runs folder (each stage folder named ``<stage>-<key>``, the key a hash
of everything the stage's output depends on)::

    runs/<dataset>/ddb_artifacts/
        invert-<key>/                 shared by every ERM seed (no ERM input)
            class<c>/learned_embeds.safetensors, manifest.json, done
        seed<S>/
            sources-<key>/sources.csv          K lowest-ERM-loss images per class, Psi_i
            segment-<key>/masks/<id>.png|json  object masks beside the source ids
            inpaint-<key>/images/<sample>.png|json, samples.csv
            prune-<key>/scores.csv, table.csv  p, Psi_i, rho, verdicts
    runs/<dataset>/ddb/seed<S>/                the retrained model: a normal run folder

Each stage can run alone (its inputs are computed first if missing) and each resumes
after an interruption. :class:`Stages` is what the CLI and the ``ddb`` method use.
"""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from spuraug import atomic, engine
from spuraug.data.registry import get_dataset, get_spec
from spuraug.data.toy import ToyDataset
from spuraug.ddb import hub
from spuraug.ddb import invert as inv
from spuraug.ddb.artifacts import (
    Artifact,
    AttemptClock,
    one_process_at_a_time,
    read_json,
    safe_name,
    timed,
    write_json_sorted,
)
from spuraug.ddb.config import DDBConfig
from spuraug.ddb.inpaint import (
    Source,
    edited_region,
    inpaint,
    load_inpaint_pipeline,
    make_plan,
    region_from_mask,
    resolve_dtype,
    samples_table,
)
from spuraug.ddb.invert import EMBEDS_FILE, class_tokens
from spuraug.ddb.oracle_edit import ORACLE_VERSION, oracle_inpaint, split_plan
from spuraug.ddb.prune import apply_rules, prune_counts, score_table
from spuraug.ddb.scaleout import inpaint_sharded, prune_sharded
from spuraug.ddb.segment import build_segmenter, load_mask, segment_sources
from spuraug.ddb.sources import psi, select_sources
from spuraug.engine import resolve_device
from spuraug.runs import ensure_erm, load_model

#: Why the inversion stage did not run (manifests, result.json and the log say so).
INVERSION_SKIPPED = ("inversion skipped: inpaint.backend is oracle with oracle_mix 1, every edit is drawn by the "
                     "toy renderer, no token is learned")

#: Options that change speed or memory but not results: left out of artifact keys.
RUNTIME_FIELDS = ("batch_size", "device", "checkpoint_every", "internal_batch_size", "engine", "workers",
                  "fuse_accumulation", "channels_last", "fuse_qkv", "attention", "compile", "compile_mode")


def _key_cfg(obj: Any) -> dict:
    d = asdict(obj) if not isinstance(obj, dict) else dict(obj)
    return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}


def artifact_root(runs_dir: str | os.PathLike, dataset: str) -> Path:
    return Path(runs_dir) / dataset / "ddb_artifacts"


def segmenter_models(cfg: DDBConfig) -> tuple[str, ...]:
    """The model ids the segment stage loads."""
    s = cfg.segment
    return (s.clipseg,) if s.backend == "clipseg" else (s.detector, s.sam)


def weights_changed(cfg: DDBConfig, stages: dict, runs_dir: str | os.PathLike, dataset: str) -> str | None:
    """Whether the weights behind a model id changed since a DDB run made its stages.

    ``stages`` is the ``ddb.stages`` of its result.json (each stage's folder); each stage
    folder's ``key.json`` records the fingerprint (:func:`spuraug.ddb.hub.fingerprint`) of
    the weights it used. Returns a sentence naming the stage and both fingerprints, or None
    when they all still match (or cannot be told: a stage folder deleted, the weights absent
    on this machine). The folders are looked up under ``runs_dir``, so a copied runs folder
    is checked against its own copies.
    """
    current = {"invert": hub.fingerprint(cfg.invert.model),
               "segment": [hub.fingerprint(m) for m in segmenter_models(cfg)],
               "inpaint": hub.fingerprint(cfg.inpaint.model)}
    root = artifact_root(runs_dir, dataset)
    for name, now in current.items():
        rec = Path(str((stages.get(name) or {}).get("path") or ""))
        if "ddb_artifacts" not in rec.parts:
            continue
        try:
            key = read_json(root.joinpath(*rec.parts[rec.parts.index("ddb_artifacts") + 1:]) / "key.json")
        except (OSError, ValueError):
            continue
        was = key.get("weights") if isinstance(key, dict) else None
        if was is None or "unknown" in (now if isinstance(now, list) else [now]):
            continue
        if was != now:
            return f"the weights behind its {name} stage's model changed since it ran ({was} -> {now})"
    return None


@dataclass
class Stages:
    """The DDB stages of one dataset and ERM seed.

    ``classifier`` / ``erm_dir``: the ERM model; when neither is given, the ERM run of
    ``seed`` is found or trained through :func:`spuraug.runs.ensure_erm`.
    """

    dataset: str
    seed: int
    cfg: DDBConfig
    runs_dir: Path = Path("runs")
    data_dir: str | None = None
    dataset_options: dict = field(default_factory=dict)
    device: str = "auto"
    config_file: str | None = None
    overrides: dict | None = None
    classifier: torch.nn.Module | None = None
    erm_dir: Path | None = None
    erm_key: str | None = None
    _splits: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ inputs
    def split(self, name: str, transform: Any = None):
        key = (name, transform if isinstance(transform, str) or transform is None else id(transform))
        if key not in self._splits:

            opts = {k: tuple(v) if isinstance(v, list) else v for k, v in self.dataset_options.items()}
            self._splits[key] = get_dataset(self.dataset, name, data_dir=self.data_dir, transform=transform, **opts)
        return self._splits[key]

    @property
    def eval_transform(self):

        return get_spec(self.dataset).transform(False)

    @property
    def n_classes(self) -> int:
        return self.split("train").n_classes

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def erm(self) -> tuple[torch.nn.Module, str]:
        """The ERM classifier (eval mode) and a key naming it (its run's config hash)."""
        if self.classifier is None:

            if self.erm_dir is None:
                self.erm_dir = ensure_erm(self.dataset, self.seed, self.runs_dir, self.data_dir,
                                          config_file=self.config_file, overrides=self.overrides, device=self.device)
            which = self.cfg.sources.erm_checkpoint
            self.classifier = load_model(self.erm_dir, which)
            cfg = read_json(Path(self.erm_dir) / "config.json")
            self.erm_key = f"{cfg.get('config_hash')}/seed{self.seed}/{which}"
        return self.classifier.eval(), self.erm_key or "given"

    def root(self) -> Path:
        return artifact_root(self.runs_dir, self.dataset)

    def seed_root(self) -> Path:
        return self.root() / f"seed{self.seed}"

    def _base_key(self) -> dict:
        return {"dataset": self.dataset, "dataset_options": self.dataset_options}

    # ------------------------------------------------------------------ artifacts
    def invert_artifact(self) -> Artifact:
        key = {**self._base_key(), "invert": _key_cfg(self.cfg.invert), "n_classes": self.n_classes,
               "weights": hub.fingerprint(self.cfg.invert.model)}
        if self.cfg.invert.loss_region in ("object", "region"):  # regions from the segmenter and inpaint's mask shape
            key["regions"] = {"segment": _key_cfg(self.cfg.segment),
                              "mask_mode": self.cfg.inpaint.mask_mode, "mask_dilation": self.cfg.inpaint.mask_dilation,
                              "weights": [hub.fingerprint(m) for m in segmenter_models(self.cfg)]}
        return Artifact(self.root(), "invert", key)

    def sources_artifact(self) -> Artifact:
        _, erm_key = self.erm()
        return Artifact(self.seed_root(), "sources", {**self._base_key(), "erm": erm_key,
                                                      "sources": _key_cfg(self.cfg.sources)})

    def segment_artifact(self) -> Artifact:
        return Artifact(self.seed_root(), "segment", {"sources": self.sources_artifact().key,
                                                      "segment": _key_cfg(self.cfg.segment),
                                                      "weights": [hub.fingerprint(m) for m in segmenter_models(self.cfg)]})

    @property
    def learned_edits(self) -> bool:
        """Whether the learned generator makes any edit (false with ``inpaint.backend: oracle``
        and ``oracle_mix: 1``: then no token is learned and the inversion stage is skipped)."""
        return self.cfg.inpaint.backend != "oracle" or self.cfg.inpaint.oracle_mix < 1.0

    def inpaint_artifact(self) -> Artifact:

        c = _key_cfg(self.cfg.inpaint)
        c.pop("label")  # applied when the table is read, not baked into the images
        c["dtype"] = str(resolve_dtype(self.cfg.inpaint.dtype, self.torch_device))
        key = {"segment": self.segment_artifact().key, "inpaint": c}
        if c["backend"] == "diffusers":  # the keys of learned-only stages stay what they were before the oracle
            c.pop("backend")
            c.pop("oracle_mix")
        else:
            key["oracle"] = ORACLE_VERSION
        if self.learned_edits:
            key.update({"invert": self.invert_artifact().key, "weights": hub.fingerprint(self.cfg.inpaint.model)})
        return Artifact(self.seed_root(), "inpaint", key)

    def prune_artifact(self) -> Artifact:
        c = _key_cfg(self.cfg.prune)
        for k in ("threshold", "rho", "use_condition1", "use_condition2"):  # applied to the table afterwards
            c.pop(k)
        return Artifact(self.seed_root(), "prune", {"inpaint": self.inpaint_artifact().key,
                                                    "sources": self.sources_artifact().key, "prune": c})

    # ------------------------------------------------------------------ stage 1
    def tokens(self) -> list[str]:
        return class_tokens(self.cfg.invert.tokens, self.n_classes)

    @one_process_at_a_time("invert_artifact")
    def invert(self) -> Artifact:
        """Textual inversion of every class (resumable; shared across ERM seeds)."""

        art = self.invert_artifact()
        if art.done:
            return art
        art.prepare()
        cfg = self.cfg.invert
        with timed(art) as t:
            train = self.split("train")
            comps = inv.load_sd_components(cfg.model, cfg.revision)
            tokens = self.tokens()
            ids = inv.add_tokens(comps, tokens, cfg.initializer_token)
            per_class = {}
            segmenter = None
            for c in range(self.n_classes):
                out = art.path / f"class{c}"
                chosen = inv.select_images(train.y, c, cfg.n_images, cfg.image_seed)
                image_ids = [train.ids[int(i)] for i in chosen]
                info = per_class[str(c)] = {"token": tokens[c], "n_images": int(len(chosen)), "image_ids": image_ids,
                                            "file": f"class{c}/{EMBEDS_FILE}"}
                if (out / EMBEDS_FILE).is_file():
                    continue
                images = [train.load_image(int(i)) for i in chosen]
                regions = objects = None
                if cfg.loss_region in ("object", "region"):
                    if segmenter is None:

                        segmenter = build_segmenter(self.cfg.segment, self.device)
                    objects, regions = self._inversion_regions(segmenter, images, image_ids, out / "masks")
                    info["regions_found"] = sum(r is not None for r in regions)
                with AttemptClock(out / "attempts.json") as clock:  # a resumed class counts every attempt
                    inv.train_token(comps, images, tokens[c], ids[c], cfg, out, self.device,
                                    desc=f"invert class {c} {tokens[c]}", regions=regions, objects=objects)
                dt = clock.total_seconds
                n_seen = cfg.max_train_steps * cfg.train_batch_size * cfg.gradient_accumulation_steps
                info.update({"wall_time_s": dt, "steps_per_s": cfg.max_train_steps / max(dt, 1e-9),
                             "images_per_s": n_seen / max(dt, 1e-9)})
        art.finish({"counts": {"classes": self.n_classes, "images_per_class": cfg.n_images},
                    "models": {"text_to_image": {"id": cfg.model, "revision": hub.revision_of(cfg.model)}},
                    "seeds": {"training": cfg.seed, "image_choice": cfg.image_seed},
                    "classes": per_class, "wall_time_s": t["wall_time_s"], "config": asdict(cfg)})
        return art

    def _inversion_regions(self, segmenter, images: list[Image.Image], ids: list[str],
                           mask_dir: Path) -> tuple[list[np.ndarray | None], list[Image.Image | None]]:
        """``loss_region: object``: each inversion image's object mask, found by the segment
        stage's code, backend and prompt (saved as ``masks/<id>.png|json``, resumable), and
        the region the inpainting stage would repaint for it (``None`` where nothing is found)."""

        segment_sources([(sid, (lambda im=im: im)) for sid, im in zip(ids, images)], segmenter,
                        self.cfg.segment.prompt, mask_dir, self.cfg.segment.batch_size)
        objects = [load_mask(mask_dir, sid) for sid in ids]
        regions = [None if m is None else region_from_mask(m, im.size, self.cfg.inpaint.mask_dilation,
                                                           self.cfg.inpaint.mask_mode)
                   for m, im in zip(objects, images)]
        return objects, regions

    def embeddings(self) -> dict[str, Path]:
        art = self.invert()
        return {tok: art.path / f"class{c}" / EMBEDS_FILE for c, tok in enumerate(self.tokens())}

    # ------------------------------------------------------------------ sources
    @one_process_at_a_time("sources_artifact")
    def sources(self) -> pd.DataFrame:
        """The K lowest-ERM-loss training images per class (``sources.csv``)."""

        art = self.sources_artifact()
        if not art.done:
            art.prepare()
            with timed(art) as t:
                model, erm_key = self.erm()
                train = self.split("train", "eval")
                logits = engine.predict(model, train, self.torch_device, self.cfg.sources.batch_size, progress=True)
                lg = torch.from_numpy(logits).double()
                losses = torch.nn.functional.cross_entropy(lg, torch.as_tensor(np.array(train.y)), reduction="none").numpy()
                probs = lg.softmax(1).numpy()
                table = select_sources(train.y, losses, probs, self.cfg.sources.k, train.ids)
                atomic.write_text(art.path / "sources.csv", table.to_csv(index=False))
            counts = {str(c): int((table.source_class == c).sum()) for c in range(self.n_classes)}
            art.finish({"counts": {"sources": int(len(table)), "per_class": counts},
                        "psi": {str(k): v for k, v in psi(table).items()}, "erm": erm_key,
                        "erm_dir": str(self.erm_dir) if self.erm_dir else None,
                        "seeds": {"erm": self.seed}, "wall_time_s": t["wall_time_s"],
                        "config": asdict(self.cfg.sources)})
        return pd.read_csv(art.path / "sources.csv", dtype={"source_id": str})

    def source_image(self, position: int) -> Image.Image:
        return self.split("train").load_image(int(position))

    def source_path(self, position: int) -> Path | None:
        p = self.split("train").image_path(int(position))
        return Path(p) if p is not None else None

    # ------------------------------------------------------------------ stage 2a
    @one_process_at_a_time("segment_artifact")
    def segment(self) -> Artifact:
        """Object masks of every source (``masks/<source id>.png``)."""

        table = self.sources()
        art = self.segment_artifact()
        if art.done:
            return art
        art.prepare()
        cfg = self.cfg.segment
        with timed(art) as t:
            seg = build_segmenter(cfg, self.device)
            items = [(str(r.source_id), (lambda pos=int(r.position): self.source_image(pos)))
                     for r in table.itertuples()]
            counts = segment_sources(items, seg, cfg.prompt, art.path / "masks", cfg.batch_size)
            # In-memory datasets have no image files: keep a copy of each source for the
            # record (and for the examples page).
            src_dir = art.path / "sources"
            for r in table.itertuples():
                if self.source_path(int(r.position)) is None:
                    f = src_dir / f"{safe_name(str(r.source_id))}.png"
                    if not f.is_file():
                        atomic.save_image(f, self.source_image(int(r.position)))
        models = ({"detector": cfg.detector, "sam": cfg.sam} if cfg.backend == "grounded_sam"
                  else {"clipseg": cfg.clipseg})
        art.finish({"counts": counts, "models": {k: {"id": v, "revision": hub.revision_of(v)} for k, v in models.items()},
                    "images": len(table), "images_per_s": len(table) / max(t["wall_time_s"], 1e-9), "backend": cfg.backend, "prompt": cfg.prompt, "wall_time_s": t["wall_time_s"],
                    "config": asdict(cfg)})
        return art

    # ------------------------------------------------------------------ stage 2b
    def plan(self):

        table = self.sources()
        seg = self.segment()
        srcs = []
        for r in table.itertuples():
            meta = read_json(seg.path / "masks" / f"{safe_name(str(r.source_id))}.json")
            if not meta["found"]:
                continue
            srcs.append(Source(str(r.source_id), int(r.position), int(r.source_class), int(r.rank),
                               (lambda pos=int(r.position): self.source_image(pos)),
                               seg.path / "masks" / f"{safe_name(str(r.source_id))}.png"))
        return make_plan(srcs, self.n_classes, self.cfg.inpaint.seed)

    @one_process_at_a_time("inpaint_artifact")
    def inpaint(self, on_written=None) -> Artifact:
        """Generated images (``images/<sample>.png`` + ``.json``) and ``samples.csv``.

        With ``inpaint.backend: oracle`` the share ``oracle_mix`` of the plan is drawn by the
        toy's oracle generator (spuraug/ddb/oracle_edit.py) into the same files, the rest by the
        learned pipeline; with ``oracle_mix: 1`` no token is learned."""

        plan = self.plan()
        cfg = self.cfg.inpaint
        oracle_plan, learned_plan = (split_plan(plan, cfg.oracle_mix, cfg.seed) if cfg.backend == "oracle"
                                     else ([], plan))
        embeds = self.embeddings() if self.learned_edits else None
        art = self.inpaint_artifact()
        if art.done:
            return art
        art.prepare()
        engine = None
        seconds = {}
        with timed(art) as t:
            if oracle_plan:
                t0 = time.perf_counter()
                train = self.split("train")
                if not isinstance(train, ToyDataset):
                    raise ValueError(f"ddb.inpaint.backend: 'oracle' needs the toy dataset's renderer and exact masks; "
                                     f"dataset {self.dataset!r} is not the toy")
                oracle_inpaint(oracle_plan, cfg, art.path, train.mask, list(train.config.digits), on_written=on_written)
                seconds["oracle"] = time.perf_counter() - t0
            if learned_plan:
                t0 = time.perf_counter()
                if cfg.engine == "local":
                    pipe = load_inpaint_pipeline(cfg, embeds, self.device)
                    inpaint(pipe, learned_plan, self.tokens(), cfg, art.path, on_written=on_written)
                else:  # sharded over workers (spuraug/ddb/scaleout.py)

                    _, engine = inpaint_sharded(self, learned_plan, embeds, art.path)
                seconds["learned"] = time.perf_counter() - t0
            table = samples_table(art.path, plan)
            atomic.write_text(art.path / "samples.csv", table.to_csv(index=False))
        per = {str(c): int((table.source_class == c).sum()) for c in range(self.n_classes)} if len(table) else {}
        counts = {"planned": len(plan), "generated": int(len(table)), "per_source_class": per}
        extra: dict = {"backend": cfg.backend}
        if cfg.backend == "oracle":
            counts.update({"oracle": len(oracle_plan), "learned": len(learned_plan)})
            extra.update({"oracle_mix": cfg.oracle_mix, "oracle_version": ORACLE_VERSION,
                          "generator_seconds_last_attempt": seconds})
            if not self.learned_edits:
                extra["inversion"] = INVERSION_SKIPPED
        if self.learned_edits:
            extra.update({"models": {"inpainting": {"id": cfg.model, "revision": hub.revision_of(cfg.model)}},
                          "tokens": self.tokens()})
        art.finish({"counts": counts, **extra,
                    "seeds": {"base": cfg.seed, "per_sample": "sha256(base|source_id|target)"},
                    "label": cfg.label, "images": len(plan), "images_per_s": len(plan) / max(t["wall_time_s"], 1e-9),
                    "engine": engine or {"engine": "local", "workers": 1},
                    "wall_time_s": t["wall_time_s"], "config": asdict(cfg)})
        return art

    # ------------------------------------------------------------------ stage 3
    @one_process_at_a_time("prune_artifact")
    def prune(self) -> pd.DataFrame:
        """The pruning table (every sample's p, Psi_i, rho and verdicts) with the configured thresholds."""

        inp = self.inpaint()
        sources = self.sources()
        art = self.prune_artifact()
        samples = pd.read_csv(inp.path / "samples.csv", dtype={"source_id": str, "sample_id": str})
        cfg = self.cfg.prune
        seg_masks = self.segment_artifact().path / "masks"  # not the recorded absolute path: runs may move
        if not art.done:
            art.prepare()
            partial = art.path / "scores.partial.csv"
            done = _read_partial(partial, samples)
            engine = None
            with timed(art) as t:
                model, _ = self.erm()
                if cfg.engine != "local":  # sharded over workers (spuraug/ddb/scaleout.py)

                    scores, engine = prune_sharded(self, samples, sources, art.path, inp.path)
                pos = dict(zip(sources.source_id.astype(str), sources.position))
                scores = scores if engine else score_table(
                    model, samples,
                    load_edited=lambda r: Image.open(inp.path / r["file"]).convert("RGB"),
                    load_original=lambda r: self.source_image(int(pos[str(r["source_id"])])),
                    load_mask=lambda r: edited_region(seg_masks / f"{safe_name(str(r['source_id']))}.png",
                                                      self.cfg.inpaint),
                    psi=psi(sources), transform=self.eval_transform, ig_target=cfg.ig_target,
                    n_steps=cfg.n_steps, internal_batch_size=cfg.internal_batch_size, batch_size=cfg.batch_size,
                    device=self.torch_device, done=done,
                    on_batch=lambda df: atomic.write_text(partial, df.to_csv(index=False)),
                )
                atomic.write_text(art.path / "scores.csv", scores.to_csv(index=False))
                partial.unlink(missing_ok=True)
            art.finish({"counts": {"generated": int(len(scores))}, "ig": {"n_steps": cfg.n_steps,
                        "target": cfg.ig_target}, "images": int(len(scores)),
                        "images_per_s": len(scores) / max(t["wall_time_s"], 1e-9),
                        "wall_time_s": t["wall_time_s"], "config": asdict(cfg),
                        "engine": engine or {"engine": "local", "workers": 1}})
        scores = pd.read_csv(art.path / "scores.csv", dtype={"source_id": str, "sample_id": str})
        table = self.verdicts(scores, samples, sources)
        atomic.write_text(art.path / "table.csv", table.to_csv(index=False))
        counts = prune_counts(table)
        manifest = art.manifest()
        manifest.setdefault("verdicts", {})[f"P={cfg.threshold},rho={cfg.rho}"] = counts
        manifest["counts"] = counts
        write_json_sorted(art.path / "manifest.json", manifest)
        return table

    def verdicts(self, scores: pd.DataFrame, samples: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
        """Scores + the configured rule's verdicts + image paths (for retraining and the examples page)."""

        cfg = self.cfg.prune
        table = apply_rules(scores, cfg.threshold, cfg.rho, cfg.use_condition1, cfg.use_condition2)
        new = self.cfg.inpaint.label == "new"
        table["label"] = np.where(new, table["target_class"], table["source_class"]).astype(np.int64)
        inp = self.inpaint_artifact().path
        seg = self.segment_artifact().path
        files = dict(zip(samples.sample_id, samples.file))
        pos = dict(zip(sources.source_id.astype(str), sources.position))
        table["generated_path"] = [str(inp / files[s]) for s in table.sample_id]
        table["mask_path"] = [str(seg / "masks" / f"{safe_name(str(s))}.png") for s in table.source_id]

        def src(sid: str) -> str:
            p = self.source_path(int(pos[sid]))
            return str(p) if p is not None else str(seg / "sources" / f"{safe_name(sid)}.png")

        table["source_path"] = [src(str(s)) for s in table.source_id]
        table["rho"] = table["rho_raw"] if cfg.rho == "raw" else table["rho_fraction"]
        return table

    def kept(self) -> pd.DataFrame:
        """The kept generated samples (rows of the pruning table with ``keep``)."""
        table = self.prune()
        return table[table["keep"]].reset_index(drop=True)

    def run_all(self) -> dict:
        """Every stage up to pruning; returns each stage's manifest."""
        if self.learned_edits:
            self.invert()
        else:
            print(f"ddb: {INVERSION_SKIPPED}", file=sys.stderr)
        self.sources()
        self.segment()
        self.inpaint()
        self.prune()
        return self.manifests()

    def manifests(self) -> dict:
        out = {}
        for name in ("invert", "sources", "segment", "inpaint", "prune"):
            if name == "invert" and not self.learned_edits:
                out[name] = {"path": None, "done": False, "skipped": INVERSION_SKIPPED, "counts": None,
                             "wall_time_s": 0.0, "config_hash": None}
                continue
            art = getattr(self, f"{name}_artifact")()
            m = art.manifest()
            out[name] = {"path": str(art.path), "done": art.done, "counts": m.get("counts"),
                         "wall_time_s": m.get("wall_time_s"), "config_hash": m.get("config_hash")}
        return out


def _read_partial(path: Path, samples: pd.DataFrame) -> pd.DataFrame | None:
    """The rows an interrupted prune stage scored (``scores.partial.csv``), or None; a torn
    or damaged file is dropped with one line (its rows are scored again)."""
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:  # written whole (atomically) it ends with a newline and names only planned samples
        done = pd.read_csv(io.BytesIO(raw), dtype={"source_id": str, "sample_id": str})
        ok = raw.endswith(b"\n") and "sample_id" in done and done["sample_id"].isin(samples["sample_id"]).all()
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        ok, done = False, None
    if not ok:
        print(f"{path}: torn or damaged; scoring its rows again", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None
    return done


def kept_arrays(table: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Files, labels and source classes of the kept rows of a pruning table."""
    kept = table[table["keep"]]
    return list(kept["generated_path"]), kept["label"].to_numpy(np.int64), kept["source_class"].to_numpy(np.int64)
