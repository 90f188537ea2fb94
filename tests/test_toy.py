import numpy as np
import pytest

from spuraug.data import get_dataset
from spuraug.data.toy import ToyConfig, ToyDataset, split_group_counts


def test_toy_is_deterministic_and_shaped(small_toy):
    a = ToyDataset("train", small_toy)
    from spuraug.data import toy

    toy._generate.cache_clear()
    b = ToyDataset("train", small_toy)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.y, b.y)
    assert a.images.shape[1:] == (64, 64, 3) and a.images.dtype == np.uint8
    assert a.masks.shape == a.images.shape[:3]
    other = ToyDataset("train", ToyConfig(n_train=200, n_val=80, n_test=80, seed=1))
    assert not np.array_equal(a.images, other.images)


def test_toy_correlation_and_balance():
    cfg = ToyConfig()
    tr = split_group_counts(cfg, "train")
    assert sum(tr) == cfg.n_train
    assert tr[0] / (tr[0] + tr[1]) == 0.95 and round(tr[3] / (tr[2] + tr[3]), 2) == 0.95
    for split in ("val", "test"):
        c = split_group_counts(cfg, split)
        assert abs(c[0] - c[1]) <= 1 and abs(c[2] - c[3]) <= 1


def test_toy_masks_cover_the_object(small_toy):
    ds = ToyDataset("val", small_toy)
    for i in range(10):
        m = ds.mask(i)
        frac = m.mean()
        assert 0.02 < frac < 0.5, frac
        img = ds.images[i].astype(float)
        # the object is drawn in one flat colour: low variance inside the mask
        assert img[m].std(axis=0).mean() < img[~m].std(axis=0).mean() + 40


def test_toy_through_registry_gives_tensors(small_toy):
    from dataclasses import asdict

    ds = get_dataset("toy", "test", transform="eval", **asdict(small_toy))
    x, y, a, i = ds[3]
    assert tuple(x.shape) == (3, 64, 64) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert (y, a, i) == (int(ds.y[3]), int(ds.a[3]), 3)
    assert ds.g[3] == 2 * y + a


class _PerImage:
    """A transform without a batched form: the DataLoader then transforms example by example."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, img):
        return self.inner(img)


def _loader_batches(ds, seed: int, batch_size: int = 16):
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return [b for b in DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g)]


def test_batched_toy_transform_draws_and_values_equal_per_image():
    import torch
    from PIL import Image

    from spuraug.data.transforms import ToyTransform

    ds = ToyDataset("val", ToyConfig(n_train=200, n_val=80, n_test=80))
    images = ds.images[:12]
    for train in (False, True):
        t = ToyTransform(train)
        torch.manual_seed(3)
        one = torch.stack([t(Image.fromarray(im)) for im in images])
        after_one = torch.rand(1)
        torch.manual_seed(3)
        many = t.batch(images)
        after_many = torch.rand(1)
        assert torch.equal(one, many)  # bit for bit, crops included
        assert torch.equal(after_one, after_many)  # the generator is left where per-image leaves it
    with pytest.raises(ValueError, match="uint8"):
        ToyTransform(True).batch(images.astype(np.float32))


def test_dataloader_batches_equal_with_and_without_the_batched_path(small_toy):
    import torch

    from spuraug.data.transforms import ToyTransform
    from spuraug.ddb.retrain import AugmentedTrainSet, GeneratedDataset

    fast = ToyDataset("train", small_toy, transform=ToyTransform(True))
    slow = ToyDataset("train", small_toy, transform=_PerImage(ToyTransform(True)))
    assert fast.__getitems__([0, 1]) is not None and fast.image_batch([2]).shape == (1, 64, 64, 3)
    for a, b in zip(_loader_batches(fast, 0), _loader_batches(slow, 0)):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    # a subset (as JTT's and the sweeps' views) and the DDB retraining set (train + generated files)
    sub = fast.subset(np.arange(10, 60))
    sub_slow = slow.subset(np.arange(10, 60))
    for a, b in zip(_loader_batches(sub, 1), _loader_batches(sub_slow, 1)):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    import tempfile
    from pathlib import Path

    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        files = []
        for k in range(20):
            f = Path(d) / f"g{k}.png"
            Image.fromarray(fast.images[k][:, ::-1].copy()).save(f)
            files.append(f)
        labels = [k % 2 for k in range(20)]
        aug = AugmentedTrainSet(fast, GeneratedDataset(files, labels, transform=fast.transform))
        aug_slow = AugmentedTrainSet(slow, GeneratedDataset(files, labels, transform=slow.transform))
        n = 0
        for a, b in zip(_loader_batches(aug, 2), _loader_batches(aug_slow, 2)):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
            n += int((a[3] >= len(fast)).sum())
        assert n == 20  # every generated example went through the batched path


def test_a_variant_names_its_groups_and_counts_in_the_registry_and_data_check():
    """Issue 18 item 9: dataset_options.digits=[4,9] backgrounds=[sky,brick] name the groups
    "four / sky" ... "nine / brick" wherever the data's facts are read (registry, data check)."""
    from spuraug.data.check import format_counts
    from spuraug.data.registry import dataset_info

    opts = {"digits": [4, 9], "backgrounds": ["sky", "brick"], "n_train": 40, "n_val": 20, "n_test": 20}
    info = dataset_info("toy", opts)
    assert info.group_names == ("four / sky", "four / brick", "nine / sky", "nine / brick")
    assert dataset_info("toy").group_names[0] == "three / land" and dataset_info("toy", {}).n_groups == 4
    splits = {s: get_dataset("toy", s, transform=None, **{k: tuple(v) if isinstance(v, list) else v
                                                             for k, v in opts.items()}) for s in ("train", "val")}
    table, matches = format_counts("toy", splits)
    assert "four / sky" in table.splitlines()[0] and "three" not in table and matches
