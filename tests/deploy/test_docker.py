"""The Docker image, built from a fresh clone and run for real (podman, or docker with a daemon).

CI gets an engine from ../shared/tools/container-env.sh (.ci/run sources it); where none can be
had, these tests are skipped with that reason in the summary, never passed silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from tests.deploy.conftest import REPORT
from tests.service.live import free_port

ROOT = Path(__file__).resolve().parents[2]


BASE = "python:3.11-slim"


def engine() -> tuple[str | None, str]:
    """The engine to use, or None and why not. An engine counts only with the base image at hand:
    no registry is reachable here (../shared/tools/container-env.sh provides a local one)."""
    for name in ("podman", "docker"):
        if shutil.which(name) is None:
            continue
        probe = subprocess.run([name, "image", "inspect", BASE], capture_output=True, check=False, timeout=60)
        if probe.returncode == 0:
            return name, ""
        return None, f"{name} is here but has no {BASE} image (no registry to pull from; see container-env.sh)"
    return None, "no container engine here (podman, or docker with a daemon)"


ENGINE, WHY_NOT = engine()
pytestmark = pytest.mark.skipif(ENGINE is None, reason=WHY_NOT)


def run(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Build the image from a fresh clone of this checkout's HEAD, with the default model."""
    assert ENGINE is not None
    clone = tmp_path_factory.mktemp("clone") / "bnserve"
    run("git", "clone", "-q", str(ROOT), str(clone))
    out = clone / "artifacts"
    run(sys.executable, "-m", "model.train", "--out", str(out), "--no-progress", timeout=600)
    run(sys.executable, "-m", "export", str(out / "checkpoint.pt"), "--out", str(out / "model.onnx"), timeout=600)
    tag = f"bnserve-test:{os.getpid()}"
    build = [ENGINE, "build", "-t", tag, "."] if ENGINE == "docker" else \
        [ENGINE, "build", "--pull=never", "--format", "docker", "-t", tag, "."]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(build, cwd=clone, capture_output=True, text=True, timeout=1500, check=False)
    built = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = run(ENGINE, "image", "inspect", tag, "--format", "{{.Size}}").stdout.strip()
    REPORT.append(f"docker: image built from a fresh clone with {ENGINE} in {built:.0f} s: {int(size) / 2**20:.0f} MiB")
    yield tag, out / "model.onnx"
    run(ENGINE, "rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def container(image: tuple[str, Path]) -> Iterator[tuple[str, int]]:
    tag, _ = image
    port = free_port()
    started = time.monotonic()
    cid = run(ENGINE, "run", "-d", "--network", "host", "-e", "BNSERVE_HOST=127.0.0.1", "-e", f"BNSERVE_PORT={port}",
              tag).stdout.strip()  # fmt: skip
    deadline = time.monotonic() + 60
    while True:  # poll readiness with a deadline
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        state = run(ENGINE, "inspect", cid, "--format", "{{.State.Running}}", check=False).stdout.strip()
        assert state == "true", run(ENGINE, "logs", cid, check=False).stdout[-3000:]
        assert time.monotonic() < deadline, "the container was not ready within 60 s"
    REPORT.append(f"docker: container start to /readyz 200 in {time.monotonic() - started:.1f} s")
    yield cid, port
    run(ENGINE, "rm", "-f", cid, check=False)


def get(port: int, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_image_answers_as_the_service_from_the_checkout(image, container) -> None:
    _, model = image
    _, port = container
    with TestClient(create_app(Settings(model_path=model))) as local:
        name = local.get("/model").json()["name"]
        x = local.get("/model").json()["card"]["examples"][0]["features"]
        v2 = {"inputs": [{"name": "input", "shape": [1, len(x)], "datatype": "FP32", "data": x}]}
        assert get(port, "/predict", {"features": x}) == local.post("/predict", json={"features": x}).json()
        assert get(port, "/bn-stats") == local.get("/bn-stats").json()
        assert get(port, f"/v2/models/{name}/infer", v2) == local.post(f"/v2/models/{name}/infer", json=v2).json()


def test_the_image_runs_as_non_root_without_torch(container) -> None:
    cid, _ = container
    assert run(ENGINE, "exec", cid, "id", "-u").stdout.strip() != "0"
    no_torch = run(ENGINE, "exec", cid, "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    health = run(ENGINE, "inspect", cid, "--format", "{{json .Config.Healthcheck}}").stdout
    assert "/readyz" in health


def test_sigterm_stops_the_container_cleanly(image) -> None:
    tag, _ = image
    port = free_port()
    cid = run(ENGINE, "run", "-d", "--network", "host", "-e", "BNSERVE_HOST=127.0.0.1", "-e", f"BNSERVE_PORT={port}",
              tag).stdout.strip()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in run(ENGINE, "logs", cid, check=False).stderr + \
                run(ENGINE, "logs", cid, check=False).stdout:  # fmt: skip
            assert time.monotonic() < deadline, "the container did not start"
        run(ENGINE, "stop", "-t", "15", cid)
        code = run(ENGINE, "inspect", cid, "--format", "{{.State.ExitCode}}").stdout.strip()
        logs = run(ENGINE, "logs", cid, check=False)
        assert code in ("0", "143"), code
        assert "Application shutdown complete" in logs.stdout + logs.stderr
    finally:
        run(ENGINE, "rm", "-f", cid, check=False)
