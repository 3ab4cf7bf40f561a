"""Prometheus metrics (prometheus-client), one registry per app: nothing global.

Names follow Prometheus conventions: `bnserve_` prefix, base units (seconds),
`_total` for counters. With several uvicorn workers, prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `python -m service
--workers N`) keeps each worker's values in shared files and /metrics adds them up.

In one process, the per-request figures are counted in plain Python (`_Tally`) and handed to
prometheus-client as metric families when /metrics is scraped: its Counter, Gauge and Histogram
take a lock per update and cost more than a request's own work (six updates a request, 6% of a
/predict under load, profiled with py-spy; the same figures by `_Tally`: under 1 us). The
exposition is prometheus-client's, and the output is the same (a test compares the two modes).
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from service.drift import Window

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MODEL_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
SAMPLE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# name and help of each per-request metric, for both ways of counting it
REQUESTS = ("bnserve_requests", "HTTP requests by route, method and status")
LATENCY = ("bnserve_request_duration_seconds", "HTTP request latency")
MODEL_LATENCY = ("bnserve_model_execution_duration_seconds", "onnxruntime session.run latency")
SAMPLES = ("bnserve_request_samples", "samples per inference request")
IN_FLIGHT = ("bnserve_requests_in_flight", "HTTP requests being served")


class _Histogram:
    """One histogram's counts: per bucket (not cumulative), their sum, and when it began."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: bucket i holds bounds[i-1] < v <= bounds[i]
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        """Buckets (cumulative), count, sum and created, as prometheus-client's Histogram writes them."""
        total, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))
        family.add_metric(labels, buckets, self.sum)
        family.samples.append(Sample(family.name + "_created", dict(zip(family._labelnames, labels, strict=True)),
                                     self.created))  # fmt: skip


class _Tally:
    """The per-request metrics of one process, as plain numbers, exported as metric families."""

    def __init__(self, in_flight: Callable[[], int]) -> None:
        self.in_flight = in_flight
        self.requests: dict[tuple[str, ...], list[float]] = {}  # labels -> [count, created]
        self.latency: dict[tuple[str, ...], _Histogram] = {}
        self.model_latency = _Histogram(MODEL_BUCKETS)
        self.samples = _Histogram(SAMPLE_BUCKETS)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self.requests.get((route, method, str(status)))
        if counter is None:
            counter = self.requests[(route, method, str(status))] = [0, time.time()]
        counter[0] += 1
        latency = self.latency.get((route, method))
        if latency is None:
            latency = self.latency[(route, method)] = _Histogram(LATENCY_BUCKETS)
        latency.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=["route", "method", "status"])
        for labels, (count, created) in self.requests.items():
            requests.add_metric(labels, count, created=created)
        yield requests
        latency = HistogramMetricFamily(*LATENCY, labels=["route", "method"])
        for labels, h in self.latency.items():
            h.add_to(latency, labels)
        yield latency
        for spec, h in ((MODEL_LATENCY, self.model_latency), (SAMPLES, self.samples)):
            family = HistogramMetricFamily(*spec)
            h.add_to(family, [])
            yield family
        in_flight = GaugeMetricFamily(*IN_FLIGHT)
        in_flight.add_metric([], self.in_flight())
        yield in_flight


class Metrics:
    def __init__(self) -> None:
        # In multiprocess mode values live in files, not in a registry; a private
        # registry still keeps two apps in one process (the tests) apart.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.shared = multiprocess_dir() is not None
        self.model_info = Gauge("bnserve_model_info", "the model being served (value 1)", ["name", "version"],
                                registry=r, multiprocess_mode="max")  # fmt: skip
        self.drift_window: Window | None = None  # set when a model with drift calibration is adopted
        self._tally: _Tally | None = None
        if not self.shared:
            self._tally = _Tally(lambda: 0)
            r.register(self._tally)
            return
        self.requests = Counter(*REQUESTS, ["route", "method", "status"], registry=r)
        self.latency = Histogram(*LATENCY, ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram(*MODEL_LATENCY, buckets=MODEL_BUCKETS, registry=r)
        self.samples = Histogram(*SAMPLES, buckets=SAMPLE_BUCKETS, registry=r)
        self.in_flight = Gauge(*IN_FLIGHT, registry=r, multiprocess_mode="livesum")
        # label children, looked up once: `labels()` costs about 1 us a call, a dict hit 0.05 us
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count_in_flight(self, source: Callable[[], int]) -> None:
        """Where one process reads its requests in flight (the Gate's count); with several workers,
        each keeps a shared gauge up to date instead (enter, leave)."""
        if self._tally is not None:
            self._tally.in_flight = source

    def enter(self) -> None:
        if self.shared:
            self.in_flight.inc()

    def leave(self) -> None:
        if self.shared:
            self.in_flight.dec()

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:  # uvicorn accepts any token as a method: keep the label bounded
            method = "other"
        if self._tally is not None:
            self._tally.request_done(route, method, status, seconds)
            return
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                              self.latency.labels(route, method))  # fmt: skip
        children[0].inc()
        children[1].observe(seconds)

    def observe_model(self, seconds: float, samples: int) -> None:
        if self._tally is not None:
            self._tally.model_latency.observe(seconds)
            self._tally.samples.observe(samples)
            return
        self.model_latency.observe(seconds)
        self.samples.observe(samples)

    def set_model(self, name: str, version: str) -> None:
        if not multiprocess_dir():  # clear() is not implemented in multiprocess mode
            self.model_info.clear()
        self.model_info.labels(name, version).set(1)

    def render(self) -> bytes:
        if self.shared:
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
