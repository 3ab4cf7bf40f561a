"""service/onnx_ops.py reads and trims real exports as the `onnx` package does."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.onnx_ops import WireError, graph_bytes, op_types, without_outputs
from service.runtime import ModelRuntime


@pytest.fixture(params=["tabular", "image"])
def export(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def test_op_types_and_graph_bytes_agree_with_onnx(export) -> None:
    data = export.folded.read_bytes()
    model = onnx.load_from_string(data)
    assert op_types(data) == Counter(n.op_type for n in model.graph.node)
    assert graph_bytes(data) == model.graph.SerializeToString()


def test_without_outputs_takes_off_the_named_outputs_and_nothing_else(export) -> None:
    data = export.folded.read_bytes()
    model = onnx.load_from_string(data)
    taps = {o.name for o in model.graph.output if o.name.startswith("drift.")}
    assert taps, "the export has drift outputs"
    lean = onnx.load_from_string(without_outputs(data, taps))
    onnx.checker.check_model(lean, full_check=True)
    want = onnx.load_from_string(data)
    kept = [o for o in want.graph.output if o.name not in taps]
    del want.graph.output[:]
    want.graph.output.extend(kept)
    assert lean == want
    assert [o.name for o in lean.graph.output] == ["logits", "probabilities"]
    assert without_outputs(data, {"no such output"}) == data


def test_the_trimmed_graph_answers_as_the_whole_one(export) -> None:
    data = export.folded.read_bytes()
    full = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    taps = [o.name for o in full.get_outputs() if o.name.startswith("drift.")]
    lean = ort.InferenceSession(without_outputs(data, taps), providers=["CPUExecutionProvider"])
    shape = full.get_inputs()[0].shape[1:]
    x = np.random.default_rng(0).normal(size=(50, *shape)).astype(np.float32)
    np.testing.assert_array_equal(lean.run(["probabilities"], {"input": x})[0],
                                  full.run(["probabilities"], {"input": x})[0])  # fmt: skip


def test_the_runtime_serves_untapped_runs_from_the_trimmed_graph(export) -> None:
    runtime = ModelRuntime.load(export.folded)
    assert runtime.lean is not None
    assert [o.name for o in runtime.lean.get_outputs()] == ["logits", "probabilities"]
    assert all(o.name.startswith("drift.") for o in runtime.session.get_outputs()[2:])


def test_a_file_without_a_graph_is_refused() -> None:
    with pytest.raises(WireError, match="no graph"):
        without_outputs(onnx.ModelProto(ir_version=8).SerializeToString(), {"x"})
