"""The real-dataset loaders on tiny fixture folders in each dataset's true format,
through the same entry points users run (get_dataset, `spuraug data check`)."""

from __future__ import annotations

import numpy as np
import pytest
from real_fixtures import (
    CELEBA_ROWS,
    METASHIFT_COUNTS,
    WATERBIRDS_COUNTS,
    make_celeba,
    make_metashift,
    make_waterbirds,
)

from spuraug.cli import main
from spuraug.data import DataError, dataset_info, get_dataset

SPLITS = ("train", "val", "test")


def check(capsys, *argv):
    rc = main(["data", "check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- Waterbirds ------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["waterbird_complete95_forest2water2", "waterbirds_v1.0"])
def test_waterbirds_counts_groups_and_folder_names(tmp_path, folder):
    make_waterbirds(tmp_path, folder=folder)
    for split in SPLITS:
        ds = get_dataset("waterbirds", split, tmp_path, transform=None)
        assert tuple(ds.group_counts()) == WATERBIRDS_COUNTS[split]
        assert np.array_equal(ds.g, ds.y * 2 + ds.a)
        assert ds.image_path(0).is_file() and ds.image_path(0).parent.parent.name == folder


def test_waterbirds_data_dir_may_point_at_the_folder(tmp_path):
    root = make_waterbirds(tmp_path)
    ds = get_dataset("waterbirds", "test", root, transform=None)
    assert tuple(ds.group_counts()) == WATERBIRDS_COUNTS["test"]


def test_waterbirds_labels_follow_metadata(tmp_path):
    root = make_waterbirds(tmp_path)
    ds = get_dataset("waterbirds", "train", tmp_path, transform=None)
    import pandas as pd

    md = pd.read_csv(root / "metadata.csv")
    md = md[md.split == 0].set_index("img_filename")
    for i in range(len(ds)):
        row = md.loc[ds.ids[i]]
        assert (ds.y[i], ds.a[i]) == (row.y, row.place)


@pytest.mark.parametrize("transform", ["train", "eval"])
def test_waterbirds_transforms_give_224(tmp_path, transform):
    make_waterbirds(tmp_path)
    x, y, a, i = get_dataset("waterbirds", "val", tmp_path, transform=transform)[1]
    assert tuple(x.shape) == (3, 224, 224) and i == 1 and y in (0, 1) and a in (0, 1)


def test_waterbirds_eval_transform_squashes_to_256_then_crops():
    """group_DRO get_transform_cub / DFR wb_data.py: Resize((256, 256)) (aspect NOT kept), then
    CentreCrop(224). A 512x256 image with a red left quarter keeps red at the crop's left edge;
    resizing the short side (aspect kept) would cut the red quarter off entirely."""
    import numpy as np
    from PIL import Image

    from spuraug.data.transforms import IMAGENET_MEAN, IMAGENET_STD, waterbirds_transform

    a = np.zeros((256, 512, 3), np.uint8)
    a[:, :128] = (255, 0, 0)
    x = waterbirds_transform(False)(Image.fromarray(a))
    assert tuple(x.shape) == (3, 224, 224)
    red = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert abs(float(x[0, 112, 2]) - red) < 1e-3  # left edge of the crop is the red quarter
    assert abs(float(x[0, 112, 200]) - (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]) < 1e-3


def test_waterbirds_complete_copy_matches_published_counts(tmp_path, capsys):
    make_waterbirds(tmp_path, counts=dataset_info("waterbirds").published_counts)
    rc, out, err = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path))
    assert rc == 0, err
    assert "3498" in out and "2255" in out and "(published)" not in out


def test_check_partial_copy_exit_codes(tmp_path, capsys):
    make_waterbirds(tmp_path)
    rc, out, err = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path))
    assert rc == 1 and "differ from the published" in err
    # the table shows our counts and, below them, the published ones
    train_line = next(line for line in out.splitlines() if line.startswith("train"))
    assert train_line.split()[1:] == ["4", "1", "1", "3", "9"]
    assert "3498" in out and "landbird / land" in out
    rc, out, _ = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path), "--partial")
    assert rc == 0


