"""The covariate-shift monitor, served: per-request drift blocks, the flag rate on unseen
in-distribution data, shifted inputs caught and named, and the window's figures against an
offline computation from torch (the oracle) and the stored running statistics."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model.checkpoint import load_checkpoint
from model.data import load_dataset
from service import Settings, create_app
from service.drift import DriftSpec, Window, figures
from service.runtime import ModelRuntime
from tests.service.live import serve

TOKEN = "drift-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def flat(x: np.ndarray) -> list[list[float]]:
    return x.reshape(len(x), -1).astype(np.float64).tolist()


def drift_of(client: TestClient, x: np.ndarray, path: str = "/predict/batch?drift=true") -> list[dict]:
    r = client.post(path, json={"instances": flat(x)})
    assert r.status_code == 200, r.text
    return [p.get("drift") for p in r.json()["predictions"]]


def flag_rate(blocks: list[dict]) -> float:
    return float(np.mean([b["flagged"] for b in blocks]))


def binomial_band(alpha: float, n: int, n_cal: int) -> float:
    """|observed - alpha| allowed: 3.3 standard errors (a 1-in-1000 miss) plus the empirical
    p-value's granularity, 1 / (n_cal + 1)."""
    return 3.3 * math.sqrt(alpha * (1 - alpha) / n) + 1 / (n_cal + 1)


@pytest.fixture(scope="module")
def served(validation_calibrated) -> Iterator:
    """served(dataset, alpha) -> TestClient on the validation-calibrated model, window unbounded."""
    clients: dict[tuple[str, float], TestClient] = {}
    stack = []

    def get(dataset: str, alpha: float = 0.05) -> TestClient:
        key = (dataset, alpha)
        if key not in clients:
            settings = Settings(model_path=validation_calibrated(dataset), drift_alpha=alpha, admin_token=TOKEN,
                                drift_window_seconds=0, drift_monitor_every=1, max_batch_size=1024)  # fmt: skip
            c = TestClient(create_app(settings))
            c.__enter__()
            stack.append(c)
            clients[key] = c
        return clients[key]

    yield get
    for c in stack:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def bc():
    return load_dataset("breast_cancer")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ------------------------------------------------------------------ per request


def test_drift_block_has_score_p_value_flag_and_every_feature_by_abs_z(client, card) -> None:
    x = card["examples"][0]["features"]
    plain = client.post("/predict", json={"features": x}).json()
    r = client.post("/predict?drift=true", json={"features": x})
    assert r.status_code == 200
    answer = r.json()
    block = answer.pop("drift")
    assert answer == plain  # the drift block changes nothing else
    assert set(block) == {"score", "p_value", "flagged", "alpha", "components", "layers", "top_features"}
    assert 0 < block["p_value"] <= 1 and block["alpha"] == 0.01
    assert block["score"] == pytest.approx(max(block["components"].values()))
    assert [f["name"] for f in block["top_features"]] != card["feature_names"]
    assert sorted(f["name"] for f in block["top_features"]) == sorted(card["feature_names"])
    zs = [abs(f["z"]) for f in block["top_features"]]
    assert zs == sorted(zs, reverse=True)
    bn = client.get("/bn-stats/input_bn").json()
    j = card["feature_names"].index(block["top_features"][0]["name"])
    expected = (x[j] - bn["running_mean"][j]) / math.sqrt(bn["running_var"][j] + bn["eps"])
    assert block["top_features"][0]["z"] == pytest.approx(expected, rel=1e-9)
    stored = client.get("/bn-stats").json()["layers"]
    assert [layer["name"] for layer in block["layers"]] == [layer["name"] for layer in stored]


def test_drift_is_off_unless_asked_and_bad_values_are_refused(client, card) -> None:
    x = card["examples"][0]["features"]
    for query in ("", "?drift=false", "?drift=0", "?other=1"):
        assert "drift" not in client.post(f"/predict{query}", json={"features": x}).json()
    r = client.post("/predict?drift=maybe", json={"features": x})
    assert r.status_code == 422 and r.json()["detail"] == 'drift: expected true or false, got "maybe"'
    r = client.post("/predict/batch?drift=true&drift=false", json={"instances": [x]})
    assert r.status_code == 422 and r.json()["detail"] == "drift: give the query parameter once"
    assert client.post("/predict", json={"features": x}).status_code == 200  # still serving


