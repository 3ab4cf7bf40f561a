"""Model level, one process, interleaved rounds: torch eager (eval, unfolded) vs onnxruntime on
the --no-fold reference graph vs onnxruntime on the folded graph.

The graphs run as the service runs them: a request that needs no drift outputs goes to a copy of
the graph without them (service/onnx_ops.py's without_outputs), and "+ drift outputs" is the whole
graph with the outputs asked for, as for a request the drift monitor takes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from model.checkpoint import load_checkpoint
from model.data import load_dataset
from service.onnx_ops import without_outputs


def ort_session(model: Path | bytes) -> ort.InferenceSession:
    """As the service opens it: one intra-op thread, default graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def served(path: Path) -> ort.InferenceSession:
    """The graph without its drift outputs, as the service runs a request that needs none."""
    taps = [o.name for o in ort_session(path).get_outputs() if o.name.startswith("drift.")]
    return ort_session(without_outputs(path.read_bytes(), taps))


def time_calls(fn: Callable[[], Any], n: int) -> np.ndarray:
    """Per-call wall time in seconds, n calls after 20 warm-up calls."""
    for _ in range(20):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = time.perf_counter_ns() - t0
    return out / 1e9


def runners(checkpoint: Path, folded: Path, reference: Path, x: np.ndarray,
            no_drift: Path | None = None) -> dict[str, Callable[[], Any]]:  # fmt: skip
    model, _ = load_checkpoint(checkpoint)
    xt = torch.from_numpy(x)
    ref, fold, whole = served(reference), served(folded), ort_session(folded)
    feeds = {"input": x}
    taps = [o.name for o in whole.get_outputs() if o.name.startswith("drift.")]

    def torch_eager() -> Any:
        with torch.no_grad():
            return torch.softmax(model(xt), dim=1)

    out: dict[str, Callable[[], Any]] = {
        "torch eager (eval, unfolded)": torch_eager,
        "onnxruntime, reference graph (BN kept)": lambda: ref.run(["probabilities"], feeds),
        "onnxruntime, folded graph": lambda: fold.run(["probabilities"], feeds),
        "onnxruntime, folded graph + drift outputs": lambda: whole.run(["probabilities", *taps], feeds),
    }
    if no_drift is not None:
        plain = ort_session(no_drift)
        out["onnxruntime, folded graph, exported --no-drift"] = lambda: plain.run(["probabilities"], feeds)
    return out


def run(name: str, checkpoint: Path, folded: Path, reference: Path, rounds: int, calls: int,
        torch_threads: int, no_drift: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    torch.set_num_threads(torch_threads)
    ckpt_data = load_checkpoint(checkpoint)[1]["dataset"]
    data = load_dataset(ckpt_data["name"], ckpt_data["split_seed"])
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    for batch in (1, 64):
        x = np.ascontiguousarray(data.test.x[rng.integers(0, len(data.test), batch)])
        fns = runners(checkpoint, folded, reference, x, no_drift)
        per_runner: dict[str, list[np.ndarray]] = {k: [] for k in fns}
        for _ in range(rounds):  # interleaved: every runner once per round
            for label, fn in fns.items():
                per_runner[label].append(time_calls(fn, calls))
        for label, samples in per_runner.items():
            medians = [float(np.median(s)) for s in samples]
            p99s = [float(np.percentile(s, 99)) for s in samples]
            med = float(np.median(medians))
            results.append({
                "model": name, "runtime": label, "batch": batch,
                "median_us": med * 1e6, "p99_us": float(np.median(p99s)) * 1e6,
                "samples_per_s": batch / med, "round_medians_us": [m * 1e6 for m in medians],
            })  # fmt: skip
    return results
