import pytest
import torch
from torch import nn

from model.network import BNNet, BNNetConfig


def test_first_layer_is_a_batchnorm_over_the_raw_features() -> None:
    net = BNNet(BNNetConfig(input_shape=(30,), num_classes=2))
    first_name, first = next(iter(net.named_children()))
    assert first_name == "input_bn" and isinstance(first, nn.BatchNorm1d) and first.num_features == 30


@pytest.mark.parametrize(
    ("placement", "order"),
    [
        ("before", ["input_bn", "fc1", "bn1", "relu1", "fc2", "bn2", "relu2", "head"]),
        ("after", ["input_bn", "fc1", "relu1", "bn1", "fc2", "relu2", "bn2", "head"]),
    ],
)
def test_placement_puts_bn_before_or_after_the_relu(placement: str, order: list[str]) -> None:
    net = BNNet(BNNetConfig(placement=placement))
    assert [n for n, _ in net.named_children()] == order


def test_cnn_has_conv_bn_blocks_then_linear_layers() -> None:
    net = BNNet(BNNetConfig(kind="cnn", input_shape=(1, 8, 8), num_classes=10, hidden=(64,)))
    names = [n for n, _ in net.named_children()]
    assert names == [
        "input_bn",
        "conv1",
        "bn1",
        "relu1",
        "conv2",
        "bn2",
        "relu2",
        "flatten",
        "fc3",
        "bn3",
        "relu3",
        "head",
    ]
    assert isinstance(net.input_bn, nn.BatchNorm2d)
    assert net.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_config_round_trips_through_a_dict() -> None:
    c = BNNetConfig(hidden=(8, 4), placement="after", bn_momentum=None)
    assert BNNetConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement": "middle"}, "placement"),
        ({"kind": "rnn"}, "kind"),
        ({"bn_momentum": 1.5}, "bn_momentum"),
        ({"kind": "cnn", "input_shape": (30,)}, "cnn"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_config_refuses_nonsense_with_a_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BNNetConfig(**kwargs)
