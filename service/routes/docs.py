"""OpenAPI helpers: document a body that the handler validates itself from the raw bytes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not valid JSON"},
    413: {"model": ErrorBody, "description": "the body is larger than BNSERVE_MAX_BODY_BYTES"},
    415: {"model": ErrorBody, "description": "the Content-Type is not application/json"},
    422: {"model": ErrorBody, "description": "the JSON does not describe a valid sample; `detail` names the field"},
    503: {"model": ErrorBody, "description": "the model is not loaded yet"},
}


def json_body(model: type[BaseModel], example: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = model.model_json_schema()
    if "$defs" in schema:  # inline schemas only: a $ref would point into the wrong document
        raise ValueError(f"{model.__name__}'s schema has $defs; inline it")
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": content}}}
