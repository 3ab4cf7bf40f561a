"""python -m benchmarks: the whole benchmark, one run, side by side, written as Markdown and JSON.

make bench                      # or: python -m benchmarks --out benchmarks/results
python -m benchmarks --quick    # shorter cells, for a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import drift_rates, http_level, model_level
from benchmarks.report import write_report

ROOT = Path(__file__).resolve().parent.parent
ART = ROOT / "artifacts"
KSERVE_PY = ROOT / ".bench" / "kserve" / "bin" / "python"


def sh(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def ensure_models() -> dict[str, dict[str, Path]]:
    """The default MLP (make model) and a digits CNN, each folded and as the --no-fold reference."""
    models = {"mlp (breast_cancer)": ART, "cnn (digits)": ART / "bench-digits"}
    if not (ART / "checkpoint.pt").exists():
        sh("-m", "model.train", "--out", str(ART), "--no-progress")
    if not (ART / "bench-digits" / "checkpoint.pt").exists():
        sh("-m", "model.train", "--dataset", "digits", "--out", str(ART / "bench-digits"), "--no-progress")
    out = {}
    for name, d in models.items():
        paths = {"checkpoint": d / "checkpoint.pt", "folded": d / "model.onnx", "reference": d / "model.reference.onnx",
                 "no_drift": d / "model.no-drift.onnx"}  # fmt: skip
        if not paths["folded"].exists():
            sh("-m", "export", str(paths["checkpoint"]), "--out", str(paths["folded"]))
        if not paths["no_drift"].exists():
            sh("-m", "export", str(paths["checkpoint"]), "--no-drift", "--out", str(paths["no_drift"]))
        if not paths["reference"].exists():
            sh("-m", "export", str(paths["checkpoint"]), "--no-fold", "--out", str(paths["reference"]))
        out[name] = paths
    return out


def bodies(model_path: Path) -> dict[str, bytes]:
    import numpy as np
    import onnxruntime as ort

    card = json.loads(ort.InferenceSession(str(model_path)).get_modelmeta().custom_metadata_map["bnserve.card"])
    # the values as the dataset writes them (15.3, not float32's 15.300000190734863), as clients send them
    examples = [[float(str(np.float32(v))) for v in e["features"]] for e in card["examples"]]
    x = examples[0]
    v2 = {"inputs": [{"name": "input", "shape": [1, len(x)], "datatype": "FP32", "data": x}]}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [64, len(x)],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 64 * len(x) * 4},
                }
            ],
            "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    v2_binary = header.encode() + np.asarray(examples * 32, "<f4").tobytes()
    batch = {"instances": examples * 32}
    return {
        "name": card["name"].encode(),
        "predict": json.dumps({"features": x}).encode(),
        "v2": json.dumps(v2).encode(),
        "batch64": json.dumps(batch).encode(),
        "kserve": json.dumps({"instances": [x]}).encode(),
        "v2_binary64": v2_binary,
        "v2_binary64_header": str(len(header)).encode(),
    }


DRIFT_COST = {  # label: (which file, environment, path)
    "--no-drift export": ("no_drift", {}, "/predict"),
    "drift file, monitor off": ("folded", {"BNSERVE_DRIFT_MONITOR": "false"}, "/predict"),
    "drift file, monitor on (default: 1 request in 4)": ("folded", {}, "/predict"),
    "drift file, monitor on every request": ("folded", {"BNSERVE_DRIFT_MONITOR_EVERY": "1"}, "/predict"),
    "drift file, /predict?drift=true": ("folded", {}, "/predict?drift=true"),
}


def drift_cost(paths: dict[str, Path], seconds: float, rounds: int) -> dict[str, Any]:
    """The drift monitor's cost on /predict at 16 connections: one server per setting, all alive at
    once, `rounds` interleaved rounds (these machines drift by 15% between minutes)."""
    py = sys.executable
    body = bodies(paths["folded"])["predict"]
    servers = {label: http_level.start(f"drift-{i}", [py, "-m", "service", "--model", str(paths[which]), "--port",
                                                      "{port}", "--no-access-log", "--log-level", "warning"],
                                       "/readyz", env=env)
               for i, (label, (which, env, _)) in enumerate(DRIFT_COST.items())}  # fmt: skip
    cells: list[dict[str, Any]] = []
    try:
        for label, server in servers.items():  # warm-up, not recorded
            http_level.wrk(server.url(DRIFT_COST[label][2]), body, 16, 1)
        for rnd in range(rounds):
            for label, server in servers.items():
                r = http_level.wrk(server.url(DRIFT_COST[label][2]), body, 16, seconds)
                cells.append({"target": label, "repeat": rnd, **r})
    finally:
        for s in servers.values():
            s.stop()
    medians = {label: {"req_per_s": statistics.median(c["req_per_s"] for c in cells if c["target"] == label),
                       "p50_ms": statistics.median(c["p50_us"] for c in cells if c["target"] == label) / 1000}
               for label in DRIFT_COST}  # fmt: skip
    return {"cells": cells, "medians": medians, "rounds": rounds, "seconds": seconds}


def http_cells(model: Path, seconds: float, repeats: int) -> dict[str, Any]:
    b = bodies(model)
    name = b["name"].decode()
    py = sys.executable
    servers = {
        "bare": http_level.start("bare", [py, "-m", "uvicorn", "benchmarks.bare_app:app", "--host", "127.0.0.1",
                                          "--port", "{port}", "--no-access-log", "--log-level", "warning"],
                                 "/docs"),
        "bnserve": http_level.start("bnserve", [py, "-m", "service", "--model", str(model), "--port", "{port}",
                                                "--no-access-log", "--log-level", "warning"], "/readyz"),
    }  # fmt: skip
    if KSERVE_PY.exists():
        servers["kserve"] = http_level.start(
            "kserve", [str(KSERVE_PY), str(ROOT / "benchmarks" / "kserve_peer.py"), "--model-path", str(model),
                       "--name", name, "--port", "{port}"], f"/v1/models/{name}")  # fmt: skip
    targets = {
        "bare FastAPI (constant JSON)": ("bare", "/predict", b["predict"]),
        "bnserve /predict": ("bnserve", "/predict", b["predict"]),
        "bnserve /v2/.../infer": ("bnserve", f"/v2/models/{name}/infer", b["v2"]),
    }
    cells: list[dict[str, Any]] = []
    try:
        for srv, path, body in targets.values():  # warm-up, not recorded
            http_level.wrk(servers[srv].url(path), body, 16, 1)
        for rep in range(repeats):
            for conns in (1, 16, 64):
                for label, (srv, path, body) in targets.items():
                    r = http_level.wrk(servers[srv].url(path), body, conns, seconds)
                    cells.append({"target": label, "repeat": rep, **r})
            r = http_level.wrk(servers["bnserve"].url("/predict/batch"), b["batch64"], 16, seconds)
            cells.append({"target": "bnserve /predict/batch (64 instances)", "repeat": rep, "samples": 64, **r})
            r = http_level.wrk(
                servers["bnserve"].url(f"/v2/models/{name}/infer"),
                b["v2_binary64"],
                16,
                seconds,
                headers={"Inference-Header-Content-Length": b["v2_binary64_header"].decode()},
            )
            cells.append(
                {"target": "bnserve /v2/.../infer, binary tensor, batch 64", "repeat": rep, "samples": 64, **r}
            )
            if "kserve" in servers:
                r = http_level.wrk(servers["kserve"].url(f"/v1/models/{name}:predict"), b["kserve"], 16, seconds)
                cells.append({"target": "KServe ModelServer V1 :predict (peer)", "repeat": rep, **r})
                r = http_level.wrk(servers["bnserve"].url(f"/v1/models/{name}:predict"), b["kserve"], 16, seconds)
                cells.append({"target": "bnserve /v1/...:predict", "repeat": rep, **r})
        rss = {k: s.rss_mib() for k, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    # two workers, unpinned (both cores; wrk shares core 1)
    two = http_level.start("bnserve-2w", [py, "-m", "service", "--model", str(model), "--port", "{port}",
                                          "--no-access-log", "--log-level", "warning", "--workers", "2"],
                           "/readyz", cpus="0,1")  # fmt: skip
    try:
        for rep in range(repeats):
            r = http_level.wrk(two.url("/predict"), b["predict"], 16, seconds)
            cells.append({"target": "bnserve /predict, 2 workers (unpinned)", "repeat": rep, **r})
    finally:
        two.stop()
    return {"cells": cells, "rss_mib_after_load": rss}


def startup(model: Path, runs: int = 3) -> dict[str, Any]:
    py = sys.executable
    times, rss = [], []
    for _ in range(runs):
        s = http_level.start("startup", [py, "-m", "service", "--model", str(model), "--port", "{port}",
                                         "--no-access-log", "--log-level", "warning"], "/readyz")  # fmt: skip
        times.append(s.startup_s)
        rss.append(s.rss_mib())
        s.stop()
    return {"startup_s": statistics.median(times), "startup_runs_s": times, "rss_mib": statistics.median(rss)}


def runtime_install_size() -> dict[str, Any]:
    """The runtime-only install (no extras), as the image has it: a fresh venv, pinned."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
        subprocess.run([*pip, str(ROOT)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        site = next((venv / "lib").glob("python*/site-packages"))
        size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
        has_torch = (site / "torch").exists()
    return {"site_packages_mib": size / 2**20, "torch_installed": has_torch}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("fastapi", "starlette", "uvicorn", "pydantic", "onnxruntime", "numpy", "torch", "httptools",
                 "uvloop", "prometheus-client"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout or wrk.stderr).split()[1] if (wrk.stdout or wrk.stderr) else "?"
    if KSERVE_PY.exists():
        k = subprocess.run([str(KSERVE_PY), "-c", "import kserve, importlib.metadata as m; print(m.version('kserve'))"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        out["kserve"] = k.stdout.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="directory for the report")
    p.add_argument("--quick", action="store_true", help="short cells (1 s), one model-level round: a smoke run")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each wrk cell")
    p.add_argument("--repeats", type=int, default=3, help="runs of each HTTP cell, alternating (median reported)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("benchmarks: wrk and taskset are needed (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    seconds = 1.0 if args.quick else args.seconds
    repeats = 2 if args.quick else max(2, args.repeats)
    started = time.time()
    models = ensure_models()
    print("model level ...", flush=True)
    model_results = []
    for name, paths in models.items():
        model_results += model_level.run(name, paths["checkpoint"], paths["folded"], paths["reference"],
                                         rounds=2 if args.quick else 3, calls=300 if args.quick else 2000,
                                         torch_threads=os.cpu_count() or 1, no_drift=paths["no_drift"])  # fmt: skip
    print("http level ...", flush=True)
    mlp = models["mlp (breast_cancer)"]
    http = http_cells(mlp["folded"], seconds, repeats)
    print("drift monitor's cost ...", flush=True)
    cost = drift_cost(mlp, seconds, rounds=3 if args.quick else 5)
    print("drift detection ...", flush=True)
    drift = drift_rates.run({name: paths["checkpoint"] for name, paths in models.items()})
    print("start-up and size ...", flush=True)
    result = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": versions(),
        "conditions": {
            "wrk": f"1 thread, {seconds:g} s per cell, each cell run {repeats} times alternating; median reported",
            "pinning": "server on CPU 0, wrk on CPU 1 (except the 2-worker cell: server on both)",
            "server": "one uvicorn worker (httptools, uvloop), access log off; onnxruntime 1 intra-op thread",
            "model_level": "one process, interleaved rounds, per-call wall time; onnxruntime 1 intra-op thread "
            "(as served), torch eager with its default threads (one per core) under no_grad",
            "quick": args.quick,
        },
        "model_level": model_results,
        "http": http,
        "drift": drift,
        "drift_cost": cost,
        "startup": startup(models["mlp (breast_cancer)"]["folded"]),
        "install": runtime_install_size(),
        "duration_s": None,
    }
    result["duration_s"] = time.time() - started
    md = write_report(result, args.out)
    print(md)
    print(f"wrote {args.out / 'latest.md'} and {args.out / 'latest.json'} in {result['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
