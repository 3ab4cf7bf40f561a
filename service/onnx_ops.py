"""List the operator types in an ONNX file without the `onnx` package.

The runtime image carries onnxruntime but not `onnx`, and onnxruntime does not
expose a graph's nodes. The service only needs each node's `op_type`, so this
reads the few protobuf fields that lead to it (onnx.proto3):

    ModelProto.graph = 7, ModelProto.functions = 25
    GraphProto.node = 1;  FunctionProto.node = 7
    NodeProto.op_type = 4, NodeProto.attribute = 5
    AttributeProto.g = 6, AttributeProto.graphs = 11   (subgraphs of If/Loop/Scan)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator


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


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, payload) for each field; payload only for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield number, None
        elif wire == 1:
            pos += 8
            yield number, None
        elif wire == 5:
            pos += 4
            yield number, None
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise WireError("truncated field")
            yield number, buf[pos : pos + length]
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise WireError("truncated field")


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


def graph_bytes(model: bytes) -> bytes:
    """The serialized main graph (ModelProto field 7), as export hashed it for the card."""
    for number, payload in _fields(memoryview(model)):
        if number == 7 and payload is not None:
            return bytes(payload)
    raise WireError("no graph in the file")
