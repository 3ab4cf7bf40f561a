"""Open Inference Protocol v2 errors: `{"error": ...}` with 400 / 404 / 503, and nothing else changes."""

from __future__ import annotations

import json

import pytest

ONE = [1.0] * 30


def infer_body(**tensor) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ONE, **tensor}]}


CASES = [
    ("wrong-name", infer_body(name="x"), 400, "inputs[0].name: unknown input 'x'; the model's input is 'input'"),
    ("two-inputs", {"inputs": [infer_body()["inputs"][0]] * 2}, 400, "inputs: expected exactly one tensor"),
    ("no-inputs", {"inputs": []}, 400, "inputs: List should have at least 1 item"),
    ("wrong-shape", infer_body(shape=[1, 29]), 400, "inputs[0].shape: expected [N, 30], got [1, 29]"),
    ("no-batch-axis", infer_body(shape=[30]), 400, "inputs[0].shape: expected [N, 30], got [30]"),
    ("zero-batch", infer_body(shape=[0, 30], data=[]), 400, "the batch axis must be 1 to 64, got 0"),
    ("huge-batch", infer_body(shape=[65, 30], data=ONE * 65), 400, "the batch axis must be 1 to 64, got 65"),
    ("bytes-datatype", infer_body(datatype="BYTES"), 400, "inputs[0].datatype: 'BYTES' is not accepted"),
    ("bogus-datatype", infer_body(datatype="FLOAT"), 400, "'FLOAT' is not accepted"),
    ("data-count", infer_body(data=ONE[:29]), 400, "inputs[0].data: 29 values for shape [1, 30], which needs 30"),
    ("ragged", infer_body(shape=[2, 30], data=[ONE, ONE[:5]]), 400, "its rows differ in length"),
    ("string-data", infer_body(data=[*ONE[:3], "a", *ONE[4:]]), 400,
     "inputs[0].data[3]: Input should be a valid number"),
    ("bool-data", infer_body(data=[True, *ONE[1:]]), 400, "inputs[0].data[0]: Input should be a valid number"),
    ("float32-overflow", infer_body(data=[1e39, *ONE[1:]]), 400, "inputs[0].data[0]: 1e+39 is not a finite float32"),
    ("no-data", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32"}]}, 400, "inputs[0]: no data"),
    ("shape-not-ints", infer_body(shape=[1, "30"]), 400, "inputs[0].shape[1]: Input should be a valid integer"),
    ("unknown-output", {**infer_body(), "outputs": [{"name": "logits"}]}, 400,
     "outputs[0].name: unknown output 'logits'; the model's outputs are probabilities, class_index, label"),
    ("extra-field", {**infer_body(), "foo": 1}, 400, "foo: Extra inputs are not permitted"),
    ("duplicate-output", {**infer_body(), "outputs": [{"name": "label"}, {"name": "label"}]}, 400,
     "outputs[1].name: 'label' is asked for twice"),
    ("int-with-fraction", infer_body(datatype="INT32", data=[1.5, *ONE[1:]]), 400,
     "inputs[0].data[0]: 1.5 is not a INT32 value"),
    ("uint-negative", infer_body(datatype="UINT8", data=[*ONE[:2], -1, *ONE[3:]]), 400,
     "inputs[0].data[2]: -1 is not a UINT8 value"),
]  # fmt: skip


@pytest.fixture(scope="module")
def name(client) -> str:
    return client.get("/model").json()["name"]


@pytest.mark.parametrize(("case", "body", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_infer_request_is_400_naming_the_problem(client, name, case, body, status, message) -> None:
    r = client.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"], r.json()
    assert client.post(f"/v2/models/{name}/infer", json=infer_body()).status_code == 200


def test_tensor_data_nested_past_max_json_depth_is_400(tabular) -> None:
    from fastapi.testclient import TestClient

    from service import Settings, create_app

    with TestClient(create_app(Settings(model_path=tabular.folded, max_json_depth=3))) as c:
        name = c.get("/model").json()["name"]
        deep = [[[[1.0] * 30]]]  # 4 levels
        r = c.post(f"/v2/models/{name}/infer", json=infer_body(data=deep))
        assert r.status_code == 400
        assert r.json()["error"] == "inputs[0].data: nested 4 levels deep; at most 3 (BNSERVE_MAX_JSON_DEPTH)"
        assert c.post(f"/v2/models/{name}/infer", json=infer_body(data=[[[1.0] * 30]])).status_code == 200


def test_non_finite_json_values_are_400(client, name) -> None:
    raw = json.dumps(infer_body()).replace("[1.0,", "[NaN,", 1)
    r = client.post(f"/v2/models/{name}/infer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "inputs[0].data[0]" in r.json()["error"]


def test_non_finite_binary_values_are_400(client, name) -> None:
    import numpy as np

    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 120}}]}).encode()  # fmt: skip
    data = np.ones(30, "<f4")
    data[4] = np.inf
    r = client.post(f"/v2/models/{name}/infer", content=header + data.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "inputs[0].data[4]: inf is not a finite float32 value"


@pytest.mark.parametrize(
    ("size", "header_length", "message"),
    [(119, None, "119 bytes declared, 120 sent"), (120, "abc", "expected an integer"),
     (120, "999999", "outside the body"), (240, None, "240 bytes declared, 120 sent")],
)  # fmt: skip
def test_binary_extension_mismatches_are_400(client, name, size, header_length, message) -> None:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()  # fmt: skip
    r = client.post(f"/v2/models/{name}/infer", content=header + b"\0" * 120,
                    headers={"Inference-Header-Content-Length": header_length or str(len(header))})  # fmt: skip
    assert r.status_code == 400 and message in r.json()["error"]


def test_unknown_model_and_version_are_404(client, name) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{name}/versions/0/ready",
                 f"/v2/models/{name}/versions/0"):  # fmt: skip
        r = client.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, path
    r = client.post("/v2/models/nope/infer", json=infer_body())
    assert r.status_code == 404 and r.json() == {"error": f"unknown model 'nope'; this server serves {name!r}"}
    r = client.post(f"/v2/models/{name}/versions/0/infer", json=infer_body())
    assert r.status_code == 404 and "has no version '0'" in r.json()["error"]


