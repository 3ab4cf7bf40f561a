"""Dependencies as `Annotated` aliases, so handler signatures read like plain types.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its
threadpool, a hop that costs more than the model itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from service.config import Settings
from service.errors import NotReady
from service.jsonio import dumps
from service.runtime import ModelRuntime


async def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime | None = request.app.state.runtime
    if runtime is None:
        raise NotReady("the model is not loaded yet", headers={"Retry-After": "1"})
    return runtime


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialise with orjson (service/jsonio.py) and skip FastAPI's jsonable_encoder pass."""
    return Response(dumps(payload), status_code=status_code, media_type="application/json", headers=headers)
