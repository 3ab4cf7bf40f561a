"""create_app(settings): builds the app; nothing here runs at import."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from service import __version__
from service.body import BodyLimitMiddleware, RequestMiddleware, format_loc
from service.config import Settings
from service.deps import json_response
from service.drift import Window
from service.errors import InvalidInput, MethodNotAllowed, ModelLoadError, NotFound, ServiceError, error_payload
from service.gate import Gate
from service.hotpath import HotPath
from service.metrics import Metrics, multiprocess_dir
from service.openapi import build_openapi
from service.routes import admin, bn_stats, health, model, predict, ui, v1, v2
from service.routes import drift as drift_route
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


def open_model(settings: Settings) -> ModelRuntime:
    """Load, warm up and self-test the configured model: what start-up and every reload do."""
    runtime = ModelRuntime.load(settings.model_path, intra_op_threads=settings.intra_op_threads,
                                expected_sha256=settings.model_sha256)  # fmt: skip
    runtime.warmup(settings.warmup_runs)
    runtime.self_test()
    return runtime


def drift_window(settings: Settings, runtime: ModelRuntime) -> Window | None:
    """The model's drift window; with several workers, in files they share (beside the metrics')."""
    if runtime.drift is None:
        return None
    if runtime.drift.smallest_p_value > settings.drift_alpha:
        logger.warning(
            "drift: the calibration split has %d samples, so no p-value is below %.3g: nothing is flagged at "
            "BNSERVE_DRIFT_ALPHA=%g", len(runtime.drift.calibration), runtime.drift.smallest_p_value,
            settings.drift_alpha,
        )  # fmt: skip
    shared = multiprocess_dir()
    return Window(runtime.drift, settings.drift_window_seconds, settings.drift_window_samples,
                  Path(shared) / "drift" if shared else None, every=settings.drift_monitor_every)  # fmt: skip


def create_app(settings: Settings, runtime: ModelRuntime | None = None) -> FastAPI:
    """The service. Its lifespan opens ONE onnxruntime session (or adopts `runtime`, already
    opened by the CLI to fail fast), warms it up, self-tests it, then reports ready."""

    metrics = Metrics()
    gate = Gate(settings, metrics)

    def adopt(loaded: ModelRuntime) -> ModelRuntime:
        window = drift_window(settings, loaded)
        loaded = dataclasses.replace(
            loaded,
            observer=metrics.observe_model,
            drift_alpha=settings.drift_alpha,
            drift_window=window if settings.drift_monitor else None,
        )
        app.state.drift_window = metrics.drift_window = window
        metrics.set_model(loaded.name, loaded.version)
        app.state.runtime = loaded  # one assignment on the event loop: requests see old or new, whole
        return loaded

    async def reload() -> tuple[ModelRuntime, ModelRuntime]:
        """Validate the file at the configured path in full, off the event loop, then swap.
        A file that fails leaves the old model serving (ModelLoadError says why)."""
        async with app.state.reload_lock:
            old = app.state.runtime
            new = adopt(await asyncio.to_thread(open_model, settings))
            logger.info("reloaded %s: version %s -> %s", new.name, old.version if old else None, new.version)
            return old, new

    async def reload_on_sighup() -> None:
        try:
            await reload()
        except ModelLoadError as e:
            logger.error("reload refused, still serving the old model: %s", e)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = adopt(runtime or open_model(settings))
        app.state.ready = True
        logger.info("ready: %s version %s", loaded.name, loaded.version)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_on_sighup()))
            sighup = True
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests), or no signals
            sighup = False
        try:
            yield
        finally:
            app.state.ready = False
            if sighup:
                loop.remove_signal_handler(signal.SIGHUP)

    docs = settings.docs
    app = BNServe(title="bnserve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)  # fmt: skip
    app.state.settings = settings
    app.state.runtime = None
    app.state.ready = False
    app.state.metrics = metrics
    app.state.drift_window = None
    app.state.reload = reload
    app.state.reload_lock = asyncio.Lock()
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.request_timeout)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID"])  # fmt: skip
    app.add_middleware(RequestMiddleware, gate=gate)  # outermost: it sees every answer, 413s included
    if settings.hot_path and not settings.cors_origins:  # CORS headers come from the middleware only
        app.hot_path = HotPath(app.state, settings, gate)
    _install_error_handlers(app)
    routers = [predict, bn_stats, drift_route, model, health, v2, v1, metrics_route]
    if settings.admin_token is not None:
        routers.append(admin)
        app.include_router(drift_route.admin_router)
    for module in routers:
        app.include_router(module.router)
    if settings.ui:
        app.include_router(ui.router)
        app.mount("/ui/static", ui.static_files(), name="ui-static")

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
    from service.__main__ import configure_logging

    settings = Settings()  # type: ignore[call-arg]  # pydantic-settings fills the fields
    configure_logging(settings)
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
