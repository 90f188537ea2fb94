"""The dataset registry: one name, one loader, one set of facts.

Adding a dataset is adding a module with a :class:`DatasetSpec` and one line in
``_SPECS`` below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from spuraug.data import real, toy
from spuraug.data.base import DatasetInfo, SpuriousDataset
from spuraug.data.spec import DatasetSpec
from spuraug.data.transforms import toy_transform

#: Where real datasets live when neither ``--data-dir`` nor ``SPURAUG_DATA_DIR`` says.
DEFAULT_DATA_DIR = Path("data")


def _specs() -> dict[str, DatasetSpec]:
    specs = {
        "toy": DatasetSpec(
            info=toy.toy_info(),
            load=lambda split, data_dir=None, transform=None, **opt: toy.ToyDataset(
                split, toy.ToyConfig(**opt), transform
            ),
            transform=toy_transform,
            needs_data_dir=False,
            info_for=lambda **opt: toy.toy_info(toy.ToyConfig(**opt)),
        )
    }
    specs.update(real.SPECS)  # the real datasets register themselves in spuraug.data.real
    return specs


def dataset_names() -> list[str]:
    return list(_specs())


def get_spec(name: str) -> DatasetSpec:
    specs = _specs()
    if name not in specs:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(specs)}")
    return specs[name]


def dataset_info(name: str, options: dict | None = None) -> DatasetInfo:
    """The facts of dataset ``name``; with ``options`` (a run's ``dataset_options``), those of
    the data they make (``{"digits": [4, 9]}``: the toy's classes are "four" and "nine")."""
    spec = get_spec(name)
    if not options or spec.info_for is None:
        return spec.info
    return spec.info_for(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``--data-dir``, else ``$SPURAUG_DATA_DIR``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("SPURAUG_DATA_DIR", DEFAULT_DATA_DIR))


def get_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    transform: str | Callable | None = "eval",
    **options,
) -> SpuriousDataset:
    """Load ``split`` of dataset ``name``.

    ``transform`` is ``"train"`` or ``"eval"`` (the papers' transforms), a callable,
    or ``None`` (PIL images). ``options`` are dataset-specific (e.g. ``balance_train``
    for CelebA, the ``ToyConfig`` fields for ``toy``).
    """
    spec = get_spec(name)
    if isinstance(transform, str):
        if transform not in ("train", "eval"):
            raise ValueError(f"transform must be 'train', 'eval', a callable or None, not {transform!r}")
        transform = spec.transform(transform == "train")
    return spec.load(split, data_dir=resolve_data_dir(data_dir), transform=transform, **options)
