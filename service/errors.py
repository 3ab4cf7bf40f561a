"""One small error hierarchy; app.py maps every one of them to a JSON answer with ONE handler.

No FastAPI import here, so runtime.py can raise these too.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error whose message is safe and useful to show the client."""

    status_code = 500

    def __init__(
        self, message: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.headers = headers


def error_payload(exc: ServiceError, path: str) -> dict[str, Any]:
    """`{"detail": ...}` (with `errors` when there are several), or the Open Inference
    Protocol's `{"error": ...}` under /v2."""
    if path == "/v2" or path.startswith("/v2/"):
        return {"error": exc.message}
    payload: dict[str, Any] = {"detail": exc.message}
    if exc.errors:
        payload["errors"] = exc.errors
    return payload


class BadRequest(ServiceError):
    status_code = 400  # the body is not JSON at all


class NotFound(ServiceError):
    status_code = 404


class MethodNotAllowed(ServiceError):
    status_code = 405


class RequestTimeout(ServiceError):
    status_code = 408


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class InvalidInput(ServiceError):
    status_code = 422  # JSON, but not what the model takes


class NotReady(ServiceError):
    status_code = 503


class ModelLoadError(Exception):
    """The model file cannot be served; the message is one line a person can act on."""
