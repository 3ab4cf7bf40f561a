"""POST /admin/reload: reload the model file from its configured path. Exists only when
BNSERVE_ADMIN_TOKEN is set; a missing or wrong bearer token is 401."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import SettingsDep, json_response
from service.errors import ModelLoadError, ServiceError
from service.schemas import ErrorBody, ReloadAnswer

router = APIRouter(prefix="/admin", tags=["admin"])


class Unauthorized(ServiceError):
    status_code = 401


class ReloadRefused(ServiceError):
    status_code = 422


def check_token(request: Request, settings: SettingsDep) -> None:
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("authorization: expected `Bearer <BNSERVE_ADMIN_TOKEN>`",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


@router.post(
    "/reload",
    response_model=ReloadAnswer,
    responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody, "description": "the new file was refused"}},
    summary="Reload the model file (validated in full, then swapped atomically)",
)
async def reload(request: Request, settings: SettingsDep) -> Response:
    check_token(request, settings)
    old = request.app.state.runtime
    try:
        old, new = await request.app.state.reload()
    except ModelLoadError as e:
        raise ReloadRefused(f"reload refused, still serving version {old.version if old else None}: {e}") from None
    return json_response({"model_version": new.version, "previous_version": old.version if old else None,
                          "name": new.name})  # fmt: skip
