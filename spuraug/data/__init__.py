"""Datasets with a spurious attribute: toy, waterbirds, celeba, metashift."""

from spuraug.data.base import SPLITS, DataError, DatasetInfo, SpuriousDataset, group_index
from spuraug.data.registry import dataset_info, dataset_names, get_dataset, get_spec

__all__ = [
    "SPLITS",
    "DataError",
    "DatasetInfo",
    "SpuriousDataset",
    "dataset_info",
    "dataset_names",
    "get_dataset",
    "get_spec",
    "group_index",
]
