"""Run `python -m service` for real on 127.0.0.1 and stop it by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.http_level import free_port


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """Block until a line containing `text` has been printed (woken by each new line, no polling)."""
        with self.changed:
            ok = self.changed.wait_for(lambda: any(text in line for line in self.output), timeout=timeout)
        assert ok, f"server never printed {text!r}:\n" + "".join(self.output[-30:])
        return next(line for line in self.output if text in line)

    def _pump(self) -> None:
        for line in self.proc.stdout or []:
            with self.changed:
                self.output.append(line)
                self.changed.notify_all()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve(model: Path, *args: str, env: dict[str, str] | None = None, ready_lines: int = 1) -> Iterator[Server]:
    """Start the server; return once uvicorn says it listens (`ready_lines` times for several
    workers). A watchdog kills a start-up that hangs, which ends the wait with EOF: no sleeping."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", *args],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server = Server(proc, port)
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        seen = 0
        # one process binds after its start-up; several workers start after the supervisor bound
        marker = "Uvicorn running on" if ready_lines == 1 else "Application startup complete"
        for line in proc.stdout:
            server.output.append(line)
            if marker in line:
                seen += 1
                if seen == ready_lines:
                    break
        else:
            raise AssertionError("server exited before it was ready:\n" + "".join(server.output))
        watchdog.cancel()
        # keep draining the pipe so a chatty server never blocks on a full pipe
        server.drain = threading.Thread(target=server._pump, daemon=True)
        server.drain.start()
        yield server
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if server.drain is not None:
            server.drain.join(timeout=10)
