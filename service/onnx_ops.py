"""Read and trim an ONNX file without the `onnx` package.

The runtime image carries onnxruntime but not `onnx`, and onnxruntime does not
expose a graph's nodes. The service needs each node's `op_type`, and a copy of the
graph without its drift outputs, so this reads the few protobuf fields that lead
to them (onnx.proto3):

    ModelProto.graph = 7, ModelProto.functions = 25
    GraphProto.node = 1, GraphProto.output = 12;  FunctionProto.node = 7
    NodeProto.op_type = 4, NodeProto.attribute = 5
    AttributeProto.g = 6, AttributeProto.graphs = 11   (subgraphs of If/Loop/Scan)
    ValueInfoProto.name = 1
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator


class WireError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _spans(buf: memoryview) -> Iterator[tuple[int, int, int, memoryview | None]]:
    """(field number, start, end, payload) for each field, start..end its whole encoding;
    payload only for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        payload = None
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise WireError("truncated field")
            payload = buf[pos : pos + length]
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise WireError("truncated field")
        yield number, start, pos, payload


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, payload) for each field; payload only for length-delimited fields."""
    for number, _, _, payload in _spans(buf):
        yield number, payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _graph_ops(graph: memoryview, ops: Counter[str], node_field: int = 1) -> None:
    for number, payload in _fields(graph):
        if number == node_field and payload is not None:
            _node_ops(payload, ops)


def _node_ops(node: memoryview, ops: Counter[str]) -> None:
    for number, payload in _fields(node):
        if payload is None:
            continue
        if number == 4:
            ops[bytes(payload).decode("utf-8", "replace")] += 1
        elif number == 5:
            for attr_number, sub in _fields(payload):
                if attr_number in (6, 11) and sub is not None:
                    _graph_ops(sub, ops)


def op_types(model: bytes) -> Counter[str]:
    """Count every node's op_type: the main graph, its subgraphs and local functions."""
    ops: Counter[str] = Counter()
    graphs = 0
    for number, payload in _fields(memoryview(model)):
        if number == 7 and payload is not None:
            graphs += 1
            _graph_ops(payload, ops)
        elif number == 25 and payload is not None:
            _graph_ops(payload, ops, node_field=7)
    if not graphs:
        raise WireError("no graph in the file")
    return ops


def without_outputs(model: bytes, names: Collection[str]) -> bytes:
    """The model with the named outputs taken off its main graph, every other byte as it was.

    Why: a tensor that is a graph output must be kept, so onnxruntime cannot fuse the node that
    makes it (a Gemm with its Relu); the drift taps made a single-sample run 1.09 to 1.11x that of
    a --no-drift export, and this copy runs as fast as one (ModelRuntime serves untapped runs with it)."""
    buf = memoryview(model)
    out = bytearray()
    graphs = 0
    for number, start, end, payload in _spans(buf):
        if number != 7 or payload is None:
            out += buf[start:end]
            continue
        graphs += 1
        graph = bytearray()
        for field, s, e, value in _spans(payload):
            if field == 12 and value is not None and _name(value) in names:
                continue
            graph += payload[s:e]
        out += _encode_varint(7 << 3 | 2) + _encode_varint(len(graph)) + graph
    if not graphs:
        raise WireError("no graph in the file")
    return bytes(out)


def _name(value_info: memoryview) -> str | None:
    for number, payload in _fields(value_info):
        if number == 1 and payload is not None:
            return bytes(payload).decode("utf-8", "replace")
    return None


def graph_bytes(model: bytes) -> bytes:
    """The serialized main graph (ModelProto field 7), as export hashed it for the card."""
    for number, payload in _fields(memoryview(model)):
        if number == 7 and payload is not None:
            return bytes(payload)
    raise WireError("no graph in the file")
