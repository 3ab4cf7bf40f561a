"""Prometheus metrics (prometheus-client), one registry per app: nothing global.

Names follow Prometheus conventions: `bnserve_` prefix, base units (seconds),
`_total` for counters. With several uvicorn workers, prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `python -m service
--workers N`) keeps each worker's values in shared files and /metrics adds them up.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.drift import Window

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MODEL_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
SAMPLE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        # In multiprocess mode values live in files, not in a registry; a private
        # registry still keeps two apps in one process (the tests) apart.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("bnserve_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("bnserve_request_duration_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.model_latency = Histogram("bnserve_model_execution_duration_seconds", "onnxruntime session.run latency",
                                       buckets=MODEL_BUCKETS, registry=r)  # fmt: skip
        self.samples = Histogram("bnserve_request_samples", "samples per inference request",
                                 buckets=SAMPLE_BUCKETS, registry=r)  # fmt: skip
        self.in_flight = Gauge("bnserve_requests_in_flight", "HTTP requests being served", registry=r,
                               multiprocess_mode="livesum")  # fmt: skip
        self.model_info = Gauge("bnserve_model_info", "the model being served (value 1)", ["name", "version"],
                                registry=r, multiprocess_mode="max")  # fmt: skip

        self.drift_window: Window | None = None  # set when a model with drift calibration is adopted

        # label children, looked up once: `labels()` costs about 1 us a call, a dict hit 0.05 us
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:  # uvicorn accepts any token as a method: keep the label bounded
            method = "other"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                              self.latency.labels(route, method))  # fmt: skip
        children[0].inc()
        children[1].observe(seconds)

    def observe_model(self, seconds: float, samples: int) -> None:
        self.model_latency.observe(seconds)
        self.samples.observe(samples)

    def set_model(self, name: str, version: str) -> None:
        if not multiprocess_dir():  # clear() is not implemented in multiprocess mode
            self.model_info.clear()
        self.model_info.labels(name, version).set(1)

    def render(self) -> bytes:
        if multiprocess_dir():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            out = bytes(generate_latest(registry))
        else:
            out = bytes(generate_latest(self.registry))
        if self.drift_window is not None:
            drift = CollectorRegistry()
            drift.register(DriftCollector(self.drift_window))
            out += bytes(generate_latest(drift))
        return out


class DriftCollector:
    """GET /drift's figures as gauges, computed at scrape time from the window (which, with several
    workers, already adds up all of them: so these gauges are not summed again)."""

    def __init__(self, window: Window) -> None:
        self.window = window

    def collect(self) -> list[Metric]:
        report = self.window.report(top=0)
        count = GaugeMetricFamily("bnserve_drift_window_samples", "samples in the drift window")
        count.add_metric([], report["window"]["count"])
        families: list[Metric] = [count]
        for key, text in (("mean_shift", "RMS over channels of the window's mean z, in running SDs"),
                          ("variance_ratio", "mean over channels of the window's variance / running variance"),
                          ("score", "mean over channels of the window's mean z**2 (1: like training)")):  # fmt: skip
            family = GaugeMetricFamily(f"bnserve_drift_layer_{key}", text, labels=["layer"])
            for layer in report["layers"]:
                family.add_metric([layer["name"]], layer[key])
            families.append(family)
        shift = GaugeMetricFamily("bnserve_drift_feature_mean_shift", "the window's mean z of each input feature",
                                  labels=["feature"])  # fmt: skip
        for feature in report["top_features"]:
            shift.add_metric([feature["name"]], feature["mean_shift"])
        families.append(shift)
        return families