def test_batch_v1_and_v2_give_the_same_drift_as_predict(client, card) -> None:
    xs = [e["features"] for e in card["examples"]]
    singles = [client.post("/predict?drift=true", json={"features": x}).json()["drift"] for x in xs]
    batch = [p["drift"] for p in client.post("/predict/batch?drift=1", json={"instances": xs}).json()["predictions"]]
    v1 = client.post(f"/v1/models/{card['name']}:predict?drift=true", json={"instances": xs}).json()["predictions"]
    assert batch == singles and [p["drift"] for p in v1] == singles
    body = {"inputs": [{"name": "input", "shape": [len(xs), len(xs[0])], "datatype": "FP64", "data": xs}],
            "parameters": {"drift": True}}  # fmt: skip
    outputs = {o["name"]: o for o in client.post(f"/v2/models/{card['name']}/infer", json=body).json()["outputs"]}
    assert outputs["drift_score"]["data"] == [s["score"] for s in singles]
    assert outputs["drift_p_value"]["data"] == [s["p_value"] for s in singles]
    assert outputs["drift_flagged"]["datatype"] == "BOOL"
    assert outputs["drift_top_feature"]["data"] == [s["top_features"][0]["name"] for s in singles]
    # asked by name, without the parameter
    body = {**body, "parameters": None, "outputs": [{"name": "drift_p_value"}]}
    answer = client.post(f"/v2/models/{card['name']}/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["drift_p_value"]
    body = {**body, "outputs": None, "parameters": {"drift": "yes"}}
    r = client.post(f"/v2/models/{card['name']}/infer", json=body)
    assert r.status_code == 400 and r.json()["error"] == "parameters.drift: expected true or false, got 'yes'"


@pytest.mark.parametrize(("dataset", "alpha"), [("breast_cancer", 0.1), ("digits", 0.05), ("digits", 0.1)])
def test_unseen_in_distribution_samples_are_flagged_at_about_alpha(served, dataset: str, alpha: float) -> None:
    client = served(dataset, alpha)
    data = load_dataset(dataset)
    blocks = drift_of(client, data.test.x)  # the calibration saw the validation split only
    rate = flag_rate(blocks)
    assert abs(rate - alpha) <= binomial_band(alpha, len(data.test), len(data.val)), rate
    # and exactly the rate export measured on the same split
    card = client.get("/model").json()["card"]
    assert rate == pytest.approx(card["drift"]["calibration"]["flag_rates"]["test"][str(alpha)])


def thin_tailed_feature(client: TestClient) -> int:
    """The feature whose mean is most standard deviations from zero: tripling it (a unit error)
    moves it furthest."""
    bn = client.get("/bn-stats/input_bn").json()
    return int(np.argmax(np.array(bn["running_mean"]) / np.sqrt(np.array(bn["running_var"]))))


def test_one_feature_scaled_by_3_is_flagged_and_named_first(served, bc) -> None:
    client = served("breast_cancer")
    j = thin_tailed_feature(client)
    name = bc.feature_names[j]
    x = bc.test.x.copy()
    x[:, j] *= 3
    blocks = drift_of(client, x)
    assert flag_rate(blocks) >= 0.9
    assert np.mean([b["top_features"][0]["name"] == name for b in blocks]) >= 0.95
    assert flag_rate(drift_of(client, bc.test.x)) <= 0.2
    client.post("/drift/reset", headers=AUTH)
    drift_of(client, x)
    window = client.get("/drift").json()
    assert window["window"]["count"] == len(x)
    assert window["top_features"][0]["name"] == name and window["top_features"][0]["mean_shift"] > 5


@pytest.mark.parametrize("sign", [2, -2])
def test_all_features_moved_by_2_sd_are_flagged_and_the_window_sees_the_shift(served, bc, sign: int) -> None:
    client = served("breast_cancer")
    sd = bc.train.x.std(axis=0)
    base = flag_rate(drift_of(client, bc.test.x))
    blocks = drift_of(client, bc.test.x + sign * sd)
    assert flag_rate(blocks) >= max(0.3, 3 * base)
    client.post("/drift/reset", headers=AUTH)
    drift_of(client, bc.test.x)
    before = {f["name"]: f["mean_shift"] for f in client.get("/drift?top=0").json()["top_features"]}
    client.post("/drift/reset", headers=AUTH)
    drift_of(client, bc.test.x + sign * sd)
    after = {f["name"]: f["mean_shift"] for f in client.get("/drift?top=0").json()["top_features"]}
    moved = np.array([after[n] - before[n] for n in bc.feature_names])
    # 2 training SDs each, in units of the running SD (which the moving average only approximates)
    bn = client.get("/bn-stats/input_bn").json()
    np.testing.assert_allclose(moved, sign * sd / np.sqrt(np.array(bn["running_var"]) + bn["eps"]), rtol=1e-4)
    assert np.median(np.abs(moved)) > 1.5


def test_digits_inverted_or_with_heavy_noise_are_flagged(served, digits) -> None:
    client = served("digits")
    assert flag_rate(drift_of(client, digits.test.x)) <= 0.12
    assert flag_rate(drift_of(client, 16.0 - digits.test.x)) >= 0.9
    rng = np.random.default_rng(0)
    noisy = np.clip(digits.test.x + rng.normal(0, 8, digits.test.x.shape), 0, 16).astype(np.float32)
    assert flag_rate(drift_of(client, noisy)) >= 0.5


# ---------------------------------------------------------------------- over time


def offline_window(checkpoint, bn_stats: dict, x: np.ndarray) -> dict:
    """GET /drift's layer figures computed from scratch: every BN layer's input from forward
    hooks on the torch model in eval mode, standardised with the stored running statistics."""
    model, _ = load_checkpoint(checkpoint)
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda _m, a, n=name: seen.__setitem__(n, a[0].double().numpy()))
             for name, bn in model.bn_layers()]  # fmt: skip
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    out = {}
    for layer in bn_stats["layers"]:
        v = seen[layer["name"]]
        v = v.reshape(len(x), layer["num_features"], -1)
        mean, var = np.array(layer["running_mean"]), np.array(layer["running_var"])
        z = (v - mean[:, None]) / np.sqrt(var[:, None] + layer["eps"])
        m1, m2 = z.mean(axis=(0, 2)), (z * z).mean(axis=(0, 2))
        out[layer["name"]] = {
            "mean_shift": float(np.sqrt(np.mean(m1**2))),
            "variance_ratio": float(np.mean(m2 - m1**2)),
            "score": float(np.mean(m2)),
        }
    return out


