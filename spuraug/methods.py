"""The method registry: adding a method is adding one module with one class.

A method is a class decorated with ``@register_method("name")`` that declares, as class
attributes:

- ``display_name`` and ``citation``: how tables and the leaderboard name it and which
  paper (and reference code) it follows;
- ``annotation``: which group labels it uses, ``{"train_group_labels": bool,
  "val_group_labels": bool}``;
- ``params``: its hyperparameters as ``{name: Param(default, types...)}``; the
  ``<name>`` section of ``spuraug/configs/<dataset>.yaml`` is validated against them;
- ``order``: where it stands in default method lists (ERM first, DDB last);
- ``run(ctx) -> dict``: trains and evaluates, given a :class:`spuraug.runs.RunContext`,
  and returns at least ``{"selected_epoch", "val", "test"}`` (plus anything worth keeping);
  :func:`spuraug.runs.run_method` adds the rest of ``result.json``.

The registry finds methods itself: every module of the :data:`METHOD_PACKAGES` packages
(``baselines/*.py``), the modules of :data:`METHOD_MODULES` (DDB) and the entry points of
group :data:`ENTRY_POINT_GROUP` (methods of other installed packages) are imported on first
use. No list names the methods; ``docs/baselines.md`` ("Adding a method") walks through it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

#: Packages whose every module is imported to register methods (one method per module).
METHOD_PACKAGES: tuple[str, ...] = ("baselines",)
#: Single modules that register methods (the suite's own method lives inside its package).
METHOD_MODULES: tuple[str, ...] = ("spuraug.ddb.method",)
#: Entry-point group through which other installed packages add methods
#: (``[project.entry-points."spuraug.methods"] mymethod = "mypkg.mymethod"``).
ENTRY_POINT_GROUP = "spuraug.methods"

_REGISTRY: dict[str, type[Method]] = {}
_LOADED = False


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default, the types a config value may have, allowed choices,
    and the range of a number (``ge``: >=, ``gt``: >, ``le``: <=)."""

    default: Any
    types: tuple[type, ...]
    choices: tuple | None = None
    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def check(self, value: Any) -> str | None:
        """``None`` if ``value`` is acceptable, else why not."""
        if value is None and type(None) in self.types:
            return None
        ok = any(
            (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t not in (int, float) and isinstance(value, t))
            for t in self.types
        )
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in self.types)
            return f"expected {names}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(map(str, self.choices))}, got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for op, bound, ok in ((">=", self.ge, lambda b: value >= b), (">", self.gt, lambda b: value > b),
                                  ("<=", self.le, lambda b: value <= b)):
                if bound is not None and not ok(bound):
                    return f"expected a number {op} {bound}, got {value!r}"
        return None


def param(default: Any, *types: type, choices: tuple | None = None, help: str = "",
          ge: float | None = None, gt: float | None = None, le: float | None = None) -> Param:
    """A :class:`Param`; the types default to the type of ``default``."""
    return Param(default, types or (type(default),), choices, help, ge, gt, le)


#: Hyperparameters of every method that trains a network with :func:`spuraug.engine.fit`.
#: The learning-rate schedules of spuraug.engine.build_lr_schedule (every method's ``lr_schedule``,
#: DDB's ``retrain.lr_schedule``).
LR_SCHEDULES = ("constant", "cosine")
TRAIN_PARAMS: dict[str, Param] = {
    "optimizer": param("sgd", choices=("sgd", "adam", "adamw")),
    "lr": param(1e-3, float, gt=0),
    "momentum": param(0.9, float, ge=0, le=1),
    "weight_decay": param(1e-4, float, ge=0),
    "batch_size": param(32, int, ge=1),
    "epochs": param(10, int, ge=1),
    "lr_schedule": param("constant", choices=LR_SCHEDULES,
                         help="constant: the papers' recipes (GroupDRO, JTT, DFR train at one rate); cosine: "
                              "torch's CosineAnnealingLR over the epochs, stepped after each epoch"),
    "selection": param("val_worst_group_acc", choices=("val_worst_group_acc", "val_worst_class_acc", "test_oracle")),
    "augment": param(True, bool, help="train with the dataset's random train transform; false: its eval transform "
                                      "(group_DRO/JTT run without --augment_data)"),
}


def train_transform(hparams: dict) -> str:
    """The transform name a method trains with: ``"train"`` (augmented) or ``"eval"``."""
    return "train" if hparams.get("augment", True) else "eval"


class Method:
    """Base class of every method (see the module docstring)."""

    name: ClassVar[str] = ""
    #: How tables and the leaderboard name the method ("GroupDRO").
    display_name: ClassVar[str] = ""
    #: The paper (and reference code) the method follows.
    citation: ClassVar[str] = ""
    #: Position in default method lists (sweeps, tables): ERM first, the suite's own method last.
    order: ClassVar[int] = 50
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    params: ClassVar[dict[str, Param]] = {}
    #: Methods that start from the ERM run of the same seed (their config hash includes ERM's).
    uses_erm: ClassVar[bool] = False
    #: Whether validation group labels are used for more than model selection (DFR trains on them).
    val_labels_beyond_selection: ClassVar[bool] = False

    def annotation_for(self, hparams: dict) -> dict[str, bool]:
        """The annotation setting of a run with ``hparams``: selecting by worst-class or
        test accuracy needs no validation group labels."""
        ann = dict(self.annotation)
        if hparams.get("selection", "val_worst_group_acc") != "val_worst_group_acc" and not (
            self.val_labels_beyond_selection
        ):
            ann["val_group_labels"] = False
        return ann

    def run(self, ctx: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def stale_reason(self, ctx: Any, result: dict) -> str | None:
        """Why a finished run of this very config no longer matches its inputs (say, the
        weights behind a model id changed), or None. A stale run is redone; its folder is
        kept as ``.seed<S>.previous``."""
        return None


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        missing = [a for a in ("display_name", "citation") if not getattr(cls, a, "")]
        if missing:
            raise ValueError(f"method {name!r} ({cls.__module__}.{cls.__qualname__}) must set {', '.join(missing)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        # only the module itself (or its package) missing is fine (DDB's extras not
        # installed); a missing dependency inside an existing module is a real error
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise


def method_modules() -> list[str]:
    """Every module the registry imports: each module of :data:`METHOD_PACKAGES`, then
    :data:`METHOD_MODULES`, then the modules of the ``spuraug.methods`` entry points."""
    out: list[str] = []
    for package in METHOD_PACKAGES:
        pkg = importlib.import_module(package)
        out += [f"{package}.{m.name}" for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name)
                if not m.name.startswith("_")]
    out += list(METHOD_MODULES)
    out += [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return out


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in method_modules():
        _import(module)


def method_names() -> list[str]:
    """Names of every registered method, by their ``order`` (then name)."""
    _load_all()
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def methods() -> dict[str, type[Method]]:
    """``{name: class}`` of every registered method, in :func:`method_names` order."""
    return {n: _REGISTRY[n] for n in method_names()}


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; ``KeyError`` naming the known ones."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return _REGISTRY[name]


def display_name(method: str) -> str:
    """The method's ``display_name`` (its registry name for an unknown method)."""
    _load_all()
    cls = _REGISTRY.get(method) or _REGISTRY.get(method.lower())
    return (cls.display_name or cls.name) if cls is not None else method
