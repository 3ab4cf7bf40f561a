"""KServe V1: GET /v1/models/{model}, POST /v1/models/{model}:predict."""

from __future__ import annotations

GOOD = [1.0] * 30


def test_v1_model_status_and_listing(client) -> None:
    name = client.get("/model").json()["name"]
    assert client.get(f"/v1/models/{name}").json() == {"name": name, "ready": True}
    assert client.get("/v1/models").json() == {"models": [name]}
    r = client.get("/v1/models/other")
    assert r.status_code == 404 and "no model named 'other'" in r.json()["detail"]


def test_v1_predict_equals_batch_predict(client) -> None:
    name = client.get("/model").json()["name"]
    instances = [e["features"] for e in client.get("/model").json()["card"]["examples"]]
    v1 = client.post(f"/v1/models/{name}:predict", json={"instances": instances})
    batch = client.post("/predict/batch", json={"instances": instances})
    assert v1.status_code == 200 and v1.json() == {"predictions": batch.json()["predictions"]}


def test_v1_bad_input_names_the_field(client) -> None:
    name = client.get("/model").json()["name"]
    r = client.post(f"/v1/models/{name}:predict", json={"instances": [GOOD, [1.0]]})
    assert r.status_code == 422 and "instances[1]: expected" in r.json()["detail"]
    r = client.post("/v1/models/other:predict", json={"instances": [GOOD]})
    assert r.status_code == 404
