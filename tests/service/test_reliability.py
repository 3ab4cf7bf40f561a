"""Faults and limits: the self-test gate, integrity, hot reload, graceful shutdown, in-flight and
time limits, request ids and the access log, CORS and docs switches."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.errors import ModelLoadError
from tests.service.live import serve

GOOD = [1.0] * 30
TOKEN = "s3cret-token"


def edit_card(src: Path, dst: Path, change) -> Path:
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == "bnserve.card":
            card = json.loads(prop.value)
            change(card)
            prop.value = json.dumps(card)
    onnx.save(proto, str(dst))
    return dst


# ---------------------------------------------------------------- self-test and integrity


def test_a_model_whose_golden_answers_are_wrong_never_becomes_ready(tabular, tmp_path: Path) -> None:
    def wrong(card: dict) -> None:
        ex = card["examples"][0]["probabilities"]
        k = max(ex, key=ex.get)
        ex[k] -= 0.01

    bad = edit_card(tabular.folded, tmp_path / "bad.onnx", wrong)
    with pytest.raises(ModelLoadError, match="self-test failed: golden example 0 differs"), \
            TestClient(create_app(Settings(model_path=bad))):  # fmt: skip
        pass


def test_an_altered_graph_is_refused(tabular, tmp_path: Path) -> None:
    proto = onnx.load(str(tabular.folded))
    init = proto.graph.initializer[0]
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(proto, str(tmp_path / "altered.onnx"))
    with pytest.raises(ModelLoadError, match="does not match the model card's graph_sha256"), \
            TestClient(create_app(Settings(model_path=tmp_path / "altered.onnx"))):  # fmt: skip
        pass


def test_model_sha256_pins_the_file(tabular) -> None:
    import hashlib

    digest = hashlib.sha256(tabular.folded.read_bytes()).hexdigest()
    with TestClient(create_app(Settings(model_path=tabular.folded, model_sha256=digest[:16]))) as c:
        assert c.get("/readyz").status_code == 200
    with pytest.raises(ModelLoadError, match="does not match BNSERVE_MODEL_SHA256"), \
            TestClient(create_app(Settings(model_path=tabular.folded, model_sha256="0" * 64))):  # fmt: skip
        pass


# ---------------------------------------------------------------- hot reload


@pytest.fixture()
def served_copy(tabular, tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    shutil.copy(tabular.folded, path)
    return path


def test_admin_routes_exist_only_with_a_token(tabular) -> None:
    with TestClient(create_app(Settings(model_path=tabular.folded))) as c:
        assert c.post("/admin/reload").status_code == 404


def test_reload_needs_the_bearer_token(served_copy: Path) -> None:
    with TestClient(create_app(Settings(model_path=served_copy, admin_token=TOKEN))) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            r = c.post("/admin/reload", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers


def test_reload_swaps_to_the_new_file_and_refuses_a_bad_one(served_copy: Path, make_trained) -> None:
    other = make_trained("breast_cancer", "after")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(Settings(model_path=served_copy, admin_token=TOKEN))) as c:
        before = c.post("/predict", json={"features": GOOD}).json()["model_version"]
        served_copy.write_bytes(b"not a model at all")
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 422 and r.json()["detail"].startswith(f"reload refused, still serving version {before}")
        assert c.post("/predict", json={"features": GOOD}).json()["model_version"] == before
        shutil.copy(other.folded, served_copy)
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 200 and r.json()["previous_version"] == before
        after = r.json()["model_version"]
        assert after != before
        assert c.post("/predict", json={"features": GOOD}).json()["model_version"] == after
        assert c.get("/bn-stats").json()["model_version"] == after
        assert f'version="{after}"' in c.get("/metrics").text


class Load:
    """Threads posting /predict until stopped; the answers' versions in order; wait_for(n) blocks
    until n answers have come (woken by each answer, no polling)."""

    def __init__(self, base: str, threads: int = 4) -> None:
        self.base, self.stop, self.seen, self.versions = base, threading.Event(), Counter(), []
        self.changed = threading.Condition()
        self.by_thread: list[list[str]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, i: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    r = http.post("/predict", json={"features": GOOD})
                except httpx.TransportError:  # not accepted: the server has stopped listening
                    with self.changed:
                        self.seen["refused"] += 1
                        self.changed.notify_all()
                    return
                with self.changed:
                    self.seen[r.status_code] += 1
                    if r.status_code == 200:
                        self.versions.append(r.json()["model_version"])
                        self.by_thread[i].append(r.json()["model_version"])
                    self.changed.notify_all()

    def wait_for(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.versions) >= n, timeout=60), self.seen

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.mark.parametrize("trigger", ["admin", "sighup"])
def test_reload_under_load_loses_no_request(served_copy: Path, make_trained, trigger: str) -> None:
    other = make_trained("breast_cancer", "after")
    with serve(served_copy, env={"BNSERVE_ADMIN_TOKEN": TOKEN}) as server, Load(server.base) as load:
        load.wait_for(50)  # answers from the old model first
        shutil.copy(other.folded, served_copy)
        if trigger == "admin":
            r = httpx.post(f"{server.base}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            assert r.status_code == 200, r.text
            new = r.json()["model_version"]
        else:
            server.proc.send_signal(signal.SIGHUP)
            new = server.wait_for("reloaded").split(" -> ")[-1].strip()
        load.wait_for(len(load.versions) + 50)  # and from the new one after the swap
    assert set(load.seen) == {200}, load.seen
    assert load.versions[0] != new and load.versions[-1] == new
    for answers in load.by_thread:  # each client's requests are sequential: once new, never old again
        first_new = answers.index(new)
        assert all(v == new for v in answers[first_new:]), answers


# ---------------------------------------------------------------- graceful shutdown


def test_sigterm_under_load_fails_no_accepted_request(tabular) -> None:
    with serve(tabular.folded) as server, Load(server.base) as load:
        load.wait_for(100)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=20)
    assert set(load.seen) <= {200, "refused"} and load.seen[200] >= 100, load.seen
    assert server.proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Traceback" not in "".join(server.output)


def in_flight_now(base: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=5).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "bnserve_requests_in_flight")
    return family.samples[0].value


def test_sigterm_turns_readiness_off_at_once_and_drains_requests_in_flight(tabular) -> None:
    with serve(tabular.folded, env={"BNSERVE_DRAIN_SECONDS": "10"}) as server:
        body = json.dumps({"features": GOOD}).encode()
        head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        ready = socket.create_connection(("127.0.0.1", server.port))
        in_flight = socket.create_connection(("127.0.0.1", server.port))
        in_flight.sendall(head + body[:10])  # accepted, its body still on the way
        deadline = time.monotonic() + 30
        while in_flight_now(server.base) < 2:  # the scrape itself is 1: wait until the server holds ours
            assert time.monotonic() < deadline, "the half-sent request never reached the app"
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for("Shutting down")
        try:  # an idle connection is closed at shutdown; if it still answers, it says 503
            ready.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            ready_answer = ready.recv(4096).decode()
        except (ConnectionResetError, BrokenPipeError):
            ready_answer = ""
        in_flight.sendall(body[10:])
        answer = b""
        while chunk := in_flight.recv(65536):  # until the server closes it (Connection: close)
            answer += chunk
        answer = answer.decode()
        server.proc.wait(timeout=20)
        ready.close()
        in_flight.close()
    assert " 200 " in answer.splitlines()[0] and '"label"' in answer
    assert ready_answer == "" or " 503 " in ready_answer.splitlines()[0]
    assert server.proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Traceback" not in "".join(server.output)


def test_readiness_flips_the_moment_the_signal_is_handled(tabular) -> None:
    import uvicorn

    from service.__main__ import GracefulServer

    app = create_app(Settings(model_path=tabular.folded))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        GracefulServer(uvicorn.Config(app), app.state).handle_exit(signal.SIGTERM, None)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert c.post("/predict", json={"features": GOOD}).status_code == 200  # requests still served


# ---------------------------------------------------------------- limits


def asgi_request(app, path: str, body: bytes, receive_gate: asyncio.Event | None = None):
    """Drive the ASGI app directly; `receive_gate` holds the body back until it is set."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}  # fmt: skip
    answer: dict = {"body": b""}

    async def receive():
        if receive_gate is not None:
            await receive_gate.wait()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = dict(message["headers"])
        else:
            answer["body"] += message.get("body", b"")

    return app(scope, receive, send), answer


