"""DDB's configuration: one dataclass per stage, defaults = the published recipe.

Every default cites where it comes from: the paper (Yazdan Parast et al., ICCV 2025,
arXiv 2503.17226) or its public code (github.com/ArianYp/DDB: ``textual_inversion.py``,
``generate.py``, ``train.py``, README). Per-dataset values live in the ``ddb:`` section
of ``spuraug/configs/<dataset>.yaml`` and override these; unknown keys are an error that
names the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from spuraug.methods import LR_SCHEDULES, Param, param

#: diffusers' textual-inversion object templates, with the class noun after the token
#: (the public code's ``textual_inversion.py`` appends " animal"; DDB uses the class noun).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {token} {noun}",
    "a rendering of a {token} {noun}",
    "a cropped photo of the {token} {noun}",
    "the photo of a {token} {noun}",
    "a photo of a clean {token} {noun}",
    "a dark photo of the {token} {noun}",
    "a photo of my {token} {noun}",
    "a photo of the cool {token} {noun}",
    "a close-up photo of a {token} {noun}",
    "a bright photo of the {token} {noun}",
    "a cropped photo of a {token} {noun}",
    "a photo of the {token} {noun}",
    "a good photo of the {token} {noun}",
    "a photo of one {token} {noun}",
    "a close-up photo of the {token} {noun}",
    "a rendition of the {token} {noun}",
    "a photo of the clean {token} {noun}",
    "a rendition of a {token} {noun}",
    "a photo of a nice {token} {noun}",
    "a good photo of a {token} {noun}",
    "a photo of the nice {token} {noun}",
    "a photo of the small {token} {noun}",
    "a photo of the weird {token} {noun}",
    "a photo of the large {token} {noun}",
    "a photo of a cool {token} {noun}",
    "a photo of a small {token} {noun}",
)


@dataclass
class InvertConfig:
    """Textual inversion, one token per class (DDB paper; public README command)."""

    model: str = "stabilityai/stable-diffusion-2-base"  # public README --pretrained_model_name_or_path
    revision: str | None = None
    #: The placeholder token of each class; ``None`` -> ``<class-0>``, ``<class-1>``, ...
    tokens: list[str] | None = None
    initializer_token: str = "bird"  # a generic noun (paper); public README: "animal" on MetaShift
    noun: str = "bird"  # the class noun in the templates (public code: " animal")
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    n_images: int = 30  # paper's ablation: 30 images best on Waterbirds (93.0 WGA)
    image_seed: int = 0  # which N training images of the class (uniform draw, fixed seed)
    resolution: int = 512  # README --resolution=512
    center_crop: bool = False  # diffusers default (README does not pass --center_crop)
    train_batch_size: int = 1  # README --train_batch_size=1
    gradient_accumulation_steps: int = 4  # README --gradient_accumulation_steps=4
    max_train_steps: int = 3000  # README --max_train_steps=3000 (optimizer steps)
    learning_rate: float = 5e-4  # README --learning_rate=5.0e-04
    scale_lr: bool = True  # README --scale_lr: lr * batch * accumulation * n_gpus = 2e-3
    lr_scheduler: str = "constant"  # README --lr_scheduler=constant, warmup 0
    adam_beta1: float = 0.9  # diffusers textual_inversion.py default
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2  # diffusers default, applied to the new row only
    adam_epsilon: float = 1e-8
    #: A 9-channel inpainting UNet is trained fully masked: mask = 1 and the masked image
    #: all zeros, encoded by the VAE ("encode", what the inpainting pipeline does for a
    #: full mask) or zero latents ("zeros").
    full_mask_latents: str = "encode"
    #: Where the denoising loss is taken. "image": the whole image, text-to-image (the
    #: paper; diffusers' textual_inversion.py). "object": through the inpainting model, as
    #: the inpainting stage will use the token: each image's object is found by the segment
    #: stage (its backend and prompt), the region inpainting would repaint
    #: (``inpaint.mask_mode``, ``inpaint.mask_dilation``) is masked, and the loss is taken
    #: on the object's latent cells only, so the token has to explain the object, not the
    #: background (needs a 9-channel inpainting UNet; an image where no object is found
    #: is used whole). "region": the same, with the loss over the whole repainted region
    #: (the object's surroundings inside the box too). Not in the paper: docs/ddb.md.
    loss_region: str = "image"
    #: Run the ``gradient_accumulation_steps`` micro-batches of an optimizer step as one
    #: forward/backward pass (same random draws and per-micro-batch losses: only rounding
    #: differs; more memory, fewer passes). Off: one pass per micro-batch, as diffusers.
    fuse_accumulation: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on CUDA for the frozen UNet/VAE, fp32 on CPU
    seed: int = 0
    checkpoint_every: int = 500  # diffusers --checkpointing_steps default


@dataclass
class SourcesConfig:
    """Which training images are repainted: the K lowest-ERM-loss images per class."""

    #: K per class (class index -> K); the public code's --k0/--k1.
    k: list[int] = field(default_factory=lambda: [1300, 1112])  # paper: Waterbirds 1300 / 1112 generated
    batch_size: int = 64  # public generate.py --batch_size
    #: Which checkpoint of the ERM run is "the ERM model" (sources, pruning, retraining start):
    #: "last" = the converged ERM model (the public code loads a fixed, fully trained ERM
    #: checkpoint; DFR's code also uses the final one) | "best" = ERM's own selection.
    erm_checkpoint: str = "last"


@dataclass
class SegmentConfig:
    """The causal object's mask from a text prompt (paper: LangSAM)."""

    backend: str = "grounded_sam"  # "grounded_sam" (LangSAM recipe) | "clipseg"
    prompt: str = "bird."  # public generate.py --mask_prompt ("animal." on MetaShift)
    #: LangSAM's own models (luca-medeiros/lang-segment-anything: GDINO base, sam2.1_hiera_small); the
    #: earlier defaults IDEA-Research/grounding-dino-tiny and facebook/sam-vit-base (SAM v1) still load.
    detector: str = "IDEA-Research/grounding-dino-base"
    sam: str = "facebook/sam2.1-hiera-small"
    clipseg: str = "CIDAS/clipseg-rd64-refined"
    revision: str | None = None
    box_threshold: float = 0.3  # LangSAM default
    text_threshold: float = 0.25  # LangSAM default
    #: "first": the detector's first box above threshold, as LangSAM/public code (masks[0]);
    #: "top_score": the highest-scoring box.
    box_choice: str = "first"
    clipseg_threshold: float = 0.4
    #: Clean the mask: keep the largest connected part and fill its holes (not in the
    #: paper, whose SAM masks are solid; useful for speckled CLIPSeg maps).
    clean: bool = False
    batch_size: int = 8
    device: str = "auto"


