"""HTTP level: wrk (Debian's package) against live uvicorn processes on 127.0.0.1.

The server is pinned to CPU 0 and wrk (one thread) to CPU 1, so the two do not fight
over a core; every server runs one worker unless a cell says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{extra_headers}
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT {{\\"requests\\": %d, \\"duration_us\\": %d, \\"status_errors\\": %d, \\"socket_errors\\": %d, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d, \\"mean_us\\": %f}}\\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_mib(self) -> float:
        """Resident memory of the server and its children (workers), in MiB."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name: str, cmd: Sequence[str], ready_path: str, cpus: str = "0", env: dict[str, str] | None = None,
          timeout: float = 120.0) -> Server:  # fmt: skip
    """Start a server pinned to `cpus`; startup is process start to the first 200 on `ready_path`."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    argv = ["taskset", "-c", cpus, *[a.replace("{port}", str(port)) for a in cmd]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **(env or {})})  # fmt: skip
    url = f"http://127.0.0.1:{port}{ready_path}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise RuntimeError(f"{name} was not ready within {timeout} s")
        time.sleep(0.005)  # a benchmark poll, not a test
    return Server(name, proc, port, time.perf_counter() - t0, log)


def wrk(url: str, body: bytes, connections: int, seconds: float, cpu: str = "1",
        headers: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_bytes(body)
        script = Path(tmp) / "post.lua"
        extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
        script.write_text(LUA.format(body=body_path, extra_headers=extra))
        out = subprocess.run(
            ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
             "-s", str(script), url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    r["req_per_s"] = r["requests"] / (r["duration_us"] / 1e6)
    r["connections"] = connections
    if r["status_errors"] or r["socket_errors"]:
        raise RuntimeError(f"wrk saw errors against {url}: {r}")
    return r
