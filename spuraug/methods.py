"""The method registry: adding a method is adding one small class.

A method is a class decorated with ``@register_method("name")`` that declares

- ``annotation``: which group labels it uses, ``{"train_group_labels": bool,
  "val_group_labels": bool}``;
- ``params``: its hyperparameters as ``{name: Param(default, types...)}``; the
  ``<name>`` section of ``bench/configs/<dataset>.yaml`` is validated against them;
- ``run(ctx) -> dict``: trains and evaluates, given a :class:`spuraug.runs.RunContext`,
  and returns at least ``{"selected_epoch", "val", "test"}`` (plus anything worth keeping);
  :func:`spuraug.runs.run_method` adds the rest of ``result.json``.

Methods live in the modules of :data:`METHOD_MODULES`, imported lazily; a module that
does not exist (yet) is simply not registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

#: Modules that register methods, imported on first use of the registry.
METHOD_MODULES: tuple[str, ...] = (
    "baselines.erm",
    "baselines.groupdro",
    "baselines.jtt",
    "baselines.dfr",
    "spuraug.ddb.method",
)

_REGISTRY: dict[str, type[Method]] = {}
_LOADED = False


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default, the types a config value may have, allowed choices."""

    default: Any
    types: tuple[type, ...]
    choices: tuple | None = None
    help: str = ""

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
        return None


def param(default: Any, *types: type, choices: tuple | None = None, help: str = "") -> Param:
    """A :class:`Param`; the types default to the type of ``default``."""
    return Param(default, types or (type(default),), choices, help)


#: Hyperparameters of every method that trains a network with :func:`spuraug.engine.fit`.
TRAIN_PARAMS: dict[str, Param] = {
    "optimizer": param("sgd", choices=("sgd", "adam", "adamw")),
    "lr": param(1e-3, float),
    "momentum": param(0.9, float),
    "weight_decay": param(1e-4, float),
    "batch_size": param(32, int),
    "epochs": param(10, int),
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
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in METHOD_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # only the module itself (or its package) missing is fine; a missing
            # dependency inside an existing module is a real error
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise


def method_names() -> list[str]:
    """Names of every registered method, in the order of :data:`METHOD_MODULES`."""
    _load_all()
    return sorted(_REGISTRY, key=_order)


def _order(name: str) -> tuple[int, str]:
    module = _REGISTRY[name].__module__
    return (METHOD_MODULES.index(module) if module in METHOD_MODULES else len(METHOD_MODULES), name)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; ``KeyError`` naming the known ones."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return _REGISTRY[name]
