"""Every request's passage: a request id, admission under BNSERVE_MAX_IN_FLIGHT, metrics and one
access-log line. The FastAPI side (RequestMiddleware) and the hot path share this one object."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import time

from service.config import Settings
from service.errors import ServiceError
from service.jsonio import dumps
from service.metrics import Metrics

access_logger = logging.getLogger("bnserve.access")

# Probes and scrapes are never turned away: an overloaded server must still say so.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


class Busy(ServiceError):
    status_code = 503


class Gate:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.active = 0  # one event loop per process: a plain counter is exact
        metrics.count_in_flight(lambda: self.active)
        # a new id: this process's random prefix and a count (0.6 us for os.urandom each time here)
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(int.from_bytes(os.urandom(4)))

    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's X-Request-ID when it is a sane token, else a new one (16 hex digits)."""
        for name, value in headers:
            if name == b"x-request-id":
                if 0 < len(value) <= 128 and value.isascii() and all(33 <= c < 127 for c in value):
                    return value.decode("ascii")
                break
        return f"{self._prefix}{next(self._ids) & 0xFFFFFFFF:08x}"

    def enter(self, path: str) -> Busy | None:
        limit = self.settings.max_in_flight
        if self.active >= limit and path not in EXEMPT:
            return Busy(f"server busy: {self.active} requests in flight (BNSERVE_MAX_IN_FLIGHT={limit}); retry",
                        headers={"Retry-After": "1"})  # fmt: skip
        self.active += 1
        self.metrics.enter()
        return None

    def leave(self) -> None:
        self.active -= 1
        self.metrics.leave()

    def record(self, route: str, method: str, path: str, status: int, started: float, request_id: str,
               body: bytes | None = None) -> None:  # fmt: skip
        seconds = time.perf_counter() - started
        self.metrics.request_done(route, method, status, seconds)
        s = self.settings
        if not s.access_log:
            return
        if s.log_format == "json":
            line: dict[str, object] = {
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "request_id": request_id, "method": method, "route": route, "path": path, "status": status,
                "latency_ms": round(seconds * 1000, 3),
            }  # fmt: skip
            if s.log_bodies and body is not None:
                line["body"] = body[:2048].decode("utf-8", "replace")
            access_logger.info(dumps(line).decode())
        else:
            access_logger.info("%s %s %d %.2fms id=%s", method, path, status, seconds * 1000, request_id)
