"""Open Inference Protocol v2 (KServe v2 / Triton REST): decoding requests, encoding answers.

No FastAPI import. Implements the JSON form and the binary tensor data
extension: a request (or answer) body is a JSON header of
`Inference-Header-Content-Length` bytes followed by raw little-endian tensors, each
input declaring its `binary_data_size`; BYTES tensors are 4-byte length-prefixed
strings. Errors are `BadRequest` (400); the routes render them as `{"error": ...}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.body import validation_error
from service.errors import BadRequest
from service.jsonio import dumps
from service.runtime import FLOAT32_MAX, InputSpec
from service.schemas import V2_INFER_REQUEST, V2InferRequest

INPUT_NAME = "input"
OUTPUTS = ("probabilities", "class_index", "label")
# The covariate-shift monitor's answer, per row: with `parameters: {"drift": true}`, or asked by name.
DRIFT_OUTPUTS = ("drift_score", "drift_p_value", "drift_flagged", "drift_top_feature")
ALL_OUTPUTS = OUTPUTS + DRIFT_OUTPUTS
# Datatypes accepted for the input; integers are coerced to float32, as the graph takes.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "FP32": np.float32, "FP64": np.float64, "FP16": np.float16,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    }.items()
}  # fmt: skip


def _loc(loc: tuple[int | str, ...]) -> str:
    """('inputs', 0, 'data', 'list[...]', 3) -> 'inputs[0].data[3]' (union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("float", "list[union[float,...]]"):  # the data union's branch names
            continue
        else:
            out = f"{out}.{part}" if out else part
    return out or "body"


def parse_request(body: bytes, header_length: str | None) -> tuple[V2InferRequest, bytes, memoryview]:
    """Split the body into the JSON header and the binary tail, and validate the header."""
    view = memoryview(body)
    if header_length is None:
        header, tail = body, view[len(view) :]
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length: expected an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length: {n} is outside the body's {len(body)} bytes")
        header, tail = body[:n], view[n:]
    try:
        request = V2_INFER_REQUEST.validate_json(header)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        # Of a union's alternatives, the deepest failure is the one that names the culprit.
        err = max(errors, key=lambda x: (len(x["loc"]), x["loc"][-1:] == ("float",)))
        if err["type"] == "json_invalid":
            raise BadRequest(validation_error(e).message) from None
        raise BadRequest(f"{_loc(tuple(err['loc']))}: {err['msg']}") from None
    return request, header, tail


def decode_input(
    request: V2InferRequest, tail: memoryview, spec: InputSpec, max_batch: int, max_depth: int = 16
) -> np.ndarray:
    """The one input tensor as a (N, size) float64 array, checked against the model."""
    if len(request.inputs) != 1:
        raise BadRequest(f"inputs: expected exactly one tensor, {INPUT_NAME!r}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise BadRequest(f"inputs[0].name: unknown input {tensor.name!r}; the model's input is {INPUT_NAME!r}")
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise BadRequest(
            f"inputs[0].datatype: {tensor.datatype!r} is not accepted; use FP32, FP64, FP16 or an integer type"
        )
    shape = list(tensor.shape)
    accepted = [[-1, *spec.input_shape]] + [[-1, *s] for s in spec.nested_shapes if s != spec.input_shape]
    if len(spec.input_shape) > 1:
        accepted.append([-1, spec.size])
    if not any(len(shape) == len(a) and shape[1:] == a[1:] for a in accepted):
        forms = " or ".join(str(a).replace("-1", "N") for a in accepted)
        raise BadRequest(f"inputs[0].shape: expected {forms}, got {shape}")
    n = shape[0]
    if not 1 <= n <= max_batch:
        raise BadRequest(f"inputs[0].shape: the batch axis must be 1 to {max_batch}, got {n}")
    count = math.prod(shape)
    params = tensor.parameters or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"inputs[0].parameters.binary_data_size: expected a byte count, got {size!r}")
        if size != len(tail):
            raise BadRequest(f"inputs[0].parameters.binary_data_size: {size} bytes declared, {len(tail)} sent")
        if size != count * dtype.itemsize:
            raise BadRequest(
                f"inputs[0]: {size} bytes of {tensor.datatype} hold {size / dtype.itemsize:g} values; "
                f"shape {shape} needs {count}"
            )
        values = np.frombuffer(tail, dtype=dtype).astype(np.float64)
    elif tensor.data is not None:
        if len(tail):
            raise BadRequest(f"body: {len(tail)} bytes of binary data, but no input declares binary_data_size")
        depth, first = 0, tensor.data
        while isinstance(first, list) and first:
            depth, first = depth + 1, first[0]
        if depth > max_depth:
            raise BadRequest(
                f"inputs[0].data: nested {depth} levels deep; at most {max_depth} (BNSERVE_MAX_JSON_DEPTH)"
            )
        try:
            values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
        except ValueError as e:
            why = "its rows differ in length" if "inhomogeneous" in str(e) else "it is nested too deep for an array"
            raise BadRequest(f"inputs[0].data: expected row-major numbers for shape {shape}, but {why}") from None
        if values.size != count:
            raise BadRequest(f"inputs[0].data: {values.size} values for shape {shape}, which needs {count}")
        if tensor.datatype == "FP16":
            big = np.abs(values) > float(np.finfo(np.float16).max)
            if big.any():
                i = int(np.argmax(big))
                raise BadRequest(f"inputs[0].data[{i}]: {values[i]:g} is not a FP16 value (|x| <= 65504)")
        if dtype.kind in "iu":  # JSON numbers for an integer tensor must be integers of that type
            info = np.iinfo(dtype)
            bad = (values != np.floor(values)) | (values < info.min) | (values > info.max)
            if bad.any():
                i = int(np.argmax(bad))
                raise BadRequest(f"inputs[0].data[{i}]: {values[i]:g} is not a {tensor.datatype} value")
    else:
        raise BadRequest("inputs[0]: no data; send `data`, or binary data with parameters.binary_data_size")
    bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        i = int(np.argmax(bad))
        raise BadRequest(f"inputs[0].data[{i}]: {values[i]} is not a finite float32 value")
    return values.reshape(n, spec.size)


@dataclass(frozen=True)
class Encoded:
    body: bytes
    header_length: int | None  # set when binary tensors follow the JSON header

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"

    @property
    def headers(self) -> dict[str, str] | None:
        if self.header_length is None:
            return None
        return {"Inference-Header-Content-Length": str(self.header_length)}


def wants_drift(request: V2InferRequest) -> bool:
    asked = _flag(request.parameters, "drift", False, "parameters")
    return asked or any(out.name in DRIFT_OUTPUTS for out in request.outputs or [])


def encode_response(
    request: V2InferRequest,
    probs: np.ndarray,
    class_names: tuple[str, ...],
    model_name: str,
    version: str,
    drift: list[dict[str, Any]] | None = None,
) -> Encoded:
    binary_default = _flag(request.parameters, "binary_data_output", False, "parameters")
    wanted = request.outputs or []
    if not wanted:
        chosen = [(name, binary_default) for name in (ALL_OUTPUTS if drift is not None else OUTPUTS)]
    else:
        chosen = []
        for i, out in enumerate(wanted):
            if out.name not in ALL_OUTPUTS:
                raise BadRequest(
                    f"outputs[{i}].name: unknown output {out.name!r}; the model's outputs are {', '.join(ALL_OUTPUTS)}"
                )
            if any(name == out.name for name, _ in chosen):
                raise BadRequest(f"outputs[{i}].name: {out.name!r} is asked for twice")
            chosen.append((out.name, _flag(out.parameters, "binary_data", binary_default, f"outputs[{i}].parameters")))
    n = len(probs)
    index = probs.argmax(axis=1).astype("<i8")
    tensors: dict[str, tuple[str, list[int], Any]] = {
        "probabilities": ("FP32", [n, probs.shape[1]], probs.astype("<f4")),
        "class_index": ("INT64", [n], index),
        "label": ("BYTES", [n], [class_names[k] for k in index]),
    }
    if drift is not None:
        tensors.update(
            {
                "drift_score": ("FP64", [n], np.array([d["score"] for d in drift], dtype="<f8")),
                "drift_p_value": ("FP64", [n], np.array([d["p_value"] for d in drift], dtype="<f8")),
                "drift_flagged": ("BOOL", [n], np.array([d["flagged"] for d in drift], dtype=np.bool_)),
                "drift_top_feature": ("BYTES", [n], [d["top_features"][0]["name"] for d in drift]),
            }
        )
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in chosen:
        datatype, shape, value = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunk = _raw(datatype, value)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = list(value) if datatype == "BYTES" else value.reshape(-1).tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = dumps(answer)
    if not chunks:
        return Encoded(header, None)
    return Encoded(header + b"".join(chunks), len(header))


def _flag(parameters: dict[str, Any] | None, key: str, default: bool, where: str) -> bool:
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _raw(datatype: str, value: Any) -> bytes:
    """A tensor in the binary extension's layout: little-endian values; BYTES as 4-byte length + bytes."""
    if datatype == "BYTES":
        return b"".join(len(e).to_bytes(4, "little") + e for e in (str(v).encode() for v in value))
    return bytes(value.tobytes())
