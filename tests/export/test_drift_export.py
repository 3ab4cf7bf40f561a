"""The drift monitor's export side: the taps carry each BN layer's standardised input exactly
(against torch in eval mode, and against the reference graph's own BN inputs), they add no node
to the graph, and the calibration in the card is what the held-out data gives."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.artifact import op_counts, to_onnx
from export.fold import fold_network
from model.checkpoint import load_checkpoint
from model.data import load_dataset
from service.drift import DriftSpec
from service.runtime import BN_KEY, CARD_KEY


def card_and_layers(path) -> tuple[dict, list[dict]]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props[CARD_KEY]), json.loads(props[BN_KEY])["layers"]


def graph_z(path, x: np.ndarray) -> np.ndarray:
    """Every BN layer's z, as the service computes it from this file's graph and card."""
    card, layers = card_and_layers(path)
    spec = DriftSpec.from_card(card, layers)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = session.run(spec.outputs, {"input": x})
    return spec.summaries(x.reshape(len(x), -1), hidden).z


def torch_z(checkpoint, x: np.ndarray) -> np.ndarray:
    """The oracle: forward pre-hooks on every BN layer of the trained model in eval mode, each
    input standardised with that layer's running statistics in float64, concatenated in order."""
    model, _ = load_checkpoint(checkpoint)
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda _m, a, n=name: seen.__setitem__(n, a[0].double()))
             for name, bn in model.bn_layers()]  # fmt: skip
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    parts = []
    for name, bn in model.bn_layers():
        v = seen[name]
        view = (1, -1) + (1,) * (v.dim() - 2)
        z = (v - bn.running_mean.double().view(view)) / torch.sqrt(bn.running_var.double().view(view) + bn.eps)
        parts.append(z.reshape(len(x), -1).numpy())
    return np.concatenate(parts, axis=1)


def test_taps_equal_torch_and_the_reference_graph(any_trained) -> None:
    _, ckpt = load_checkpoint(any_trained.checkpoint)
    data = load_dataset(ckpt["dataset"]["name"], ckpt["dataset"]["split_seed"])
    x = np.concatenate([data.test.x, data.val.x[:5] * np.float32(3.0)])  # held-out, and far from it
    folded, reference, oracle = (
        graph_z(any_trained.folded, x),
        graph_z(any_trained.reference, x),
        torch_z(any_trained.checkpoint, x),
    )
    assert folded.shape == oracle.shape
    # the folded graph recovers z from the layer a BN was folded into; the reference reads the
    # BN node's own input: two routes to the same numbers, float32 graphs against float64 torch
    np.testing.assert_allclose(folded, oracle, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(reference, oracle, rtol=1e-3, atol=1e-3)


def test_taps_add_no_node_to_the_folded_graph(any_trained) -> None:
    model, _ = load_checkpoint(any_trained.checkpoint)
    body, _ = fold_network(model)
    plain = to_onnx(body, tuple(model.config.input_shape))
    assert op_counts(onnx.load(str(any_trained.folded))) == op_counts(plain)


@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
def test_the_card_holds_the_calibration_of_the_held_out_split(make_trained, dataset: str) -> None:
    trained = make_trained(dataset, "before")
    card, layers = card_and_layers(trained.folded)
    section = card["drift"]
    cal = section["calibration"]
    data = load_dataset(dataset, card["dataset"]["split_seed"])
    assert cal["splits"] == ["validation", "test"] and cal["n"] == len(data.val) + len(data.test)
    spec = DriftSpec.from_card(card, layers)
    x = np.concatenate([data.val.x, data.test.x])
    session = ort.InferenceSession(str(trained.folded), providers=["CPUExecutionProvider"])
    summaries = spec.summaries(x.reshape(len(x), -1), session.run(spec.outputs, {"input": x}))
    scores = np.sort(spec.scores(summaries))
    np.testing.assert_allclose(scores, cal["scores"], rtol=1e-9)
    assert cal["quantiles"]["0.99"] == pytest.approx(float(np.quantile(scores, 0.99)))
    # by construction each part's 90th percentile over the calibration split is 1
    parts = spec.components(summaries)
    for part, norm in zip(parts, spec.norms, strict=True):
        assert float(np.quantile(part / norm, 0.9)) == pytest.approx(1.0)
    assert section["parity"]["max_error"] <= section["parity"]["tolerance"]
    assert [layer["name"] for layer in section["layers"]] == [layer["name"] for layer in layers]
