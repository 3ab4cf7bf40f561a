"""--recalibrate-bn: each BN layer's moving averages replaced by the exact statistics of its inputs
over the whole training split, both kept, and shown by the card and /bn-stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.checkpoint import load_checkpoint
from model.data import load_dataset


@pytest.fixture(scope="module", params=["breast_cancer", "digits"])
def recalibrated(request, tmp_path_factory):
    from export.__main__ import main as export_main
    from model.train import main as train_main

    out = tmp_path_factory.mktemp(f"recal-{request.param}")
    epochs = "4" if request.param == "breast_cancer" else "2"
    assert train_main(["--dataset", request.param, "--epochs", epochs, "--recalibrate-bn", "--out", str(out),
                       "--no-progress"]) == 0  # fmt: skip
    assert export_main([str(out / "checkpoint.pt"), "--out", str(out / "model.onnx")]) == 0
    return request.param, out


def test_running_statistics_equal_the_statistics_of_each_layers_training_inputs(recalibrated) -> None:
    dataset, out = recalibrated
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    data = load_dataset(dataset, ckpt["dataset"]["split_seed"])
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda _m, a, n=name: seen.__setitem__(n, a[0].double()))
             for name, bn in model.bn_layers()]  # fmt: skip
    with torch.no_grad():  # the whole training split at once, the final model in eval mode
        model(torch.from_numpy(data.train.x))
    for h in hooks:
        h.remove()
    for name, bn in model.bn_layers():
        v = seen[name].transpose(0, 1).reshape(bn.num_features, -1)  # channel, every other value
        np.testing.assert_allclose(bn.running_mean.double().numpy(), v.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var.double().numpy(), v.var(dim=1, unbiased=True).numpy(),
                                   rtol=1e-5, atol=1e-7)  # fmt: skip


def test_the_checkpoint_card_and_bn_stats_keep_both(recalibrated) -> None:
    from service import Settings, create_app

    _, out = recalibrated
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    recal = ckpt["bn_recalibration"]
    assert [r["name"] for r in recal["layers"]] == [n for n, _ in model.bn_layers()]
    assert set(recal["accuracy"]) == {"moving_averages", "exact"}
    moving_differs = False
    for r, (_, bn) in zip(recal["layers"], model.bn_layers(), strict=True):
        np.testing.assert_allclose(r["exact_mean"], bn.running_mean.double().numpy(), rtol=1e-6, atol=1e-6)
        moving_differs |= not np.allclose(r["moving_mean"], r["exact_mean"])
    assert moving_differs  # the proxy is not the exact value
    with TestClient(create_app(Settings(model_path=out / "model.onnx"))) as c:
        card = c.get("/model").json()["card"]
        layers = c.get("/bn-stats").json()["layers"]
    assert [x["name"] for x in card["bn_recalibration"]["layers"]] == [x["name"] for x in layers]
    for state, r in zip(layers, recal["layers"], strict=True):
        shown = state["recalibration"]
        assert shown["moving_running_mean"] == r["moving_mean"] and shown["count"] == r["count"]
        assert shown["mean_gap_sd_max"] == pytest.approx(r["mean_gap_sd_max"])
        assert state["running_mean"] == pytest.approx(r["exact_mean"], rel=1e-6, abs=1e-6)
