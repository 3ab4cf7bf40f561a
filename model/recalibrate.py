"""Exact population statistics: replace each BN layer's moving averages by the mean and variance
of its inputs over the whole training set.

The moving averages are an exponential average of mini-batch statistics taken while the
weights were still changing, so they are only a proxy for the statistics of the final network
on the full data. `recalibrate` computes the exact ones, layer after layer in network order:
one pass over the training set per BN layer, with every layer in eval mode, so that each layer's
inputs come from the layers before it as they will serve (a single pass would measure a later
layer's inputs under the earlier layers' OLD statistics). Sums are float64. The variance is the
unbiased one over all N (x H x W) values per channel, the convention of `running_var`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from model.network import BNNet

CHUNK = 1024
METHOD = (
    "exact mean and unbiased variance of each BN layer's inputs over the whole training split, "
    "layer by layer in network order, every layer in eval mode"
)


@torch.no_grad()
def input_statistics(model: BNNet, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean, unbiased variance and count of what BN layer `name` receives, over all of `x`, with
    the model as it is, in eval mode."""
    bn = dict(model.named_children())[name]
    sums: dict[str, Any] = {"n": 0, "s1": 0.0, "s2": 0.0}

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        v = args[0].double()
        dims = [0, *range(2, v.dim())]  # every axis but the channel's
        sums["n"] += v.numel() // v.shape[1]
        sums["s1"] = sums["s1"] + v.sum(dim=dims)
        sums["s2"] = sums["s2"] + (v * v).sum(dim=dims)

    handle = bn.register_forward_pre_hook(hook)
    try:
        model.eval()
        for start in range(0, len(x), CHUNK):
            model(torch.from_numpy(np.ascontiguousarray(x[start : start + CHUNK])))
    finally:
        handle.remove()
    n = int(sums["n"])
    s1, s2 = sums["s1"].numpy(), sums["s2"].numpy()
    mean = s1 / n
    var = (s2 - n * mean * mean) / (n - 1)  # two sums in float64: exact enough for these scales
    return mean, np.maximum(var, 0.0), n


@torch.no_grad()
def recalibrate(model: BNNet, x: np.ndarray) -> list[dict[str, Any]]:
    """Replace every BN layer's running statistics by the exact ones (in place) and return, per
    layer, both: what the moving averages held and what the data gives."""
    records = []
    for name, bn in model.bn_layers():
        assert bn.running_mean is not None and bn.running_var is not None
        moving_mean, moving_var = bn.running_mean.double().numpy().copy(), bn.running_var.double().numpy().copy()
        mean, var, n = input_statistics(model, name, x)
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
        sd = np.sqrt(var + bn.eps)
        records.append(
            {
                "name": name,
                "count": n,
                "moving_mean": moving_mean.tolist(),
                "moving_var": moving_var.tolist(),
                "exact_mean": mean.tolist(),
                "exact_var": var.tolist(),
                # how far the proxy was: mean gap in exact SDs, and the variance ratio moving / exact
                "mean_gap_sd_max": float(np.max(np.abs(moving_mean - mean) / sd)),
                "mean_gap_sd_mean": float(np.mean(np.abs(moving_mean - mean) / sd)),
                "var_ratio_min": float(np.min((moving_var + bn.eps) / (var + bn.eps))),
                "var_ratio_max": float(np.max((moving_var + bn.eps) / (var + bn.eps))),
            }
        )
    model.eval()
    return records


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without the per-channel vectors: what the card and the logs show."""
    keep = ("name", "count", "mean_gap_sd_max", "mean_gap_sd_mean", "var_ratio_min", "var_ratio_max")
    return [{k: r[k] for k in keep} for r in records]
