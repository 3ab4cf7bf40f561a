"""python -m benchmarks.soak: a soak at 64 connections over mixed routes, with resident memory sampled.

Starts bnserve (one worker, pinned to CPU 0), checks that each route in the mix answers 2xx once, then runs wrk
(one thread, CPU 1) for --seconds with a Lua script that rotates the requests below round-robin, while the
server's VmRSS (it and its children) is read from /proc every second. The issue's target (issue 5, "Load,
measured"): zero socket errors, zero non-2xx, and RSS over the last 10 s at most 20 MiB above RSS over the first
10 s. Per-route status counts come from the server's own bnserve_requests_total, scraped before and after.

.venv/bin/python -m benchmarks.soak                    # 60 s, 64 connections, into benchmarks/results
.venv/bin/python -m benchmarks.soak --seconds 20 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import http_level

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 10.0  # the first and the last window compared
RSS_LIMIT_MIB = 20.0

# init() reads the bodies (one file per route) and precomputes every request; request() rotates them.
# done() runs in wrk's main Lua state, so the per-thread status counts are fetched with thread:get().
LUA = r"""
local routes = {ROUTES}
local reqs = {}
local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, r in ipairs(routes) do
    local body = nil
    local headers = {}
    if r.body then
      local f = assert(io.open(r.body, "rb"))
      body = f:read("*a")
      f:close()
      headers["Content-Type"] = "application/json"
    end
    reqs[i] = wrk.format(r.method, r.path, headers, body)
  end
  statuses = {}
  non2xx_sample = ""
end

function request()
  counter = counter + 1
  return reqs[(counter - 1) % #reqs + 1]
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if (status < 200 or status > 299) and #non2xx_sample < 2000 then
    non2xx_sample = non2xx_sample .. k .. " " .. string.sub(body or "", 1, 300) .. "\n"
  end
end

local function esc(s)
  return (string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

done = function(summary, latency, requests)
  local merged = {}
  local samples = ""
  for _, t in ipairs(threads) do
    local st = t:get("statuses") or {}
    for k, v in pairs(st) do merged[k] = (merged[k] or 0) + v end
    samples = samples .. (t:get("non2xx_sample") or "")
  end
  local parts = {}
  for k, v in pairs(merged) do table.insert(parts, string.format('"%s": %d', k, v)) end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %f, "statuses": {%s}, '
    .. '"non2xx_sample": "%s"}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ", "), esc(samples)))
end
"""


def card(model: Path) -> dict[str, Any]:
    import onnxruntime as ort

    meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_modelmeta()
    return dict(json.loads(meta.custom_metadata_map["bnserve.card"]))


def routes(model: Path) -> list[dict[str, Any]]:
    """The mix, in rotation order: (label, method, path, JSON body or None). Bodies as benchmarks.bodies() builds
    them (values as the dataset writes them), plus the named-features form and an 8-instance batch."""
    import numpy as np

    c = card(model)
    name = c["name"]
    examples = [[float(str(np.float32(v))) for v in e["features"]] for e in c["examples"]]
    x = examples[0]
    named = dict(zip(c["feature_names"], x, strict=True))
    batch8 = [examples[i % len(examples)] for i in range(8)]
    v2 = {"inputs": [{"name": "input", "shape": [1, len(x)], "datatype": "FP32", "data": x}]}
    return [
        {"label": "POST /predict (list)", "method": "POST", "path": "/predict", "body": {"features": x}},
        {"label": "POST /predict (named)", "method": "POST", "path": "/predict", "body": {"features": named}},
        {
            "label": "POST /predict/batch (8)",
            "method": "POST",
            "path": "/predict/batch",
            "body": {"instances": batch8},
        },
        {"label": "POST /v2/models/{name}/infer", "method": "POST", "path": f"/v2/models/{name}/infer", "body": v2},
        {
            "label": "POST /v1/models/{name}:predict",
            "method": "POST",
            "path": f"/v1/models/{name}:predict",
            "body": {"instances": [x]},
        },
        {"label": "GET /bn-stats", "method": "GET", "path": "/bn-stats", "body": None},
        {"label": "GET /model", "method": "GET", "path": "/model", "body": None},
        {"label": "GET /readyz", "method": "GET", "path": "/readyz", "body": None},
        {"label": "GET /metrics", "method": "GET", "path": "/metrics", "body": None},
    ]


def lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for these (ASCII) paths


def preflight(server: http_level.Server, mix: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each request once, so a route that fails is named before the soak, with its answer."""
    out = []
    for r in mix:
        data = None if r["body"] is None else json.dumps(r["body"]).encode()
        req = urllib.request.Request(server.url(r["path"]), data=data, method=r["method"],
                                     headers={"Content-Type": "application/json"} if data else {})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        head = None if 200 <= status < 300 else body[:300].decode("utf-8", "replace")
        out.append({"route": r["label"], "status": status, "bytes": len(body), "body_head": head})
    return out


METRIC_RE = re.compile(r"^bnserve_requests_total\{(.*)\}\s+(\S+)$")  # route templates contain braces


def request_counts(server: http_level.Server) -> dict[str, float]:
    """bnserve_requests_total by 'METHOD route status' (the route template, as the server labels it)."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            out[f"{labels.get('method')} {labels.get('route')} {labels.get('status')}"] = float(m.group(2))
    return out


def run_wrk(server: http_level.Server, mix: list[dict[str, Any]], connections: int, seconds: int,
            tmp: Path, cpu: str = "1") -> tuple[dict[str, Any], list[tuple[float, float]], float]:  # fmt: skip
    """wrk over the mix while RSS is sampled every second; returns wrk's result, (t, MiB) samples, wall time."""
    entries = []
    for i, r in enumerate(mix):
        if r["body"] is None:
            entries.append(f"{{method = {lua_string(r['method'])}, path = {lua_string(r['path'])}}}")
        else:
            p = tmp / f"body{i}.json"
            p.write_bytes(json.dumps(r["body"]).encode())
            entries.append(f"{{method = {lua_string(r['method'])}, path = {lua_string(r['path'])}, "
                           f"body = {lua_string(str(p))}}}")  # fmt: skip
    script = tmp / "mixed.lua"
    script.write_text(LUA.replace("{ROUTES}", "{\n  " + ",\n  ".join(entries) + "\n}"))
    argv = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(script), server.url("/")]  # fmt: skip
    out_path, err_path = tmp / "wrk.out", tmp / "wrk.err"
    samples: list[tuple[float, float]] = []
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        deadline = t0 + seconds + 60
        tick = 0
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now > deadline:
                    raise RuntimeError(f"wrk did not finish within {seconds + 60} s")
                if server.proc.poll() is not None:
                    raise RuntimeError(f"the server exited during the soak (status {server.proc.returncode})")
                if now - t0 >= tick:
                    samples.append((now - t0, server.rss_mib()))
                    tick += 1
                time.sleep(min(0.05, max(0.0, t0 + tick - time.monotonic())))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - t0
    stdout = out_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err_path.read_text()[-2000:]}")
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no RESULT line:\n{stdout[-2000:]}\n{err_path.read_text()[-2000:]}")
    r = json.loads(line[len("RESULT ") :])
    r["req_per_s"] = r["requests"] / (r["duration_us"] / 1e6)
    r["wrk_stdout"] = stdout
    return r, samples, wall


