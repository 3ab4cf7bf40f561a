"""python -m service --model PATH --host H --port P"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError
from starlette.datastructures import State

from service.app import create_app, open_model
from service.config import Settings
from service.errors import ModelLoadError


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


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("bnserve.access")  # one line per request, exactly as Gate writes it
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [handler]
    access.propagate = False
    access.setLevel(logging.INFO)


class GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT readiness turns 503 at once; uvicorn then stops accepting, lets the
    requests in flight finish (at most BNSERVE_DRAIN_SECONDS) and exits."""

    def __init__(self, config: uvicorn.Config, state: State) -> None:
        super().__init__(config)
        self.app_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app_state.ready = False
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        print(f"bnserve: invalid setting: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        runtime = open_model(settings)  # fail fast, with one line, before any port is bound
    except ModelLoadError as e:
        print(f"bnserve: cannot start: {e}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        cores = os.cpu_count() or 1
        if settings.intra_op_threads == 0:  # "one per core" is per process: share the cores out
            overrides["intra_op_threads"] = max(1, cores // settings.workers)
        threads = int(str(overrides.get("intra_op_threads", settings.intra_op_threads)))
        if settings.workers * threads > cores:
            logging.getLogger("bnserve").warning(
                "%d workers x %d onnxruntime threads > %d cores: they will contend", settings.workers, threads, cores
            )
        return _serve_workers(settings, overrides)
    app = create_app(settings, runtime=runtime)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=settings.drain_seconds)  # fmt: skip
    GracefulServer(config, app.state).run()
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
        access_log=False,
        timeout_graceful_shutdown=settings.drain_seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
