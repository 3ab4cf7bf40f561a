"""Write the one ONNX file the service needs: graph, model card and every BN layer's state.

`build_artifact` exports the folded network (or, with `fold=False`, the
reference graph that keeps its BatchNormalization nodes), runs `onnx.checker`'s
full check, proves parity against the torch model in eval mode on held-out and
adversarial inputs, and only then writes the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.drift import Tap, WithDrift, drift_section, hidden_layers, taps_for
from export.drift import output_names as drift_outputs
from export.fold import FoldRecord, fold_network
from model.data import Dataset, load_dataset
from model.network import BNNet
from model.recalibrate import summary as recalibration_summary
from service.drift import DriftSpec

logger = logging.getLogger(__name__)

CARD_KEY = "bnserve.card"
BN_KEY = "bnserve.bn_layers"
CARD_FORMAT = "bnserve.card/1"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
OPSET = 18
# Parity tolerance. Both graphs run in float32; folding reorders a handful of
# multiply-adds per weight, so differences are a few float32 ulps of the logits.
DEFAULT_TOLERANCE = 1e-4
UI_SAMPLES = 20

CONVENTIONS = {
    "gamma": "the learned scale (PyTorch BatchNorm `weight`)",
    "beta": "the learned shift (PyTorch BatchNorm `bias`)",
    "momentum": "PyTorch convention: running = (1 - momentum) * running + momentum * batch_statistic; "
    "null means a cumulative average over num_batches_tracked",
    "running_var": "moving average of the UNBIASED per-batch variance",
    "inference": "y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta",
}


class ExportError(RuntimeError):
    """The artifact would be wrong; nothing was written."""


class WithProbabilities(nn.Module):
    """The graph's two outputs: logits and their softmax."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.body(x)
        return logits, torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    card: dict[str, Any]
    bn_layers: list[dict[str, Any]]

    @property
    def version(self) -> str:
        return self.sha256[:12]


def to_onnx(
    module: nn.Sequential, input_shape: tuple[int, ...], *, optimize: bool = True, taps: list[Tap] | None = None
) -> onnx.ModelProto:
    """torch.export-based exporter (dynamo=True), batch axis symbolic, named tensors.

    `optimize=False` for the reference graph: the exporter's optimizer fuses a
    BatchNormalization into a Conv or Gemm before it, and the reference must keep them.
    With `taps`, the graph also outputs the drift monitor's per-channel z (export/drift.py)."""
    wrapped: nn.Module = WithDrift(module, taps) if taps else WithProbabilities(module)
    names = [*OUTPUT_NAMES, *drift_outputs(taps or [])]
    wrapped.eval()
    dummy = torch.zeros((2, *input_shape))  # a batch of 2: a batch of 1 would specialise the axis
    # The exporter warns that torchvision is absent (we need none of its ops) and logs its passes.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*", category=FutureWarning)  # inside torch.export
    program = torch.onnx.export(
        wrapped,
        (dummy,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=OPSET,
        external_data=False,
        optimize=optimize,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in proto.graph.node))


def check_graph(proto: onnx.ModelProto, *, expect_batchnorm: int, extra_outputs: list[str] | None = None) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the graph: {e}") from e
    found = op_counts(proto).get("BatchNormalization", 0)
    if found != expect_batchnorm:
        raise ExportError(f"the graph has {found} BatchNormalization nodes, expected {expect_batchnorm}")
    for value in [*proto.graph.input, *proto.graph.output]:
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise ExportError(f"{value.name!r}: the batch axis is fixed at {dim0.dim_value}, expected a symbolic axis")
    names = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    if names != ([INPUT_NAME], [*OUTPUT_NAMES, *(extra_outputs or [])]):
        raise ExportError(f"unexpected graph inputs/outputs {names}")


def parity_inputs(data: Dataset, seed: int = 0) -> dict[str, np.ndarray]:
    """Held-out samples plus inputs no one trained on: rescaled, zeros, constants, batches of 1 and 1000."""
    rng = np.random.default_rng(seed)
    held = np.concatenate([data.val.x, data.test.x]).astype(np.float32)
    shape = data.input_shape
    ones = np.ones((3, *shape), np.float32)
    big = held[rng.integers(0, len(held), 1000)] * rng.uniform(0.5, 1.5, (1000, *shape)).astype(np.float32)
    return {
        "held_out": held,
        "scale_0.1x": held * np.float32(0.1),
        "scale_10x": held * np.float32(10.0),
        "zeros": np.zeros((3, *shape), np.float32),
        "training_mean": data.train.x.mean(axis=0, keepdims=True).astype(np.float32),
        "constant_1": ones,
        "constant_-1": -ones,
        "constant_1000": ones * np.float32(1000.0),
        "batch_1": held[:1],
        "batch_1000": big.astype(np.float32),
    }


