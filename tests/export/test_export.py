"""The written ONNX file: no BN node, dynamic batch, checker-clean, parity-gated, self-describing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.__main__ import main as export_main
from export.artifact import BN_KEY, CARD_KEY
from model.checkpoint import load_checkpoint
from model.data import load_dataset


def ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def session(path: Path, *, reference_kernels: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if reference_kernels:  # no graph rewrites: onnxruntime's own BatchNormalization kernel runs
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def metadata(path: Path) -> dict[str, dict]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return {"card": json.loads(props[CARD_KEY]), "bn": json.loads(props[BN_KEY])}


def test_folded_graph_has_no_batchnorm_and_passes_the_full_check(any_trained) -> None:
    proto = onnx.load(str(any_trained.folded))
    onnx.checker.check_model(proto, full_check=True)
    assert "BatchNormalization" not in ops(any_trained.folded)
    assert len(proto.graph.initializer) > 0 and not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
    )
    assert [i.name for i in proto.graph.input] == ["input"]
    hidden = [name for name, _ in load_checkpoint(any_trained.checkpoint)[0].bn_layers()[1:]]
    # the drift monitor's taps: tensors the graph computes anyway, exposed (export/drift.py)
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities", *(f"drift.{n}" for n in hidden)]
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis


def test_reference_graph_keeps_every_batchnorm(any_trained) -> None:
    model, _ = load_checkpoint(any_trained.checkpoint)
    assert ops(any_trained.reference).count("BatchNormalization") == len(model.bn_layers())
    assert metadata(any_trained.reference)["card"]["folded"] is False


@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_folded_and_reference_agree_with_torch_for_any_batch_size(any_trained, batch: int) -> None:
    model, ckpt = load_checkpoint(any_trained.checkpoint)
    data = load_dataset(ckpt["dataset"]["name"], ckpt["dataset"]["split_seed"])
    rng = np.random.default_rng(batch)
    x = data.test.x[rng.integers(0, len(data.test), batch)]
    folded_logits, folded_probs = session(any_trained.folded).run(["logits", "probabilities"], {"input": x})
    (ref_logits,) = session(any_trained.reference, reference_kernels=True).run(["logits"], {"input": x})
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    assert folded_logits.shape == (batch, len(data.class_names))
    np.testing.assert_allclose(folded_logits, ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(folded_logits, torch_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(folded_probs.sum(axis=1), 1.0, rtol=1e-5)


def test_metadata_round_trips_the_checkpoint_buffers_exactly(any_trained) -> None:
    model, _ = load_checkpoint(any_trained.checkpoint)
    layers = {layer["name"]: layer for layer in metadata(any_trained.folded)["bn"]["layers"]}
    assert list(layers) == [name for name, _ in model.bn_layers()]
    for name, bn in model.bn_layers():
        stored = layers[name]
        for key, tensor in (
            ("running_mean", bn.running_mean),
            ("running_var", bn.running_var),
            ("gamma", bn.weight),
            ("beta", bn.bias),
        ):
            assert torch.equal(torch.tensor(stored[key], dtype=torch.float32), tensor.detach()), (name, key)
        assert stored["num_batches_tracked"] == int(bn.num_batches_tracked)
        assert stored["eps"] == bn.eps and stored["momentum"] == bn.momentum
        assert stored["num_features"] == bn.num_features
        assert stored["fold"] in ("backward", "forward", "affine") and stored["folded_into"]


def test_card_describes_the_model(tabular) -> None:
    card = metadata(tabular.folded)["card"]
    assert card["dataset"]["name"] == "breast_cancer" and len(card["feature_names"]) == 30
    assert card["class_names"] == ["malignant", "benign"] and card["input_shape"] == [30]
    assert card["parity"]["max_logit_error"] <= card["parity"]["tolerance"]
    assert {"held_out", "scale_10x", "scale_0.1x", "zeros", "batch_1", "batch_1000"} <= set(card["parity"]["sets"])
    assert {"torch", "onnx", "onnxruntime"} <= set(card["versions"]["export"])
    assert "test_accuracy" in card["metrics"] and card["created_at"]
    assert card["graph_ops"].get("BatchNormalization", 0) == 0
    input_layer = metadata(tabular.folded)["bn"]["layers"][0]
    assert input_layer["placement"] == "input" and input_layer["feature_names"] == card["feature_names"]


def test_parity_gate_refuses_to_write_when_over_tolerance(tabular, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never.onnx"
    assert export_main([str(tabular.checkpoint), "--out", str(out), "--tolerance", "1e-12"]) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "tolerance 1e-12" in err and "Nothing was written" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_refuses_a_checkpoint_that_does_not_match_its_config(tabular, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(tabular.checkpoint, weights_only=True)
    del ckpt["state_dict"]["bn1.running_var"]
    torch.save(ckpt, tmp_path / "bad.pt")
    assert export_main([str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "missing bn1.running_var" in capsys.readouterr().err


def test_export_refuses_a_bn_without_running_statistics(tabular, tmp_path: Path) -> None:
    from export.artifact import build_artifact
    from export.fold import FoldError

    model, ckpt = load_checkpoint(tabular.checkpoint)
    model.bn1.running_mean = None
    model.bn1.running_var = None
    model.bn1.track_running_stats = False
    with pytest.raises(FoldError, match="'bn1' has no running statistics"):
        build_artifact(model, ckpt, tmp_path / "m.onnx")


def test_export_refuses_a_model_in_training_mode(tabular, tmp_path: Path) -> None:
    from export.artifact import ExportError, build_artifact

    model, ckpt = load_checkpoint(tabular.checkpoint)
    with pytest.raises(ExportError, match="training mode"):
        build_artifact(model.train(), ckpt, tmp_path / "m.onnx")


def test_the_written_file_is_readable_by_everyone(tabular) -> None:
    assert tabular.folded.stat().st_mode & 0o777 == 0o644


def test_export_cli_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--help"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "--no-fold" in proc.stdout and "--out" in proc.stdout and "--tolerance" in proc.stdout
