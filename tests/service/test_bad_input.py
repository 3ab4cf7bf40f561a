"""Every kind of bad input gets a 4xx whose `detail` names the field and what was expected,
and the server keeps serving."""

from __future__ import annotations

import json

import pytest

GOOD = [1.0] * 30


def names(client) -> list[str]:
    return client.get("/model").json()["feature_names"]


CASES = [
    # (id, path, raw body or json, headers, status, substrings of detail)
    ("missing-features", "/predict", {}, None, 422, ["features: is required"]),
    ("extra-field", "/predict", {"features": GOOD, "foo": 1}, None, 422, ["foo: is not a field"]),
    ("too-few", "/predict", {"features": [1.0] * 29}, None, 422, ["features:", "30 numbers", "got 29 values"]),
    ("too-many", "/predict", {"features": [1.0] * 31}, None, 422, ["features:", "got 31 values"]),
    ("empty-list", "/predict", {"features": []}, None, 422, ["features:", "got 0 values"]),
    (
        "string-value",
        "/predict",
        {"features": [*GOOD[:4], "1.5", *GOOD[5:]]},
        None,
        422,
        ['features[4]: expected a number, got string "1.5"'],
    ),
    (
        "bool-value",
        "/predict",
        {"features": [True, *GOOD[1:]]},
        None,
        422,
        ["features[0]: expected a number, got boolean true"],
    ),
    (
        "null-value",
        "/predict",
        {"features": [None, *GOOD[1:]]},
        None,
        422,
        ["features[0]: expected a number, got null"],
    ),
    ("nan", "/predict", '{"features": [NaN' + ", 1" * 29 + "]}", None, 422, ["features[0]: expected a finite number"]),
    (
        "infinity",
        "/predict",
        '{"features": [1, Infinity' + ", 1" * 28 + "]}",
        None,
        422,
        ["features[1]: expected a finite number"],
    ),
    (
        "float64-overflow",
        "/predict",
        '{"features": [1e400' + ", 1" * 29 + "]}",
        None,
        422,
        ["features[0]: expected a finite number"],
    ),
    (
        "float32-overflow",
        "/predict",
        {"features": [*GOOD[:7], 1e39, *GOOD[8:]]},
        None,
        422,
        ["features[7]:", "does not fit in float32"],
    ),
    ("features-not-a-list", "/predict", {"features": "1,2,3"}, None, 422, ["features: expected a list of numbers"]),
    ("nested-for-tabular", "/predict", {"features": [[1.0] * 30]}, None, 422, ["features:", "got a nested list"]),
    ("body-not-object", "/predict", [1, 2, 3], None, 422, ["expected a JSON object"]),
    ("malformed-json", "/predict", '{"features": [1, 2', None, 400, ["body: not valid JSON"]),
    ("empty-body", "/predict", "", None, 400, ["body: not valid JSON"]),
    (
        "wrong-content-type",
        "/predict",
        json.dumps({"features": GOOD}),
        {"content-type": "text/plain"},
        415,
        ["Content-Type: expected application/json", "text/plain"],
    ),
    ("no-content-type", "/predict", json.dumps({"features": GOOD}), {"content-type": ""}, 415, ["Content-Type"]),
    ("empty-batch", "/predict/batch", {"instances": []}, None, 422, ["instances: expected 1 to 64 instances, got 0"]),
    ("oversized-batch", "/predict/batch", {"instances": [GOOD] * 65}, None, 422, ["got 65"]),
    ("bad-instance", "/predict/batch", {"instances": [GOOD, [1.0] * 3]}, None, 422, ["instances[1]:", "got 3 values"]),
    (
        "bad-instance-value",
        "/predict/batch",
        {"instances": [GOOD, [*GOOD[:2], "x", *GOOD[3:]]]},
        None,
        422,
        ["instances[1][2]: expected a number"],
    ),
    ("instances-missing", "/predict/batch", {"features": GOOD}, None, 422, ["instances: is required"]),
]


