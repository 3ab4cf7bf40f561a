"""Fold BatchNorm layers into frozen inference weights.

Two layers, as in torch.nn.utils.fusion: pure tensor math at the top, and
`fold_network`, which validates its input loudly and never mutates it.

With s = gamma / sqrt(running_var + eps) and t = beta - running_mean * s, a BN
layer in eval mode is the per-channel affine map y = s * x + t. Then:

- BN right after a Linear/Conv folds BACKWARD: W' = diag(s) W, b' = s * b + t.
- BN right before a Linear (the input BN; a BN after an activation) folds
  FORWARD: W' = W diag(s), b' = b + W t. Into a Conv this is exact only without
  zero padding (a padded border sees 0, not s * 0 + t), so a BN before a padded
  Conv, or with no foldable neighbour at all, stays as a frozen per-channel
  Mul/Add.

The arithmetic runs in float64 and is rounded once, at the end, to the layer's dtype.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Tensor = torch.Tensor


class FoldError(ValueError):
    """The network cannot be folded as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- pure math


def bn_scale_shift(
    running_mean: Tensor, running_var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """The eval-mode BN as y = s * x + t, in float64."""
    mean, var = running_mean.double(), running_var.double()
    g = torch.ones_like(mean) if gamma is None else gamma.detach().double()
    b = torch.zeros_like(mean) if beta is None else beta.detach().double()
    s = g / torch.sqrt(var + eps)
    return s, b - mean * s


def fold_backward(weight: Tensor, bias: Tensor | None, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """BN after a layer: scale each OUTPUT channel. Works for Linear (out, in) and Conv (out, in, kh, kw)."""
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    view = (-1,) + (1,) * (w.dim() - 1)
    return (w * s.view(view)).to(weight.dtype), (s * b + t).to(weight.dtype)


def fold_forward_linear(weight: Tensor, bias: Tensor | None, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """BN before a Linear: scale each INPUT column. If a Flatten sits between a BN2d and the
    Linear, each channel covers `in_features / C` consecutive columns."""
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    if w.shape[1] % s.numel():
        raise FoldError(f"a Linear with {w.shape[1]} inputs cannot follow a BN of {s.numel()} channels")
    repeat = w.shape[1] // s.numel()
    s_cols, t_cols = s.repeat_interleave(repeat), t.repeat_interleave(repeat)
    return (w * s_cols.view(1, -1)).to(weight.dtype), (b + w @ t_cols).to(weight.dtype)


def fold_forward_conv(weight: Tensor, bias: Tensor | None, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """BN before an UNPADDED, ungrouped Conv: scale each input channel of the kernel."""
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    shift = b + (w * t.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return (w * s.view(1, -1, 1, 1)).to(weight.dtype), shift.to(weight.dtype)


# --------------------------------------------------------------------------- frozen layers


class ChannelAffine(nn.Module):
    """A frozen BN: y = scale * x + shift per channel (exports as one Mul and one Add)."""

    scale: Tensor
    shift: Tensor

    def __init__(self, scale: Tensor, shift: Tensor, spatial_dims: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        view = (-1,) + (1,) * spatial_dims
        self.register_buffer("scale", scale.to(dtype).reshape(view).clone())
        self.register_buffer("shift", shift.to(dtype).reshape(view).clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


@dataclass(frozen=True)
class FoldRecord:
    """Where one BN layer went."""

    name: str
    placement: str  # "input", "before_activation" or "after_activation"
    fold: str  # "backward", "forward" or "affine"
    folded_into: str  # the layer that absorbed it, or the frozen affine's own name


def _is_forward_target(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, nn.Conv2d):
        return m.groups == 1 and all(p == 0 for p in _padding(m))
    return False


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):  # "same" pads unless the kernel is 1x1
        return (0,) if conv.padding == "valid" or all(k == 1 for k in conv.kernel_size) else (1,)
    return tuple(conv.padding)


def _with_weights(layer: nn.Module, weight: Tensor, bias: Tensor) -> nn.Module:
    out = copy.deepcopy(layer)
    out.weight = nn.Parameter(weight, requires_grad=False)
    out.bias = nn.Parameter(bias, requires_grad=False)
    return out


def _weights(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    weight, bias = layer.weight, layer.bias
    assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
    return weight, bias


def _running_stats(name: str, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """The layer's running mean and variance, refused when absent or unusable."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise FoldError(
            f"BN layer {name!r} has no running statistics (track_running_stats=False): "
            "it would normalise with batch statistics at inference; retrain with running statistics"
        )
    if not torch.isfinite(bn.running_mean).all() or not torch.isfinite(bn.running_var).all():
        raise FoldError(f"BN layer {name!r} has non-finite running statistics")
    if (bn.running_var < 0).any():
        raise FoldError(f"BN layer {name!r} has a negative running_var")
    if (bn.running_var + bn.eps <= 0).any():
        raise FoldError(f"BN layer {name!r} has running_var + eps <= 0: the scale gamma / sqrt(var + eps) is infinite")
    return bn.running_mean, bn.running_var


def fold_network(model: nn.Module) -> tuple[nn.Sequential, list[FoldRecord]]:
    """Fold every BN layer of a sequential network in eval mode.

    Returns a new `nn.Sequential` of Linear/Conv2d/ReLU/Flatten/ChannelAffine layers
    (no BatchNorm left) and one record per BN layer. `model` is not modified.
    """
    if not isinstance(model, nn.Sequential):
        raise FoldError(f"expected a sequential network (BNNet), got {type(model).__name__}")
    if model.training:
        raise FoldError(
            "the model is in training mode: call model.eval() first, so that folding uses the running statistics"
        )
    seq = list(model.named_children())
    out: list[tuple[str, nn.Module]] = []
    records: list[FoldRecord] = []
    pending: tuple[str, Tensor, Tensor] | None = None  # a BN waiting for the next Linear/Conv
    for i, (name, m) in enumerate(seq):
        if isinstance(m, _BatchNorm):
            mean, var = _running_stats(name, m)
            s, t = bn_scale_shift(mean, var, m.weight, m.bias, m.eps)
            prev = seq[i - 1][1] if i > 0 else None
            placement = (
                "input"
                if i == 0
                else ("before_activation" if isinstance(prev, (nn.Linear, nn.Conv2d)) else "after_activation")
            )
            if isinstance(prev, (nn.Linear, nn.Conv2d)):
                target_name, target = out[-1]
                out[-1] = (target_name, _with_weights(target, *fold_backward(*_weights(target), s, t)))
                records.append(FoldRecord(name, placement, "backward", target_name))
                continue
            j = i + 1
            if (
                j < len(seq)
                and isinstance(seq[j][1], nn.Flatten)
                and j + 1 < len(seq)
                and isinstance(seq[j + 1][1], nn.Linear)
            ):
                j += 1
            if j < len(seq) and _is_forward_target(seq[j][1]):
                pending = (name, s, t)
                records.append(FoldRecord(name, placement, "forward", seq[j][0]))
                continue
            spatial = 2 if isinstance(m, nn.BatchNorm2d) else 0
            out.append((name, ChannelAffine(s, t, spatial, dtype=mean.dtype)))
            records.append(FoldRecord(name, placement, "affine", name))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            layer: nn.Module = copy.deepcopy(m)
            if pending is not None:
                _, s, t = pending
                fold = fold_forward_linear if isinstance(m, nn.Linear) else fold_forward_conv
                layer = _with_weights(m, *fold(*_weights(m), s, t))
                pending = None
            for p in layer.parameters():
                p.requires_grad_(False)
            out.append((name, layer))
        elif isinstance(m, (nn.ReLU, nn.Flatten)):
            out.append((name, copy.deepcopy(m)))
        else:
            raise FoldError(f"cannot fold layer {name!r}: unsupported type {type(m).__name__}")
    if pending is not None:
        raise FoldError(f"BN layer {pending[0]!r} has nothing after it to fold into")
    folded = nn.Sequential(OrderedDict(out)).eval()
    return folded, records
