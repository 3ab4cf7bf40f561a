"""The datasets bnserve trains on: the ones that ship inside scikit-learn.

Nothing is downloaded. Each dataset is split into stratified, seeded
train/validation/test parts and keeps its feature and class names, so a model
trained on it can describe its own inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

DATASETS = ("breast_cancer", "wine", "digits")
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, shape (n, *input_shape)
    y: np.ndarray  # int64, shape (n,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "tabular" or "image"
    input_shape: tuple[int, ...]  # per sample, without the batch axis
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    split_seed: int

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _names(values: Iterable[object]) -> list[str]:
    return [str(v) for v in values]  # numpy str_ -> str, so checkpoints load with weights_only=True


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str], tuple[int, ...]]:
    if name == "breast_cancer":
        b = sk_datasets.load_breast_cancer()
        return b.data, b.target, _names(b.feature_names), _names(b.target_names), (b.data.shape[1],)
    if name == "wine":
        b = sk_datasets.load_wine()
        return b.data, b.target, _names(b.feature_names), _names(b.target_names), (b.data.shape[1],)
    if name == "digits":
        b = sk_datasets.load_digits()
        names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
        return b.data, b.target, names, [str(c) for c in b.target_names], (1, 8, 8)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """Load a bundled dataset and split it 70/15/15, stratified by class, with `seed`.

    Features stay raw (unscaled): the network's first BatchNorm layer does the scaling.
    """
    x, y, feature_names, class_names, shape = _raw(name)
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=VAL_FRACTION / (1.0 - TEST_FRACTION),
        stratify=y_rest,
        random_state=seed,
    )

    def split(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(np.ascontiguousarray(xs.reshape((-1, *shape))), ys)

    return Dataset(
        name=name,
        kind="image" if len(shape) == 3 else "tabular",
        input_shape=shape,
        feature_names=tuple(feature_names),
        class_names=tuple(class_names),
        train=split(x_train, y_train),
        val=split(x_val, y_val),
        test=split(x_test, y_test),
        split_seed=seed,
    )
