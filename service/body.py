"""Reading a JSON request body: size limit, content type, strict validation, precise messages."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from typing import Any, TypeVar

import numpy as np
import orjson
import simdjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    BadRequest,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    UnsupportedMediaType,
    error_payload,
)
from service.gate import Gate
from service.jsonio import dumps
from service.schemas import FEATURE_FORMS

T = TypeVar("T")

_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request",
    "float_type": "expected a number",
    "finite_number": "expected a finite number (NaN and infinities are not accepted)",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected a JSON object",
}


def format_loc(loc: tuple[int | str, ...]) -> str:
    """('instances', 3, 'flat', 2) -> 'instances[3][2]'; ('features', 'named', 'x') -> 'features["x"]'.

    pydantic puts the union member's tag after `features` (or after an instance's
    index); it means nothing to the client, so it is dropped."""
    out, keyed = "", False
    for i, part in enumerate(loc):
        if part in FEATURE_FORMS and (
            (i == 1 and loc[0] == "features") or (i == 2 and loc[0] == "instances" and isinstance(loc[1], int))
        ):
            keyed = part == "named"
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif keyed:
            out += f"[{json.dumps(part)}]"
        else:
            out = f"{out}.{part}" if out else part
        keyed = False
    return out or "body"


def _message(err: ErrorDetails) -> str:
    where = format_loc(tuple(err["loc"]))
    text = _MESSAGES.get(err["type"], err["msg"])
    if err["type"] in ("float_type", "list_type", "dict_type", "model_type", "features_type"):
        text += f", got {_json_value(err.get('input'))}"
    return f"{where}: {text}"


_JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _json_value(value: Any) -> str:
    """A value as the client wrote it: JSON type and spelling, cut at 40 characters."""
    if value is None:
        return "null"
    shown = json.dumps(value)
    return f"{_JSON_TYPES.get(type(value), 'value')} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def validation_error(e: ValidationError) -> InvalidInput | BadRequest:
    errors = e.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        detail = errors[0].get("ctx", {}).get("error", errors[0]["msg"])
        if "recursion limit exceeded" in str(detail):  # the parser's own bound on nesting
            return BadRequest(f"body: JSON nested deeper than the parser's limit of 200 levels ({detail})")
        return BadRequest(f"body: not valid JSON ({detail})")
    items = [{"field": format_loc(tuple(x["loc"])), "message": _message(x)} for x in errors]
    shown = "; ".join(i["message"] for i in items[:3])
    if len(items) > 3:
        shown += f"; and {len(items) - 3} more problem(s)"
    return InvalidInput(shown, errors=items if len(items) > 1 else None)


def check_json_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type: expected application/json, got {content_type or 'none'}")


def parse_json(adapter: TypeAdapter[T], body: bytes) -> T:
    """Validate raw JSON bytes with pydantic (parsed in Rust), errors as the client should read them."""
    try:
        return adapter.validate_json(body)
    except ValidationError as e:
        raise validation_error(e) from None


# Besides its one key and the arrays' opening brackets, a JSON object of numbers in arrays has no
# other byte than these.
_NUMERIC = b"0123456789+-.eE],:{} \t\n\r"


@functools.cache
def _residue(key: str) -> bytes:
    return json.dumps(key).encode().translate(None, _NUMERIC + b"[")


def numbers_only(body: bytes, key: str, rows_of: int | None = None) -> Any:
    """The value of `key` when the body is a JSON object of that key alone, holding nothing but
    numbers in arrays; None for any other body, which the schema then validates and words the
    errors of. The common request, decoded without the schema. With `rows_of`, a value that is a
    list of rows of that many numbers comes as a float64 array of them (`_flat_rows`).

    Why: measured under load on /predict/batch with 64 x 30 numbers, pydantic's validate_json and
    turning its lists into an array took 32% of the request. orjson parses the same JSON (RFC 8259,
    as strict) to the same floats, and the byte check leaves nothing the schema would refuse: no
    string but the key (so no repeated key), no true, false or null. What is left (the shape, the
    float32 range) InputSpec.plain_rows checks."""
    kept, residue = body.translate(None, _NUMERIC), _residue(key)  # the key's other bytes, and a "[" an array
    if kept.replace(b"[", b"") != residue:
        return None
    if rows_of is not None:
        rows = _flat_rows(body, key, rows_of, arrays=len(kept) - len(residue))
        if rows is not None:
            return rows
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value.get(key) if type(value) is dict and len(value) == 1 else None


_parsers = threading.local()  # a simdjson parser holds one document at a time: one per thread
# A parser keeps the buffers of the largest document it has read (a 1 MiB body of short numbers
# left one holding 12 MiB, measured): a body past this size gets a parser of its own, freed with
# the request, so its memory goes back to the process (the one kept holds about 3 MiB at most).
KEPT_PARSER_BYTES = 256 << 10


def _flat_rows(body: bytes, key: str, size: int, arrays: int) -> np.ndarray | None:
    """`{key: [[size numbers], ...]}` (a body numbers_only has checked, with `arrays` arrays in it)
    as an (n, size) float64 array, or None for any other shape, and for a body simdjson refuses
    (then orjson decides, as for every other body).

    Why: simdjson (RFC 8259, as strict as orjson; numbers correctly rounded, as orjson's) copies the
    numbers into a buffer of C doubles without a Python float for any of them. For 64 x 30 numbers,
    from body to float32 rows (byte check, parse, checks; freeing included), measured here in one
    run: 90 us against 145 us for orjson's lists packed by struct with 17-digit numbers, 60 against
    111 us with the benchmark's shorter ones. The rows are its n + 1 arrays, so no array is nested
    in a row, and as_buffer refuses an object among the numbers. An integer beyond 64 bits it
    refuses too (orjson makes it a float). /predict's one sample (30 numbers) stays with orjson:
    6 to 7 us either way."""
    parser = getattr(_parsers, "parser", None) if len(body) <= KEPT_PARSER_BYTES else simdjson.Parser()
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    try:
        doc = parser.parse(body)
    except ValueError:  # not JSON
        return None
    except RuntimeError:  # nested too deep, or a document of this parser still referenced (none should be)
        _parsers.parser = None  # so a parser is never stuck: a new one for the next body
        return None
    try:
        value = doc.get(key) if type(doc) is simdjson.Object else None
        if type(value) is not simdjson.Array or arrays != len(value) + 1:
            return None
        for row in value:
            if type(row) is not simdjson.Array or len(row) != size:
                return None
        return np.frombuffer(value.as_buffer(of_type="d"), np.float64).reshape(-1, size)
    except (TypeError, RuntimeError):  # an object among the numbers; an integer beyond 64 bits
        return None


def too_large(limit: int, declared: int | None = None) -> PayloadTooLarge:
    if declared is None:
        return PayloadTooLarge(f"body: larger than the limit of {limit} bytes")
    return PayloadTooLarge(f"body: {declared} bytes is larger than the limit of {limit} bytes")


def timed_out(seconds: float) -> RequestTimeout:
    return RequestTimeout(f"body: not received within {seconds:g} s (BNSERVE_REQUEST_TIMEOUT)")


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body from ASGI messages, refused past `limit` bytes."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; what arrived is all there is
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyDeadlines:
    """The hot path's body timeout: one sweeper task for all requests, so a request pays a dict
    entry (0.2 us) instead of an asyncio.timeout (a timer handle: 4 us, measured). Every second
    the sweeper cancels the reads that are past their deadline; they answer 408."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.waiting: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.sweeper: asyncio.Task[None] | None = None

    async def read(self, receive: Receive, limit: int) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self.waiting[task] = loop.time() + self.timeout
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = loop.create_task(self._sweep())
        try:
            return await read_body(receive, limit)
        except asyncio.CancelledError:
            if task not in self.expired:
                raise
            task.uncancel()
            raise timed_out(self.timeout) from None
        finally:
            self.waiting.pop(task, None)
            self.expired.discard(task)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            await asyncio.sleep(min(1.0, self.timeout))
            now = loop.time()
            for task, deadline in list(self.waiting.items()):
                if deadline <= now and task not in self.expired:
                    self.expired.add(task)
                    task.cancel()


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: checked on Content-Length and, for chunked
    uploads, while the body streams in; 408 when it does not arrive within `timeout`
    seconds. A pure ASGI middleware (no per-request task)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = declared_length(scope["headers"])
        if declared is not None and declared > limit:
            await send_error(send, too_large(limit, declared), scope["path"])
            return
        seen = 0
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def limited() -> Message:
            nonlocal seen
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise timed_out(self.timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, limited, send)


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None,
                    media_type: bytes = b"application/json") -> None:  # fmt: skip
    raw = [(b"content-type", media_type), (b"content-length", b"%d" % len(body))]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ServiceError, path: str, headers: dict[str, str] | None = None) -> None:
    await send_json(
        send, error.status_code, dumps(error_payload(error, path)), {**(error.headers or {}), **(headers or {})}
    )


class RequestMiddleware:
    """For everything the hot path does not serve: request id (echoed as X-Request-ID), admission,
    metrics by route template, the access log. Pure ASGI (no per-request task)."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate, path, method = self.gate, scope["path"], scope["method"]
        started = time.perf_counter()
        request_id = gate.request_id(scope["headers"])
        echo = (b"x-request-id", request_id.encode())
        busy = gate.enter(path)
        if busy is not None:
            await send_error(send, busy, path, {"X-Request-ID": request_id})
            gate.record("unmatched", method, path, busy.status_code, started, request_id)
            return
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), echo]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            gate.leave()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            gate.record(route, method, path, status, started, request_id)
