"""Open Inference Protocol v2 driven by Triton's own Python client (tritonclient.http) against a
live server, with binary data on and off, compared with /predict."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model.data import load_dataset
from tests.service.live import Server, serve


@pytest.fixture(scope="module")
def server(tabular) -> Iterator[Server]:
    with serve(tabular.folded) as s:
        yield s


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def client(server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def model(http) -> dict:
    return http.get("/model").json()


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return load_dataset("breast_cancer").test.x[:6]


def predict_answers(http: httpx.Client, xs: np.ndarray) -> tuple[np.ndarray, list[str]]:
    answers = [http.post("/predict", json={"features": x.tolist()}).json() for x in xs]
    return np.array([list(a["probabilities"].values()) for a in answers]), [a["label"] for a in answers]


def test_health_and_metadata_through_the_triton_client(client, model) -> None:
    name = model["name"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, model["model_version"])
    server = client.get_server_metadata()
    assert server["name"] == "bnserve" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == [model["model_version"]]
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, 2]), ("class_index", "INT64", [-1]), ("label", "BYTES", [-1])]  # fmt: skip
    assert client.get_model_metadata(name, model["model_version"]) == meta


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_equals_predict(client, http, model, samples, binary_in: bool, binary_out: bool) -> None:
    tensor = triton.InferInput("input", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples, binary_data=binary_in)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary_out) for n in ("probabilities", "class_index", "label")
    ]
    result = client.infer(model["name"], [tensor], outputs=outputs, request_id="req-7")
    probs, labels = predict_answers(http, samples)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-6, atol=1e-7)
    assert result.as_numpy("probabilities").dtype == np.float32
    assert result.as_numpy("class_index").tolist() == probs.argmax(axis=1).tolist()
    assert [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("label").tolist()] == labels
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == model["model_version"]


def test_default_outputs_come_back_binary_as_the_client_asks(client, http, model, samples) -> None:
    tensor = triton.InferInput("input", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples)  # binary by default
    result = client.infer(model["name"], [tensor], model_version=model["model_version"])  # no outputs: all, binary
    outs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(outs) == {"probabilities", "class_index", "label"}
    assert all("binary_data_size" in o["parameters"] for o in outs.values())
    probs, _ = predict_answers(http, samples)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "INT32", "INT64", "UINT8"])
def test_other_datatypes_are_coerced_to_float32(client, http, model, datatype: str) -> None:
    x = np.array([[13, 20, 85, 250, 0, 0, 0, 0, 0, 0, 0, 1, 2, 30, 0, 0, 0, 0, 0, 0, 15, 25, 100, 240, 0, 0, 0, 0,
                   0, 0]], dtype=triton.triton_to_np_dtype(datatype))  # fmt: skip
    tensor = triton.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = client.infer(model["name"], [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
    probs, _ = predict_answers(http, x.astype(np.float32))
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-6)


def test_triton_client_sees_errors_with_their_message(client, model) -> None:
    tensor = triton.InferInput("input", [1, 29], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 29), np.float32))
    with pytest.raises(InferenceServerException, match=r"inputs\[0\].shape: expected \[N, 30\], got \[1, 29\]"):
        client.infer(model["name"], [tensor])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


def test_nested_json_data_and_the_versioned_route(http, model, samples) -> None:
    body = {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": samples[:2].tolist()}],
            "parameters": {"anything": 1}}  # fmt: skip
    r = http.post(f"/v2/models/{model['name']}/versions/{model['model_version']}/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = {o["name"]: o for o in r.json()["outputs"]}
    probs, labels = predict_answers(http, samples[:2])
    np.testing.assert_allclose(np.array(out["probabilities"]["data"]).reshape(2, 2), probs, rtol=1e-6, atol=1e-7)
    assert out["label"]["data"] == labels and out["probabilities"]["shape"] == [2, 2]
