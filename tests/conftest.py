"""Session fixtures: tiny real models, trained and exported once per test session.

Every artifact comes from the real CLIs (`python -m model.train`, `python -m export`),
so the tests exercise exactly what a user runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_EPOCHS = {"breast_cancer": 6, "wine": 6, "digits": 3}


@dataclass(frozen=True)
class Trained:
    dataset: str
    placement: str
    checkpoint: Path
    folded: Path
    reference: Path


def _train_and_export(root: Path, dataset: str, placement: str) -> Trained:
    from export.__main__ import main as export_main
    from model.train import main as train_main

    out = root / f"{dataset}-{placement}"
    argv = [
        "--dataset",
        dataset,
        "--placement",
        placement,
        "--epochs",
        str(TINY_EPOCHS[dataset]),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert train_main(argv) == 0
    checkpoint = out / "checkpoint.pt"
    assert export_main([str(checkpoint), "--out", str(out / "model.onnx")]) == 0
    assert export_main([str(checkpoint), "--no-fold", "--out", str(out / "model.reference.onnx")]) == 0
    return Trained(dataset, placement, checkpoint, out / "model.onnx", out / "model.reference.onnx")


_CACHE: dict[tuple[str, str], Trained] = {}


@pytest.fixture(scope="session")
def artifacts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def make_trained(artifacts_root: Path):
    """trained(dataset, placement): trains and exports on first use, then reuses."""

    def get(dataset: str = "breast_cancer", placement: str = "before") -> Trained:
        key = (dataset, placement)
        if key not in _CACHE:
            _CACHE[key] = _train_and_export(artifacts_root, dataset, placement)
        return _CACHE[key]

    return get


@pytest.fixture(scope="session")
def tabular(make_trained) -> Trained:
    return make_trained("breast_cancer", "before")


@pytest.fixture(scope="session")
def image(make_trained) -> Trained:
    return make_trained("digits", "before")


@pytest.fixture(
    scope="session",
    params=[
        ("breast_cancer", "before"),
        ("breast_cancer", "after"),
        ("wine", "after"),
        ("digits", "before"),
        ("digits", "after"),
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def any_trained(request: pytest.FixtureRequest, make_trained) -> Trained:
    return make_trained(*request.param)


@pytest.fixture(scope="session")
def validation_calibrated(make_trained):
    """calibrated(dataset): the BN-before model's folded export with its drift score calibrated on
    the validation split only, so that the test split is data the calibration never saw."""
    from export.__main__ import main as export_main

    def get(dataset: str) -> Path:
        trained = make_trained(dataset, "before")
        out = trained.checkpoint.with_name("model.validation-calibrated.onnx")
        if not out.exists():
            assert export_main([str(trained.checkpoint), "--calibrate-on", "validation", "--out", str(out)]) == 0
        return out

    return get