def test_check_deep_catches_a_corrupt_image(tmp_path, capsys):
    root = make_waterbirds(tmp_path)
    ds = get_dataset("waterbirds", "val", tmp_path, transform=None)
    bad = ds.image_path(2)
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    rc, _, _ = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path), "--partial")
    assert rc == 0  # files present: a shallow check does not decode
    rc, _, err = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path), "--partial", "--deep")
    assert rc == 2 and str(bad) in err and "cannot be decoded" in err
    assert root.is_dir()


def test_check_names_a_missing_image(tmp_path, capsys):
    make_waterbirds(tmp_path)
    gone = get_dataset("waterbirds", "test", tmp_path, transform=None).image_path(3)
    gone.unlink()
    rc, _, err = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path), "--partial")
    assert rc == 2 and str(gone) in err and "nlp.stanford.edu" in err


def test_missing_metadata_names_the_path_and_the_source(tmp_path, capsys):
    (tmp_path / "waterbird_complete95_forest2water2").mkdir()
    with pytest.raises(DataError) as e:
        get_dataset("waterbirds", "train", tmp_path)
    msg = str(e.value)
    assert "metadata.csv" in msg and str(tmp_path / "waterbird_complete95_forest2water2") in msg
    assert "nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz" in msg
    rc, _, err = check(capsys, "--dataset", "waterbirds", "--data-dir", str(tmp_path))
    assert rc == 2 and "metadata.csv" in err and "where the data comes from" in err


def test_waterbirds_missing_column_is_named(tmp_path):
    root = make_waterbirds(tmp_path)
    path = root / "metadata.csv"
    path.write_text(path.read_text().replace(",place,", ",background,", 1))
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) 'place'"):
        get_dataset("waterbirds", "train", tmp_path)


@pytest.mark.parametrize("column,value", [("place", "2"), ("y", "bird"), ("split", "3")])
def test_waterbirds_bad_value_names_file_column_line(tmp_path, column, value):
    root = make_waterbirds(tmp_path)
    path = root / "metadata.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[6].split(",")  # file line 7
    fields[header.index(column)] = value
    lines[6] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        get_dataset("waterbirds", "test", tmp_path)
    assert str(path) in str(e.value) and f"column {column!r}, line 7: value '{value}'" in str(e.value)


# -- CelebA ----------------------------------------------------------------------------
def _celeba_expected(split_code):
    counts = np.zeros(4, dtype=int)
    for part, blond, male in CELEBA_ROWS:
        if part == split_code:
            counts[blond * 2 + male] += 1
    return counts


@pytest.mark.parametrize(
    "fmt,folder", [("original", "celeba"), ("kaggle", "celeba"), ("kaggle", "celeba-dataset"), ("wilds", "celebA_v1.0"), ("dac", "celeba")]
)
def test_celeba_formats_agree(tmp_path, fmt, folder):
    make_celeba(tmp_path, fmt, folder)
    for code, split in enumerate(SPLITS):
        ds = get_dataset("celeba", split, tmp_path, transform=None)
        assert np.array_equal(ds.group_counts(), _celeba_expected(code))
        expected_ids = [f"{i + 1:06d}.jpg" for i, r in enumerate(CELEBA_ROWS) if r[0] == code]
        assert ds.ids == expected_ids
        assert all(ds.image_path(i).is_file() for i in range(len(ds)))
        assert np.array_equal(ds.g, ds.y * 2 + ds.a)


def test_celeba_data_dir_may_point_at_the_folder_and_eval_transform_is_224(tmp_path):
    root = make_celeba(tmp_path, "original")
    ds = get_dataset("celeba", "test", root, transform="eval")
    x, y, a, _ = ds[0]
    assert tuple(x.shape) == (3, 224, 224) and (y, a) == (0, 0)
    assert tuple(get_dataset("celeba", "train", root, transform="train")[3][0].shape) == (3, 224, 224)


