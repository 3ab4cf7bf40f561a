from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app


@pytest.fixture(scope="session")
def client(tabular) -> Iterator[TestClient]:
    """The default-shaped model (breast_cancer, BN before ReLU), served with the lifespan running."""
    with TestClient(create_app(Settings(model_path=tabular.folded, max_batch_size=64))) as c:
        yield c


@pytest.fixture(scope="session")
def image_client(image) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=image.folded))) as c:
        yield c


@pytest.fixture(scope="session")
def card(client: TestClient) -> dict:
    return client.get("/model").json()["card"]
