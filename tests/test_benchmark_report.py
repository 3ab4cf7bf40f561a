"""The benchmark's report and the profile's bookkeeping, on the committed run's own data."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.profile import OTHER, part_of
from benchmarks.report import write_report

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_the_report_of_the_committed_run_has_every_target_and_computes_them_from_its_cells(tmp_path) -> None:
    result = json.loads((RESULTS / "latest.json").read_text())
    result.pop("summary")
    write_report(result, tmp_path)
    md = (tmp_path / "latest.md").read_text()
    assert md == (RESULTS / "latest.md").read_text()  # the committed report is this data's report
    targets = json.loads((tmp_path / "latest.json").read_text())["summary"]["targets"]

    def req_per_s(target: str) -> float:
        return statistics.median(c["req_per_s"] for c in result["http"]["cells"]
                                 if c["target"] == target and c["connections"] == 16)  # fmt: skip

    ratios = {
        "/predict / bare req/s at 16 connections": req_per_s("bnserve /predict")
        / req_per_s("bare FastAPI (constant JSON)"),
        "/predict/batch(64) / /predict samples/s at 16": 64
        * req_per_s("bnserve /predict/batch (64 instances)")
        / req_per_s("bnserve /predict"),
        "/predict / the KServe peer's V1 :predict req/s at 16 connections": req_per_s("bnserve /predict")
        / req_per_s("KServe ModelServer V1 :predict (peer)"),
    }
    for name, want in ratios.items():
        assert abs(targets[name]["value"] - want) < 1e-9, name
        assert f"| {name} |" in md


def test_a_sample_is_charged_to_the_innermost_part_of_the_request_path_it_is_in() -> None:
    request = ["Runner.run (asyncio/runners.py:118)", "HotPath._serve (service/hotpath.py:84)"]
    assert part_of(request) == "bnserve request shell (hot path, body read, answer send)"
    parse = [*request, "predict_many (service/inference.py:78)", "InputSpec.plain_rows (service/runtime.py:114)",
             "_amax (numpy/_core/_methods.py:41)"]  # fmt: skip
    assert part_of(parse).startswith("JSON in")  # numpy's frame counts for the bnserve line that called it
    model = [*request, "ModelRuntime.infer (service/runtime.py:300)", "Session.run (onnxruntime/capi/x.py:406)"]
    assert part_of(model).startswith("model")
    assert part_of(["Runner.run (asyncio/runners.py:118)"]).startswith("HTTP server")
    assert part_of(["<module> (somewhere.py:1)"]) == OTHER
