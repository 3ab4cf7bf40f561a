"""GET /drift: the covariate-shift window; POST /drift/reset (admin token) starts a new one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.deps import SettingsDep, json_response
from service.drift import Window
from service.errors import ServiceError
from service.routes.admin import check_token
from service.schemas import DriftWindow, ErrorBody

router = APIRouter(tags=["drift"])
admin_router = APIRouter(tags=["drift"])


class NoMonitor(ServiceError):
    status_code = 409


def _window(request: Request) -> Window:
    window = getattr(request.app.state, "drift_window", None)
    if window is None:
        raise NoMonitor(
            "drift: the model file has no drift calibration (exported with --no-drift, or by an older bnserve); "
            "export it again"
        )
    return window


@router.get(
    "/drift",
    response_model=DriftWindow,
    responses={
        409: {"model": ErrorBody, "description": "the model has no drift calibration"},
        422: {"model": ErrorBody, "description": "`top` is not a whole number from 0 to 100000"},
    },
    summary="The drift window: how far recent inputs are from what every BN layer saw in training",
    description="Per BN layer the mean shift (in running standard deviations), the variance ratio and the "
    "mean squared z over the window, and the input features that moved most. With several workers the "
    "window adds up all of them. `?top=N` returns N features (0: all).",
)
async def drift(request: Request, top: Annotated[int, Query(ge=0, le=100_000)] = 10) -> Response:
    return json_response(_window(request).report(top=top))


@admin_router.post(
    "/drift/reset",
    response_model=DriftWindow,
    responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}},
    summary="Start a new drift window (every worker's)",
)
async def reset(request: Request, settings: SettingsDep) -> Response:
    check_token(request, settings)
    window = _window(request)
    window.reset()
    return json_response(window.report())
