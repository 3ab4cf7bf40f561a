"""The covariate-shift monitor's graph outputs and its calibration (service/drift.py has the method).

Folding removes every BN layer, but what each hidden BN layer saw can still be read off the
folded graph, with no BatchNormalization node:

- a BN folded BACKWARD into the Linear/Conv before it: that layer now outputs
  y' = gamma * z + beta, so z = (y' - beta) / gamma (a channel with |gamma| < 1e-6 carries no
  information about z and is reported as 0);
- a BN folded FORWARD, or kept as a frozen affine: its input x is still a tensor of the graph
  (the input of the next layer), so z = (x - running_mean) / sqrt(running_var + eps).

`WithDrift` makes that tensor a graph output, `drift.<layer>`, and the card records the
per-channel (shift, scale) with z = (v - shift) * scale: the service standardises it in numpy.
No node is added (measured: computing z inside the graph, with Sub/Mul/Concat nodes, added
11 us to a 20 us run even when only `probabilities` was asked for; onnxruntime runs every
node). The input layer's z needs no output: the service computes it from the request itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.fold import FoldRecord
from model.network import BNNet
from service.drift import DRIFT_FORMAT, OUTPUT_PREFIX, DriftSpec, Summaries, calibrate

GAMMA_FLOOR = 1e-6
DRIFT_TOLERANCE = 1e-3  # |onnx z - torch z| / (1 + |torch z|): z is recovered through a division


@dataclass(frozen=True)
class Tap:
    layer: str  # the BN layer
    module: str  # the module of the exported network whose input or output carries it
    where: str  # "input" or "output"
    shift: torch.Tensor  # z = (v - shift) * scale, per channel
    scale: torch.Tensor

    def describe(self) -> str:
        if self.where == "output":
            return f"output of {self.module}: z = (y - beta) / gamma"
        return f"input of {self.module}: z = (x - running_mean) / sqrt(running_var + eps)"


def _standardise(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    assert bn.running_mean is not None and bn.running_var is not None
    mean, var = bn.running_mean.double(), bn.running_var.double()
    return mean, 1.0 / torch.sqrt(var + bn.eps)


def taps_for(model: BNNet, records: list[FoldRecord] | None) -> list[Tap]:
    """Where each hidden BN layer's z is read: on the reference graph (records None) the BN's
    own input; on the folded graph, where the fold put it."""
    names = [n for n, _ in model.named_children()]
    by_name = {r.name: r for r in records or []}
    taps = []
    for name, bn in model.bn_layers()[1:]:
        mean, inv = _standardise(bn)
        record = by_name.get(name)
        if record is None or record.fold == "affine":
            taps.append(Tap(name, name, "input", mean, inv))
        elif record.fold == "forward":
            taps.append(Tap(name, names[names.index(name) + 1], "input", mean, inv))
        else:
            gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
            beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
            safe = gamma.abs() >= GAMMA_FLOOR
            inv_gamma = torch.where(safe, 1.0 / torch.where(safe, gamma, 1.0), 0.0)
            taps.append(Tap(name, record.folded_into, "output", beta, inv_gamma))
    return taps


def output_names(taps: list[Tap]) -> list[str]:
    return [OUTPUT_PREFIX + t.layer for t in taps]


class WithDrift(nn.Module):
    """logits, probabilities, then each tapped tensor as it is."""

    def __init__(self, body: nn.Sequential, taps: list[Tap]) -> None:
        super().__init__()
        self.body = body
        self.count = len(taps)
        self.at: dict[tuple[str, str], list[int]] = {}
        for i, t in enumerate(taps):
            self.at.setdefault((t.module, t.where), []).append(i)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found: dict[int, torch.Tensor] = {}
        for name, module in self.body.named_children():
            for i in self.at.get((name, "input"), []):
                found[i] = x
            x = module(x)
            for i in self.at.get((name, "output"), []):
                found[i] = x
        return (x, torch.softmax(x, dim=1), *(found[i] for i in range(self.count)))


def torch_z(model: BNNet, x: np.ndarray) -> dict[str, np.ndarray]:
    """The oracle: every BN layer's input, standardised by its running statistics, in float64,
    captured by hooks on the unfolded model in eval mode."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        bn.register_forward_pre_hook(lambda _m, args, n=name: seen.__setitem__(n, args[0].detach().double()))
        for name, bn in model.bn_layers()
    ]
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, bn in model.bn_layers():
        mean, inv = _standardise(bn)
        v = seen[name]
        view = (1, -1) + (1,) * (v.dim() - 2)
        out[name] = ((v - mean.view(view)) * inv.view(view)).numpy()
    return out


