"""Covariate-shift monitor: every BN layer's running statistics describe the training inputs.

Each BN layer stores the mean and variance of what it saw in training, so for any sample
z = (x - running_mean) / sqrt(running_var + eps) says how unusual its activations are.
The input layer's z is computed here from the raw features; for each hidden layer export makes
the tensor that carries its z a graph output (`drift.<layer>`: the BN's input, or the output of the
layer it was folded into) and records the per-channel (shift, scale) with z = (v - shift) * scale.
Exposing a tensor the graph computes anyway costs no extra node.

Per sample (see README, "Covariate shift"), two statistics, each fitted on the held-out
calibration split:
  layers:   energy_l = mean z**2 over all that layer l standardises (about 1 for training-like
            data); E = mean over layers of ((log energy_l - m_l) / s_l) ** 2, with m_l, s_l the
            mean and spread of log energy_l in calibration: a layer that sees too much energy (a
            shifted or rescaled input) or too little (a washed-out one) raises it;
  features: F = max over input features of |z_f| / q_f, q_f the feature's 99th percentile of
            |z_f| in calibration: one feature far outside its usual range raises it (averaged
            into E, a single feature is diluted by all the others);
  score = max(E / E_90, F / F_90), each divided by its calibration 90th percentile.
The p-value is empirical, (1 + #{calibration scores >= score}) / (n + 1), and a sample is
flagged when p <= alpha.

Over time, a window keeps the count and the sums of z and z**2 of every value each BN layer
standardises (`Window`): sums add, so windows of several workers or replicas merge by adding them.

This module is pure numpy: the service runs it, and export runs the same code to calibrate.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

DRIFT_FORMAT = "bnserve.drift/1"
OUTPUT_PREFIX = "drift."
TINY = 1e-12  # keeps log() finite for a layer whose activations are all exactly at the mean


@dataclass(frozen=True)
class LayerSlice:
    name: str
    channels: int
    positions: int  # values per channel in one sample (1 for a Linear layer, H*W for a conv map)
    start: int  # columns [start, start + size) of a sample's z vector (input layer first)

    @property
    def size(self) -> int:
        return self.channels * self.positions

    @property
    def output(self) -> str:
        return OUTPUT_PREFIX + self.name


@dataclass(frozen=True)
class DriftSpec:
    """What the monitor needs, read from the card's `drift` section and the input BN layer's state.

    A sample's z vector holds, layer after layer, every value each BN layer standardises (the
    input features, then each hidden layer's C x H x W activations), so that one subtraction
    and one multiplication standardise all of it: z = (v - shift) * scale."""

    feature_names: tuple[str, ...]
    layers: tuple[LayerSlice, ...]  # the input layer, then each hidden BN layer
    shift: np.ndarray  # (D,) per value of the z vector
    scale: np.ndarray  # (D,)
    log_energy_mean: np.ndarray  # (L,)
    log_energy_std: np.ndarray  # (L,)
    feature_scale: np.ndarray  # (F,) q_f
    norms: tuple[float, float] = (1.0, 1.0)  # E_90, F_90
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0))  # sorted scores

    @property
    def outputs(self) -> list[str]:
        """The graph outputs the monitor reads, one per hidden BN layer."""
        return [layer.output for layer in self.layers[1:]]

    @property
    def size(self) -> int:
        return len(self.shift)

    @classmethod
    def from_card(cls, card: dict[str, Any], bn_layers: Sequence[dict[str, Any]]) -> DriftSpec:
        """Raises KeyError/ValueError/TypeError on a malformed section (the caller words it)."""
        doc = card["drift"]
        if doc.get("format") != DRIFT_FORMAT:
            raise ValueError(f"drift section format {doc.get('format')!r}, expected {DRIFT_FORMAT!r}")
        first = bn_layers[0]
        if first.get("placement") != "input":
            raise ValueError("the first BN layer is not the input layer")
        spec = cls.build(card["feature_names"], first, doc["layers"][1:])
        score = doc["score"]
        fitted = replace(
            spec,
            log_energy_mean=np.asarray(score["log_energy_mean"], dtype=np.float64),
            log_energy_std=np.asarray(score["log_energy_std"], dtype=np.float64),
            feature_scale=np.asarray(score["feature_scale"], dtype=np.float64),
            norms=(float(score["layers_norm"]), float(score["features_norm"])),
            calibration=np.sort(np.asarray(doc["calibration"]["scores"], dtype=np.float64)),
        )
        if fitted.log_energy_mean.shape != (len(spec.layers),) or fitted.log_energy_std.shape != (len(spec.layers),):
            raise ValueError(f"the score's parameters do not match the {len(spec.layers)} BN layers")
        if fitted.feature_scale.shape != (len(spec.feature_names),) or not (fitted.feature_scale > 0).all():
            raise ValueError(f"the score's feature scales are not {len(spec.feature_names)} positive numbers")
        if not len(fitted.calibration) or not np.isfinite(fitted.calibration).all():
            raise ValueError("the calibration scores are empty or not finite")
        return fitted

    @classmethod
    def build(cls, feature_names: Sequence[str], input_layer: dict[str, Any],
              hidden: Sequence[dict[str, Any]]) -> DriftSpec:  # fmt: skip
        """The uncalibrated spec (what export has before it calibrates): the input layer's BN state,
        and for each hidden layer `name`, `channels`, `positions`, `shift` and `scale`."""
        mean = np.asarray(input_layer["running_mean"], dtype=np.float64)
        var = np.asarray(input_layer["running_var"], dtype=np.float64)
        c0 = len(mean)
        if not c0 or len(feature_names) % c0:
            raise ValueError(f"{len(feature_names)} features do not split into {c0} input channels")
        p0 = len(feature_names) // c0
        layers = [LayerSlice(str(input_layer["name"]), c0, p0, 0)]
        shifts, scales = [np.repeat(mean, p0)], [np.repeat(1.0 / np.sqrt(var + float(input_layer["eps"])), p0)]
        start = len(feature_names)
        for layer in hidden:
            channels, positions = int(layer["channels"]), int(layer["positions"])
            shift, scale = (np.asarray(layer[k], dtype=np.float64) for k in ("shift", "scale"))
            if shift.shape != (channels,) or scale.shape != (channels,) or positions < 1:
                raise ValueError(f"layer {layer['name']}: shift/scale do not have {channels} values")
            layers.append(LayerSlice(str(layer["name"]), channels, positions, start))
            shifts.append(np.repeat(shift, positions))
            scales.append(np.repeat(scale, positions))
            start += channels * positions
        n = len(layers)
        return cls(tuple(map(str, feature_names)), tuple(layers), np.concatenate(shifts), np.concatenate(scales),
                   np.zeros(n), np.ones(n), np.ones(len(feature_names)))  # fmt: skip

    # ------------------------------------------------------------------ per sample

    def summaries(self, rows: np.ndarray, hidden: Sequence[np.ndarray]) -> Summaries:
        """Every sample's z vector; `hidden` holds the graph outputs named by `outputs`, in order.
        (Measured: 9 numpy calls for a sample of the default MLP; per-layer reshapes and means
        took 4 times as long.)"""
        n = len(rows)
        v = np.concatenate([rows.reshape(n, -1), *(h.reshape(n, -1) for h in hidden)], axis=1, dtype=np.float64)
        z = (v - self.shift) * self.scale
        return Summaries(z, z * z, len(self.feature_names))

    @cached_property
    def _blocks(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.array([layer.start for layer in self.layers], dtype=np.intp)
        return starts, np.array([layer.size for layer in self.layers], dtype=np.float64)

    def energies(self, sq: np.ndarray) -> np.ndarray:
        """(n, L): each layer's mean z**2 over all its values (= over its channels' spatial means)."""
        starts, sizes = self._blocks
        return np.add.reduceat(sq, starts, axis=1) / sizes

    def components(self, s: Summaries, energies: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(E, F) of each sample, before normalisation."""
        energies = self.energies(s.sq) if energies is None else energies
        d = (np.log(energies + TINY) - self.log_energy_mean) / self.log_energy_std
        layers = np.einsum("ij,ij->i", d, d) / d.shape[1]  # np.mean costs 3x more on one row
        features = (np.abs(s.feature_z) / self.feature_scale).max(axis=1)
        return layers, features

    def normalised(self, s: Summaries, energies: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(E / E90, F / F90): the two parts the score is the larger of."""
        layers, features = self.components(s, energies)
        return layers / self.norms[0], features / self.norms[1]

    def scores(self, s: Summaries, energies: np.ndarray | None = None) -> np.ndarray:
        return np.maximum(*self.normalised(s, energies))

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Empirical, conformal: (1 + calibration scores >= s) / (n + 1)."""
        cal = self.calibration
        above = len(cal) - np.searchsorted(cal, scores, side="left")
        return np.asarray((1.0 + above) / (len(cal) + 1.0))

    @property
    def smallest_p_value(self) -> float:
        return 1.0 / (len(self.calibration) + 1.0)

    def reports(self, s: Summaries, alpha: float) -> list[dict[str, Any]]:
        """The `drift` block of each sample's answer."""
        energies = self.energies(s.sq)
        layers_part, features_part = self.normalised(s, energies)
        scores = np.maximum(layers_part, features_part)
        p = self.p_values(scores)
        names = self.feature_names
        layer_names = [layer.name for layer in self.layers]
        features = s.feature_z
        out = []
        for i in range(len(scores)):
            z = features[i].tolist()
            order = sorted(range(len(z)), key=lambda j: -abs(z[j]))  # stable; 4x faster than numpy here
            out.append(
                {
                    "score": float(scores[i]),
                    "p_value": float(p[i]),
                    "flagged": bool(p[i] <= alpha),
                    "alpha": alpha,
                    "components": {"layers": float(layers_part[i]), "features": float(features_part[i])},
                    "layers": [
                        {"name": n, "mean_sq_z": e} for n, e in zip(layer_names, energies[i].tolist(), strict=True)
                    ],
                    "top_features": [{"name": names[j], "z": z[j]} for j in order],
                }
            )
        return out


@dataclass(frozen=True)
class Summaries:
    z: np.ndarray  # (n, D): every standardised value, input features first
    sq: np.ndarray  # (n, D): z**2
    features: int

    @property
    def feature_z(self) -> np.ndarray:
        return self.z[:, : self.features]


FEATURE_QUANTILE = 0.99
NORM_QUANTILE = 0.9
SCALE_FLOOR = 1e-3


def calibrate(spec: DriftSpec, s: Summaries) -> tuple[DriftSpec, dict[str, Any]]:
    """Fit the score on calibration summaries and keep the calibration scores (the card's section)."""
    log_e = np.log(spec.energies(s.sq) + TINY)
    mean, std = log_e.mean(axis=0), log_e.std(axis=0, ddof=1) if len(log_e) > 1 else np.ones(log_e.shape[1])
    std = np.where(std > 1e-9, std, 1.0)
    scale = np.maximum(np.quantile(np.abs(s.feature_z), FEATURE_QUANTILE, axis=0), SCALE_FLOOR)
    fitted = replace(spec, log_energy_mean=mean, log_energy_std=std, feature_scale=scale)
    layers, features = fitted.components(s)
    norms = (
        max(float(np.quantile(layers, NORM_QUANTILE)), TINY),
        max(float(np.quantile(features, NORM_QUANTILE)), TINY),
    )
    fitted = replace(fitted, norms=norms)
    scores = np.sort(fitted.scores(s))
    return replace(fitted, calibration=scores), {
        "score": {
            "log_energy_mean": mean.tolist(),
            "log_energy_std": std.tolist(),
            "feature_scale": scale.tolist(),
            "layers_norm": norms[0],
            "features_norm": norms[1],
        },
        "calibration": {
            "n": len(scores),
            "scores": scores.tolist(),
            "quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
        },
    }


# ---------------------------------------------------------------------- over time

HEADER = 4  # generation, window start (unix seconds), count (summed), buffered rows


class Window:
    """Count, sum z and sum z**2 of every value of the z vector (so per input feature and per BN
    channel and position), over a window that closes after `seconds` (aligned to the clock, so
    every worker and replica agrees on its start) or `samples` (counted per process), whichever
    comes first.

    One float64 vector holds a process's window: the header, the two sums, then a buffer of raw
    rows. `observe` only copies a sample's raw values into the buffer; a full buffer is
    standardised and added to the sums at once, and a reader adds the rows still in the buffer
    itself (measured on the default MLP: standardising and adding each sample as it came cost
    13 us a request on this machine, the copy 5 us).

    With `directory`, the vector is a memory-mapped file per process, and `totals()` adds up every
    process's file of the same window: what `--workers N` shares. `reset()` starts a new window
    everywhere by bumping a generation number in the directory's control file; another worker
    notices it when it next folds its buffer (after `FLUSH_SECONDS` or a full buffer)."""

    FLUSH_SECONDS = 1.0
    BUFFER_BYTES = 1 << 20

    def __init__(self, spec: DriftSpec, seconds: float, samples: int = 0, directory: Path | None = None,
                 worker: str | None = None, every: int = 1) -> None:  # fmt: skip
        self.spec, self.seconds, self.samples = spec, float(seconds), int(samples)
        self.every, self.tick = max(1, int(every)), 0
        d = spec.size
        self.rows = int(min(256, max(8, self.BUFFER_BYTES // (8 * d))))  # buffer capacity
        self.size = HEADER + 2 * d + self.rows * d
        self.directory = directory
        self.flushed_at = time.time()
        self.begins, self.ends = -math.inf, math.inf  # the current window's span (set by _restart)
        if directory is None:
            self.data: np.ndarray = np.zeros(self.size)
            self.control: np.ndarray = np.zeros(1)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.data = _mapped(directory / f"drift-{worker or os.getpid()}.f64", self.size, fresh=True)
            self.control = _mapped(directory / "drift-control.f64", 1, fresh=False)
        self.buffer = self.data[HEADER + 2 * d :].reshape(self.rows, d)
        # flush standardises into this: a fresh 250 kB array each time cost 389 us a flush here, this 83 us
        self.scratch = np.empty((self.rows, d))
        self.flat = all(layer.positions == 1 for layer in spec.layers[1:])  # hidden outputs arrive (n, C)
        self.buffered = 0
        self._restart(self._window_start(time.time()))

    def _window_start(self, now: float) -> float:
        return math.floor(now / self.seconds) * self.seconds if self.seconds > 0 else 0.0

    def _restart(self, start: float) -> None:
        self.buffered = 0
        self.begins, self.ends = (start, start + self.seconds) if self.seconds > 0 else (-math.inf, math.inf)
        self.data[2 : HEADER + 2 * self.spec.size] = 0.0
        self.data[1] = start if self.seconds > 0 else time.time()
        self.data[0] = self.control[0]

    def due(self) -> bool:
        """Whether this request's samples go to the window: one request in `every`."""
        self.tick += 1
        if self.tick < self.every:
            return False
        self.tick = 0
        return True

    def observe(self, rows: np.ndarray, hidden: Sequence[np.ndarray], now: float | None = None) -> None:
        """Samples answered: their raw features (n, F) and the graph's drift outputs."""
        n = len(rows)
        now = time.time() if now is None else now
        # the checks every request pays; a reset by another worker is seen at the next fold
        if self.buffered + n > self.rows or not self.begins <= now < self.ends or self.samples:
            # a new window, a sample limit, a full buffer or a batch larger than the buffer
            self._roll(n, now)
            if n > self.rows:
                self.add(self.spec.summaries(rows, hidden), now)
                return
            if self.buffered + n > self.rows:
                self.flush()
        k = self.buffered
        # one numpy call: the raw values side by side, cast to float64, straight into the buffer
        parts = (rows, *hidden) if self.flat else (rows, *(h.reshape(n, -1) for h in hidden))
        np.concatenate(parts, axis=1, out=self.buffer[k : k + n])
        self.buffered = k = k + n
        self.data[3] = k  # after the rows: a reader never counts a row not yet written
        if k == self.rows or now - self.flushed_at > self.FLUSH_SECONDS:
            self._roll(0, now)
            self.flush()

    def flush(self) -> None:
        """Fold the buffered rows into the sums."""
        self.flushed_at = time.time()
        if self.buffered:
            s1, s2 = self._standardised_sums(self.buffer[: self.buffered], self.scratch[: self.buffered])
            self._accumulate(self.buffered, s1, s2)
            self.buffered = 0
            self.data[3] = 0

    def _standardised_sums(self, raw: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sum of z and of z**2 per column; `out` (the writer's scratch) holds z when given."""
        z = np.subtract(raw, self.spec.shift, out=out)
        np.multiply(z, self.spec.scale, out=z)
        return z.sum(axis=0), np.einsum("ij,ij->j", z, z)

    def add(self, s: Summaries, now: float | None = None) -> None:
        """Standardised samples, added at once."""
        self._roll(len(s.z), time.time() if now is None else now)
        self.flush()
        self._accumulate(len(s.z), s.z.sum(axis=0), s.sq.sum(axis=0))

    def _roll(self, n: int, now: float) -> None:
        """Start a new window when the clock, a reset or the sample limit says so."""
        d = self.data
        if (
            d[0] != self.control[0]
            or (self.seconds > 0 and d[1] != self._window_start(now))
            or (self.samples and d[2] + self.buffered + n > self.samples and d[2] + self.buffered > 0)
        ):
            self._restart(self._window_start(now))

    def _accumulate(self, n: int, s1: np.ndarray, s2: np.ndarray) -> None:
        d, size = self.data, self.spec.size
        d[HEADER : HEADER + size] += s1
        d[HEADER + size : HEADER + 2 * size] += s2
        d[2] += n

    def reset(self) -> None:
        self.control[0] += 1
        self._restart(self._window_start(time.time()))

    def _current(self, vector: np.ndarray, now: float) -> bool:
        return bool(vector[0] == self.control[0] and (self.seconds <= 0 or vector[1] == self._window_start(now)))

    def totals(self, now: float | None = None) -> tuple[np.ndarray, int]:
        """This window's count and sums (the header and two sums of the layout), added over every
        process that shares the directory, their buffered rows included; and how many processes
        contributed samples."""
        now = time.time() if now is None else now
        self._roll(0, now)
        vectors = [self.data] if self.directory is None else list(self._files())
        d = self.spec.size
        out = np.zeros(HEADER + 2 * d)
        out[0], out[1] = self.control[0], self._window_start(now) if self.seconds > 0 else self.data[1]
        workers = 0
        for v in vectors:
            if len(v) != self.size or not self._current(v, now):
                continue
            buffered = int(v[3])
            if v[2] + buffered <= 0:
                continue
            out[2] += v[2] + buffered
            out[HEADER:] += v[HEADER : HEADER + 2 * d]
            if buffered:
                s1, s2 = self._standardised_sums(v[HEADER + 2 * d :].reshape(self.rows, d)[:buffered])
                out[HEADER : HEADER + d] += s1
                out[HEADER + d :] += s2
            workers += 1
        return out, workers

    def _files(self) -> Iterator[np.ndarray]:
        assert self.directory is not None
        for path in sorted(self.directory.glob("drift-*.f64")):
            if path.name == "drift-control.f64":
                continue
            try:
                yield np.fromfile(path, dtype=np.float64)
            except OSError:  # a worker's file vanished between glob and read
                continue

    def report(self, now: float | None = None, top: int = 10) -> dict[str, Any]:
        totals, workers = self.totals(now)
        return figures(self.spec, totals, self.seconds, self.samples, top, workers, self.every)


def figures(spec: DriftSpec, totals: np.ndarray, seconds: float, samples: int, top: int = 10,
            workers: int = 1, every: int = 1) -> dict[str, Any]:  # fmt: skip
    """GET /drift's answer from a window's sums (the same function serves any number of merged windows)."""
    count = int(totals[2])
    window: dict[str, Any] = {"count": count, "start": dt_iso(totals[1]), "seconds": seconds or None,
                              "samples": samples or None, "workers": workers if count else 0,
                              "requests_per_sample": every}  # fmt: skip
    if not count:
        return {"window": window, "layers": [], "top_features": []}
    m1 = totals[HEADER : HEADER + spec.size] / count
    m2 = totals[HEADER + spec.size : HEADER + 2 * spec.size] / count
    layers = []
    for layer in spec.layers:
        # per channel, over the window's samples and the channel's positions
        block = slice(layer.start, layer.start + layer.size)
        mean = m1[block].reshape(layer.channels, layer.positions).mean(axis=1)
        sq = m2[block].reshape(layer.channels, layer.positions).mean(axis=1)
        layers.append(
            {
                "name": layer.name,
                "channels": layer.channels,
                "mean_shift": float(np.sqrt(np.mean(mean * mean))),
                "variance_ratio": float(np.mean(np.maximum(sq - mean * mean, 0.0))),
                "score": float(np.mean(sq)),
            }
        )
    f = len(spec.feature_names)
    fm1, fm2 = m1[:f], m2[:f]
    order = np.argsort(-np.abs(fm1), kind="stable")[: top if top > 0 else f]
    features = [
        {"name": spec.feature_names[j], "mean_shift": float(fm1[j]),
         "variance_ratio": float(max(fm2[j] - fm1[j] ** 2, 0.0))}
        for j in order.tolist()
    ]  # fmt: skip
    return {"window": window, "layers": layers, "top_features": features}


def dt_iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _mapped(path: Path, size: int, fresh: bool) -> np.ndarray:
    """A float64 vector backed by `path` (created, or reused when not `fresh` and of the right size)."""
    if fresh or not path.exists() or path.stat().st_size != size * 8:
        np.zeros(size).tofile(path)
    return np.memmap(path, dtype=np.float64, mode="r+", shape=(size,))
