"""Folding against torch in eval mode, over random sizes and RANDOMISED BN buffers.

A fresh BN (mean 0, var 1, gamma 1, beta 0) makes folding a no-op, so every
buffer is drawn at random first: variances near zero and large, several eps,
negative gammas.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from export.fold import ChannelAffine, FoldError, fold_network


def randomise_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator, var_scale: float) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 3)
        # log-uniform variances over many orders of magnitude, some near zero
        bn.running_var.copy_(var_scale * torch.exp(torch.empty(c).uniform_(-9, 5, generator=gen)))
        bn.weight.copy_(torch.randn(c, generator=gen) * 2)  # negative gammas included
        bn.bias.copy_(torch.randn(c, generator=gen))
        bn.num_batches_tracked.fill_(7)


def mlp(sizes: list[int], placement: str, eps: float) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("input_bn", nn.BatchNorm1d(sizes[0], eps=eps))]
    for i, (a, b) in enumerate(itertools.pairwise(sizes[:-1]), 1):
        block = [(f"fc{i}", nn.Linear(a, b)), (f"bn{i}", nn.BatchNorm1d(b, eps=eps)), (f"relu{i}", nn.ReLU())]
        if placement == "after":
            block[1], block[2] = block[2], block[1]
        layers += block
    layers.append(("head", nn.Linear(sizes[-2], sizes[-1])))
    return nn.Sequential(OrderedDict(layers))


def cnn(channels: list[int], padding: int, placement: str, eps: float, hw: int = 7) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("input_bn", nn.BatchNorm2d(channels[0], eps=eps))]
    for i, (a, b) in enumerate(itertools.pairwise(channels), 1):
        block = [
            (f"conv{i}", nn.Conv2d(a, b, 3, padding=padding)),
            (f"bn{i}", nn.BatchNorm2d(b, eps=eps)),
            (f"relu{i}", nn.ReLU()),
        ]
        if placement == "after":
            block[1], block[2] = block[2], block[1]
        layers += block
        hw = hw + 2 * padding - 2
    layers += [("flatten", nn.Flatten()), ("head", nn.Linear(channels[-1] * hw * hw, 3))]
    return nn.Sequential(OrderedDict(layers))


def prepare(net: nn.Sequential, seed: int, var_scale: float) -> nn.Sequential:
    """Randomise the BN buffers, in float64: the property is that the folding MATH is exact.
    (float32 rounding on real models is the export parity gate's business.)"""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            randomise_bn(m, gen, var_scale)
    return net.double().eval()


def assert_folded_matches(net: nn.Sequential, x: torch.Tensor) -> list:
    x = x.double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded, records = fold_network(net)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        want, got = net(x), folded(x)
    scale = 1.0 + want.abs()
    assert ((got - want).abs() / scale).max().item() < 1e-9, "folded output differs from torch eval mode"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "fold_network mutated its input"
    return records


EPS = st.sampled_from([1e-5, 1e-3, 0.1])
VAR_SCALE = st.sampled_from([1e-4, 1.0, 1e3])


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=3, max_size=5),
    placement=st.sampled_from(["before", "after"]),
    eps=EPS,
    var_scale=VAR_SCALE,
    seed=st.integers(0, 2**16),
)
def test_mlp_folds_exactly(sizes: list[int], placement: str, eps: float, var_scale: float, seed: int) -> None:
    net = prepare(mlp(sizes, placement, eps), seed, var_scale)
    x = torch.randn(5, sizes[0], generator=torch.Generator().manual_seed(seed)) * 4
    records = assert_folded_matches(net, x)
    want = "backward" if placement == "before" else "forward"
    assert records[0].fold == "forward" and records[0].folded_into == "fc1" and records[0].placement == "input"
    assert all(r.fold == want for r in records[1:])


@settings(max_examples=25, deadline=None)
@given(
    channels=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    padding=st.sampled_from([0, 1]),
    placement=st.sampled_from(["before", "after"]),
    eps=EPS,
    var_scale=VAR_SCALE,
    seed=st.integers(0, 2**16),
)
def test_cnn_folds_exactly(
    channels: list[int], padding: int, placement: str, eps: float, var_scale: float, seed: int
) -> None:
    net = prepare(cnn(channels, padding, placement, eps), seed, var_scale)
    x = torch.randn(3, channels[0], 7, 7, generator=torch.Generator().manual_seed(seed)) * 4
    records = assert_folded_matches(net, x)
    # a BN before a zero-padded conv cannot fold forward exactly: it stays a frozen affine
    assert records[0].fold == ("forward" if padding == 0 else "affine")


def test_bn_before_a_padded_conv_becomes_a_frozen_affine() -> None:
    net = prepare(cnn([2, 3], padding=1, placement="before", eps=1e-5), 0, 1.0)
    folded, records = fold_network(net)
    assert isinstance(folded.input_bn, ChannelAffine) and records[0].fold == "affine"
    assert [r.fold for r in records[1:]] == ["backward"]


def test_bn_after_the_last_conv_folds_forward_through_flatten() -> None:
    net = prepare(cnn([2, 3], padding=1, placement="after", eps=1e-5), 1, 1.0)
    _, records = fold_network(net)
    assert records[-1].fold == "forward" and records[-1].folded_into == "head"
    assert_folded_matches(net, torch.randn(4, 2, 7, 7))


def test_float32_fold_of_realistic_buffers_matches_within_float32_rounding() -> None:
    net = mlp([6, 5, 4, 2], "before", 1e-5)
    gen = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            randomise_bn(m, gen, 1.0)
    net.eval()
    folded, _ = fold_network(net)
    assert folded.fc1.weight.dtype == torch.float32
    x = torch.randn(50, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_a_model_in_training_mode_is_refused() -> None:
    net = mlp([4, 3, 2], "before", 1e-5).train()
    with pytest.raises(FoldError, match="training mode"):
        fold_network(net)


def test_a_bn_without_running_statistics_is_refused() -> None:
    net = nn.Sequential(
        OrderedDict([("bn", nn.BatchNorm1d(4, track_running_stats=False)), ("fc", nn.Linear(4, 2))])
    ).eval()
    with pytest.raises(FoldError, match="no running statistics"):
        fold_network(net)


def test_an_unsupported_layer_is_refused_by_name() -> None:
    net = nn.Sequential(
        OrderedDict([("bn", nn.BatchNorm1d(4)), ("drop", nn.Dropout()), ("fc", nn.Linear(4, 2))])
    ).eval()
    with pytest.raises(FoldError, match="'drop'"):
        fold_network(net)


def test_a_trailing_bn_with_nothing_to_fold_into_becomes_an_affine() -> None:
    net = prepare(
        nn.Sequential(OrderedDict([("fc", nn.Linear(4, 3)), ("relu", nn.ReLU()), ("bn", nn.BatchNorm1d(3))])), 2, 1.0
    )
    records = assert_folded_matches(net, torch.randn(6, 4))
    assert records[0].fold == "affine"
