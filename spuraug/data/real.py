"""The real datasets of the suite, as registry entries (see :mod:`spuraug.data.registry`).

One module per dataset holds its facts and loader: :mod:`spuraug.data.waterbirds`,
:mod:`spuraug.data.celeba`, :mod:`spuraug.data.metashift`. Where to get them and how
their groups are coded: docs/datasets.md.
"""

from __future__ import annotations

from spuraug.data import celeba, metashift, waterbirds
from spuraug.data.spec import DatasetSpec
from spuraug.data.transforms import celeba_transform, waterbirds_transform

SPECS: dict[str, DatasetSpec] = {
    "waterbirds": DatasetSpec(info=waterbirds.INFO, load=waterbirds.load, transform=waterbirds_transform),
    "celeba": DatasetSpec(info=celeba.INFO, load=celeba.load, transform=celeba_transform),
    # MetaShift images are natural photos like Waterbirds': same transforms (DISC, DDB).
    "metashift": DatasetSpec(info=metashift.INFO, load=metashift.load, transform=waterbirds_transform),
}