def measure_parity(
    onnx_bytes: bytes, reference: nn.Module, inputs: dict[str, np.ndarray], tolerance: float
) -> dict[str, Any]:
    """onnxruntime on the graph vs torch in eval mode. Logit error is |a - b| / (1 + |b|)
    (absolute near zero, relative for large logits); probability error is absolute."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    reference = WithProbabilities(reference).eval()
    sets: dict[str, dict[str, float]] = {}
    for name, x in inputs.items():
        logits, probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        with torch.no_grad():
            ref_logits, ref_probs = (t.numpy() for t in reference(torch.from_numpy(x)))
        sets[name] = {
            "n": len(x),
            "logit_error": float(np.max(np.abs(logits - ref_logits) / (1.0 + np.abs(ref_logits)))),
            "probability_error": float(np.max(np.abs(probs - ref_probs))),
        }
    worst_logit = max(s["logit_error"] for s in sets.values())
    worst_prob = max(s["probability_error"] for s in sets.values())
    return {
        "reference": "torch eval mode",
        "tolerance": tolerance,
        "logit_error_metric": "max |onnx - torch| / (1 + |torch|)",
        "max_logit_error": worst_logit,
        "max_probability_error": worst_prob,
        "sets": sets,
    }


def example_samples(model: BNNet, data: Dataset) -> list[dict[str, Any]]:
    """The first test sample of each class, raw, with torch's answer: ready-made requests
    for the docs and clients, and known answers to check a served model against."""
    examples = []
    for k, class_name in enumerate(data.class_names):
        hits = np.flatnonzero(data.test.y == k)
        if not len(hits):
            continue
        x = data.test.x[hits[0]]
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(x[None])), dim=1)[0]
        examples.append(
            {
                "features": x.reshape(-1).astype(np.float64).tolist(),
                "true_label": class_name,
                "label": data.class_names[int(probs.argmax())],
                "probabilities": dict(zip(data.class_names, probs.double().tolist(), strict=True)),
            }
        )
    return examples


def _values(t: torch.Tensor | None) -> list[float]:
    if t is None:
        raise ExportError("a BN layer has no running statistics")
    return t.detach().double().tolist()


def bn_layer_states(model: BNNet, records: list[FoldRecord] | None, feature_names: list[str],
                    recalibration: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every BN layer's stored state, exact: float32 values written as float64 JSON round-trip bit for bit.
    With a checkpoint trained --recalibrate-bn, each layer also says what its moving averages held."""
    by_name = {r.name: r for r in records or []}
    recal = {r["name"]: r for r in (recalibration or {}).get("layers", [])}
    layers = []
    for i, (name, bn) in enumerate(model.bn_layers()):
        record = by_name.get(name)
        placement = (
            record.placement
            if record
            else (
                "input"
                if i == 0
                else ("before_activation" if model.config.placement == "before" else "after_activation")
            )
        )
        state: dict[str, Any] = {
            "name": name,
            "type": type(bn).__name__,
            "placement": placement,
            "fold": record.fold if record else None,
            "folded_into": record.folded_into if record else None,
            "num_features": bn.num_features,
            "eps": bn.eps,
            "momentum": bn.momentum,
            "num_batches_tracked": int(bn.num_batches_tracked) if bn.num_batches_tracked is not None else None,
            "running_mean": _values(bn.running_mean),
            "running_var": _values(bn.running_var),
            "gamma": bn.weight.detach().double().tolist() if bn.weight is not None else [1.0] * bn.num_features,
            "beta": bn.bias.detach().double().tolist() if bn.bias is not None else [0.0] * bn.num_features,
        }
        if placement == "input" and bn.num_features == len(feature_names):
            state["feature_names"] = list(feature_names)
        if name in recal:
            r = recal[name]
            state["recalibration"] = {
                "method": (recalibration or {}).get("method", ""),
                "count": r["count"],
                "moving_running_mean": r["moving_mean"],
                "moving_running_var": r["moving_var"],
                **{k: v for k, v in recalibration_summary([r])[0].items() if k not in ("name", "count")},
            }
        layers.append(state)
    return layers


def _recalibration_card(recalibration: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": recalibration.get("method", ""),
        "accuracy": recalibration.get("accuracy", {}),
        "layers": recalibration_summary(recalibration.get("layers", [])),
    }


CALIBRATION_SPLITS = ("held_out", "validation")


def _drift(proto: onnx.ModelProto, model: BNNet, taps: list[Tap], feature_names: list[str],
           bn_layers: list[dict[str, Any]], data: Dataset, calibrate_on: str) -> dict[str, Any]:  # fmt: skip
    """The card's drift section: calibrated on the validation and test splits together (held_out),
    or on validation only, keeping the test split to measure the flag rate on unseen data."""
    if calibrate_on not in CALIBRATION_SPLITS:
        raise ExportError(f"calibrate_on: expected one of {', '.join(CALIBRATION_SPLITS)}, got {calibrate_on!r}")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        spec = DriftSpec.build(feature_names, bn_layers[0], hidden_layers(model, taps))
    except ValueError as e:
        raise ExportError(f"drift monitor: {e}") from None
    val, test = data.val.x.astype(np.float32), data.test.x.astype(np.float32)
    if calibrate_on == "held_out":
        calibration, held_out = {"validation": val, "test": test}, {"train": data.train.x.astype(np.float32)}
    else:
        calibration, held_out = {"validation": val}, {"test": test, "train": data.train.x.astype(np.float32)}
    try:
        return drift_section(session, model, taps, spec, calibration, held_out)
    except ValueError as e:
        raise ExportError(f"drift monitor: {e}") from None