@dataclass
class InpaintConfig:
    """Repaint the object as the OTHER class (DDB paper, inpainting)."""

    #: Who makes the edits. "diffusers": the inpainting pipeline of ``model`` with the learned
    #: tokens (the paper). "oracle": the toy benchmark only, not in the paper: the source's digit
    #: is erased and the target class's digit drawn by the toy renderer
    #: (spuraug/ddb/oracle_edit.py), so DDB's other stages can be measured apart from the
    #: learned generator (docs/ddb.md "Oracle edits").
    backend: str = "diffusers"
    #: With ``backend: oracle``: the share of planned edits the oracle makes; the rest are made
    #: by the diffusers pipeline. Which ones is a fixed function of each sample's id and
    #: ``seed`` (the edits of a smaller share are a subset of a larger one's). 1.0: oracle only,
    #: and no textual inversion is run.
    oracle_mix: float = 1.0
    model: str = "stabilityai/stable-diffusion-2-inpainting"  # public generate.py
    revision: str | None = None
    #: Prompt; ``{token}`` is the other class's learned token (public: "a photo of a <cat> animal").
    prompt: str = "a photo of a {token} bird"
    negative_prompt: str | None = None
    resolution: int = 512  # the SD2 inpainting pipeline's default height/width
    num_inference_steps: int = 50  # diffusers pipeline default (public code passes none)
    guidance_scale: float = 7.5  # diffusers pipeline default
    strength: float = 1.0
    scheduler: str = "default"  # "default" (the model folder's) | "ddim" | "dpm" | "euler" | "pndm"
    #: Keep the background exactly: paste the source pixels back outside the mask
    #: (the paper keeps the background; the pipeline alone re-encodes it through the VAE).
    paste_back: bool = True
    mask_dilation: int = 0  # pixels of dilation of the mask before inpainting
    #: "mask": repaint the object's mask (paper); "box": repaint the mask's bounding box
    #: (grown by ``mask_dilation``), so the new object need not keep the old silhouette.
    mask_mode: str = "mask"
    #: "new": the generated image is labelled with the new class j (paper);
    #: "source": with the source class i (public generate.py writes class_label = i).
    label: str = "new"
    batch_size: int = 8
    dtype: str = "auto"  # auto: fp16 on CUDA (public code), fp32 on CPU
    device: str = "auto"
    #: Speed options of the UNet (kernels, not results; bench/gpu/ddb_throughput.py --variants
    #: measures each): channels-last memory format, fused q/k/v projections
    #: (diffusers' fuse_qkv_projections), the SDPA kernel tried first (auto = torch's choice),
    #: torch.compile (inductor; ``compile_mode``).
    channels_last: bool = False
    fuse_qkv: bool = False
    attention: str = "auto"
    compile: bool = False
    compile_mode: str = "default"
    seed: int = 0
    #: Where the samples are generated: "local" (this process) | "ray" (actors, docs/scaleout.md).
    engine: str = "local"
    workers: int = 0  # Ray actors; 0 = one per GPU of the cluster, else one per CPU


