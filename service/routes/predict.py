"""POST /predict and POST /predict/batch: predictions from the saved running statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.body import parse_body
from service.deps import RuntimeDep, SettingsDep, json_response
from service.errors import InvalidInput
from service.routes.docs import ERROR_RESPONSES, json_body
from service.runtime import ModelRuntime
from service.schemas import BATCH_REQUEST, PREDICT_REQUEST, BatchPrediction, BatchRequest, Prediction, PredictRequest

router = APIRouter(tags=["predict"])


def predict_instances(runtime: ModelRuntime, instances: Sequence[Any], limit: int) -> list[dict[str, Any]]:
    """One batched model call for validated instances; each answer as /predict gives it."""
    if not 1 <= len(instances) <= limit:
        raise InvalidInput(f"instances: expected 1 to {limit} instances, got {len(instances)}")
    rows = np.stack([runtime.spec.row(f, f"instances[{i}]") for i, f in enumerate(instances)])
    return [runtime.prediction(p) for p in runtime.probabilities(rows)]


@router.post(
    "/predict",
    response_model=Prediction,
    responses=ERROR_RESPONSES,
    summary="Predict one sample",
    description="One sample of raw feature values, as a list in model order or an object by feature name "
    "(an image model also takes a nested list, e.g. 8x8). The answer depends on this sample alone: "
    "every BatchNorm layer uses its saved running statistics.",
    openapi_extra=json_body(PredictRequest),
)
async def predict(request: Request, runtime: RuntimeDep) -> Response:
    body = await parse_body(request, PREDICT_REQUEST)
    row = runtime.spec.row(body.features)
    probs = runtime.probabilities(row[np.newaxis])
    return json_response(runtime.prediction(probs[0]))


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    responses=ERROR_RESPONSES,
    summary="Predict several samples in one call",
    description="`instances` holds samples in any form /predict takes; predictions come back in order. "
    "Each prediction equals the one /predict gives for that sample alone.",
    openapi_extra=json_body(BatchRequest),
)
async def predict_batch(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    body = await parse_body(request, BATCH_REQUEST)
    predictions = predict_instances(runtime, body.instances, settings.max_batch_size)
    return json_response({"predictions": predictions, "model_version": runtime.version})