def rss_summary(samples: list[tuple[float, float]], duration: float) -> dict[str, Any]:
    first = [m for t, m in samples if t < WINDOW_S]
    last = [m for t, m in samples if t >= duration - WINDOW_S]
    mean_first, mean_last = statistics.fmean(first), statistics.fmean(last)
    return {
        "window_s": WINDOW_S,
        "first_mean_mib": mean_first,
        "last_mean_mib": mean_last,
        "growth_mib": mean_last - mean_first,
        "first_samples": len(first),
        "last_samples": len(last),
        "min_mib": min(m for _, m in samples),
        "max_mib": max(m for _, m in samples),
        "limit_mib": RSS_LIMIT_MIB,
    }


def diff_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(after[k] - before.get(k, 0)) for k in sorted(after) if after[k] - before.get(k, 0) > 0}


def markdown(res: dict[str, Any]) -> str:
    w, rss, v = res["wrk"], res["rss"], res["verdict"]
    lines = [
        "# Soak: mixed routes",
        "",
        f"{res['created_at']}; {res['conditions']}",
        "",
        f"**Verdict: {'PASS' if v['pass'] else 'FAIL'}** "
        f"(socket errors {w['socket_errors']} (target 0), non-2xx {res['non_2xx']} (target 0), "
        f"RSS growth {rss['growth_mib']:+.1f} MiB (target <= {rss['limit_mib']:g} MiB))",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| duration | {w['duration_us'] / 1e6:.1f} s at {res['connections']} connections |",
        f"| requests | {w['requests']} |",
        f"| req/s | {w['req_per_s']:.0f} |",
        f"| socket errors (connect/read/write/timeout) | {w['socket_errors']} ({w['connect_errors']}/"
        f"{w['read_errors']}/{w['write_errors']}/{w['timeouts']}) |",
        f"| non-2xx (as wrk saw them / as the server counted them) | {res['non_2xx']} / {res['server_non_2xx']} |",
        f"| latency p50 / p90 / p99 / max | {w['p50_us'] / 1000:.2f} / {w['p90_us'] / 1000:.2f} / "
        f"{w['p99_us'] / 1000:.2f} / {w['max_us'] / 1000:.2f} ms |",
        f"| RSS mean, first {rss['window_s']:g} s | {rss['first_mean_mib']:.1f} MiB |",
        f"| RSS mean, last {rss['window_s']:g} s | {rss['last_mean_mib']:.1f} MiB |",
        f"| RSS growth (last - first) | {rss['growth_mib']:+.1f} MiB |",
        f"| RSS min / max during the soak | {rss['min_mib']:.1f} / {rss['max_mib']:.1f} MiB |",
        f"| RSS idle before / after the soak | {res['rss_idle_before_mib']:.1f} / "
        f"{res['rss_idle_after_mib']:.1f} MiB |",
        "",
        "## Per route (the server's bnserve_requests_total during the soak)",
        "",
        "Counted by the server, so it includes the requests in flight when wrk stopped (which wrk does not count) "
        "and the one /metrics scrape taken before the soak.",
        "",
        "| method route status | requests |",
        "| --- | --- |",
        *[f"| {k} | {n} |" for k, n in res["server_counts"].items()],
        "",
        "Status codes as wrk saw them: " + ", ".join(f"{k}: {n}" for k, n in sorted(w["statuses"].items())),
        "",
        "## The mix (rotated round-robin)",
        "",
        *[
            f"- {r['route']}: preflight {r['status']}" + (f" `{r['body_head']}`" if r["body_head"] else "")
            for r in res["preflight"]
        ],
        "",
        "## RSS samples (s, MiB)",
        "",
        " ".join(f"{t:.0f}:{m:.1f}" for t, m in res["rss_samples"]),
        "",
    ]
    if w.get("non2xx_sample"):
        lines += ["## First non-2xx answers", "", "```", w["non2xx_sample"].rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=int, default=60, help="soak duration in seconds (default 60; at least 20)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                   help="directory for soak.json and soak.md (default benchmarks/results)")  # fmt: skip
    p.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.onnx", help="ONNX model to serve")
    args = p.parse_args(argv)
    if args.seconds < 2 * WINDOW_S:
        p.error(f"--seconds must be at least {2 * WINDOW_S:g} (two {WINDOW_S:g} s windows)")
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("soak: wrk and taskset are needed (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    model = args.model.resolve()
    mix = routes(model)
    cmd = [sys.executable, "-m", "service", "--model", str(model), "--port", "{port}", "--no-access-log",
           "--log-level", "warning"]  # fmt: skip
    print(f"soak: starting bnserve on CPU 0 ({model.name}) ...", flush=True)
    server = http_level.start("bnserve-soak", cmd, "/readyz", cpus="0")
    try:
        pre = preflight(server, mix)
        for r in pre:
            print(f"  preflight {r['route']}: {r['status']}" + (f" {r['body_head']}" if r["body_head"] else ""))
        rss_before = server.rss_mib()
        counts_before = request_counts(server)
        print(f"soak: wrk, {args.connections} connections, {args.seconds} s, {len(mix)} routes ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            w, samples, wall = run_wrk(server, mix, args.connections, args.seconds, Path(tmp))
        counts_after = request_counts(server)
        time.sleep(1.0)
        rss_after = server.rss_mib()
        server_log = server.log.read_text(errors="replace")[-4000:]
    finally:
        server.stop()
        exit_status = server.proc.returncode
    non2xx = sum(n for k, n in w["statuses"].items() if not 200 <= int(k) < 300)
    rss = rss_summary(samples, min(wall, w["duration_us"] / 1e6))
    counts = diff_counts(counts_before, counts_after)
    # the before-scrape is in `counts` once (on /metrics, 200); the after-scrape counts itself only after answering
    server_non2xx = sum(n for k, n in counts.items() if not k.rsplit(" ", 1)[-1].startswith("2"))
    verdict = {
        "socket_errors_ok": w["socket_errors"] == 0,
        "non_2xx_ok": non2xx == 0 and w["status_errors"] == 0 and server_non2xx == 0,
        "rss_ok": rss["growth_mib"] <= RSS_LIMIT_MIB,
    }
    verdict["pass"] = all(verdict.values())
    result = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "conditions": f"bnserve one worker pinned to CPU 0, access log off; wrk 1 thread on CPU 1, "
        f"--timeout 5s, {len(mix)} requests rotated round-robin; RSS (VmRSS, server + children) every 1 s",
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
        "seconds": args.seconds,
        "connections": args.connections,
        "routes": [{k: r[k] for k in ("label", "method", "path")} for r in mix],
        "preflight": pre,
        "wrk": {k: v for k, v in w.items() if k != "wrk_stdout"},
        "non_2xx": non2xx,
        "rss": rss,
        "rss_samples": [[round(t, 2), round(m, 2)] for t, m in samples],
        "rss_idle_before_mib": rss_before,
        "rss_idle_after_mib": rss_after,
        "server_counts": counts,
        "server_non_2xx": server_non2xx,
        "server_exit_status": exit_status,
        "server_log_tail": server_log,
        "verdict": verdict,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "soak.md").write_text(md)
    print(md)
    print(f"wrote {args.out / 'soak.md'} and {args.out / 'soak.json'}")
    return 0 if verdict["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
