"""POST /predict and POST /predict/batch: predictions from the saved running statistics."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.body import parse_body
from service.deps import RuntimeDep, SettingsDep, json_response
from service.errors import InvalidInput
from service.routes.docs import ERROR_RESPONSES, json_body
from service.schemas import BATCH_REQUEST, PREDICT_REQUEST, BatchPrediction, BatchRequest, Prediction, PredictRequest

router = APIRouter(tags=["predict"])


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
    n, limit = len(body.instances), settings.max_batch_size
    if not 1 <= n <= limit:
        raise InvalidInput(f"instances: expected 1 to {limit} instances, got {n}")
    rows = np.stack([runtime.spec.row(f, f"instances[{i}]") for i, f in enumerate(body.instances)])
    probs = runtime.probabilities(rows)
    return json_response({"predictions": [runtime.prediction(p) for p in probs], "model_version": runtime.version})
