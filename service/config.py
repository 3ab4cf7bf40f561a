"""Settings: one pydantic-settings class, env prefix BNSERVE_, read in main() or create_app(), never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BNSERVE_", extra="ignore", protected_namespaces=())

    model_path: Path = Field(Path("artifacts/model.onnx"), description="the folded ONNX file to serve")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    max_batch_size: int = Field(1024, ge=1, description="most instances accepted by /predict/batch")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted (413 past it)")
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = one per core)")
    warmup_runs: int = Field(5, ge=1, description="inference runs before /readyz turns 200")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(True, description="log one line per request")
    workers: int = Field(1, ge=1, description="uvicorn worker processes (metrics add up across them)")
    model_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{12,64}$", description="pin the model file: its sha256 (or its first 12+ hex)"
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token for POST /admin/reload; without it the admin routes do not exist"
    )
    max_json_depth: int = Field(
        16,
        ge=2,
        le=200,
        description="deepest nesting of V2 tensor data; elsewhere the schemas bound it, and the "
        "parser refuses more than 200 levels anywhere",
    )
    max_in_flight: int = Field(256, ge=1, description="requests served at once; past it 503 with Retry-After")
    request_timeout: float = Field(30.0, gt=0, description="seconds to receive a request body (408 past it)")
    drain_seconds: int = Field(10, ge=1, description="on SIGTERM, how long requests in flight may take")
    docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS (none: CORS off)")
    log_format: Literal["text", "json"] = Field("json", description="access log lines as JSON or text")
    log_bodies: bool = Field(False, description="DEBUG ONLY: put request bodies (feature values) in the access log")
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="flag a sample as drifted when its p-value is at most this (false-positive rate)"
    )
    drift_window_seconds: float = Field(
        300.0, ge=0, description="GET /drift's window: seconds, aligned to the clock (0: no time limit)"
    )
    drift_window_samples: int = Field(0, ge=0, description="GET /drift's window: most samples per worker (0: no limit)")
    drift_monitor: bool = Field(True, description="feed answered samples to the drift window (false: none)")
    drift_monitor_every: int = Field(
        4, ge=1, description="the drift window takes the samples of one answered request in this many (1: all)"
    )
    ui: bool = Field(True, description="serve the page at /ui (false: an API only)")
    hot_path: bool = Field(
        True, description="serve the inference routes as plain ASGI ahead of FastAPI's router (same contract)"
    )
