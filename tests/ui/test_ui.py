"""GET /ui in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (never a browser or driver downloaded at run time). The page talks to a live
`python -m service` on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.data import load_dataset
from service import Settings, create_app
from tests.service.live import Server, serve

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="no chromium/chromedriver (make browser installs Debian's, as root)"
)
WAIT = 20  # seconds: the most a page condition may take before the test fails
TOKEN = "ui-test-token"


@pytest.fixture(scope="module")
def server(tabular) -> Iterator[Server]:
    env = {"BNSERVE_DRIFT_MONITOR_EVERY": "1", "BNSERVE_DRIFT_WINDOW_SECONDS": "0", "BNSERVE_ADMIN_TOKEN": TOKEN}
    with serve(tabular.folded, env=env) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2400", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, message)


@pytest.fixture(scope="module")
def page(browser, server):
    browser.get(f"{server.base}/ui")
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), "page never ready")
    wait(browser, lambda d: d.execute_script("return Number(document.body.dataset.driftUpdates || 0) > 0"),
         "the drift panel never loaded")  # fmt: skip
    return browser


def errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


@needs_browser
def test_the_page_loads_with_no_console_error_and_nothing_from_elsewhere(page, server) -> None:
    assert errors(page) == []
    resources = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(server.base) for r in resources), resources
    assert "chart.umd.min.js" in " ".join(resources)  # the vendored copy, from the service


@needs_browser
def test_every_bn_layer_is_drawn_with_one_mark_per_channel(page, server) -> None:
    layers = httpx.get(f"{server.base}/bn-stats").json()["layers"]
    drawn = page.execute_script("""
        return [...document.querySelectorAll('canvas[data-layer]')].map(c => ({
            layer: c.dataset.layer, chart: c.dataset.chart,
            datasets: Chart.getChart(c).data.datasets.map(d => d.data),
            labels: Chart.getChart(c).data.labels}))""")
    assert sorted({d["layer"] for d in drawn}) == sorted(layer["name"] for layer in layers)
    for layer in layers:
        charts = {d["chart"]: d for d in drawn if d["layer"] == layer["name"]}
        assert set(charts) == {"stats", "affine", "scale"}
        n = layer["num_features"]
        for chart in charts.values():
            assert all(len(data) == n for data in chart["datasets"]), (layer["name"], chart["chart"])
        band, mean = charts["stats"]["datasets"]
        sd = np.sqrt(np.array(layer["running_var"]) + layer["eps"])
        np.testing.assert_allclose(mean, layer["running_mean"], rtol=1e-12)
        np.testing.assert_allclose(np.array(band), np.stack([np.array(mean) - sd, np.array(mean) + sd], 1), rtol=1e-9)
        np.testing.assert_allclose(charts["affine"]["datasets"][0], layer["gamma"], rtol=1e-12)
        np.testing.assert_allclose(charts["affine"]["datasets"][1], layer["beta"], rtol=1e-12)
        if layer["placement"] == "input":  # the input layer is labelled by feature name
            assert charts["stats"]["labels"] == layer["feature_names"]
    text = page.find_element("id", "layers").text
    assert "forward into fc1" in text and "backward into fc1" in text and "num_batches_tracked" in text


def form_values(driver) -> dict[str, float]:
    """The form's fields in page order (pairs: the driver's JSON would sort an object's keys)."""
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('#feature-grid input')].map(i => [i.name, Number(i.value)])"
    )
    return dict(pairs)


