"""The hot path and FastAPI's router give the same answers, to the byte, for good and bad requests."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app


@pytest.fixture(scope="module")
def pair(tabular) -> Iterator[tuple[TestClient, TestClient]]:
    with (TestClient(create_app(Settings(model_path=tabular.folded, hot_path=True))) as hot,
          TestClient(create_app(Settings(model_path=tabular.folded, hot_path=False))) as routed):  # fmt: skip
        yield hot, routed


def requests(name: str, version: str, example: list[float]) -> list[tuple[str, dict]]:
    v2 = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": example}], "id": "x"}
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 120}}],
                         "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    binary = header + np.asarray(example, "<f4").tobytes()
    j = {"content-type": "application/json"}
    return [
        ("/predict", {"json": {"features": example}}),
        ("/predict", {"json": {"features": example[:3]}}),
        ("/predict", {"json": {"features": ["a", *example[1:]]}}),
        ("/predict", {"content": "{bad", "headers": j}),
        ("/predict", {"content": json.dumps({"features": example}), "headers": {"content-type": "text/plain"}}),
        ("/predict", {"content": json.dumps({"features": example, "pad": "x" * (1 << 20)}), "headers": j}),
        ("/predict/batch", {"json": {"instances": [example, example]}}),
        ("/predict/batch", {"json": {"instances": []}}),
        (f"/v1/models/{name}:predict", {"json": {"instances": [example]}}),
        (f"/v2/models/{name}/infer", {"json": v2}),
        (f"/v2/models/{name}/versions/{version}/infer", {"json": v2}),
        (f"/v2/models/{name}/infer", {"json": {"inputs": [{**v2["inputs"][0], "shape": [1, 29]}]}}),
        (f"/v2/models/{name}/infer", {"content": binary,
                                      "headers": {"Inference-Header-Content-Length": str(len(header))}}),
        (f"/v2/models/{name}/infer", {"content": gzip.compress(json.dumps(v2).encode()),
                                      "headers": {**j, "content-encoding": "gzip"}}),
        ("/v2/models/other/infer", {"json": v2}),
    ]  # fmt: skip


def test_hot_path_and_router_answer_identically(pair) -> None:
    hot, routed = pair
    model = routed.get("/model").json()
    example = model["card"]["examples"][0]["features"]
    for path, kwargs in requests(model["name"], model["model_version"], example):
        a, b = hot.post(path, **kwargs), routed.post(path, **kwargs)
        assert (a.status_code, a.content) == (b.status_code, b.content), path
        assert a.headers["content-type"] == b.headers["content-type"], path
        assert a.headers.get("inference-header-content-length") == b.headers.get("inference-header-content-length")
