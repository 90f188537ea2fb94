"""Per-dataset run configurations (``spuraug/configs/<dataset>.yaml``), validated.

A config file has top-level sections ``dataset_options``, ``model``, ``eval`` and
``loader`` and one section per registered method (:func:`spuraug.methods.method_names`). Every value carries a ``# comment`` citing the paper or repository it comes
from; :func:`load_config` keeps those comments as the resolved config's ``sources``.

Unknown keys, values of the wrong type and numbers out of range (``epochs: 0``,
``lr: -1``) are :class:`ConfigError` naming the file and the key; the one validator is
:meth:`spuraug.methods.Param.check`. ``overrides`` (nested dicts, or ``{"erm.lr": 0.01}``)
are validated alike. The one override parser is :func:`parse_overrides` (OmegaConf
dot-lists): ``spuraug train --set``, ``spuraug ddb ... --set`` and ``make bench SET=`` /
``python -m bench.sweep --set`` all go through it; :func:`format_overrides` is its inverse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from baselines.erm import recipe_values
from spuraug.data.toy import ToyConfig
from spuraug.methods import Param, get_method, method_names, param
from spuraug.models import MODEL_NAMES
from spuraug.toyworld.zoo import resolve_model_id

#: Where ``<dataset>.yaml`` live: package data of spuraug (``spuraug/configs/``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

MODEL_PARAMS: dict[str, Param] = {
    "name": param("resnet50", choices=MODEL_NAMES),
    "width": param(32, int, ge=1, help="toy_cnn only: channels of the second block"),
    "pretrained": param(True, bool),
    "weights": param(None, str, type(None),
                     help="resnet50: an ImageNet state-dict file; toy_cnn: a pretrained toy backbone folder or file"),
}
EVAL_PARAMS: dict[str, Param] = {
    "batch_size": param(256, int, ge=1),
    "every": param(1, int, ge=1, help="evaluate val and test every N epochs (and after the last)"),
}
LOADER_PARAMS: dict[str, Param] = {
    "num_workers": param(0, int, str, help="DataLoader workers, or auto: from the cores available "
                         "(spuraug.engine.resolve_num_workers)"),
}
SECTION_PARAMS: dict[str, dict[str, Param]] = {"model": MODEL_PARAMS, "eval": EVAL_PARAMS, "loader": LOADER_PARAMS}
#: Ranges of the toy dataset's options (the types come from :class:`spuraug.data.toy.ToyConfig`).
TOY_RANGES: dict[str, dict[str, float]] = {
    "n_train": {"ge": 1}, "n_val": {"ge": 1}, "n_test": {"ge": 1},
    "class0_share": {"ge": 0, "le": 1}, "correlation": {"ge": 0, "le": 1}, "seed": {"ge": 0},
}
#: Keys that do not change results and so stay out of the config hash.
RUNTIME_KEYS: tuple[str, ...] = ("loader", "config_file", "sources", "config_hash")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


def parse_overrides(items: list[str] | tuple[str, ...] | None, prefix: str = "") -> dict:
    """``["erm.epochs=2", "erm.lr=1e-5"]`` -> ``{"erm": {"epochs": 2, "lr": 1e-05}}``.

    The one parser of ``--set KEY=VALUE`` (OmegaConf dot-lists: values read as YAML, so
    ``2`` is an int, ``1e-5`` a float, ``[1, 2]`` a list, ``null`` None). ``prefix`` goes
    before every key (``spuraug ddb`` takes ``inpaint.batch_size=4`` for ``ddb.inpaint...``).
    """
    items = list(items or [])
    for item in items:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. erm.epochs=2")
    try:
        conf = OmegaConf.from_dotlist([prefix + item.strip() for item in items])
        return OmegaConf.to_container(conf, resolve=False)  # type: ignore[return-value]
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--set {' '.join(items)}: {first}") from None


def flatten_overrides(overrides: dict | None, prefix: str = "") -> dict:
    """``{"erm": {"epochs": 2}}`` -> ``{"erm.epochs": 2}``."""
    out: dict = {}
    for k, v in (overrides or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_overrides(v, key + "."))
        else:
            out[key] = v
    return out


def format_overrides(overrides: dict | None) -> list[str]:
    """The ``--set`` items of nested ``overrides``: the inverse of :func:`parse_overrides`."""
    return [f"{k}={json.dumps(v)}" for k, v in flatten_overrides(overrides).items()]  # JSON is valid YAML


def check_seed(seed: Any) -> int:
    """``seed`` as an int >= 0, else :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, str)) or not str(seed).lstrip("+").isdigit():
        raise ConfigError(f"seed {seed!r}: expected an integer >= 0")
    return int(seed)