@needs_browser
def test_submitting_the_form_shows_what_predict_answers(page, server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    features = form_values(page)
    want = httpx.post(f"{server.base}/predict?drift=true", json={"features": features}).json()
    page.find_element(By.ID, "predict-button").click()
    wait(page, lambda d: d.find_element(By.ID, "predicted-label").text == want["label"], "no label shown")
    items = page.find_elements(By.CSS_SELECTOR, "#probabilities-list li")
    shown = {
        li.get_attribute("data-class"): float(li.find_element(By.CLASS_NAME, "probability").get_attribute("data-value"))
        for li in items
    }
    assert shown == want["probabilities"]
    chart = page.execute_script("return Chart.getChart(document.getElementById('probabilities-chart')).data")
    assert chart["labels"] == list(want["probabilities"])
    assert chart["datasets"][0]["data"] == list(want["probabilities"].values())
    z = {f["name"]: f["z"] for f in want["drift"]["top_features"]}
    first = page.find_element(By.CSS_SELECTOR, ".feature")
    assert first.find_element(By.CLASS_NAME, "z").text == f"z {z[first.get_attribute('data-feature')]:.2f}"

    # keyboard only: type a value far out of range into the first field, press Enter
    field = first.find_element(By.TAG_NAME, "input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("9999", Keys.ENTER)
    wait(page, lambda d: "out-of-range" in first.get_attribute("class"), "the out-of-range feature is not highlighted")
    name = first.get_attribute("data-feature")
    bad = httpx.post(f"{server.base}/predict?drift=true", json={"features": {**features, name: 9999.0}}).json()
    assert page.find_element(By.ID, "predicted-label").text == bad["label"]
    assert errors(page) == []


@needs_browser
def test_another_sample_fills_the_form_with_the_next_real_sample(page, server) -> None:
    from selenium.webdriver.common.by import By

    samples = httpx.get(f"{server.base}/model").json()["card"]["samples"]
    page.find_element(By.ID, "another-sample").click()
    values = form_values(page)
    names = list(values)
    assert [values[n] for n in names] == pytest.approx(samples[1]["features"], rel=1e-6)


@needs_browser
def test_the_drift_panel_changes_after_shifted_samples(page, server, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    data = load_dataset("breast_cancer")
    reset = httpx.post(f"{server.base}/drift/reset", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reset.status_code == 200
    x = data.test.x.copy()
    j = int(np.argmax(data.train.x.mean(axis=0) / data.train.x.std(axis=0)))
    x[:, j] *= 3
    assert httpx.post(f"{server.base}/predict/batch", json={"instances": x.tolist()}).status_code == 200
    # the panel reads GET /drift every few seconds; the test waits for that, it does not click
    wait(page, lambda d: int(d.find_element(By.ID, "drift-count").text) == len(x), "drift panel unchanged")
    first = page.find_element(By.CSS_SELECTOR, "#drift-features tbody tr")
    assert first.get_attribute("data-feature") == data.feature_names[j]
    rows = page.find_elements(By.CSS_SELECTOR, "#drift-layers tbody tr")
    assert [r.get_attribute("data-layer") for r in rows] == ["input_bn", "bn1", "bn2"]
    # the screenshot: into BNSERVE_SCREENSHOT when set (make screenshot writes docs/ui.png), else beside the test's
    # temporary files
    page.find_element(By.ID, "predict-button").click()  # the prediction panel too
    wait(page, lambda d: d.find_element(By.ID, "predicted-label").text, "no prediction shown")
    page.execute_script("window.scrollTo(0, 0)")
    out = Path(os.environ.get("BNSERVE_SCREENSHOT") or tmp_path / "ui.png")
    assert page.save_screenshot(str(out)) and out.stat().st_size > 10_000


@needs_browser
def test_the_page_fits_a_phone_width(browser, server) -> None:
    browser.set_window_size(390, 844)
    try:
        browser.get(f"{server.base}/ui")
        wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), "not ready")
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        labels = browser.execute_script(
            "return [...document.querySelectorAll('#feature-grid input')]"
            ".every(i => document.querySelector(`label[for=${i.id}]`))"
        )
        assert labels  # every field has its label: usable with a screen reader and the keyboard
    finally:
        browser.set_window_size(1280, 2400)


def test_the_page_is_off_with_the_setting(tabular) -> None:
    with TestClient(create_app(Settings(model_path=tabular.folded, ui=False))) as c:
        assert c.get("/ui").status_code == 404
        assert c.get("/ui/static/ui.js").status_code == 404
        assert c.get("/predict").status_code == 405  # the API is still there
    with TestClient(create_app(Settings(model_path=tabular.folded))) as c:
        r = c.get("/ui")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert c.get("/ui/static/vendor/chart.js-LICENSE.md").text.startswith("The MIT License")