@pytest.mark.parametrize("hot_path", [True, False])
def test_past_max_in_flight_is_503_with_retry_after(tabular, hot_path: bool) -> None:
    app = create_app(Settings(model_path=tabular.folded, max_in_flight=1, hot_path=hot_path))
    body = json.dumps({"features": GOOD}).encode()

    async def scenario() -> tuple[dict, dict]:
        held = asyncio.Event()
        first, first_answer = asgi_request(app, "/predict", body, held)
        task = asyncio.ensure_future(first)
        await asyncio.sleep(0)  # let it take the slot (an event-loop turn, not a wait)
        second, second_answer = asgi_request(app, "/predict", body)
        await second
        held.set()
        await task
        return first_answer, second_answer

    with TestClient(app) as c:
        first, second = c.portal.call(scenario)
        assert c.get("/readyz").status_code == 200  # probes are never turned away
    assert first["status"] == 200
    assert second["status"] == 503 and second["headers"][b"retry-after"] == b"1"
    assert b"server busy: 1 requests in flight (BNSERVE_MAX_IN_FLIGHT=1)" in second["body"]


@pytest.mark.parametrize("hot_path", [True, False])
def test_a_body_that_never_arrives_times_out_with_408(tabular, hot_path: bool) -> None:
    app = create_app(Settings(model_path=tabular.folded, request_timeout=0.3, hot_path=hot_path))

    async def scenario() -> dict:
        never = asyncio.Event()
        call, answer = asgi_request(app, "/predict", b"{}", never)
        await asyncio.wait_for(call, timeout=10)
        return answer

    with TestClient(app) as c:
        answer = c.portal.call(scenario)
        assert c.post("/predict", json={"features": GOOD}).status_code == 200
    assert answer["status"] == 408
    assert b"body: not received within 0.3 s (BNSERVE_REQUEST_TIMEOUT)" in answer["body"]


