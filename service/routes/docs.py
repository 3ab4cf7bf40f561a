"""OpenAPI for bodies that handlers validate themselves from the raw bytes.

`json_body(Model)` documents such a body; its nested schemas live in
`components.schemas` (added by `openapi.build_openapi`), like FastAPI's own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.schemas import ErrorBody

REF_TEMPLATE = "#/components/schemas/{model}"
RAW_BODY_MODELS: dict[str, type[BaseModel]] = {}  # filled as the route modules declare their bodies

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not valid JSON"},
    413: {"model": ErrorBody, "description": "the body is larger than BNSERVE_MAX_BODY_BYTES"},
    415: {"model": ErrorBody, "description": "the Content-Type is not application/json"},
    422: {"model": ErrorBody, "description": "the JSON does not describe a valid sample; `detail` names the field"},
    503: {"model": ErrorBody, "description": "the model is not loaded yet"},
}


DRIFT_QUERY = {
    "name": "drift",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "add a `drift` block to each answer: how unlike the training data the sample is",
}


def json_body(model: type[BaseModel], *, media_types: tuple[str, ...] = ("application/json",),
              drift: bool = False) -> dict[str, Any]:  # fmt: skip
    """The raw request body's schema; with `drift`, also the `?drift=` query parameter, which
    service/inference.py parses (so that the hot path and the routes word its errors alike)."""
    RAW_BODY_MODELS[model.__name__] = model
    ref = {"$ref": REF_TEMPLATE.format(model=model.__name__)}
    extra: dict[str, Any] = {"requestBody": {"required": True, "content": {m: {"schema": ref} for m in media_types}}}
    if drift:
        extra["parameters"] = [DRIFT_QUERY]
    return extra


def component_schemas() -> dict[str, Any]:
    """The raw-body models' schemas and everything they reference."""
    out: dict[str, Any] = {}
    for name, model in RAW_BODY_MODELS.items():
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out
