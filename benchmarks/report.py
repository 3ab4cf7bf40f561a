"""Turn one benchmark run into benchmarks/results/latest.{json,md}: tables, ratios and the targets."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def _median_cells(cells: list[dict[str, Any]], target: str, conns: int) -> dict[str, float] | None:
    rows = [c for c in cells if c["target"] == target and c["connections"] == conns]
    if not rows:
        return None
    return {
        "req_per_s": statistics.median(r["req_per_s"] for r in rows),
        "p50_ms": statistics.median(r["p50_us"] for r in rows) / 1000,
        "p99_ms": statistics.median(r["p99_us"] for r in rows) / 1000,
        "runs": len(rows),
        "samples": rows[0].get("samples", 1),
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    cells = result["http"]["cells"]
    http: dict[str, dict[int, dict[str, float]]] = {}
    for c in cells:
        http.setdefault(c["target"], {})
    for target in http:
        for conns in (1, 16, 64):
            m = _median_cells(cells, target, conns)
            if m:
                http[target][conns] = m
    ml = {(r["model"], r["runtime"], r["batch"]): r for r in result["model_level"]}

    def model_ratio(model: str, a: str, b: str) -> float:
        return ml[(model, a, 1)]["median_us"] / ml[(model, b, 1)]["median_us"]

    bare, pred = http["bare FastAPI (constant JSON)"][16], http["bnserve /predict"][16]
    batch = http["bnserve /predict/batch (64 instances)"][16]
    peer = http.get("KServe ModelServer V1 :predict (peer)", {}).get(16)  # absent when .bench/kserve is
    cost = result["drift_cost"]["medians"]
    plain = cost["--no-drift export"]["req_per_s"]

    def slowdown(label: str) -> float:
        """Mean latency at 16 connections relative to the --no-drift export (req/s ratio inverted)."""
        return plain / cost[label]["req_per_s"]

    targets = {
        "folded / reference single-sample median (MLP)": (
            model_ratio("mlp (breast_cancer)", "onnxruntime, folded graph", "onnxruntime, reference graph (BN kept)"),
            "<= 0.85"),
        "torch eager / folded single-sample median (MLP)": (
            model_ratio("mlp (breast_cancer)", "torch eager (eval, unfolded)", "onnxruntime, folded graph"), ">= 8"),
        "/predict / bare req/s at 16 connections": (pred["req_per_s"] / bare["req_per_s"], ">= 0.8"),
        "/predict / bare p99 at 16 connections": (pred["p99_ms"] / bare["p99_ms"], "<= 1.5"),
        "/predict/batch(64) / /predict samples/s at 16": (
            batch["req_per_s"] * 64 / pred["req_per_s"], ">= 30"),
        **({"/predict / the KServe peer's V1 :predict req/s at 16 connections": (
            pred["req_per_s"] / peer["req_per_s"], ">= 2.5")} if peer else {}),
        "drift taps: folded graph as served / the --no-drift export, single-sample median (MLP)": (
            model_ratio("mlp (breast_cancer)", "onnxruntime, folded graph",
                        "onnxruntime, folded graph, exported --no-drift"), "<= 1.1"),
        "drift outputs in the graph (monitor off): /predict latency / --no-drift export's": (
            slowdown("drift file, monitor off"), "<= 1.1"),
        "drift monitor as shipped (1 request in 4): /predict latency / --no-drift export's": (
            slowdown("drift file, monitor on (default: 1 request in 4)"), "<= 1.1"),
        "drift monitor on every request: /predict latency / --no-drift export's": (
            slowdown("drift file, monitor on every request"), "<= 1.5"),
        "/predict?drift=true latency / --no-drift export's": (slowdown("drift file, /predict?drift=true"), "<= 2"),
        "start-up to /readyz 200 (s)": (result["startup"]["startup_s"], "< 1.5"),
        "resident memory after load (MiB)": (result["startup"]["rss_mib"], "< 120"),
    }  # fmt: skip

    def met(value: float, rule: str) -> bool:
        op, bound = rule.split()
        return {"<=": value <= float(bound), ">=": value >= float(bound), "<": value < float(bound)}[op]

    return {"http": http, "targets": {k: {"value": v, "target": t, "met": met(v, t)} for k, (v, t) in targets.items()}}


def drift_lines(drift: dict[str, Any] | None) -> list[str]:
    if not drift:
        return []
    lines = ["", "## Drift detection (share of samples flagged)", "", drift["method"], ""]
    for model, d in drift["models"].items():
        n = d["calibration_samples"]
        lines += [f"{model}, calibrated on {n} validation samples (smallest possible p-value 1/{n + 1} = "
                  f"{1 / (n + 1):.4f}):", "",
                  "| shift | samples | flagged at alpha 0.01 | flagged at alpha 0.05 | shifted feature named first |",
                  "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in d["rates"]:
            named = f"{r['named_first']:.0%}" if "named_first" in r else ""
            lines.append(f"| {r['shift']} | {r['samples']} | {r['flagged_at_0.01']:.1%} | {r['flagged_at_0.05']:.1%} "
                         f"| {named} |")  # fmt: skip
        lines.append("")
    return lines


def write_report(result: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    result = {**result, "summary": summary}
    (out / "latest.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [f"# bnserve benchmark, {result['created_at']}", ""]
    v = result["versions"]
    lines += [
        f"Machine: {result['machine']['cores']} cores, {result['machine']['platform']}. "
        + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Conditions: " + "; ".join(f"{k}: {val}" for k, val in result["conditions"].items()) + ".",
        "",
        "## Targets",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | --- | --- |",
    ]  # fmt: skip
    for name, t in summary["targets"].items():
        lines.append(f"| {name} | {t['value']:.3g} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    lines += [
        "",
        "## HTTP (wrk, median of runs)",
        "",
        "| target | connections | req/s | samples/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, by_conns in summary["http"].items():
        for conns, m in sorted(by_conns.items()):
            lines.append(f"| {target} | {conns} | {m['req_per_s']:,.0f} | {m['req_per_s'] * m['samples']:,.0f} | "
                         f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} |")  # fmt: skip
    lines += [
        "",
        "## Model level (one process, per call)",
        "",
        "| model | runtime | batch | median us | p99 us | samples/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["model_level"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['median_us']:.1f} | {r['p99_us']:.1f} | "
                     f"{r['samples_per_s']:,.0f} |")  # fmt: skip
    if "drift_cost" in result:
        c = result["drift_cost"]
        title = f"{c['rounds']} interleaved rounds of {c['seconds']:g} s, median"
        lines += ["", f"## The drift monitor's cost (/predict, 16 connections, {title})", "",
                  "| server | req/s | p50 ms |", "| --- | ---: | ---: |"]  # fmt: skip
        lines += [f"| {k} | {m['req_per_s']:,.0f} | {m['p50_ms']:.2f} |" for k, m in c["medians"].items()]
    lines += drift_lines(result.get("drift"))
    s, inst = result["startup"], result["install"]
    rss = ", ".join(f"{k} {val:.0f} MiB" for k, val in result["http"]["rss_mib_after_load"].items())
    lines += ["", "## Start-up, memory, size", "",
              f"- start-up, process start to `/readyz` 200: median {s['startup_s']:.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in s['startup_runs_s'])})",
              f"- resident memory after load: {s['rss_mib']:.0f} MiB (after the HTTP cells: {rss})",
              f"- runtime-only install (`pip install .`, no extras): {inst['site_packages_mib']:.0f} MiB of "
              f"site-packages, torch installed: {inst['torch_installed']}",
              "", f"Run time: {result['duration_s']:.0f} s. Made by `make bench`."]  # fmt: skip
    md = "\n".join(lines) + "\n"
    (out / "latest.md").write_text(md)
    return md
