"""The plain-numbers path (body.numbers_only + InputSpec.plain_rows) never decides differently from the schema.

For every body it takes, the schema's path accepts the same body and gives the same float32 rows, to
the bit; every body the schema refuses, it leaves to the schema. Bodies are generated as text, so
the numbers come in every JSON spelling and in several that are not JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.body import KEPT_PARSER_BYTES, _parsers, numbers_only, parse_json
from service.errors import ServiceError
from service.inference import refuse_repeated_keys
from service.jsonkeys import count_strings
from service.runtime import InputSpec
from service.schemas import BATCH_REQUEST, PREDICT_REQUEST

JSON_NUMBER = r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?"
NOT_JSON = ["01", "+1", ".5", "1.", "1e", "--1", "1e400", "-1e999", "NaN", "Infinity", "0x1p3", "1_0", "1 2"]
OTHER = ["true", "false", "null", '"1"', "{}", "[]", '{"a": 1}']

number = st.from_regex(JSON_NUMBER, fullmatch=True) | st.sampled_from(["0", "-0", "-0.0", "3.4028235e38", "3.5e38"])
token = number | st.sampled_from(NOT_JSON + OTHER)
space = st.sampled_from(["", "", "", " ", "\n", "\t ", "\r\n"])

TABULAR = InputSpec([f"f{i}" for i in range(3)], [3])
IMAGE = InputSpec([f"p{i}" for i in range(4)], [1, 2, 2])


@st.composite
def lists(draw: st.DrawFn, items: st.SearchStrategy[str], sizes: tuple[int, ...]) -> str:
    n = draw(st.sampled_from(sizes))
    parts = [draw(items) for _ in range(n)]
    s = [draw(space) for _ in range(n + 1)]
    return "[" + s[0] + ",".join(p + sp for p, sp in zip(parts, s[1:], strict=True)) + "]"


@st.composite
def sample(draw: st.DrawFn, nested: bool) -> str:
    """One sample: mostly numbers of the right count; sometimes another count, another token, a nesting."""
    good = draw(st.booleans()) or draw(st.booleans())
    items = number if good else token
    if nested and draw(st.booleans()):
        rows = draw(st.lists(lists(items, (2, 2, 2, 1, 3)), min_size=1, max_size=3))
        inner = "[" + ",".join(rows) + "]"
        return "[" + inner + "]" if draw(st.booleans()) else inner
    return draw(lists(items, (3, 3, 3, 4, 2, 0) if not nested else (4, 4, 4, 3)))


@st.composite
def body(draw: st.DrawFn, key: str, batch: bool, nested: bool) -> bytes:
    value = draw(lists(sample(nested), (1, 2, 5, 0))) if batch else draw(sample(nested))
    name = draw(st.sampled_from([key, key, key, key.upper(), "\\u0069" + key[1:] if key[0] == "i" else key + " "]))
    extra = draw(st.sampled_from(["", "", "", ', "x": 1', f', "{key}": []']))
    s = [draw(space) for _ in range(4)]
    return f'{s[0]}{{{s[1]}"{name}"{s[2]}:{s[3]}{value}{extra}}}'.encode()


def schema_rows(spec: InputSpec, raw: bytes, batch: bool) -> np.ndarray | None:
    """What the schema's path makes of the body: rows, or None when it refuses it. A batch's rows
    are made one instance at a time (InputSpec.row), so they share no code with plain_rows, and
    InputSpec.rows, which the service calls, must give the same or refuse the same."""
    try:
        if batch:
            instances = parse_json(BATCH_REQUEST, raw).instances
            refuse_repeated_keys(raw, 1 + sum(count_strings(f) for f in instances))
            if not instances:
                return None
            try:
                each = np.stack([spec.row(f, f"instances[{i}]") for i, f in enumerate(instances)])
            except ServiceError:
                with pytest.raises(ServiceError):
                    spec.rows(instances)
                raise
            assert spec.rows(instances).tobytes() == each.tobytes(), raw
            return each
        features = parse_json(PREDICT_REQUEST, raw).features
        refuse_repeated_keys(raw, 1 + count_strings(features))
        return spec.row(features)[np.newaxis]
    except ServiceError:
        return None


def check(spec: InputSpec, raw: bytes, batch: bool) -> np.ndarray | None:
    """The plain path's rows for the body, checked against the schema's. A batch is read both ways:
    flat rows by simdjson (`rows_of`, as served) and by orjson, which must agree on what they take."""
    key = "instances" if batch else "features"
    plain = spec.plain_rows(numbers_only(raw, key, rows_of=spec.size if batch else None), batch)
    if batch:
        by_orjson = spec.plain_rows(numbers_only(raw, key), batch)
        assert (plain is None) == (by_orjson is None), f"simdjson and orjson disagree on {raw!r}"
        assert plain is None or by_orjson is None or plain.tobytes() == by_orjson.tobytes(), raw
    if plain is not None:
        schema = schema_rows(spec, raw, batch)
        assert schema is not None, f"taken, but the schema refuses it: {raw!r}"
        assert plain.dtype == schema.dtype == np.float32 and plain.tobytes() == schema.tobytes(), raw
    return plain


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_batch_taken_is_what_the_schema_gives(data: st.DataObject) -> None:
    check(TABULAR, data.draw(body("instances", batch=True, nested=False)), batch=True)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_one_sample_taken_is_what_the_schema_gives(data: st.DataObject) -> None:
    check(TABULAR, data.draw(body("features", batch=False, nested=False)), batch=False)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.booleans())
def test_images_taken_flat_or_nested_are_what_the_schema_gives(data: st.DataObject, batch: bool) -> None:
    check(IMAGE, data.draw(body("instances" if batch else "features", batch=batch, nested=True)), batch=batch)


@pytest.mark.parametrize(
    ("spec", "value", "batch"),
    [
        (TABULAR, [[1.5, -2, 3e-3], [0, 1e30, -0.0]], True),
        (TABULAR, [1, 2, 3], False),
        (IMAGE, [[[1, 2], [3, 4]]], True),
        (IMAGE, [[0, 0, 0, 1], [1, 2, 3, 4]], True),
        (IMAGE, [[1, 2], [3, 4]], False),
    ],
)
def test_what_clients_send_takes_the_plain_path(spec: InputSpec, value: Any, batch: bool) -> None:
    key = "instances" if batch else "features"
    for raw in (json.dumps({key: value}).encode(), json.dumps({key: value}, indent=2).encode()):
        assert check(spec, raw, batch) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"instances": [[1, 2, 3]], "instances": [[4, 5, 6]]}',  # repeated key
        b'{"instances": [[1, 2, true]]}',
        b'{"instances": [[1, 2, 3.5e38]]}',  # beyond float32
        b'{"instances": [[1, 2, 3], [1, 2]]}',
        b'{"instances": []}',
        b'{"instances": [[1, 2, 3]],}',
        b'{"\\u0069nstances": [[1, 2, 3]]}',
        b'{"instances": {"a": [1, 2, 3]}}',
    ],
)
def test_anything_else_is_left_to_the_schema(raw: bytes) -> None:
    assert check(TABULAR, raw, batch=True) is None


@pytest.mark.parametrize(
    "rows",
    [
        "[1, 2, 3], [4, 5, 6]",
        "[-0, 0, -0.0], [1e-400, 4.9e-324, -3.4028234663852886e38]",
        "[18446744073709551615, 9223372036854775807, -9223372036854775808]",
        "[123456789012345678901234567890, 1, 2]",  # beyond 64 bits: simdjson refuses it, orjson reads it
        "[9007199254740993, 0.1000000000000000055511151231257827, 1.4E-45]",
    ],
)
def test_flat_rows_read_by_simdjson_are_the_schemas_to_the_bit(rows: str) -> None:
    raw = f'{{"instances": [{rows}]}}'.encode()
    assert check(TABULAR, raw, batch=True) is not None
    by_simdjson = numbers_only(raw, "instances", rows_of=3)
    if "123456789012345678901234567890" not in rows:
        assert type(by_simdjson) is np.ndarray and by_simdjson.shape[1] == 3, "not read by simdjson"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"instances": [[[1, 2], 3, 4], [[], 5, 6]]}',  # the right count of numbers, nested in a row
        b'{"instances": [[1, 2, 3, 4], [5, 6]]}',
        b'{"instances": [1, 2, 3]}',
        b'{"instances": [[1, 2, {}]]}',
        b'["instances", [[1, 2, 3]]]',
        b'"instances"',
    ],
)
def test_simdjson_takes_only_flat_rows(raw: bytes) -> None:
    assert type(numbers_only(raw, "instances", rows_of=3)) is not np.ndarray
    assert check(TABULAR, raw, batch=True) is None


def test_a_body_past_the_kept_parsers_size_is_read_by_a_parser_of_its_own() -> None:
    assert type(numbers_only(b'{"instances": [[1, 2, 3]]}', "instances", rows_of=3)) is np.ndarray
    kept = _parsers.parser
    held = kept.parse(b"[1]")  # while a proxy of its document lives, the kept parser cannot parse
    row = "[1.25, -2e-3, 30000]"
    raw = ('{"instances": [' + ", ".join([row] * (KEPT_PARSER_BYTES // len(row) + 1)) + "]}").encode()
    assert type(numbers_only(raw, "instances", rows_of=3)) is np.ndarray  # so another parser read it
    assert _parsers.parser is kept  # and the kept one was neither used, nor grown, nor replaced
    del held
    assert check(TABULAR, raw, batch=True) is not None


def test_a_parser_whose_document_is_still_referenced_is_replaced_not_stuck() -> None:
    raw = b'{"instances": [[1, 2, 3]]}'
    assert type(numbers_only(raw, "instances", rows_of=3)) is np.ndarray
    held = _parsers.parser.parse(b"[1]")  # a proxy of its document outlives the call: parse refuses
    assert numbers_only(raw, "instances", rows_of=3) == [[1, 2, 3]]  # orjson's, this once
    assert type(numbers_only(raw, "instances", rows_of=3)) is np.ndarray  # a new parser
    del held


def test_a_batch_of_mixed_forms_is_left_to_the_schema_which_takes_it() -> None:
    raw = json.dumps({"instances": [[[[1, 2], [3, 4]]], [0, 0, 0, 1]]}).encode()
    assert check(IMAGE, raw, batch=True) is None
    assert np.array_equal(schema_rows(IMAGE, raw, batch=True), [[1, 2, 3, 4], [0, 0, 0, 1]])
