"""A registry entry: what :mod:`spuraug.data.registry` lists and :mod:`spuraug.data.real` defines.

It lives below both so that the registry can import the real datasets at the top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spuraug.data.base import DatasetInfo, SpuriousDataset


@dataclass(frozen=True)
class DatasetSpec:
    """How to build a dataset: its static facts, its loader and its transforms."""

    info: DatasetInfo
    #: ``load(split, data_dir, transform, **options) -> SpuriousDataset``
    load: Callable[..., SpuriousDataset]
    #: ``transform(train: bool) -> callable`` (the papers' transforms)
    transform: Callable[[bool], Callable]
    needs_data_dir: bool = True
