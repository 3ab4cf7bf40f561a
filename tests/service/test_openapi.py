"""The OpenAPI document is truthful: every example request in it is accepted as-is by the
served model, and every answer validates against the documented response schema."""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator


@pytest.fixture(scope="module")
def spec(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def validate(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate against a schema of the document, resolving its $refs into components."""
    Draft202012Validator({**schema, "components": spec["components"]}).validate(instance)


def operations(spec: dict[str, Any]):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_docs_render(client) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()


def test_every_route_documents_its_responses(spec) -> None:
    for path, method, op in operations(spec):
        ok = op["responses"]["200"]["content"]
        if path == "/ui":  # the page
            assert list(ok) == ["text/html"], (method, path)
        elif path != "/metrics":  # Prometheus text, not JSON
            assert ok["application/json"]["schema"], (method, path)
        assert op.get("summary"), (method, path)
        if method == "post":
            assert "example" in op["requestBody"]["content"]["application/json"], path
        for status, answer in op["responses"].items():
            if status != "200":  # every error documented is an error bnserve sends
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/V2Error" if path.startswith("/v2") else "/ErrorBody"), (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_every_example_works_as_is_and_answers_as_documented(client, spec) -> None:
    called = 0
    for path, method, op in operations(spec):
        params = {p["name"]: p["example"] for p in op.get("parameters", []) if p["in"] == "path"}
        url = re.sub(r"\{(\w+)\}", lambda m, params=params: str(params[m.group(1)]), path)
        if method == "post":
            example = op["requestBody"]["content"]["application/json"]["example"]
            validate(spec, op["requestBody"]["content"]["application/json"]["schema"], example)
            r = client.post(url, json=example)
        else:
            r = client.request(method.upper(), url)
        assert r.status_code == 200, (method, url, r.text)
        media = op["responses"]["200"].get("content", {}).get("application/json")
        if media and media.get("schema"):
            validate(spec, media["schema"], r.json())
        called += 1
    assert called >= 20


def test_documented_error_answers_match_the_error_schema(client, spec) -> None:
    r = client.post("/predict", json={"features": [1]})
    assert r.status_code == 422
    validate(spec, spec["paths"]["/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"],
             r.json())  # fmt: skip
    name = client.get("/model").json()["name"]
    r = client.post(f"/v2/models/{name}/infer", json={"inputs": []})
    assert r.status_code == 400 and set(r.json()) == {"error"}
