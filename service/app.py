"""create_app(settings): builds the app; nothing here runs at import."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from service import __version__
from service.body import BodyLimitMiddleware, format_loc
from service.config import Settings
from service.deps import json_response
from service.errors import InvalidInput, MethodNotAllowed, NotFound, ServiceError, error_payload
from service.hotpath import HotPath
from service.metrics import Metrics, MetricsMiddleware
from service.openapi import build_openapi
from service.routes import bn_stats, health, model, predict, v1, v2
from service.routes import metrics as metrics_route
from service.runtime import ModelRuntime

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Predictions from a BatchNorm network whose BN layers were folded into frozen weights: "
    "every answer uses the saved running statistics, never the statistics of a batch."
)


class BNServe(FastAPI):
    """FastAPI, with the hot path (service/hotpath.py) ahead of its whole middleware stack: the
    inference routes skip FastAPI's wrappers, routing and dependency solving."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_path is not None and await self.hot_path.handle(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, runtime: ModelRuntime | None = None) -> FastAPI:
    """The service. Its lifespan opens ONE onnxruntime session (or adopts `runtime`,
    already loaded by the CLI to fail fast), warms it up, then reports ready."""

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = runtime or ModelRuntime.load(settings.model_path, intra_op_threads=settings.intra_op_threads)
        loaded.warmup(settings.warmup_runs)
        loaded = dataclasses.replace(loaded, observer=metrics.observe_model)
        metrics.set_model(loaded.name, loaded.version)
        app.state.runtime = loaded
        app.state.ready = True
        logger.info("ready: %s version %s", loaded.name, loaded.version)
        try:
            yield
        finally:
            app.state.ready = False

    app = BNServe(title="bnserve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.runtime = None
    app.state.ready = False
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outside the limit: it sees the 413s too
    if settings.hot_path:
        app.hot_path = HotPath(app.state, settings, metrics)
    _install_error_handlers(app)
    for module in (predict, bn_stats, model, health, v2, v1, metrics_route):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or app.state.runtime is None:
            schema = build_openapi(app, app.state.runtime)
            if app.state.runtime is None:
                return schema  # not cached: the examples come with the model
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers (`--workers N`): settings from the BNSERVE_ environment."""
    settings = Settings()  # type: ignore[call-arg]  # pydantic-settings fills the fields
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error becomes `{"detail": ...}` through one function; no stack trace reaches a client."""

    def render(exc: ServiceError, request: Request) -> Response:
        return json_response(error_payload(exc, request.url.path), exc.status_code, headers=exc.headers)

    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return render(exc, request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return render(
                NotFound(f"path: no route {request.method} {request.url.path}; the API is listed at /docs"), request
            )
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            err = MethodNotAllowed(
                f"method: {request.method} is not allowed on {request.url.path}"
                + (f"; use {allowed}" if allowed else ""),
                headers=dict(exc.headers or {}),
            )
            return render(err, request)
        other = ServiceError(str(exc.detail), headers=dict(exc.headers or {}))
        other.status_code = exc.status_code
        return render(other, request)

    async def param_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        messages = [f"{format_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        return render(InvalidInput("; ".join(messages)), request)

    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(ServiceError("internal error; the server log has the details"), request)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, param_error)
    app.add_exception_handler(Exception, unexpected)
