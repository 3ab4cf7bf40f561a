"""The OpenAPI document: FastAPI's, plus raw-body schemas and examples built from the loaded model.

Examples come from the model card's real samples, so every example request works
as-is against the model being served (tests send each one)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.routes.docs import component_schemas
from service.runtime import ModelRuntime


def examples_for(runtime: ModelRuntime) -> dict[str, dict[str, Any]]:
    """Request-body example per (path, method), from the card's examples."""
    samples = [e["features"] for e in runtime.card.get("examples", [])] or [[0.0] * runtime.spec.size]
    shape = [1, *runtime.spec.input_shape]
    v2 = {"id": "example-1", "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": samples[0]}],
          "outputs": [{"name": "label"}, {"name": "probabilities"}]}  # fmt: skip
    batch = {"instances": samples[:2]}
    name, version = runtime.name, runtime.version
    return {
        "/predict": {"features": samples[0]},
        "/predict/batch": batch,
        "/v1/models/{model}:predict": batch,
        "/v2/models/{model}/infer": v2,
        "/v2/models/{model}/versions/{version}/infer": v2,
        "__params__": {"model": name, "version": version, "layer": runtime.bn_layers[0]["name"]},
    }


def build_openapi(app: FastAPI, runtime: ModelRuntime | None) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(component_schemas())
    # FastAPI documents a 422 HTTPValidationError for every route with parameters; ours are plain
    # strings that cannot fail, and every error bnserve sends is ErrorBody (or V2Error under /v2).
    for operations in schema["paths"].values():
        for operation in operations.values():
            ref = operation.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {})
            if ref.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if runtime is None:
        return schema
    examples = examples_for(runtime)
    params = examples.pop("__params__")
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param.get("in") == "path" and param["name"] in params:
                    param["example"] = params[param["name"]]
            body = operation.get("requestBody", {}).get("content", {})
            if path in examples:
                for media in body.values():
                    media["example"] = examples[path]
    return schema