def config_path(dataset: str) -> Path:
    return CONFIG_DIR / f"{dataset}.yaml"


_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*)\s*:\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")


def read_citations(text: str) -> dict[str, str]:
    """``{"erm.lr": "<comment>"}`` for every ``key: value  # comment`` line of a YAML file."""
    stack: list[tuple[int, str]] = []
    out: dict[str, str] = {}
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith(("#", "-")):
            continue
        m = _LINE.match(raw)
        if not m:
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group("key")
        path = ".".join([k for _, k in stack] + [key])
        if m.group("value"):
            if m.group("comment"):
                out[path] = m.group("comment").strip()
        else:
            stack.append((indent, key))
    return out


def _read_file(path: Path) -> tuple[dict, dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8 YAML) file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise ConfigError(f"{path}: config file is empty")
    try:
        # OmegaConf's YAML reading, as for --set: 1e-5 is a float (YAML 1.1 reads a string).
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not valid YAML: {first}") from None
    if not data:  # YAML with only comments reads as nothing
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data, read_citations(text)


def _expand(overrides: dict | None) -> dict:
    """``{"erm.lr": 1}`` -> ``{"erm": {"lr": 1}}`` (nested dicts pass through)."""
    out: dict = {}
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "dataset_options":
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _check_section(where: str, section: str, values: Any, schema: dict[str, Param]) -> dict:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {section}: expected a mapping of keys, got {type(values).__name__} {values!r}")
    for key, value in values.items():
        if key not in schema:
            raise ConfigError(
                f"{where}: {section}.{key}: unknown key; allowed keys: {', '.join(sorted(schema))}"
            )
        why = schema[key].check(value)
        if why:
            raise ConfigError(f"{where}: {section}.{key}: {why}")
    return {k: values.get(k, p.default) for k, p in schema.items()}


def _check_dataset_options(where: str, dataset: str, options: Any) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: dataset_options: expected a mapping, got {type(options).__name__}")
    if dataset != "toy":
        return dict(options)  # checked by the dataset's loader

    fields = {f.name: f for f in dataclasses.fields(ToyConfig)}
    defaults = ToyConfig()
    out = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: dataset_options.{key}: unknown key; allowed keys: {', '.join(sorted(fields))}"
            )
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ConfigError(f"{where}: dataset_options.{key}: expected a list of {len(default)}, got {value!r}")
            value = list(value)
        else:
            why = param(default, type(default), **TOY_RANGES.get(key, {})).check(value)
            if why:
                raise ConfigError(f"{where}: dataset_options.{key}: {why}")
        out[key] = value
    return out


def validate(data: dict, dataset: str, where: str) -> dict:
    """Check every section of a (merged) config; returns it with defaults filled in."""
    known_methods = set(method_names())
    out: dict = {}
    for key in data:
        if key in ("dataset_options", *SECTION_PARAMS):
            continue
        if key not in known_methods:
            allowed = ["dataset_options", *SECTION_PARAMS, *method_names()]
            raise ConfigError(f"{where}: {key}: unknown section; allowed sections: {', '.join(allowed)}")
    out["dataset_options"] = _check_dataset_options(where, dataset, data.get("dataset_options"))
    for section, schema in SECTION_PARAMS.items():
        out[section] = _check_section(where, section, data.get(section), schema)
    workers = out["loader"]["num_workers"]
    if workers != "auto" and not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f"{where}: loader.num_workers: expected an integer >= 0 or auto, got {workers!r}")
    for name in method_names():
        out[name] = _check_section(where, name, data.get(name), get_method(name).params)
        check = getattr(get_method(name), "check_hparams", None)
        if check is not None:  # a method whose sections hold more than flat values (DDB's stages)
            check(out[name], f"{where}: {name}", dataset=dataset)
    return out


