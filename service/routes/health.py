"""GET /healthz (the process is alive) and GET /readyz (the model is loaded and warmed up)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import json_response
from service.schemas import ErrorBody, Health

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}}, summary="Readiness")
async def readyz(request: Request) -> Response:
    runtime = request.app.state.runtime
    if runtime is None or not request.app.state.ready:
        return json_response(
            {"detail": "not ready: the model is not loaded and warmed up"}, 503, headers={"Retry-After": "1"}
        )
    return json_response({"status": "ready", "model_version": runtime.version})