# ---------------------------------------------------------------- operations


def test_request_ids_are_echoed_or_made(client) -> None:
    r = client.post("/predict", json={"features": GOOD}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    for path in ("/bn-stats", "/nope"):
        assert client.get(path, headers={"X-Request-ID": "q7"}).headers["x-request-id"] == "q7"
    made = client.post("/predict", json={"features": GOOD}).headers["x-request-id"]
    assert len(made) == 16 and made != client.get("/healthz").headers["x-request-id"]
    assert client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"] != \
        "bad id with spaces"  # fmt: skip


@pytest.mark.parametrize("log_bodies", [False, True])
def test_one_json_access_line_per_request_without_feature_values(tabular, caplog, log_bodies: bool) -> None:
    settings = Settings(model_path=tabular.folded, log_bodies=log_bodies)
    marker = 123.456
    with TestClient(create_app(settings)) as c, caplog.at_level(logging.INFO, logger="bnserve.access"):
        c.post("/predict", json={"features": [marker] * 30}, headers={"X-Request-ID": "rid-1"})
        c.get("/bn-stats/bn1")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bnserve.access"]
    assert [(x["method"], x["route"], x["status"]) for x in lines] == [
        ("POST", "/predict", 200), ("GET", "/bn-stats/{layer}", 200)]  # fmt: skip
    assert lines[0]["request_id"] == "rid-1" and lines[0]["latency_ms"] > 0
    assert (str(marker) in json.dumps(lines)) is log_bodies


def test_cors_is_off_unless_configured(tabular) -> None:
    headers = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(Settings(model_path=tabular.folded))) as c:
        assert "access-control-allow-origin" not in c.post("/predict", json={"features": GOOD}, headers=headers).headers
    settings = Settings(model_path=tabular.folded, cors_origins=["http://ui.example"])
    with TestClient(create_app(settings)) as c:
        assert c.options("/predict", headers=headers).headers["access-control-allow-origin"] == "http://ui.example"
        r = c.post("/predict", json={"features": GOOD}, headers={"Origin": "http://ui.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"


def test_docs_can_be_switched_off(tabular) -> None:
    with TestClient(create_app(Settings(model_path=tabular.folded, docs=False))) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
        assert c.post("/predict", json={"features": GOOD}).status_code == 200


def test_answers_are_the_same_after_a_reload_of_the_same_file(served_copy: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(Settings(model_path=served_copy, admin_token=TOKEN))) as c:
        a = c.post("/predict", json={"features": GOOD}).json()
        assert c.post("/admin/reload", headers=auth).status_code == 200
        b = c.post("/predict", json={"features": GOOD}).json()
    assert a == b
    assert np.isclose(sum(a["probabilities"].values()), 1.0)
