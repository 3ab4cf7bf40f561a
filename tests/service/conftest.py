from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app


@pytest.fixture(scope="session", params=[True, False], ids=["hot-path", "router"])
def client(request: pytest.FixtureRequest, tabular) -> Iterator[TestClient]:
    """The default-shaped model (breast_cancer, BN before ReLU), served with the lifespan running,
    once through the hot path and once through FastAPI's router: every contract test runs on both."""
    settings = Settings(model_path=tabular.folded, max_batch_size=64, hot_path=request.param)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def image_client(image) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=image.folded))) as c:
        yield c


@pytest.fixture(scope="session")
def card(client: TestClient) -> dict:
    return client.get("/model").json()["card"]