@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
def test_window_figures_equal_an_offline_computation(served, make_trained, dataset: str) -> None:
    client = served(dataset)
    data = load_dataset(dataset)
    assert client.post("/drift/reset").status_code == 401  # admin token required
    reset = client.post("/drift/reset", headers=AUTH)
    assert reset.status_code == 200 and reset.json()["window"]["count"] == 0
    x = np.concatenate([data.test.x, data.val.x[:7] * np.float32(1.5)])
    drift_of(client, x[:-3], "/predict/batch")  # the window sees every answer, drift asked or not
    for row in x[-3:]:
        assert client.post("/predict", json={"features": row.reshape(-1).tolist()}).status_code == 200
    client.post("/predict", json={"features": [1.0]})  # refused: not counted
    window = client.get("/drift?top=0").json()
    assert window["window"]["count"] == len(x) and window["window"]["workers"] == 1
    expected = offline_window(make_trained(dataset, "before").checkpoint, client.get("/bn-stats").json(), x)
    for layer in window["layers"]:
        for key in ("mean_shift", "variance_ratio", "score"):
            assert layer[key] == pytest.approx(expected[layer["name"]][key], rel=1e-4, abs=1e-5), (layer, key)
    assert len(window["top_features"]) == len(data.feature_names)

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families["bnserve_drift_window_samples"].samples[0].value == len(x)
    gauges = {s.labels["layer"]: s.value for s in families["bnserve_drift_layer_mean_shift"].samples}
    assert gauges == pytest.approx({layer["name"]: layer["mean_shift"] for layer in window["layers"]})


def figures_of(layers: list[dict]) -> list[tuple[str, float, float, float]]:
    return [(x["name"], x["mean_shift"], x["variance_ratio"], x["score"]) for x in layers]


def assert_same_layers(got: list[dict], want: list[dict], rel: float) -> None:
    assert [x["name"] for x in got] == [x["name"] for x in want]
    for g, w in zip(figures_of(got), figures_of(want), strict=True):
        assert g[1:] == pytest.approx(w[1:], rel=rel), g[0]


def spec_and_rows(path, data) -> tuple[ModelRuntime, np.ndarray, list[np.ndarray]]:
    runtime = ModelRuntime.load(path)
    x = data.test.x
    hidden = runtime.session.run(runtime.drift.outputs, {"input": x}) if runtime.drift else []
    return runtime, x.reshape(len(x), -1), hidden