def test_gzip_request_bodies_are_accepted(client, name) -> None:
    import gzip

    raw = gzip.compress(json.dumps(infer_body()).encode())
    r = client.post(f"/v2/models/{name}/infer", content=raw,
                    headers={"content-type": "application/json", "content-encoding": "gzip"})  # fmt: skip
    assert r.status_code == 200
    r = client.post(f"/v2/models/{name}/infer", content=b"not gzip", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "body: not valid gzip data" in r.json()["error"]
    r = client.post(f"/v2/models/{name}/infer", content=raw, headers={"content-encoding": "br"})
    assert r.status_code == 415 and "'br' is not supported" in r.json()["error"]


def test_not_ready_is_503(tabular) -> None:
    from fastapi.testclient import TestClient

    from service import Settings, create_app

    app = create_app(Settings(model_path=tabular.folded))
    with TestClient(app) as c:
        name = c.get("/model").json()["name"]
        app.state.ready = False  # as during shutdown
        for path in ("/v2/health/ready", f"/v2/models/{name}/ready"):
            r = c.get(path)
            assert r.status_code == 503 and "not ready" in r.json()["error"], path
        assert c.get("/readyz").status_code == 503 and c.get("/v2/health/live").status_code == 200


def test_an_image_model_takes_n_1_8_8_n_8_8_and_n_64(image_client) -> None:
    name = image_client.get("/model").json()["name"]
    pixels = [float(i % 17) for i in range(64)]
    answers = []
    for shape in ([1, 1, 8, 8], [1, 8, 8], [1, 64]):
        body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": pixels}],
                "outputs": [{"name": "probabilities"}]}  # fmt: skip
        r = image_client.post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 200, (shape, r.text)
        answers.append(r.json()["outputs"][0]["data"])
    assert answers[0] == answers[1] == answers[2]
    r = image_client.post(
        f"/v2/models/{name}/infer",
        json={"inputs": [{"name": "input", "shape": [1, 2, 32], "datatype": "FP32", "data": pixels}]},
    )
    assert r.status_code == 400 and "expected [N, 1, 8, 8] or [N, 8, 8] or [N, 64]" in r.json()["error"]
