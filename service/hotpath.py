"""The hot path: the inference routes served as a pure ASGI app, ahead of FastAPI's router.

Why: measured in-process over 5,000 calls (`make bench` gives the HTTP figures), FastAPI's
routing and dependency solving cost about 65 us of a 95 us POST /predict, while the model runs
in 5 us. This layer serves the same operations (service/inference.py) with
the same pydantic validation, the same error messages and the same metrics, and hands every
other request, or any request for another model name or version, to the FastAPI app
unchanged. The FastAPI routes stay: they document the API (OpenAPI) and serve when
BNSERVE_HOT_PATH=false; the tests run the contract against both.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from service.body import BodyDeadlines, send_error, send_json, too_large
from service.config import Settings
from service.errors import ServiceError, error_payload
from service.gate import Gate
from service.inference import drift_param, predict_many, predict_one, v2_infer
from service.jsonio import dumps
from service.runtime import ModelRuntime

logger = logging.getLogger(__name__)

JSON = b"application/json"
PREDICT, BATCH = "/predict", "/predict/batch"
V1 = "/v1/models/{model}:predict"
V2, V2_VERSION = "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"


class HotPath:
    def __init__(self, state: State, settings: Settings, gate: Gate) -> None:
        self.state = state
        self.settings = settings
        self.gate = gate
        self.deadlines = BodyDeadlines(settings.request_timeout)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve the request if it is one of ours; False hands it to the FastAPI app."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        runtime: ModelRuntime | None = self.state.runtime
        route = _route(scope["path"], runtime) if runtime is not None else None
        if route is None or runtime is None:
            return False
        await self._serve(route, runtime, scope, receive, send)
        return True

    async def _serve(self, route: str, runtime: ModelRuntime, scope: Scope, receive: Receive, send: Send) -> None:
        gate, path = self.gate, scope["path"]
        started = time.perf_counter()
        content_type = encoding = header_length = None
        declared: int | None = None
        request_id = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
            elif name == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif name == b"x-request-id":
                request_id = gate.request_id([(name, value)])
        request_id = request_id or gate.request_id([])
        busy = gate.enter(path)
        if busy is not None:
            await send_error(send, busy, path, {"X-Request-ID": request_id})
            gate.record(route, "POST", path, busy.status_code, started, request_id)
            return
        status, body = 500, b""
        try:
            limit = self.settings.max_body_bytes
            try:
                if declared is not None and declared > limit:
                    raise too_large(limit, declared)
                body = await self.deadlines.read(receive, limit)
                payload, media, headers = self._run(route, runtime, body, content_type, encoding, header_length,
                                                    scope["query_string"])  # fmt: skip
            except ServiceError as e:
                payload, media, headers = dumps(error_payload(e, path)), JSON, e.headers
                status = e.status_code
            except Exception:  # the same safety net as app.py's handler: logged, never shown
                logger.exception("unhandled error on POST %s", path)
                error = ServiceError("internal error; the server log has the details")
                payload, media, headers = dumps(error_payload(error, path)), JSON, None
            else:
                status = 200
            await send_json(send, status, payload, {**(headers or {}), "X-Request-ID": request_id}, media)
        finally:
            gate.leave()
            gate.record(route, "POST", path, status, started, request_id, body)

    def _run(self, route: str, runtime: ModelRuntime, body: bytes, content_type: str | None, encoding: str | None,
             header_length: str | None, query: bytes) -> tuple[bytes, bytes, dict[str, str] | None]:  # fmt: skip
        s = self.settings
        if route == PREDICT:
            return predict_one(runtime, body, content_type, encoding, s.max_body_bytes, drift_param(query)), JSON, None
        if route in (V2, V2_VERSION):
            out = v2_infer(runtime, body, header_length, encoding, s.max_body_bytes, s.max_batch_size,
                           s.max_json_depth)  # fmt: skip
            return out.body, out.media_type.encode(), out.headers
        answers = predict_many(runtime, body, content_type, encoding, s.max_body_bytes, s.max_batch_size,
                               drift_param(query))  # fmt: skip
        if route == BATCH:
            return runtime.answers.batch(answers), JSON, None
        return runtime.answers.v1(answers), JSON, None


def _route(path: str, runtime: ModelRuntime) -> str | None:
    """The route template this path would match for the LOADED model, or None."""
    if path in (PREDICT, BATCH):
        return path
    if path.startswith("/v1/"):
        return V1 if path == f"/v1/models/{runtime.name}:predict" else None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        if path == f"/v2/models/{runtime.name}/infer":
            return V2
        if path == f"/v2/models/{runtime.name}/versions/{runtime.version}/infer":
            return V2_VERSION
    return None
