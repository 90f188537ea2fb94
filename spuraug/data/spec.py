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
    #: ``info_for(**options) -> DatasetInfo``: the facts of the data a run's ``dataset_options``
    #: make (the toy's digits and backgrounds name its classes and attributes); ``None`` when
    #: no option changes them (:attr:`info` then holds for every run).
    info_for: Callable[..., DatasetInfo] | None = None