@dataclass
class PruneConfig:
    """Bicephalous pruning (DDB paper, pruning)."""

    threshold: float = 0.3  # P, public generate.py --threshold
    #: "raw": rho = sum of IG attributions inside the mask (public code, P calibrated to it);
    #: "fraction": that sum divided by the total attribution (= f(x) - f(baseline) by completeness).
    rho: str = "raw"
    #: IG target: "new" class j (paper) | "source" class i (public code passes class_label = i).
    ig_target: str = "new"
    n_steps: int = 50  # captum IntegratedGradients default
    internal_batch_size: int = 64
    batch_size: int = 16
    use_condition1: bool = True
    use_condition2: bool = True
    device: str = "auto"
    engine: str = "local"  # "local" | "ray" (docs/scaleout.md)
    workers: int = 0  # Ray actors; 0 = automatic


@dataclass
class RetrainConfig:
    """Retraining from the ERM weights (DDB paper, retraining; public train.py)."""

    gamma: list[float] = field(default_factory=lambda: [6.0, 10.0])  # train.py --gamma1 6 --gamma2 10
    #: Which set of edits gamma[c] weighs: "source" = the edits made from class-c sources (public
    #: train.py: it labels edits with the source class and keys gamma by that label) | "label" =
    #: the edits trained with label c (with inpaint.label: new that swaps the two weights).
    gamma_by: str = "source"
    lr: float = 5e-6  # train.py --lr
    #: "constant" (train.py: Adam at one rate, no scheduler) | "cosine" (torch's
    #: CosineAnnealingLR over ``epochs``, stepped per epoch, as ``lr_schedule`` of the other methods)
    lr_schedule: str = "constant"
    batch_size: int = 32  # train.py --batch_size
    epochs: int = 200  # train.py --epochs
    weight_decay: float = 0.0  # train.py: Adam without weight decay
    reinit_head: bool = True  # train.py weight_init(fc): Xavier uniform, bias 0
    #: Let model selection also pick the ERM model DDB starts from ("epoch 0", scored by its own
    #: epoch line in the ERM run): DDB then never ends below its start on the selection metric.
    #: Not in the public train.py, whose reinitialised head leaves the start out of selection
    #: (docs/ddb.md, "Why DDB can end below ERM"); false = the reference protocol.
    keep_start: bool = False
    #: Train (original and generated images) with the dataset's random train transform (public
    #: train.py: ``args.transform = get_transform(True)`` for both); false: the eval transform.
    augment: bool = True


