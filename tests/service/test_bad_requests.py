"""Hand-made bad requests across EVERY route: each gets a 4xx whose message names the problem
(`detail`, or `error` under /v2), no stack trace, and the server keeps serving.

test_bad_input.py and test_v2_errors.py go deep on /predict and /v2 bodies; this table goes
wide: malformed and truncated JSON, deep nesting, duplicate keys, huge numbers, wrong types,
wrong content types, oversized bodies and batches, unknown routes and methods, invalid UTF-8
and V2 tensors whose data and shape disagree, on each route that can receive them.

Paths may hold `{name}` and `{version}`: the loaded model's name and version.
A case the service does not get right yet is marked xfail(strict=True) with what it answers
today; when the service is fixed, the case XPASSes, fails the run, and its mark comes off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

GOOD = [1.0] * 30  # a valid breast_cancer sample (any 30 finite numbers are)
GOOD_JSON = json.dumps(GOOD)
JSON = {"content-type": "application/json"}
DEEP = 10_000  # nesting levels: far past any parser's recursion limit


def tensor(**fields: Any) -> dict[str, Any]:
    """A V2 infer body with one input tensor: `input`, shape [1, 30], FP32, 30 values; override any field."""
    return {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": GOOD, **fields}]}


def v2_raw(data: str, shape: str = "[1, 30]", datatype: str = "FP32") -> str:
    """A V2 body written by hand, for data no JSON library would write."""
    return f'{{"inputs": [{{"name": "input", "shape": {shape}, "datatype": "{datatype}", "data": {data}}}]}}'


def features_by_name(extra: str = "") -> str:
    """/predict by feature name, written by hand so that a key can appear twice."""
    names = NAMES  # the breast_cancer model's feature names, in model order
    items = ", ".join(f'"{n}": 1.0' for n in names)
    return f'{{"features": {{{items}{extra}}}}}'


NAMES = [
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness", "mean compactness",
    "mean concavity", "mean concave points", "mean symmetry", "mean fractal dimension", "radius error",
    "texture error", "perimeter error", "area error", "smoothness error", "compactness error", "concavity error",
    "concave points error", "symmetry error", "fractal dimension error", "worst radius", "worst texture",
    "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
    "worst concave points", "worst symmetry", "worst fractal dimension",
]  # fmt: skip

BIG_INT = "1" + "0" * 400  # 10**400 as an integer literal: no float64 holds it
OVERSIZED = b'{"features": [' + b"1.0, " * 250_000 + b"1.0]}"  # 1.25 MB, over the 1 MiB default limit


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    status: int | tuple[int, ...]
    expected: tuple[str, ...]  # substrings of the message, case-insensitive
    body: str | bytes | dict | list | None = None  # str/bytes are sent as they are; dict/list as JSON
    headers: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # substrings the message must NOT hold (a wrong diagnosis)
    bug: str | None = None  # why it is xfail today: the request and what the service answers


CASES = [
    # ------------------------------------------------------------------ POST /predict
    Bad("predict-truncated-in-a-key", "POST", "/predict", 400, ("body: not valid JSON", "EOF"), '{"feat', JSON),
    Bad("predict-trailing-garbage", "POST", "/predict", 400, ("not valid JSON", "trailing characters"),
        json.dumps({"features": GOOD}) + " xyz", JSON),
    Bad("predict-two-documents", "POST", "/predict", 400, ("not valid JSON", "trailing characters"),
        json.dumps({"features": GOOD}) * 2, JSON),
    Bad("predict-single-quotes", "POST", "/predict", 400, ("not valid JSON", "key must be a string"),
        "{'features': [1.0]}", JSON),
    Bad("predict-trailing-comma", "POST", "/predict", 400, ("not valid JSON", "trailing comma"),
        '{"features": [1.0, 2.0,]}', JSON),
    Bad("predict-deep-nesting", "POST", "/predict", 400, ("body:", "nested", "limit"),
        '{"features": ' + "[" * DEEP + "]" * DEEP + "}", JSON),
    Bad("predict-deep-objects", "POST", "/predict", 400, ("body:", "nested", "limit"),
        '{"features": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}", JSON),
    Bad("predict-duplicate-key", "POST", "/predict", (400, 422), ("duplicate", "features"),
        '{"features": [1.0], "features": ' + GOOD_JSON + "}", JSON),
    Bad("predict-duplicate-feature-name", "POST", "/predict", (400, 422), ("duplicate", "mean radius"),
        features_by_name(', "mean radius": 2.0'), JSON),
    Bad("predict-integer-10e400", "POST", "/predict", 422, ("features[0]", "finite"),
        '{"features": [' + BIG_INT + ", 1" * 29 + "]}", JSON),
    Bad("predict-negative-1e39-by-name", "POST", "/predict", 422, ('features["worst area"]', "float32"),
        features_by_name().replace('"worst area": 1.0', '"worst area": -1e39'), JSON),
    Bad("predict-invalid-utf8", "POST", "/predict", 400, ("not valid JSON", "unicode"),
        b'{"features": ["\xff\xfe"]}', JSON),
    Bad("predict-utf16", "POST", "/predict", 400, ("not valid JSON",),
        json.dumps({"features": GOOD}).encode("utf-16"), JSON),
    Bad("predict-features-boolean", "POST", "/predict", 422, ("features:", "got boolean true"), {"features": True}),
    Bad("predict-feature-value-object", "POST", "/predict", 422, ("features[0]", "expected a number", "object"),
        {"features": [{"value": 1.0}, *GOOD[1:]]}),
    Bad("predict-xml", "POST", "/predict", 415, ("Content-Type", "application/xml"),
        "<features>1</features>", {"content-type": "application/xml"}),
    Bad("predict-form", "POST", "/predict", 415, ("Content-Type", "application/x-www-form-urlencoded"),
        "features=1", {"content-type": "application/x-www-form-urlencoded"}),
    Bad("predict-oversized-body", "POST", "/predict", 413, ("body:", "larger than the limit of 1048576 bytes"),
        OVERSIZED, JSON),
    Bad("predict-unknown-encoding", "POST", "/predict", 415, ("Content-Encoding", "br"),
        json.dumps({"features": GOOD}), {**JSON, "content-encoding": "br"}),
    Bad("predict-DELETE", "DELETE", "/predict", 405, ("DELETE is not allowed on /predict", "POST")),
    Bad("predict-PUT", "PUT", "/predict", 405, ("PUT is not allowed on /predict", "POST"), {"features": GOOD}),
    # ------------------------------------------------------------------ POST /predict/batch
    Bad("batch-truncated", "POST", "/predict/batch", 400, ("not valid JSON", "EOF"), '{"instances": [[1.0, ', JSON),
    Bad("batch-deep-nesting", "POST", "/predict/batch", 400, ("body:", "nested", "limit"),
        '{"instances": ' + "[" * DEEP + "]" * DEEP + "}", JSON),
    Bad("batch-duplicate-key", "POST", "/predict/batch", (400, 422), ("duplicate", "instances"),
        '{"instances": [], "instances": [' + GOOD_JSON + "]}", JSON),
    Bad("batch-1e400", "POST", "/predict/batch", 422, ("instances[1][0]", "finite"),
        '{"instances": [' + GOOD_JSON + ", [1e400" + ", 1" * 29 + "]]}", JSON),
    Bad("batch-1e39", "POST", "/predict/batch", 422, ("instances[0][29]", "does not fit in float32"),
        {"instances": [[*GOOD[:29], 1e39]]}),
    Bad("batch-instances-object", "POST", "/predict/batch", 422, ("instances: expected a list", "got object"),
        {"instances": {"a": GOOD}}),
    Bad("batch-body-a-string", "POST", "/predict/batch", 422, ("expected a JSON object", "got string"),
        '"instances"', JSON),
    Bad("batch-oversized-batch", "POST", "/predict/batch", 422, ("instances: expected 1 to 64 instances, got 1000",),
        {"instances": [GOOD] * 1000}),
    Bad("batch-oversized-body", "POST", "/predict/batch", 413, ("larger than the limit",),
        b'{"instances": [' + b"[1.0], " * 200_000 + b"[1.0]]}", JSON),
    Bad("batch-invalid-utf8-bom", "POST", "/predict/batch", 400, ("not valid JSON",),
        b'\xff\xfe{"instances": []}', JSON),
    Bad("batch-text-plain", "POST", "/predict/batch", 415, ("Content-Type", "text/plain"),
        json.dumps({"instances": [GOOD]}), {"content-type": "text/plain"}),
    Bad("batch-GET", "GET", "/predict/batch", 405, ("GET is not allowed on /predict/batch", "POST")),
    # ------------------------------------------------------------------ POST /v1/models/{name}:predict
    Bad("v1-truncated", "POST", "/v1/models/{name}:predict", 400, ("not valid JSON", "EOF"),
        '{"instances": [[1,', JSON),
    Bad("v1-duplicate-key", "POST", "/v1/models/{name}:predict", (400, 422), ("duplicate", "instances"),
        '{"instances": [[1.0]], "instances": [' + GOOD_JSON + "]}", JSON),
    Bad("v1-negative-integer-10e400", "POST", "/v1/models/{name}:predict", 422, ("instances[0][0]", "finite"),
        '{"instances": [[-' + BIG_INT + ", 1" * 29 + "]]}", JSON),
    Bad("v1-1e39", "POST", "/v1/models/{name}:predict", 422, ("instances[0][0]", "float32"),
        {"instances": [[1e39, *GOOD[1:]]]}),
    Bad("v1-string-value", "POST", "/v1/models/{name}:predict", 422, ("instances[0][3]", "expected a number", "string"),
        {"instances": [[*GOOD[:3], "4.0", *GOOD[4:]]]}),
    Bad("v1-oversized-batch", "POST", "/v1/models/{name}:predict", 422, ("expected 1 to 64 instances, got 65",),
        {"instances": [GOOD] * 65}),
    Bad("v1-oversized-body", "POST", "/v1/models/{name}:predict", 413, ("larger than the limit",),
        b'{"instances": [[' + b"1.0, " * 250_000 + b"1.0]]}", JSON),
    Bad("v1-text-plain", "POST", "/v1/models/{name}:predict", 415, ("Content-Type", "text/plain"),
        json.dumps({"instances": [GOOD]}), {"content-type": "text/plain"}),
    Bad("v1-unknown-model", "POST", "/v1/models/nope:predict", 404, ("no model named 'nope'",), {"instances": [GOOD]}),
    Bad("v1-GET-on-predict", "GET", "/v1/models/{name}:predict", 405, ("GET is not allowed", "POST")),
    Bad("v1-unknown-verb", "POST", "/v1/models/{name}:explain", (404, 501), ("explain",),
        {"instances": [GOOD]}),
    # ------------------------------------------------------------------ POST /v2/models/{name}/infer
    Bad("v2-truncated", "POST", "/v2/models/{name}/infer", 400, ("not valid JSON", "EOF"),
        '{"inputs": [{"name": "inp', JSON),
    Bad("v2-deep-nesting-in-data", "POST", "/v2/models/{name}/infer", 400, ("body:", "nested", "limit"),
        v2_raw("[" * DEEP + "]" * DEEP), JSON),
    Bad("v2-data-nested-100-deep", "POST", "/v2/models/{name}/infer", 400, ("inputs[0].data",),
        v2_raw("[" * 100 + "1.0" + "]" * 100), JSON, absent=("ragged",)),
    Bad("v2-duplicate-key", "POST", "/v2/models/{name}/infer", 400, ("duplicate", "inputs"),
        '{"inputs": [], "inputs": ' + json.dumps(tensor()["inputs"]) + "}", JSON),
    Bad("v2-integer-10e400-in-data", "POST", "/v2/models/{name}/infer", 400, ("inputs[0].data[0]", "finite"),
        v2_raw("[" + BIG_INT + ", 1" * 29 + "]"), JSON),
    Bad("v2-integer-10e400-in-shape", "POST", "/v2/models/{name}/infer", 400, ("inputs[0].shape", "batch axis"),
        v2_raw(GOOD_JSON, shape=f"[{BIG_INT}, 30]"), JSON),
    Bad("v2-shape-2-rows-data-1", "POST", "/v2/models/{name}/infer", 400,
        ("inputs[0].data: 30 values for shape [2, 30], which needs 60",), tensor(shape=[2, 30])),
    Bad("v2-shape-1-row-data-2", "POST", "/v2/models/{name}/infer", 400,
        ("inputs[0].data: 60 values for shape [1, 30], which needs 30",), tensor(data=[GOOD, GOOD])),
    Bad("v2-FP16-overflow", "POST", "/v2/models/{name}/infer", 400, ("inputs[0].data[0]", "FP16"),
        tensor(datatype="FP16", data=[1e6, *GOOD[1:]])),
    Bad("v2-invalid-utf8-in-id", "POST", "/v2/models/{name}/infer", 400, ("not valid JSON", "unicode"),
        b'{"id": "\xc3\x28", "inputs": []}', JSON),
    Bad("v2-inputs-an-object", "POST", "/v2/models/{name}/infer", 400, ("inputs", "array"),
        {"inputs": {"name": "input"}}),
    Bad("v2-datatype-a-number", "POST", "/v2/models/{name}/infer", 400, ("inputs[0].datatype", "string"),
        tensor(datatype=32)),
    Bad("v2-oversized-body", "POST", "/v2/models/{name}/infer", 413, ("larger than the limit",),
        v2_raw("[" + "1.0, " * 250_000 + "1.0]", shape="[1, 250001]").encode(), JSON),
    Bad("v2-header-length-not-a-number", "POST", "/v2/models/{name}/infer", 400,
        ("Inference-Header-Content-Length", "integer"), json.dumps(tensor()),
        {"inference-header-content-length": "12abc"}),
    Bad("v2-GET-on-infer", "GET", "/v2/models/{name}/infer", 405, ("GET is not allowed", "POST")),
    Bad("v2-unknown-model", "POST", "/v2/models/nope/infer", 404, ("unknown model 'nope'",), tensor()),
    # ------------------------------------------------------------------ POST /v2/models/{name}/versions/{version}/infer
    Bad("v2-version-unknown", "POST", "/v2/models/{name}/versions/latest/infer", 404, ("has no version 'latest'",),
        tensor()),
    Bad("v2-version-truncated", "POST", "/v2/models/{name}/versions/{version}/infer", 400, ("not valid JSON",),
        '{"inputs": [', JSON),
    Bad("v2-version-shape-disagrees", "POST", "/v2/models/{name}/versions/{version}/infer", 400,
        ("inputs[0].data: 90 values for shape [2, 30], which needs 60",), tensor(shape=[2, 30], data=GOOD * 3)),
    Bad("v2-version-binary-disagrees-with-shape", "POST", "/v2/models/{name}/versions/{version}/infer", 400,
        ("240 bytes of FP32 hold 60 values; shape [1, 30] needs 30",), None, {}),  # body built in the test
    Bad("v2-version-PUT", "PUT", "/v2/models/{name}/versions/{version}/infer", 405, ("PUT is not allowed", "POST"),
        tensor()),
    # ------------------------------------------------------------------ GET /bn-stats, /bn-stats/{layer}
    Bad("bn-stats-PUT", "PUT", "/bn-stats", 405, ("PUT is not allowed on /bn-stats", "GET"), {"layers": []}),
    Bad("bn-stats-layer-POST", "POST", "/bn-stats/input_bn", 405, ("POST is not allowed on /bn-stats/input_bn",)),
    Bad("bn-stats-unknown-layer", "GET", "/bn-stats/bn%00", 404, ("no BN layer named", "input_bn, bn1, bn2")),
    Bad("bn-stats-layer-subpath", "GET", "/bn-stats/input_bn/running_mean", 404,
        ("no route GET /bn-stats/input_bn/running_mean",)),
    Bad("bn-stats-oversized-body", "GET", "/bn-stats/input_bn", 413, ("larger than the limit",), OVERSIZED, JSON),
    # ------------------------------------------------------------------ GET /model, /healthz, /readyz, /metrics
    Bad("model-POST", "POST", "/model", 405, ("POST is not allowed on /model", "GET"), {"features": GOOD}),
    Bad("healthz-PUT", "PUT", "/healthz", 405, ("PUT is not allowed on /healthz", "GET")),
    Bad("readyz-DELETE", "DELETE", "/readyz", 405, ("DELETE is not allowed on /readyz", "GET")),
    Bad("metrics-POST", "POST", "/metrics", 405, ("POST is not allowed on /metrics", "GET"), "x 1", JSON),
    # ------------------------------------------------------------------ unknown routes and methods
    Bad("unknown-route", "GET", "/predictions", 404, ("no route GET /predictions", "/docs")),
    Bad("unknown-route-POST", "POST", "/predict/batch/extra", 404, ("no route POST /predict/batch/extra",),
        {"instances": [GOOD]}),
    Bad("unknown-v2-route", "GET", "/v2/repository/index", 404, ("no route GET /v2/repository/index",)),
    Bad("unknown-method", "FOO", "/predict", 405, ("FOO is not allowed on /predict", "POST")),
    Bad("v2-model-DELETE", "DELETE", "/v2/models/{name}", 405, ("DELETE is not allowed", "GET")),
]  # fmt: skip


def _params() -> list[Any]:
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def model(client) -> dict[str, str]:
    info = client.get("/model").json()
    return {"name": info["name"], "version": info["model_version"]}


def test_the_table_is_wide_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    routes = {
        "/predict", "/predict/batch", "/v1/models/{name}:predict", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer", "/bn-stats", "/bn-stats/input_bn", "/model", "/healthz",
        "/readyz", "/metrics",
    }  # fmt: skip
    assert routes <= {c.path for c in CASES}


def _binary_body() -> tuple[bytes, dict[str, str]]:
    """240 bytes of binary FP32 (60 values), declared and sent, for a tensor of shape [1, 30]."""
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 240}}]}).encode()  # fmt: skip
    return header + b"\0" * 240, {"inference-header-content-length": str(len(header))}


@pytest.mark.parametrize("case", _params())
def test_bad_request_gets_a_4xx_naming_the_problem(client, model, case: Bad) -> None:
    path = case.path.format(**model)
    body, headers = case.body, dict(case.headers)
    if case.id == "v2-version-binary-disagrees-with-shape":
        body, headers = _binary_body()
    if isinstance(body, dict | list):
        r = client.request(case.method, path, json=body, headers=headers or None)
    else:
        r = client.request(case.method, path, content=body, headers=headers or None)

    statuses = case.status if isinstance(case.status, tuple) else (case.status,)
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    answer = r.json()
    key = "error" if path == "/v2" or path.startswith("/v2/") else "detail"
    assert key in answer, answer
    message = answer[key]
    assert isinstance(message, str) and message, answer
    for text in case.expected:
        assert text.lower() in message.lower(), message[:500]
    for text in case.absent:
        assert text.lower() not in message.lower(), message[:500]
    if r.status_code == 405:
        assert r.headers.get("allow"), "a 405 says which methods are allowed"

    # ... and the server still serves
    assert client.post("/predict", json={"features": GOOD}).status_code == 200
    assert client.get("/readyz").status_code == 200
