"""BNNet: a network whose every block carries a BatchNorm layer.

The first layer is always a BatchNorm over the raw input, so clients send raw,
unscaled values and the layer's running statistics are the training data's
per-feature mean and variance. Hidden blocks put their BatchNorm before the
ReLU (Linear/Conv -> BN -> ReLU, as in the original paper) or after it
(Linear/Conv -> ReLU -> BN).

The network is an `nn.Sequential` with named layers, so its execution order is
its module order: export/ walks that order to fold every BN layer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

PLACEMENTS = ("before", "after")
KINDS = ("mlp", "cnn")


@dataclass
class BNNetConfig:
    kind: str = "mlp"  # "mlp" for tabular data, "cnn" for images
    input_shape: tuple[int, ...] = (30,)  # one sample, without the batch axis
    num_classes: int = 2
    hidden: tuple[int, ...] = (64, 32)  # Linear widths (for "cnn": after the convs)
    conv_channels: tuple[int, ...] = (16, 32)  # "cnn" only
    conv_padding: int = 1  # "cnn" only; zero padding stops a BN folding forward into a conv
    placement: str = "before"  # BN "before" or "after" the ReLU in hidden blocks
    bn_momentum: float | None = 0.1  # PyTorch convention; None = cumulative average
    bn_eps: float = 1e-5
    hidden_bn: bool = True  # False: the hidden blocks without BN (the input is still standardised): a baseline

    def __post_init__(self) -> None:
        # Accept lists (from JSON or a checkpoint) but store tuples.
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.hidden = tuple(int(d) for d in self.hidden)
        self.conv_channels = tuple(int(d) for d in self.conv_channels)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.kind == "mlp" and len(self.input_shape) != 1:
            raise ValueError(f"an mlp takes a flat input_shape, got {self.input_shape}")
        if self.kind == "cnn" and len(self.input_shape) != 3:
            raise ValueError(f"a cnn takes input_shape (C, H, W), got {self.input_shape}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.bn_momentum is not None and not 0.0 <= self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1] or None, got {self.bn_momentum}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BNNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


def _block(i: int, kind: str, layer: nn.Module, bn: nn.Module, placement: str) -> list[tuple[str, nn.Module]]:
    first, act = (f"{kind}{i}", layer), (f"relu{i}", nn.ReLU())
    if placement == "before":
        return [first, (f"bn{i}", bn), act]
    return [first, act, (f"bn{i}", bn)]


class BNNet(nn.Sequential):
    """`input_bn`, then numbered blocks (`fc1`/`conv1`, `bn1`, `relu1`, ...), then `head`."""

    def __init__(self, config: BNNetConfig) -> None:
        c = config
        bn_kw: dict[str, Any] = {"eps": c.bn_eps, "momentum": c.bn_momentum}
        layers: list[tuple[str, nn.Module]] = []
        i = 0
        if c.kind == "mlp":
            layers.append(("input_bn", nn.BatchNorm1d(c.input_shape[0], **bn_kw)))
            width = c.input_shape[0]
        else:
            channels, height, w = c.input_shape
            layers.append(("input_bn", nn.BatchNorm2d(channels, **bn_kw)))
            for out in c.conv_channels:
                i += 1
                conv = nn.Conv2d(channels, out, kernel_size=3, padding=c.conv_padding)
                norm: nn.Module = nn.BatchNorm2d(out, **bn_kw) if c.hidden_bn else nn.Identity()
                layers += _block(i, "conv", conv, norm, c.placement)
                channels = out
                height, w = height + 2 * c.conv_padding - 2, w + 2 * c.conv_padding - 2
                if height < 1 or w < 1:
                    raise ValueError(f"input_shape {c.input_shape} is too small for the convs")
            layers.append(("flatten", nn.Flatten()))
            width = channels * height * w
        for h in c.hidden:
            i += 1
            norm = nn.BatchNorm1d(h, **bn_kw) if c.hidden_bn else nn.Identity()  # fmt: skip
            layers += _block(i, "fc", nn.Linear(width, h), norm, c.placement)
            width = h
        layers.append(("head", nn.Linear(width, c.num_classes)))
        super().__init__(OrderedDict(layers))
        self.config = config

    def bn_layers(self) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
        return [(n, m) for n, m in self.named_children() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
