"""Metadata parsing of the real datasets at their real sizes (no images needed).

CelebA has 202,599 rows: loading a split must stay a matter of about a second, in both
the original whitespace format and the Kaggle/WILDS CSV format. Run with
``.venv/bin/python -m pytest bench/test_real_metadata_loading.py --benchmark-enable``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spuraug.data import celeba, waterbirds

N_CELEBA = 202_599
N_WATERBIRDS = 11_788
ATTRS = 40
BLOND, MALE = 9, 20  # positions in list_attr_celeba.txt's header


def _celeba_files(root: Path, fmt: str) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "img_align_celeba").mkdir()
    names = np.array([f"{i + 1:06d}.jpg" for i in range(N_CELEBA)])
    values = np.where(rng.random((N_CELEBA, ATTRS)) < 0.2, 1, -1)
    part = np.repeat([0, 1, 2], [162_770, 19_867, 19_962])
    header = [f"Attr{k}" for k in range(ATTRS)]
    header[BLOND], header[MALE] = "Blond_Hair", "Male"
    if fmt == "original":
        rows = "\n".join(n + "".join(f"{v:3d}" if v > 0 else f" {v}" for v in r) for n, r in zip(names, values))
        (root / "list_attr_celeba.txt").write_text(f"{N_CELEBA}\n{' '.join(header)}\n{rows}\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, part)))
    else:
        rows = "\n".join(n + "," + ",".join(map(str, r)) for n, r in zip(names, values))
        (root / "list_attr_celeba.csv").write_text("image_id," + ",".join(header) + "\n" + rows + "\n")
        (root / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in zip(names, part))
        )
    return root


@pytest.mark.parametrize("fmt", ["original", "csv"])
def test_celeba_metadata_full_size(benchmark, tmp_path, fmt):
    """Parse and validate CelebA's 202,599-row metadata and select the training split."""
    root = _celeba_files(tmp_path / fmt, fmt)

    def load():
        celeba._read_metadata.cache_clear()  # measure the parse, not the cache
        return celeba.load("train", root)

    ds = benchmark.pedantic(load, rounds=3, iterations=1, warmup_rounds=0)
    assert len(ds) == 162_770
    benchmark.extra_info.update(stage="data", method="celeba_metadata", rows=N_CELEBA, format=fmt)


def test_waterbirds_metadata_full_size(benchmark, tmp_path):
    root = tmp_path / "waterbird_complete95_forest2water2"
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i in range(N_WATERBIRDS):
        lines.append(
            f"{i + 1},001.Black_footed_Albatross/Black_Footed_Albatross_{i:04d}_1.jpg,"
            f"{rng.integers(2)},{rng.integers(3)},{rng.integers(2)},/o/ocean/{i:08d}.jpg"
        )
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    ds = benchmark.pedantic(lambda: waterbirds.load("test", tmp_path), rounds=3, iterations=1)
    assert 0 < len(ds) < N_WATERBIRDS
    benchmark.extra_info.update(stage="data", method="waterbirds_metadata", rows=N_WATERBIRDS)