def test_celeba_check_prints_partial_table(tmp_path, capsys):
    make_celeba(tmp_path, "kaggle")
    rc, out, _ = check(capsys, "--dataset", "celeba", "--data-dir", str(tmp_path))
    assert rc == 1 and "71629" in out and "not blond / female" in out
    rc, out, _ = check(capsys, "--dataset", "celeba", "--data-dir", str(tmp_path), "--partial", "--deep")
    assert rc == 0


def test_celeba_balance_train(tmp_path):
    make_celeba(tmp_path, "original")
    full = get_dataset("celeba", "train", tmp_path, transform=None)
    bal = get_dataset("celeba", "train", tmp_path, transform=None, balance_train=True)
    n_blond = int((full.y == 1).sum())
    assert n_blond < int((full.y == 0).sum())
    assert np.bincount(bal.y).tolist() == [n_blond, n_blond]
    # the minority class is kept whole, the majority is a subset of the original
    assert set(np.array(full.ids)[full.y == 1]) == set(np.array(bal.ids)[bal.y == 1])
    assert set(bal.ids) <= set(full.ids)
    again = get_dataset("celeba", "train", tmp_path, transform=None, balance_train=True)
    assert again.ids == bal.ids
    others = {tuple(get_dataset("celeba", "train", tmp_path, transform=None, balance_train=True, balance_seed=s).ids)
              for s in range(1, 6)}
    assert len(others | {tuple(bal.ids)}) > 1  # the seed matters
    val = get_dataset("celeba", "val", tmp_path, transform=None, balance_train=True)
    assert len(val) == sum(r[0] == 1 for r in CELEBA_ROWS)  # never applied outside train


def test_celeba_bad_value_names_file_column_line(tmp_path):
    root = make_celeba(tmp_path, "original")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    fields = lines[4].split()  # file line 5 = the third image
    fields[1 + 9] = "2"  # Blond_Hair is the 10th attribute
    lines[4] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        get_dataset("celeba", "train", tmp_path)
    assert str(path) in str(e.value) and "column 'Blond_Hair', line 5: value '2'" in str(e.value)


def test_celeba_truncated_attribute_file(tmp_path):
    root = make_celeba(tmp_path, "original")
    path = root / "list_attr_celeba.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(DataError, match=r"declares 21 images but the file lists 18"):
        get_dataset("celeba", "val", tmp_path)


def test_celeba_missing_partition_file_and_image_folder(tmp_path):
    root = make_celeba(tmp_path, "original")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError) as e:
        get_dataset("celeba", "val", tmp_path)
    assert "list_eval_partition.txt" in str(e.value) and "mmlab.ie.cuhk.edu.hk" in str(e.value)
    root2 = make_celeba(tmp_path / "b", "kaggle")
    import shutil

    shutil.rmtree(root2 / "img_align_celeba")
    with pytest.raises(DataError, match="missing image folder"):
        get_dataset("celeba", "val", tmp_path / "b")


def test_celeba_partition_must_cover_every_image(tmp_path):
    root = make_celeba(tmp_path, "kaggle")
    path = root / "list_eval_partition.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # drops 000005.jpg
    with pytest.raises(DataError, match=r"lists image '000005.jpg' but .*list_eval_partition.csv does not"):
        get_dataset("celeba", "train", tmp_path)


