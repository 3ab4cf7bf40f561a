"""The answer encoder writes exactly the bytes orjson writes for the answer dicts."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.answers import AnswerEncoder

names = st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=12, unique=True)
probabilities = st.floats(0, 1, width=32) | st.sampled_from([0.0, 1.0, 1e-45, 1.1754944e-38, 0.5, 1 / 3])


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[str], np.ndarray, str]:
    classes = draw(names)
    n = draw(st.integers(1, 70))
    probs = draw(hnp.arrays(np.float32, (n, len(classes)), elements=probabilities))
    return classes, probs, draw(st.text(min_size=1, max_size=16))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_array_writes_the_bytes_orjson_writes_for_the_dicts(case: tuple[list[str], np.ndarray, str]) -> None:
    classes, probs, version = case
    encoder = AnswerEncoder(classes, version)
    dicts = encoder.dicts(probs)
    assert encoder.array(probs) == orjson.dumps(dicts)
    assert encoder.batch(encoder.array(probs)) == orjson.dumps({"predictions": dicts, "model_version": version})
    assert encoder.v1(encoder.array(probs)) == orjson.dumps({"predictions": dicts})
    assert encoder.one(probs[:1]) == orjson.dumps(dicts[0])


def test_the_answers_hold_the_label_index_and_float32_probabilities() -> None:
    encoder = AnswerEncoder(["a", 'b "quoted"', "c\\d"], "v1")
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
    answers = json.loads(encoder.array(probs))
    assert [a["label"] for a in answers] == ['b "quoted"', "a", "c\\d"]  # a tie goes to the first class
    assert [a["class_index"] for a in answers] == [1, 0, 2]
    assert [list(a) for a in answers] == [["label", "class_index", "probabilities", "model_version"]] * 3
    got = np.array([list(a["probabilities"].values()) for a in answers])
    assert np.array_equal(got.astype(np.float32), probs) and np.array_equal(got, probs.astype(np.float64))
    assert {a["model_version"] for a in answers} == {"v1"}


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="3 probabilities per row for 2 classes"):
        AnswerEncoder(["a", "b"], "v").array(np.zeros((4, 3), np.float32))