def summaries_from_graph(session: ort.InferenceSession, spec: DriftSpec, x: np.ndarray) -> Summaries:
    hidden = session.run(spec.outputs, {"input": x}) if spec.outputs else []
    return spec.summaries(x.reshape(len(x), -1), hidden)


def hidden_layers(model: BNNet, taps: list[Tap]) -> list[dict[str, Any]]:
    """What DriftSpec.build needs of each hidden layer (its positions from one forward pass)."""
    shapes = {name: z.shape for name, z in torch_z(model, np.zeros((1, *model.config.input_shape), np.float32)).items()}
    return [
        {
            "name": t.layer,
            "channels": int(shapes[t.layer][1]),
            "positions": int(np.prod(shapes[t.layer][2:], dtype=int)),
            "shift": t.shift.tolist(),
            "scale": t.scale.tolist(),
        }
        for t in taps
    ]


def drift_section(
    session: ort.InferenceSession,
    model: BNNet,
    taps: list[Tap],
    spec: DriftSpec,
    calibration: dict[str, np.ndarray],
    held_out: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Check the drift outputs against torch, calibrate the score, and describe it for the card.
    `calibration` names the split(s) the score is calibrated on; `held_out` any other split on
    which the flag rate is then measured (an honest estimate of the false-positive rate)."""
    parity = 0.0
    for x in [*calibration.values(), *held_out.values()]:
        s = summaries_from_graph(session, spec, x)
        oracle = torch_z(model, x)
        for layer in spec.layers:
            want = oracle[layer.name].reshape(len(x), -1)
            got = s.z[:, layer.start : layer.start + layer.size]
            parity = max(parity, float(np.max(np.abs(got - want) / (1.0 + np.abs(want)))))
    if not parity <= DRIFT_TOLERANCE:
        raise ValueError(f"the drift outputs differ from torch's standardised BN inputs by {parity:.3g}")

    x_cal = np.concatenate(list(calibration.values()))
    fitted, fit = calibrate(spec, summaries_from_graph(session, spec, x_cal))
    rates: dict[str, dict[str, float]] = {}
    for name, x in held_out.items():
        p = fitted.p_values(fitted.scores(summaries_from_graph(session, spec, x)))
        rates[name] = {a: float(np.mean(p <= float(a))) for a in ("0.01", "0.05", "0.1")}
    fit["calibration"].update({"splits": list(calibration), "flag_rates": rates})
    return {
        "format": DRIFT_FORMAT,
        "outputs": spec.outputs,
        "layers": [
            {
                "name": spec.layers[0].name,
                "channels": spec.layers[0].channels,
                "positions": spec.layers[0].positions,
                "source": "the request's features, with the layer's running statistics",
            }
        ]
        + [
            {
                "name": t.layer,
                "channels": layer.channels,
                "positions": layer.positions,
                "output": layer.output,
                "source": t.describe(),
                "shift": t.shift.tolist(),
                "scale": t.scale.tolist(),
            }
            for t, layer in zip(taps, spec.layers[1:], strict=True)
        ],
        "method": "E = mean over layers of ((log energy_l - m_l) / s_l)**2 with energy_l the layer's mean z**2; "
        "F = max over input features of |z_f| / q_f; score = max(E / layers_norm, F / features_norm); "
        "m_l, s_l, q_f (99th percentile of |z_f|) and the norms (90th percentiles) fitted on the calibration "
        "split; p_value = (1 + #{calibration scores >= score}) / (n + 1)",
        "parity": {
            "reference": "torch eval mode, BN inputs standardised in float64",
            "max_error": parity,
            "tolerance": DRIFT_TOLERANCE,
        },
        **fit,
    }