@pytest.mark.parametrize(("case", "path", "body", "headers", "status", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_4xx_naming_the_field(client, case, path, body, headers, status, expected) -> None:
    kwargs = (
        {"content": body, "headers": headers or {"content-type": "application/json"}}
        if isinstance(body, str)
        else {"json": body, "headers": headers}
    )
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for text in expected:
        assert text in detail, detail
    assert "Traceback" not in r.text
    assert client.post("/predict", json={"features": GOOD}).status_code == 200  # still serving


def test_unknown_feature_names_are_named(client) -> None:
    features = dict(zip(names(client), GOOD, strict=True))
    features["not a feature"] = 1.0
    del features["mean radius"]
    r = client.post("/predict", json={"features": features})
    assert r.status_code == 422 and '"not a feature"' in r.json()["detail"]


def test_missing_feature_names_are_named(client) -> None:
    features = dict(zip(names(client), GOOD, strict=True))
    del features["worst area"]
    r = client.post("/predict", json={"features": features})
    assert r.status_code == 422
    assert r.json()["detail"] == 'features: missing 1 of 30 features: "worst area"'


def test_a_float32_overflow_by_name_names_the_feature(client) -> None:
    features = dict(zip(names(client), GOOD, strict=True))
    features["mean area"] = -1e300
    r = client.post("/predict", json={"features": features})
    assert r.status_code == 422 and r.json()["detail"].startswith('features["mean area"]: -1e+300 does not fit')


def test_several_problems_are_listed_one_by_one(client) -> None:
    r = client.post("/predict", json={"features": ["a", *GOOD[1:]], "foo": 1, "bar": 2})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["features[0]", "foo", "bar"]


def test_a_list_stops_at_its_first_bad_value(client) -> None:
    """1 MiB of bad values is one error, not a 25 MB answer after seconds of blocked event loop."""
    body = json.dumps({"instances": [["a"] * 200_000]})
    r = client.post("/predict/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"].startswith('instances[0][0]: expected a number, got string "a"')


def test_values_that_overflow_inside_the_model_are_refused_not_answered_with_nan(client) -> None:
    r = client.post("/predict", json={"features": [3e38] * 30})
    assert r.status_code == 422 and r.json()["detail"].startswith("features: the values overflow inside the model")
    r = client.post("/predict/batch", json={"instances": [GOOD, [3e38] * 30]})
    assert r.status_code == 422 and r.json()["detail"].startswith("instances[1]: the values overflow")
    name = client.get("/model").json()["name"]
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [3e38] * 30}]}
    r = client.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 400 and "overflow inside the model" in r.json()["error"]


def test_a_body_over_the_limit_is_413(client) -> None:
    huge = json.dumps({"features": GOOD, "pad": "x" * (1 << 20)})
    r = client.post("/predict", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than the limit of 1048576 bytes" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413(client) -> None:
    def chunks():
        yield b'{"features": ['
        for _ in range(250_000):  # 1.25 MB in 5-byte pieces
            yield b"1.0, "
        yield b"1.0]}"

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]


def test_gzip_bodies_are_accepted_on_predict(client) -> None:
    import gzip

    raw = gzip.compress(json.dumps({"features": GOOD}).encode())
    r = client.post("/predict", content=raw, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 200
    assert r.json() == client.post("/predict", json={"features": GOOD}).json()
    bomb = gzip.compress(b" " * (2 << 20))  # 2 MiB once inflated, over the 1 MiB limit
    r = client.post("/predict", content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 413 and "once decompressed" in r.json()["detail"]


def test_unknown_routes_and_methods_answer_404_and_405_in_the_same_format(client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["detail"] == "path: no route GET /nope; the API is listed at /docs"
    r = client.get("/predict")
    assert r.status_code == 405 and "GET is not allowed on /predict" in r.json()["detail"]