@dataclass
class DDBConfig:
    invert: InvertConfig = field(default_factory=InvertConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {f.name: f for f in fields(DDBConfig)}
#: ``inpaint.attention``: the scaled-dot-product-attention kernel tried first (the others stay
#: as fallbacks); "auto" leaves the choice to torch.
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
_CHOICES = {
    ("segment", "backend"): ("grounded_sam", "clipseg"),
    ("inpaint", "backend"): ("diffusers", "oracle"),
    ("sources", "erm_checkpoint"): ("best", "last"),
    ("segment", "box_choice"): ("first", "top_score"),
    ("inpaint", "label"): ("new", "source"),
    ("inpaint", "mask_mode"): ("mask", "box"),
    ("inpaint", "scheduler"): ("default", "ddim", "dpm", "euler", "pndm"),
    ("prune", "rho"): ("raw", "fraction"),
    ("inpaint", "engine"): ("local", "ray"),
    ("prune", "engine"): ("local", "ray"),
    ("prune", "ig_target"): ("new", "source"),
    ("retrain", "lr_schedule"): LR_SCHEDULES,
    ("retrain", "gamma_by"): ("source", "label"),
    ("invert", "full_mask_latents"): ("encode", "zeros"),
    ("invert", "loss_region"): ("image", "object", "region"),
    ("inpaint", "attention"): ATTENTION_BACKENDS,
    ("inpaint", "compile_mode"): ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


#: Ranges of numeric options (``ge``: >=, ``gt``: >, ``le``: <=), checked by
#: :meth:`spuraug.methods.Param.check` like every other config value.
_RANGES: dict[tuple[str, str], dict[str, float]] = {
    **{("invert", k): {"ge": 1} for k in ("n_images", "resolution", "train_batch_size", "gradient_accumulation_steps",
                                          "max_train_steps", "checkpoint_every")},
    ("invert", "learning_rate"): {"gt": 0},
    ("invert", "adam_beta1"): {"ge": 0, "le": 1},
    ("invert", "adam_beta2"): {"ge": 0, "le": 1},
    ("invert", "adam_weight_decay"): {"ge": 0},
    ("invert", "adam_epsilon"): {"gt": 0},
    ("invert", "seed"): {"ge": 0},
    ("invert", "image_seed"): {"ge": 0},
    ("sources", "batch_size"): {"ge": 1},
    ("segment", "box_threshold"): {"ge": 0, "le": 1},
    ("segment", "text_threshold"): {"ge": 0, "le": 1},
    ("segment", "clipseg_threshold"): {"ge": 0, "le": 1},
    ("segment", "batch_size"): {"ge": 1},
    ("inpaint", "oracle_mix"): {"ge": 0, "le": 1},
    ("inpaint", "resolution"): {"ge": 8},
    ("inpaint", "num_inference_steps"): {"ge": 1},
    ("inpaint", "guidance_scale"): {"ge": 0},
    ("inpaint", "strength"): {"gt": 0, "le": 1},
    ("inpaint", "mask_dilation"): {"ge": 0},
    ("inpaint", "batch_size"): {"ge": 1},
    ("inpaint", "seed"): {"ge": 0},
    ("inpaint", "workers"): {"ge": 0},
    ("prune", "n_steps"): {"ge": 1},
    ("prune", "internal_batch_size"): {"ge": 1},
    ("prune", "batch_size"): {"ge": 1},
    ("prune", "workers"): {"ge": 0},
    ("retrain", "lr"): {"gt": 0},
    ("retrain", "batch_size"): {"ge": 1},
    ("retrain", "epochs"): {"ge": 1},
    ("retrain", "weight_decay"): {"ge": 0},
}
#: Each element of these list options must be >= 0 (K per class, gamma per class).
_NON_NEGATIVE_LISTS = {("sources", "k"), ("retrain", "gamma")}


def _param(stage: str, obj: Any, key: str) -> Param:
    """The :class:`~spuraug.methods.Param` of one option: the type of its default, its choices, its range."""
    default = getattr(obj, key)
    types = (object,) if default is None else (type(default),)
    return param(default, *types, choices=_CHOICES.get((stage, key)), **_RANGES.get((stage, key), {}))


def _check(stage: str, obj: Any, key: str, value: Any, where: str) -> Any:
    """``value`` checked by the option's :class:`Param` (an int for a float option becomes a float)."""
    why = _param(stage, obj, key).check(value)
    if why is None and (stage, key) in _NON_NEGATIVE_LISTS:
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0]
        why = f"expected numbers >= 0, got {value!r}" if bad else None
    if why:
        raise ValueError(f"{where}: {why}")
    if isinstance(getattr(obj, key), float) and isinstance(value, int):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


#: The datasets the oracle generator can edit (it needs the toy renderer and exact masks).
ORACLE_DATASETS = ("toy",)


def ddb_config(section: dict[str, Any] | None = None, where: str = "ddb", dataset: str | None = None) -> DDBConfig:
    """Build a :class:`DDBConfig` from a ``ddb:`` mapping of ``{stage: {field: value}}``.

    Keys not given keep the defaults. An unknown stage or field, a value of the wrong type,
    outside a field's choices or out of its range raises ``ValueError`` naming ``where.stage.field``;
    so does ``inpaint.backend: oracle`` on a ``dataset`` other than the toy, and
    ``inpaint.oracle_mix`` below 1 without it, and an ``inpaint.strength`` that leaves
    ``int(num_inference_steps x strength)`` at 0 denoising steps.
    """
    section = dict(section or {})
    cfg = DDBConfig()
    for stage, values in section.items():
        if stage not in _SECTIONS:
            raise ValueError(f"{where}.{stage}: unknown DDB stage; expected one of {', '.join(_SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{where}.{stage}: expected a mapping of options, got {values!r}")
        obj = getattr(cfg, stage)
        known = {f.name for f in fields(obj)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"{where}.{stage}.{key}: unknown option; known: {', '.join(sorted(known))}")
            setattr(obj, key, _check(stage, obj, key, value, f"{where}.{stage}.{key}"))
    inp = cfg.inpaint
    if inp.backend == "oracle" and dataset is not None and dataset not in ORACLE_DATASETS:
        raise ValueError(f"{where}.inpaint.backend: 'oracle' draws the edits with the toy renderer and needs the "
                         f"toy's exact masks; dataset {dataset!r} is not one of {', '.join(ORACLE_DATASETS)}")
    if inp.backend != "oracle" and inp.oracle_mix != 1.0:
        raise ValueError(f"{where}.inpaint.oracle_mix: {inp.oracle_mix!r} applies only with inpaint.backend: oracle "
                         f"(backend is {inp.backend!r})")
    if int(inp.num_inference_steps * inp.strength) < 1:  # diffusers runs int(steps x strength) steps
        raise ValueError(f"{where}.inpaint.strength: {inp.strength!r} x num_inference_steps "
                         f"{inp.num_inference_steps!r} leaves no denoising step; raise either")
    return cfg
