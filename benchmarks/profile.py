"""python -m benchmarks.profile: where a request's time goes, sampled by py-spy from a loaded server.

make profile                                    # or: python -m benchmarks.profile --out benchmarks/results

One bnserve process (pinned to CPU 0, one worker, as `make bench` runs it) serves wrk (CPU 1, 16
connections) on /predict and on /predict/batch with 64 instances; py-spy samples the server's
Python stacks 1,000 times a second without stopping it. Each sample is charged to the innermost
frame that belongs to a part of the request path (a numpy or orjson call counts for the bnserve
line that made it), and the table gives each part's share and its microseconds per request
(share x the request rate measured during the profile; the sampling costs some throughput, so
the rate is below `make bench`'s). Writes profile.md and profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import http_level
from benchmarks.__main__ import ART, bodies

# part of the request path: (label, path fragments of the frames that belong to it), first match wins
JSON_IN = (
    "body.py:numbers_only",
    "body.py:_flat_rows",
    "body.py:parse_json",
    "InputSpec.",
    "service/jsonkeys.py",
    "pydantic",
)
PARTS = [
    ("JSON in: parse and check the body, rows as an array", JSON_IN),
    ("model: onnxruntime, and the checks around its run", ("onnxruntime/", "service/runtime.py:")),
    ("drift monitor", ("service/drift.py",)),
    ("answers: JSON out", ("service/answers.py", "service/jsonio.py")),
    ("metrics and access log", ("service/metrics.py", "service/gate.py:Gate.record", "prometheus_client")),
    ("service/inference.py's own lines (where the parsed body's lists are freed)", ("service/inference.py",)),
    ("bnserve request shell (hot path, body read, answer send)", ("service/",)),
    ("HTTP server: uvicorn, httptools, event loop", ("uvicorn/", "asyncio/", "uvloop", "httptools", "starlette/")),
]
OTHER = "other"


def part_of(stack: list[str]) -> str:
    """The part a sample belongs to: the innermost frame that names one (py-spy's frames read
    `function (path:line)`; numpy's and the standard library's own frames name none)."""
    for frame in reversed(stack):
        name, _, where = frame.rpartition(" (")
        key = f"{where.rsplit(':', 1)[0]}:{name}"
        if "numpy/" in key or "<frozen" in key:
            continue
        for label, fragments in PARTS:
            if any(f in key for f in fragments):
                return label
    return OTHER


def sample(route: str, body: bytes, seconds: float, py_spy: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "service", "--model", str(ART / "model.onnx"), "--port", "{port}",
           "--no-access-log", "--log-level", "warning"]  # fmt: skip
    server = http_level.start("bnserve", cmd, "/readyz")
    try:
        http_level.wrk(server.url(route), body, 16, 1)  # warm-up
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "samples.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "--nonblocking", "--rate", "1000", "--duration", str(round(seconds)),
                 "--format", "raw", "--output", str(raw), "--pid", str(server.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(0.5)  # py-spy attaches before the load starts
            load = http_level.wrk(server.url(route), body, 16, seconds - 1)
            _, err = spy.communicate(timeout=seconds + 60)
            if spy.returncode != 0 or not raw.exists():
                raise RuntimeError(f"py-spy failed (it needs ptrace rights over the server): {err.decode()[-500:]}")
            lines = raw.read_text().splitlines()
    finally:
        server.stop()
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "threading.py" in frames[0]:
            continue  # another thread than the event loop's: none serves a request
        parts[part_of(frames)] += int(count)
        leaves[frames[-1]] += int(count)
    total = sum(parts.values())
    per_request_us = 1e6 / load["req_per_s"]
    return {
        "route": route,
        "samples": total,
        "req_per_s_while_sampled": load["req_per_s"],
        "parts": [
            {"part": p, "share": n / total, "us_per_request": n / total * per_request_us}
            for p, n in parts.most_common()
        ],
        "lines": [{"frame": f, "share": n / total} for f, n in leaves.most_common(15)],
    }


def write(results: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [f"# Where a request's time goes, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", "",
          f"py-spy, 1,000 samples a second, of one bnserve worker (CPU 0) under wrk at 16 connections (CPU 1); "
          f"{platform.platform()}. Made by `make profile`.", ""]  # fmt: skip
    for r in results:
        rate = f"{r['req_per_s_while_sampled']:,.0f} req/s while sampled"
        md += [f"## POST {r['route']}: {rate}, {r['samples']:,} samples", "",
               "| part of the request | share | us per request |", "| --- | ---: | ---: |"]  # fmt: skip
        md += [f"| {p['part']} | {p['share']:.1%} | {p['us_per_request']:.1f} |" for p in r["parts"]]
        md += ["", "Busiest lines (their own time, calls into C included):", "", "| frame | share |", "| --- | ---: |"]
        md += [f"| `{x['frame']}` | {x['share']:.1%} |" for x in r["lines"]]
        md.append("")
    (out / "profile.md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for profile.md and .json")
    p.add_argument("--seconds", type=float, default=10.0, help="how long each route is sampled")
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: `make profile` installs it (pip install py-spy)", file=sys.stderr)
        return 2
    b = bodies(ART / "model.onnx")
    results = [sample("/predict", b["predict"], args.seconds, py_spy),
               sample("/predict/batch", b["batch64"], args.seconds, py_spy)]  # fmt: skip
    write(results, args.out)
    print((args.out / "profile.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
