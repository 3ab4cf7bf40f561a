"""GET /metrics, parsed with prometheus-client's own parser: counters move with traffic."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.service.live import serve

GOOD = [1.0] * 30


def scrape(get) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metric_names_follow_prometheus_conventions(client) -> None:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    expected = {
        "bnserve_requests": "counter",
        "bnserve_request_duration_seconds": "histogram",
        "bnserve_model_execution_duration_seconds": "histogram",
        "bnserve_request_samples": "histogram",
        "bnserve_requests_in_flight": "gauge",
        "bnserve_model_info": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    model = client.get("/model").json()
    info = [s for s in families["bnserve_model_info"].samples]
    assert [(s.labels, s.value) for s in info] == [({"name": model["name"], "version": model["model_version"]}, 1.0)]


def test_counters_and_histograms_move_with_traffic(client) -> None:
    before = scrape(client.get)
    for _ in range(3):
        assert client.post("/predict", json={"features": GOOD}).status_code == 200
    assert client.post("/predict", json={"features": [1]}).status_code == 422
    assert client.post("/predict/batch", json={"instances": [GOOD] * 5}).status_code == 200
    assert client.get("/nope").status_code == 404
    after = scrape(client.get)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bnserve_requests_total", route="/predict", method="POST", status="200") == 3
    assert delta("bnserve_requests_total", route="/predict", method="POST", status="422") == 1
    assert delta("bnserve_requests_total", route="/predict/batch", method="POST", status="200") == 1
    assert delta("bnserve_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("bnserve_request_duration_seconds_count", route="/predict", method="POST") == 4
    assert delta("bnserve_request_duration_seconds_sum", route="/predict", method="POST") > 0
    assert delta("bnserve_model_execution_duration_seconds_count") == 4  # the 422 never reached the model
    assert delta("bnserve_request_samples_sum") == 3 + 5
    assert delta("bnserve_request_samples_bucket", le="1.0") == 3
    assert value(after, "bnserve_requests_in_flight") == 1  # the scrape itself


def test_metrics_add_up_across_two_workers(tabular, tmp_path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with serve(tabular.folded, "--workers", "2", env=env, ready_lines=2) as server:
        n = 40
        with httpx.Client(base_url=server.base, timeout=10) as http:
            for _ in range(n):  # new connections, so both workers take some
                assert httpx.post(f"{server.base}/predict", json={"features": GOOD}, timeout=10).status_code == 200
            samples = scrape(http.get)
        pids = {line.split("[")[1].split("]")[0] for line in server.output if "Started server process" in line}
    assert len(pids) >= 2, "two workers did not start"
    assert value(samples, "bnserve_requests_total", route="/predict", method="POST", status="200") == n
    assert value(samples, "bnserve_request_samples_count") == n


def test_one_process_writes_what_prometheus_clients_own_metrics_write() -> None:
    """One process counts in plain Python (service/metrics.py's _Tally); its exposition equals that
    of prometheus-client's Counter, Histogram and Gauge fed the same requests (but the timestamps)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from service.metrics import (
        IN_FLIGHT,
        LATENCY,
        LATENCY_BUCKETS,
        MODEL_BUCKETS,
        MODEL_LATENCY,
        REQUESTS,
        SAMPLE_BUCKETS,
        SAMPLES,
        Metrics,
    )

    ours = Metrics()
    ours.count_in_flight(lambda: 3)
    r = CollectorRegistry()
    requests = Counter("bnserve_requests", REQUESTS[1], ["route", "method", "status"], registry=r)
    latency = Histogram("bnserve_request_duration_seconds", LATENCY[1], ["route", "method"],
                        buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
    model = Histogram("bnserve_model_execution_duration_seconds", MODEL_LATENCY[1], buckets=MODEL_BUCKETS,
                      registry=r)  # fmt: skip
    samples = Histogram("bnserve_request_samples", SAMPLES[1], buckets=SAMPLE_BUCKETS, registry=r)
    Gauge("bnserve_requests_in_flight", IN_FLIGHT[1], registry=r).set(3)
    Gauge("bnserve_model_info", "the model being served (value 1)", ["name", "version"], registry=r).labels(
        "m", "v"
    ).set(1)
    ours.set_model("m", "v")
    traffic = [
        ("/predict", "POST", 200, 0.0001),  # on a bucket bound
        ("/predict", "POST", 200, 0.0003),
        ("/predict", "POST", 422, 2.5),
        ("/predict/batch", "POST", 200, 7.0),  # past the last bound
        ("unmatched", "GET", 404, 0.01),
        ("/predict", "POST", 200, 0.0),
    ]
    for route, method, status, seconds in traffic:
        ours.request_done(route, method, status, seconds)
        requests.labels(route, method, str(status)).inc()
        latency.labels(route, method).observe(seconds)
    for seconds, n in [(0.000005, 1), (0.00002, 64), (0.2, 1), (3.0, 5000), (0.0001, 2)]:
        ours.observe_model(seconds, n)
        model.observe(seconds)
        samples.observe(n)

    def families(text: str) -> dict:
        """Each family's type, help and samples; of the _created samples only which there are."""
        out = {}
        for f in text_string_to_metric_families(text):
            keys = [(s.name, tuple(sorted(s.labels.items()))) for s in f.samples]
            values = sorted(
                (*k, s.value) for k, s in zip(keys, f.samples, strict=True) if not k[0].endswith("_created")
            )
            out[f.name] = (f.type, f.documentation, values, sorted(k for k in keys if k[0].endswith("_created")))
        return out

    assert families(ours.render().decode()) == families(generate_latest(r).decode())
