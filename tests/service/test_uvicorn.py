"""One test against a real uvicorn process on 127.0.0.1, started as a user starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_server_serves_predictions_and_stops_on_sigterm(tabular) -> None:
    port = free_port()
    env = {**os.environ, "BNSERVE_MODEL_PATH": str(tabular.folded)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    watchdog = threading.Timer(60, proc.kill)  # a hung start-up ends the wait below with EOF
    watchdog.start()
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for uvicorn's own word that it listens: no sleeping, no busy loop
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        else:
            raise AssertionError("server exited before listening:\n" + "".join(seen))
        watchdog.cancel()
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        with httpx.Client(base_url=base, timeout=5) as http:
            sample = http.get("/model").json()["card"]["examples"][0]
            answer = http.post("/predict", json={"features": sample["features"]})
            assert answer.status_code == 200 and answer.json()["label"] == sample["label"]
            bad = http.post("/predict", json={"features": [1, 2]})
            assert bad.status_code == 422 and "got 2 values" in bad.json()["detail"]
            assert http.get("/bn-stats").json()["layers"][0]["name"] == "input_bn"
    finally:
        watchdog.cancel()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it handled after a clean shutdown: -15 here, 143 from a shell
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), out
    assert "Application shutdown complete" in out and "Traceback" not in out
