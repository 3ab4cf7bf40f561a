"""Drift detection rates: how often the monitor flags unseen in-distribution samples and shifted ones.

Each model is exported with `--calibrate-on validation`, so the test split is data neither the
training nor the calibration saw; every shift is applied to the test split. The samples go
through `ModelRuntime.infer(..., drift=True)`, the code the service runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from model.data import Dataset, load_dataset
from service.runtime import ModelRuntime

ALPHAS = (0.01, 0.05)


def shifts(data: Dataset, runtime: ModelRuntime, rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = data.test.x.reshape(len(data.test.x), -1).astype(np.float64)
    out = {"none (unseen test split)": x}
    if data.kind == "tabular":
        bn = runtime.bn_layers[0]
        ratio = np.asarray(bn["running_mean"]) / np.sqrt(np.asarray(bn["running_var"]))
        sd = data.train.x.std(axis=0)
        for label, j in (("furthest from 0", int(np.argmax(ratio))), ("nearest 0", int(np.argmin(ratio)))):
            scaled = x.copy()
            scaled[:, j] *= 3
            out[f"one feature x3: {data.feature_names[j]!r} (mean/sd {ratio[j]:.1f}, {label})"] = scaled
        every = []
        for j in range(x.shape[1]):
            scaled = x.copy()
            scaled[:, j] *= 3
            every.append(scaled)
        out["one feature x3, each feature in turn (mean over features)"] = np.stack(every)
        out["all features +2 SD"] = x + 2 * sd
        out["all features -2 SD"] = x - 2 * sd
    else:
        out["inverted (16 - x)"] = 16 - x
        for s in (2, 4, 8):
            out[f"Gaussian noise, sd {s}, clipped to 0..16"] = np.clip(x + rng.normal(0, s, x.shape), 0, 16)
    return out


def rates(runtime: ModelRuntime, data: Dataset) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for label, x in shifts(data, runtime, rng).items():
        batches = x if x.ndim == 3 else x[None]
        flags: dict[float, list[float]] = {a: [] for a in ALPHAS}
        named: list[list[str]] = []
        for b in batches:
            _, reports = runtime.infer(b.astype(np.float32), drift=True)
            assert reports is not None
            for a in ALPHAS:
                flags[a].append(np.mean([r["p_value"] <= a for r in reports]))
            named.append([r["top_features"][0]["name"] for r in reports])
        row: dict[str, Any] = {"shift": label, "samples": int(batches.shape[1])}
        row.update({f"flagged_at_{a:g}": float(np.mean(flags[a])) for a in ALPHAS})
        if label.startswith("one feature x3: "):
            feature = label.split("'")[1]
            row["named_first"] = float(np.mean([n == feature for n in named[0]]))
        rows.append(row)
    return rows


def run(models: dict[str, Path]) -> dict[str, Any]:
    """`models` maps a label to a checkpoint; returns the rates table for each."""
    out: dict[str, Any] = {"method": __doc__.strip().splitlines()[0], "models": {}}
    for label, checkpoint in models.items():
        path = checkpoint.with_name("model.validation-calibrated.onnx")
        if not path.exists():
            subprocess.run([sys.executable, "-m", "export", str(checkpoint), "--calibrate-on", "validation",
                            "--out", str(path)], check=True, capture_output=True)  # fmt: skip
        runtime = ModelRuntime.load(path)
        data = load_dataset(runtime.card["dataset"]["name"], runtime.card["dataset"]["split_seed"])
        out["models"][label] = {
            "calibration_samples": len(runtime.drift.calibration) if runtime.drift else 0,
            "rates": rates(runtime, data),
        }
    return out
