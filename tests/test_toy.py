import numpy as np

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
