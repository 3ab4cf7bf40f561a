"""POST /predict and POST /predict/batch: predictions from the saved running statistics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import RuntimeDep, SettingsDep
from service.inference import drift_param, predict_many, predict_one
from service.routes.docs import ERROR_RESPONSES, json_body
from service.schemas import BatchPrediction, BatchRequest, Prediction, PredictRequest

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=Prediction,
    responses=ERROR_RESPONSES,
    summary="Predict one sample",
    description="One sample of raw feature values, as a list in model order or an object by feature name "
    "(an image model also takes a nested list, e.g. 8x8). The answer depends on this sample alone: "
    "every BatchNorm layer uses its saved running statistics.",
    openapi_extra=json_body(PredictRequest, drift=True),
)
async def predict(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    h = request.headers
    body = await request.body()
    answer = predict_one(runtime, body, h.get("content-type"), h.get("content-encoding"), settings.max_body_bytes,
                         drift_param(request.scope["query_string"]))  # fmt: skip
    return Response(answer, media_type="application/json")


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    responses=ERROR_RESPONSES,
    summary="Predict several samples in one call",
    description="`instances` holds samples in any form /predict takes; predictions come back in order. "
    "Each prediction equals the one /predict gives for that sample alone.",
    openapi_extra=json_body(BatchRequest, drift=True),
)
async def predict_batch(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    h = request.headers
    answers = predict_many(runtime, await request.body(), h.get("content-type"), h.get("content-encoding"),
                           settings.max_body_bytes, settings.max_batch_size,
                           drift_param(request.scope["query_string"]))  # fmt: skip
    return Response(runtime.answers.batch(answers), media_type="application/json")