def build_artifact(
    model: BNNet,
    ckpt: dict[str, Any],
    out: Path,
    *,
    fold: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str | None = None,
    calibrate_on: str = "held_out",
    drift: bool = True,
) -> Artifact:
    """Fold (unless `fold=False`), export, check, prove parity, then write `out` atomically."""
    if model.training:
        raise ExportError("the model is in training mode: call model.eval() first")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ExportError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (it appears in URLs)")
    ds = ckpt["dataset"]
    data = load_dataset(ds["name"], seed=ds["split_seed"])
    if list(data.input_shape) != list(model.config.input_shape):
        raise ExportError(
            f"dataset {ds['name']} has input shape {data.input_shape}, the model takes {model.config.input_shape}"
        )
    records: list[FoldRecord] | None = None
    if fold:
        body, records = fold_network(model)
    else:
        body = model
    taps = taps_for(model, records) if drift else []
    proto = to_onnx(body, tuple(model.config.input_shape), optimize=fold, taps=taps)
    check_graph(proto, expect_batchnorm=0 if fold else len(model.bn_layers()), extra_outputs=drift_outputs(taps))

    parity = measure_parity(proto.SerializeToString(), model, parity_inputs(data), tolerance)
    if not (parity["max_logit_error"] <= tolerance and parity["max_probability_error"] <= tolerance):  # NaN fails
        worst = max(parity["sets"].items(), key=lambda kv: max(kv[1]["logit_error"], kv[1]["probability_error"]))
        raise ExportError(
            f"parity check failed: the ONNX graph differs from torch eval mode by "
            f"{parity['max_logit_error']:.3g} (logits) / {parity['max_probability_error']:.3g} (probabilities), "
            f"worst on {worst[0]!r}; tolerance {tolerance:g}. Nothing was written."
        )

    placement = model.config.placement
    feature_names = list(ds["feature_names"])
    examples = example_samples(model, data)
    recalibration = ckpt.get("bn_recalibration")
    bn_layers = bn_layer_states(model, records, feature_names, recalibration)
    monitor = _drift(proto, model, taps, feature_names, bn_layers, data, calibrate_on) if drift else None
    num_classes = model.config.num_classes
    card = {
        "format": CARD_FORMAT,
        "name": name or f"bnnet-{ds['name'].replace('_', '-')}-{placement}",
        "description": f"BNNet ({model.config.kind}, BN {placement} ReLU) trained on scikit-learn's {ds['name']}",
        "task": "classification",
        "folded": fold,
        "dataset": {k: ds[k] for k in ("name", "kind", "split_seed", "sizes") if k in ds},
        "feature_names": feature_names,
        "class_names": list(ds["class_names"]),
        "input_shape": list(model.config.input_shape),
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *model.config.input_shape]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, num_classes]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
        ],
        "architecture": model.config.to_dict(),
        "graph_ops": op_counts(proto),
        "metrics": ckpt.get("metrics", {}),
        "training": ckpt.get("training", {}),
        **({"bn_recalibration": _recalibration_card(recalibration)} if recalibration else {}),
        "parity": parity,
        "examples": examples,  # golden inputs: the service reproduces them before it reports ready
        "samples": [  # real test samples, raw, for the /ui page's form
            {"features": x.reshape(-1).astype(np.float64).tolist(), "true_label": data.class_names[int(y)]}
            for x, y in zip(data.test.x[:UI_SAMPLES], data.test.y[:UI_SAMPLES], strict=True)
        ],
        **({"drift": monitor} if monitor else {}),  # golden inputs: the service reproduces them before it reports ready
        "graph_sha256": hashlib.sha256(proto.graph.SerializeToString()).hexdigest(),
        "conventions": CONVENTIONS,
        "versions": {
            "training": ckpt.get("versions", {}),
            "export": {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": ort.__version__},
            "opset": OPSET,
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    del proto.metadata_props[:]
    for key, doc in ((CARD_KEY, card), (BN_KEY, {"format": "bnserve.bn_layers/1", "layers": bn_layers})):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(doc, allow_nan=False)
    proto.producer_name, proto.producer_version = "bnserve", "0.1.0"
    onnx.checker.check_model(proto, full_check=True)

    payload = proto.SerializeToString()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600: a non-root server (the image) could not read it
    os.replace(tmp, out)
    return Artifact(out, hashlib.sha256(payload).hexdigest(), card, bn_layers)
