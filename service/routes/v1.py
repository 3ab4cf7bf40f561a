"""KServe V1 protocol: GET /v1/models/{model}, POST /v1/models/{model}:predict."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import RuntimeDep, SettingsDep, json_response
from service.errors import MethodNotAllowed, NotFound
from service.inference import drift_param, predict_many
from service.routes.docs import ERROR_RESPONSES, json_body
from service.runtime import ModelRuntime
from service.schemas import BatchRequest, ErrorBody, V1Model, V1Models, V1PredictResponse

router = APIRouter(prefix="/v1/models", tags=["kserve-v1"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no model of that name"}}


def check_name(runtime: ModelRuntime, model: str) -> None:
    if model != runtime.name:
        raise NotFound(f"model: no model named {model!r}; this server serves {runtime.name!r}")


@router.get("", response_model=V1Models, summary="The models served")
async def list_models(runtime: RuntimeDep) -> Response:
    return json_response({"models": [runtime.name]})


@router.get("/{model}", response_model=V1Model, responses=NOT_FOUND, summary="A model's readiness")
async def model_status(model: str, request: Request, runtime: RuntimeDep) -> Response:
    if model.endswith(":predict"):  # GET on the predict verb
        raise MethodNotAllowed(f"method: GET is not allowed on {request.url.path}; use POST", headers={"Allow": "POST"})
    check_name(runtime, model)
    return json_response({"name": runtime.name, "ready": bool(request.app.state.ready)})


@router.post(
    "/{model}:predict",
    response_model=V1PredictResponse,
    responses=ERROR_RESPONSES | NOT_FOUND,
    summary="Predict instances (KServe V1)",
    description="`instances` as /predict/batch takes them; `predictions` as /predict/batch answers them.",
    openapi_extra=json_body(BatchRequest, drift=True),
)
async def predict(model: str, request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    check_name(runtime, model)
    h = request.headers
    answers = predict_many(runtime, await request.body(), h.get("content-type"), h.get("content-encoding"),
                           settings.max_body_bytes, settings.max_batch_size,
                           drift_param(request.scope["query_string"]))  # fmt: skip
    return Response(runtime.answers.v1(answers), media_type="application/json")


@router.post("/{model}:{verb}", include_in_schema=False)
async def other_verb(model: str, verb: str) -> Response:
    raise NotFound(f"verb: {verb!r} is not offered on /v1/models/{model}; use :predict")