def _file_sha256(path: str) -> str | None:
    try:
        p = Path(resolve_model_id(path))
    except FileNotFoundError:  # a toy zoo id whose folder is not built: loading it says so
        return None
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def config_hash(config: dict) -> str:
    """A short hash of everything in a resolved config that can change results."""
    material = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    if isinstance(material.get("model"), dict):
        model = material["model"]
        material["model"] = {k: v for k, v in model.items() if k != "weights"}
        # A ResNet-50 weights path only says where the one ImageNet file lies; a toy backbone's
        # file is a choice that changes results, so its content is part of the hash.
        if model.get("name") == "toy_cnn" and model.get("pretrained") and model.get("weights"):
            material["model"]["weights_sha256"] = _file_sha256(model["weights"])
    return hashlib.sha1(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _erm_recipe(data: dict, extra: dict, dataset: str, where: str) -> dict:
    """``{"erm": values}`` of the ERM recipe named by ``erm.recipe`` (an override's, else the
    file's; baselines/erm.py ``RECIPES``), applied over the file's erm section and under the
    overrides. A file whose erm values disagree with the recipe it names is an error."""

    file_erm = data.get("erm") or {}
    named = file_erm.get("recipe")
    values = recipe_values(named, dataset) if named else None
    if values is not None:
        for key, want in values.items():
            if key in file_erm and file_erm[key] != want:
                raise ConfigError(f"{where}: erm.{key}: {file_erm[key]!r} differs from recipe {named!r} "
                                  f"({want!r}, baselines/erm.py RECIPES)")
    name = (extra.get("erm") or {}).get("recipe", named)
    if not name or name == "custom":
        return {}
    values = recipe_values(name, dataset)
    if values is None:
        raise ConfigError(f"{where}: erm.recipe: {name!r} has no values for dataset {dataset!r}")
    return {"erm": dict(values)}


def load_config(
    dataset: str, method: str, config_file: str | Path | None = None, overrides: dict | None = None
) -> dict:
    """The resolved, validated config of ``method`` on ``dataset``.

    Returns ``{"dataset", "method", "dataset_options", "model", "eval", "loader",
    "hparams" (the method's section with defaults), "erm" (for methods that start from
    the ERM run), "config_file", "sources" (citation per key), "config_hash"}``.
    """
    cls = get_method(method)
    path = Path(config_file) if config_file is not None else config_path(dataset)
    if config_file is None and not path.is_file():
        raise ConfigError(f"no config for dataset {dataset!r}: expected {path} (or pass --config FILE)")
    data, citations = _read_file(path)
    validate(data, dataset, str(path))
    extra = _expand(overrides)
    merged = _merge(_merge(data, _erm_recipe(data, extra, dataset, str(path))), extra)
    full = validate(merged, dataset, f"{path} (with overrides {overrides})" if overrides else str(path))
    resolved = {
        "dataset": dataset,
        "method": method,
        "dataset_options": full["dataset_options"],
        "model": full["model"],
        "eval": full["eval"],
        "loader": full["loader"],
        "hparams": full.get(method, {}) if method in full else _check_section(str(path), method, {}, cls.params),
    }
    if cls.uses_erm and method != "erm":
        resolved["erm"] = full["erm"]
    resolved["config_file"] = str(path)
    resolved["sources"] = {
        k: v for k, v in citations.items()
        if k.split(".")[0] in ("dataset_options", "model", "eval", method) or (cls.uses_erm and k.startswith("erm."))
    }
    resolved["config_hash"] = config_hash(resolved)
    return resolved
