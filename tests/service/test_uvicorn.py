"""One test against a real uvicorn process on 127.0.0.1, started as a user starts it."""

from __future__ import annotations

import signal

import httpx

from tests.service.live import serve


def test_real_server_serves_predictions_and_stops_on_sigterm(tabular) -> None:
    with serve(tabular.folded) as server, httpx.Client(base_url=server.base, timeout=5) as http:
        assert http.get("/readyz").status_code == 200
        sample = http.get("/model").json()["card"]["examples"][0]
        answer = http.post("/predict", json={"features": sample["features"]})
        assert answer.status_code == 200 and answer.json()["label"] == sample["label"]
        bad = http.post("/predict", json={"features": [1, 2]})
        assert bad.status_code == 422 and "got 2 values" in bad.json()["detail"]
        assert http.get("/bn-stats").json()["layers"][0]["name"] == "input_bn"
        proc = server.proc
    # uvicorn re-raises the SIGTERM it handled after a clean shutdown: -15 here, 143 from a shell
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    out = "".join(server.output)
    assert "Application shutdown complete" in out and "Traceback" not in out
