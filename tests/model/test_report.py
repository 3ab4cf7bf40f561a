"""python -m model.report --quick: every experiment's table holds numbers, the plots exist, and
each of the article's claims gets a verdict."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from model.report import main

    out = tmp_path_factory.mktemp("report")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_the_quick_report_has_numbers_for_every_experiment(report) -> None:
    doc = json.loads((report / "report.json").read_text())
    summary = doc["summary"]
    assert set(summary) == {"learning_rate", "init_scale", "placement", "batch_size", "moving_vs_exact"}
    plan = doc["plan"]
    expected_rows = {
        "learning_rate": 2 * 2 * len(plan["lrs"]),
        "init_scale": 2 * 2 * len(plan["init_scales"]),
        "placement": 2 * 2,
        "batch_size": 2 * len(plan["batch_sizes"]),
        "moving_vs_exact": 2,
    }
    for experiment, rows in summary.items():
        assert len(rows) == expected_rows[experiment], experiment
        for row in rows:
            assert row["seeds"] == len(plan["seeds"])  # several seeds each
            assert isinstance(row["test_accuracy"], float) and 0 <= row["test_accuracy"] <= 1
    for row in summary["batch_size"]:
        assert math.isfinite(row["batch_mean_gap_sd"]) and math.isfinite(row["batch_var_log_ratio"])
    for row in summary["moving_vs_exact"]:
        assert row["mean_gap_sd_max"] > 0 and row["var_ratio_max"] >= 1


def test_the_report_states_a_verdict_on_each_claim_and_draws_its_plots(report) -> None:
    md = (report / "report.md").read_text()
    doc = json.loads((report / "report.json").read_text())
    assert len(doc["conclusions"]) == 6
    for claim, text in doc["conclusions"].items():
        assert f"**{claim}**" in md
        assert text.split(":")[0] in ("held", "did not hold", "mixed", "no difference beyond the seeds' spread",
                                      "a difference on some data"), text  # fmt: skip
    for image in ("learning_rate.png", "init_scale.png", "batch_size.png"):
        assert (report / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({image})" in md
    assert md.count("| --- |") >= 5  # one table per experiment
