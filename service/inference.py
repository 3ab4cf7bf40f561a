"""The inference operations, independent of any web framework: raw body in, answer out.

The FastAPI routes and the hot path (service/hotpath.py) both call these, so the two
give the same answers, the same validation and the same error messages, to the bit.
"""

from __future__ import annotations

import json
import zlib
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from service.body import check_json_content_type, numbers_only, parse_json
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, ServiceError, UnsupportedMediaType
from service.jsonio import dumps
from service.jsonkeys import count_strings, repeated_key
from service.runtime import ModelRuntime
from service.schemas import BATCH_REQUEST, PREDICT_REQUEST
from service.v2 import Encoded, decode_input, encode_response, parse_request, wants_drift

_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})


def drift_param(query: bytes | str) -> bool:
    """`?drift=true` on /predict, /predict/batch and /v1: whether answers carry a drift block.
    Parsed here, not by FastAPI, so that the hot path and the routes word an error the same."""
    if not query:
        return False
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    values = parse_qs(text, keep_blank_values=True).get("drift")
    if not values:
        return False
    if len(values) > 1:
        raise InvalidInput("drift: give the query parameter once")
    value = values[0].lower()
    if value not in _TRUE and value not in _FALSE:
        raise InvalidInput(f"drift: expected true or false, got {json.dumps(values[0][:40])}")
    return value in _TRUE


def _with_reports(runtime: ModelRuntime, probs: np.ndarray, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answers = runtime.answers.dicts(probs)
    for answer, report in zip(answers, reports, strict=True):
        answer["drift"] = report
    return answers


def predict_one(runtime: ModelRuntime, body: bytes, content_type: str | None, encoding: str | None,
                limit: int, drift: bool = False) -> bytes:  # fmt: skip
    """/predict: the JSON answer for one sample."""
    check_json_content_type(content_type)
    body = decompress(body, encoding, limit)
    row = runtime.spec.plain_rows(numbers_only(body, "features"), batch=False)
    if row is None:  # named features, or an error: the schema decides and words it
        request = parse_json(PREDICT_REQUEST, body)
        refuse_repeated_keys(body, 1 + count_strings(request.features))
        row = runtime.spec.row(request.features)[np.newaxis]
    probs, reports = runtime.infer(row, "features", drift)
    return runtime.answers.one(probs) if reports is None else dumps(_with_reports(runtime, probs, reports)[0])


def _check_count(n: int, limit: int) -> None:
    if not 1 <= n <= limit:
        raise InvalidInput(f"instances: expected 1 to {limit} instances, got {n}")


def predict_many(runtime: ModelRuntime, body: bytes, content_type: str | None, encoding: str | None,
                 body_limit: int, limit: int, drift: bool = False) -> bytes:  # fmt: skip
    """/predict/batch and /v1: one batched model call, and the JSON array of the instances' answers,
    each as /predict gives it."""
    check_json_content_type(content_type)
    body = decompress(body, encoding, body_limit)
    rows = runtime.spec.plain_rows(numbers_only(body, "instances", rows_of=runtime.spec.size), batch=True)
    if rows is None:  # named features, or an error: the schema decides and words it
        instances = parse_json(BATCH_REQUEST, body).instances
        refuse_repeated_keys(body, 1 + sum(count_strings(f) for f in instances))
        _check_count(len(instances), limit)
        rows = runtime.spec.rows(instances)
    _check_count(len(rows), limit)
    probs, reports = runtime.infer(rows, "instances", drift)
    return runtime.answers.array(probs) if reports is None else dumps(_with_reports(runtime, probs, reports))


def refuse_repeated_keys(body: bytes, strings: int, error: type[ServiceError] = InvalidInput) -> None:
    key = repeated_key(body, strings)
    if key is not None:
        raise error(f"body: duplicate key {json.dumps(key)} in one JSON object; give each key once")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body under Content-Encoding gzip or deflate, bounded by `limit` once inflated."""
    encoding = (encoding or "identity").lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding: {encoding!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"body: not valid {encoding} data ({e})") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"body: larger than the limit of {limit} bytes once decompressed")
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"body: not valid {encoding} data (truncated, or followed by other bytes)")
    return out


def v2_infer(
    runtime: ModelRuntime,
    body: bytes,
    header_length: str | None,
    encoding: str | None,
    limit: int,
    max_batch: int,
    max_depth: int = 16,
) -> Encoded:
    request, header, tail = parse_request(decompress(body, encoding, limit), header_length)
    parsed = request.model_dump(exclude_unset=True, exclude={"inputs": {"__all__": {"data"}}})
    data_keys = sum(1 for t in request.inputs if "data" in t.model_fields_set)
    refuse_repeated_keys(header, count_strings(parsed) + data_keys, BadRequest)
    rows = decode_input(request, tail, runtime.spec, max_batch, max_depth)
    drift = wants_drift(request)
    try:
        probs, reports = runtime.infer(rows, "inputs[0] row", drift)
    except InvalidInput as e:  # the protocol says 400
        raise BadRequest(e.message) from None
    return encode_response(request, probs, runtime.class_names, runtime.name, runtime.version, reports)