def test_two_workers_windows_merge_to_the_window_of_one(validation_calibrated, digits, tmp_path) -> None:
    runtime, rows, hidden = spec_and_rows(validation_calibrated("digits"), digits)
    spec: DriftSpec = runtime.drift
    one = Window(spec, seconds=0)
    a = Window(spec, seconds=0, directory=tmp_path, worker="a")
    b = Window(spec, seconds=0, directory=tmp_path, worker="b")
    half = len(rows) // 2
    for i in range(len(rows)):  # one at a time, through the buffers, as requests arrive
        one.observe(rows[i : i + 1], [h[i : i + 1] for h in hidden])
        (a if i < half else b).observe(rows[i : i + 1], [h[i : i + 1] for h in hidden])
    merged = a.report(top=0)
    assert merged["window"]["workers"] == 2 and merged["window"]["count"] == len(rows)
    single = one.report(top=0)
    assert_same_layers(merged["layers"], single["layers"], rel=1e-9)
    assert b.report(top=0)["layers"] == merged["layers"]  # either worker answers the same
    # sums add: the merged totals are the one window's, and figures() of them is the report
    totals, _ = a.totals()
    assert figures(spec, totals, 0, 0, top=0)["layers"] == merged["layers"]
    b.reset()  # one worker resets: the other's samples leave the window too
    assert a.report()["window"]["count"] == 0


def test_by_default_the_window_takes_one_request_in_four(tabular, card) -> None:
    settings = Settings(model_path=tabular.folded, drift_window_seconds=0)
    with TestClient(create_app(settings)) as c:
        for _ in range(10):
            assert c.post("/predict", json={"features": card["examples"][0]["features"]}).status_code == 200
        c.post("/predict/batch", json={"instances": [card["examples"][1]["features"]] * 5})
        c.post("/predict/batch", json={"instances": [card["examples"][1]["features"]] * 7})
        window = c.get("/drift").json()["window"]
    # requests 4 and 8 (one sample each) and 12 (seven samples)
    assert window["requests_per_sample"] == 4 and window["count"] == 1 + 1 + 7


def test_window_closes_after_its_seconds_or_samples(validation_calibrated, digits) -> None:
    runtime, rows, hidden = spec_and_rows(validation_calibrated("digits"), digits)
    timed = Window(runtime.drift, seconds=60)
    timed.observe(rows[:5], [h[:5] for h in hidden], now=120.0)
    assert timed.report(now=179.0)["window"]["count"] == 5
    assert timed.report(now=180.0)["window"]["count"] == 0  # a new minute, a new window
    counted = Window(runtime.drift, seconds=0, samples=10)
    for i in range(12):
        counted.observe(rows[i : i + 1], [h[i : i + 1] for h in hidden])
    assert counted.report()["window"]["count"] == 2


def test_window_adds_up_across_two_live_workers(validation_calibrated, digits, tmp_path) -> None:
    path = validation_calibrated("digits")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "BNSERVE_DRIFT_WINDOW_SECONDS": "0",
           "BNSERVE_DRIFT_MONITOR_EVERY": "1"}  # fmt: skip
    x = digits.test.x[:60].reshape(60, -1).tolist()
    with serve(path, "--workers", "2", env=env, ready_lines=2) as server:

        def send(row: list[float]) -> int:  # a new connection each: both workers take some
            return httpx.post(f"{server.base}/predict", json={"features": row}, timeout=10).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(send, x)) == {200}
        window = httpx.get(f"{server.base}/drift?top=0", timeout=10).json()
    assert window["window"]["count"] == len(x)
    runtime, rows, hidden = spec_and_rows(path, digits)
    one = Window(runtime.drift, seconds=0)
    one.observe(rows[:60], [h[:60] for h in hidden])
    assert_same_layers(window["layers"], one.report()["layers"], rel=1e-6)


def test_an_export_without_drift_serves_the_same_answers_and_refuses_drift(tabular, tmp_path, client) -> None:
    from export.__main__ import main as export_main

    plain = tmp_path / "plain.onnx"
    assert export_main([str(tabular.checkpoint), "--no-drift", "--out", str(plain)]) == 0
    runtime = ModelRuntime.load(plain)
    assert [o.name for o in runtime.session.get_outputs()] == ["logits", "probabilities"] and runtime.drift is None
    x = client.get("/model").json()["card"]["examples"][0]["features"]
    with TestClient(create_app(Settings(model_path=plain))) as c:
        answer = c.post("/predict", json={"features": x}).json()
        assert answer["probabilities"] == client.post("/predict", json={"features": x}).json()["probabilities"]
        r = c.post("/predict?drift=true", json={"features": x})
        assert r.status_code == 400 and "no drift calibration (exported with --no-drift" in r.json()["detail"]
        assert c.get("/drift").status_code == 409
