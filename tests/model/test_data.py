import numpy as np
import pytest

from model.data import DATASETS, load_dataset


@pytest.mark.parametrize("name", DATASETS)
def test_splits_are_disjoint_stratified_and_keep_names(name: str) -> None:
    d = load_dataset(name, seed=0)
    total = len(d.train) + len(d.val) + len(d.test)
    flat = np.concatenate([s.x.reshape(len(s), -1) for s in (d.train, d.val, d.test)])
    assert len(np.unique(flat, axis=0)) >= total - 5  # a few bundled rows are exact duplicates
    assert len(d.feature_names) == d.num_features and all(isinstance(n, str) for n in d.feature_names)
    assert all(isinstance(c, str) for c in d.class_names)
    overall = np.bincount(np.concatenate([d.train.y, d.val.y, d.test.y])) / total
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == np.float32 and split.x.shape[1:] == d.input_shape
        assert np.allclose(np.bincount(split.y, minlength=d.num_classes) / len(split), overall, atol=0.05)


def test_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = load_dataset("wine", 3), load_dataset("wine", 3), load_dataset("wine", 4)
    assert np.array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.train.x, c.train.x)


def test_breast_cancer_features_are_raw_with_scales_four_orders_apart() -> None:
    d = load_dataset("breast_cancer")
    means = d.train.x.mean(axis=0)
    assert d.input_shape == (30,) and d.class_names == ("malignant", "benign")
    assert means.max() / means.min() > 1e4


def test_digits_are_8x8_single_channel_images() -> None:
    d = load_dataset("digits")
    assert d.kind == "image" and d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.feature_names[9] == "pixel_1_1"


def test_unknown_dataset_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="breast_cancer, wine, digits"):
        load_dataset("mnist")