# -- MetaShift -------------------------------------------------------------------------
def test_metashift_groups_and_coding(tmp_path):
    make_metashift(tmp_path)
    info = dataset_info("metashift")
    train = get_dataset("metashift", "train", tmp_path, transform=None)
    counts = dict(zip(info.group_names, train.group_counts().tolist()))
    assert {k: v for k, v in counts.items() if v} == {
        "cat / sofa": 4, "cat / bed": 3, "dog / bench": 3, "dog / bike": 2,
    }
    val = get_dataset("metashift", "val", tmp_path, transform=None)
    test = get_dataset("metashift", "test", tmp_path, transform=None)
    pool = METASHIFT_COUNTS[("test", "cat", "shelf")] + METASHIFT_COUNTS[("test", "dog", "shelf")]
    assert len(val) == int(0.15 * pool) and len(val) + len(test) == pool
    for ds in (val, test):
        present = {info.group_names[g] for g in np.unique(ds.g)}
        assert present <= {"cat / shelf", "dog / shelf"}
        assert np.array_equal(ds.g, ds.y * 5 + ds.a)
    assert {info.group_names[g] for g in np.unique(test.g)} == {"cat / shelf", "dog / shelf"}
    x = get_dataset("metashift", "test", tmp_path, transform="eval")[0][0]
    assert tuple(x.shape) == (3, 224, 224)


def test_metashift_val_draw_is_stable_disjoint_and_seeded(tmp_path):
    make_metashift(tmp_path / "a")
    make_metashift(tmp_path / "b", reverse=True, folder="MetaDatasetCatDog")
    val_a = get_dataset("metashift", "val", tmp_path / "a", transform=None).ids
    val_b = get_dataset("metashift", "val", tmp_path / "b", transform=None).ids
    test_a = get_dataset("metashift", "test", tmp_path / "a", transform=None).ids
    assert val_a == val_b  # independent of file-creation / directory order
    assert not set(val_a) & set(test_a)
    other = get_dataset("metashift", "val", tmp_path / "a", transform=None, val_seed=7).ids
    assert len(other) == len(val_a) and other != val_a
    assert all(i.startswith("test/") for i in val_a)


def test_metashift_missing_folder_is_named(tmp_path, capsys):
    root = make_metashift(tmp_path)
    import shutil

    shutil.rmtree(root / "train" / "dog" / "dog(bike)")
    with pytest.raises(DataError) as e:
        get_dataset("metashift", "train", tmp_path)
    assert str(root / "train" / "dog" / "dog(bike)") in str(e.value) and "Wuyxin/DISC" in str(e.value)
    rc, _, err = check(capsys, "--dataset", "metashift", "--data-dir", str(tmp_path))
    assert rc == 2 and "dog(bike)" in err


def test_metashift_check_has_no_published_counts(tmp_path, capsys):
    make_metashift(tmp_path)
    rc, out, _ = check(capsys, "--dataset", "metashift", "--data-dir", str(tmp_path), "--deep")
    assert rc == 0 and "cat / shelf" in out
    assert [line.split()[-1] for line in out.splitlines()[2:]] == ["12", "5", "29"]


def test_missing_dataset_everywhere_names_every_candidate(tmp_path):
    for name in ("waterbirds", "celeba", "metashift"):
        with pytest.raises(DataError) as e:
            get_dataset(name, "train", tmp_path)
        msg = str(e.value)
        assert str(tmp_path) in msg and "where the data comes from" in msg and "spuraug data fetch" in msg


def test_ddb_runs_on_celebas_class_balanced_split_while_erm_keeps_the_full_one(tmp_path):
    """The public DDB code's data/CelebA.py balances the training split's classes for its stages
    and retraining; the celeba config's ddb.dataset_options say so, and the ERM run is unchanged."""
    from spuraug.config import load_config
    from spuraug.ddb.method import ddb_dataset_options

    make_celeba(tmp_path, "original")
    resolved = load_config("celeba", "ddb")
    opts = ddb_dataset_options(resolved)
    assert opts["balance_train"] is True and resolved["erm"] and load_config("celeba", "erm")["dataset_options"].get(
        "balance_train") is False
    ddb_train = get_dataset("celeba", "train", tmp_path, transform=None, **opts)
    assert np.bincount(ddb_train.y).tolist()[0] == np.bincount(ddb_train.y).tolist()[1]
    full = get_dataset("celeba", "train", tmp_path, transform=None, **resolved["dataset_options"])
    assert len(full) > len(ddb_train)
