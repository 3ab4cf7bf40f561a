"""python -m service --model PATH --host H --port P"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings
from service.errors import ModelLoadError
from service.runtime import ModelRuntime


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a folded bnserve ONNX model over HTTP. Every flag can also be set "
        "as an environment variable (BNSERVE_MODEL_PATH, BNSERVE_HOST, BNSERVE_PORT, ...); a flag wins.",
    )
    p.add_argument("--model", dest="model_path", type=Path, help="ONNX file (default artifacts/model.onnx)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--max-batch-size", type=int, help="most instances per /predict/batch (default 1024)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 1 MiB)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--no-access-log", dest="access_log", action="store_const", const=False, help="no log line per request"
    )
    p.add_argument("--workers", type=int, help="worker processes (default 1); metrics add up across them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        print(f"bnserve: invalid setting: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runtime = ModelRuntime.load(settings.model_path, intra_op_threads=settings.intra_op_threads)
    except ModelLoadError as e:
        print(f"bnserve: cannot start: {e}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return _serve_workers(settings, overrides)
    uvicorn.run(
        create_app(settings, runtime=runtime),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )
    return 0


def _serve_workers(settings: Settings, overrides: dict[str, object]) -> int:
    """Several processes: each worker builds its app from the environment, so the flags go there;
    prometheus-client's multiprocess mode needs a directory shared by the workers."""
    os.environ.update({f"BNSERVE_{k.upper()}": str(v) for k, v in overrides.items()})
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bnserve-metrics-")
    for stale in Path(metrics_dir).glob("*.db"):  # a previous run's figures must not carry over
        stale.unlink()
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
