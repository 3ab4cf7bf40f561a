"""GET /bn-stats, /bn-stats/{layer}, /model, /healthz, /readyz, /docs."""

from __future__ import annotations

import torch

from model.checkpoint import load_checkpoint


def test_bn_stats_expose_every_layer_exactly(client, tabular) -> None:
    body = client.get("/bn-stats").json()
    model, _ = load_checkpoint(tabular.checkpoint)
    assert body["model_version"] == client.get("/model").json()["model_version"]
    assert [layer["name"] for layer in body["layers"]] == ["input_bn", "bn1", "bn2"]
    for layer, (name, bn) in zip(body["layers"], model.bn_layers(), strict=True):
        assert layer["name"] == name
        assert torch.equal(torch.tensor(layer["running_mean"], dtype=torch.float32), bn.running_mean)
        assert torch.equal(torch.tensor(layer["running_var"], dtype=torch.float32), bn.running_var)
        assert torch.equal(torch.tensor(layer["gamma"], dtype=torch.float32), bn.weight.detach())
        assert torch.equal(torch.tensor(layer["beta"], dtype=torch.float32), bn.bias.detach())
        assert layer["num_batches_tracked"] == int(bn.num_batches_tracked)
        assert layer["eps"] == bn.eps and layer["momentum"] == bn.momentum == 0.1
        for key in ("placement", "fold", "folded_into", "num_features"):
            assert key in layer
    assert [layer["placement"] for layer in body["layers"]] == ["input", "before_activation", "before_activation"]
    assert body["layers"][0]["folded_into"] == "fc1" and body["layers"][0]["fold"] == "forward"
    assert body["layers"][0]["feature_names"][:2] == ["mean radius", "mean texture"]
    conventions = body["conventions"]
    assert "scale" in conventions["gamma"] and "shift" in conventions["beta"]
    assert "UNBIASED" in conventions["running_var"] and "(1 - momentum)" in conventions["momentum"]


def test_one_bn_layer_by_name(client) -> None:
    r = client.get("/bn-stats/bn2")
    assert r.status_code == 200 and r.json()["name"] == "bn2"
    assert r.json()["num_features"] == len(r.json()["running_mean"]) == 32  # the default hidden widths 64, 32
    everything = client.get("/bn-stats").json()
    assert r.json() == {**everything["layers"][2], "conventions": everything["conventions"]}


def test_unknown_bn_layer_is_404_naming_the_known_layers(client) -> None:
    r = client.get("/bn-stats/bn9")
    assert r.status_code == 404
    assert r.json()["detail"] == "layer: no BN layer named 'bn9'; the model's BN layers are input_bn, bn1, bn2"


def test_model_card_and_schema(client) -> None:
    body = client.get("/model").json()
    assert body["name"] == "bnnet-breast-cancer-before"
    assert len(body["feature_names"]) == 30 and body["class_names"] == ["malignant", "benign"]
    assert body["input_shape"] == [30] and body["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 30]}
    assert body["model_version"] == body["sha256"][:12] and len(body["sha256"]) == 64
    assert body["card"]["folded"] is True and "parity" in body["card"]


def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.head("/healthz").status_code == client.head("/readyz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
