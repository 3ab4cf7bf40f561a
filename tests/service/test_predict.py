"""POST /predict and /predict/batch against the checkpoint's torch model in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.data import load_dataset


@pytest.fixture(scope="module")
def torch_model(tabular):
    model, ckpt = load_checkpoint(tabular.checkpoint)
    return model, load_dataset(ckpt["dataset"]["name"], ckpt["dataset"]["split_seed"])


def torch_probs(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(torch.from_numpy(np.atleast_2d(x))), dim=1).numpy()


def test_predict_answers_label_index_probabilities_and_version(client) -> None:
    x = client.get("/model").json()["card"]["examples"][0]["features"]
    r = client.post("/predict", json={"features": x})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"label", "class_index", "probabilities", "model_version"}
    assert list(body["probabilities"]) == ["malignant", "benign"]
    assert body["label"] == ["malignant", "benign"][body["class_index"]]
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
    assert body["model_version"] == client.get("/model").json()["model_version"]


def test_predict_equals_torch_eval_mode_on_every_test_sample(client, torch_model) -> None:
    model, data = torch_model
    want = torch_probs(model, data.test.x)
    for x, p in zip(data.test.x, want, strict=True):
        got = client.post("/predict", json={"features": x.tolist()}).json()["probabilities"]
        np.testing.assert_allclose(list(got.values()), p, atol=1e-5)


def test_features_by_name_equal_features_in_order(client, torch_model) -> None:
    _, data = torch_model
    x = data.test.x[3].tolist()
    named = dict(zip(data.feature_names, x, strict=True))
    by_name = client.post("/predict", json={"features": dict(reversed(named.items()))}).json()
    in_order = client.post("/predict", json={"features": x}).json()
    assert by_name == in_order


def test_integers_are_accepted_as_numbers(client) -> None:
    r = client.post("/predict", json={"features": [1] * 30})
    assert r.status_code == 200


def test_a_sample_alone_equals_the_same_sample_inside_a_batch(client, torch_model) -> None:
    _, data = torch_model
    xs = data.test.x[:20]
    batch = client.post("/predict/batch", json={"instances": [x.tolist() for x in xs]}).json()["predictions"]
    assert len(batch) == 20
    for x, in_batch in zip(xs, batch, strict=True):
        alone = client.post("/predict", json={"features": x.tolist()}).json()
        np.testing.assert_allclose(
            list(alone["probabilities"].values()), list(in_batch["probabilities"].values()), rtol=1e-6, atol=1e-7
        )
        assert alone["label"] == in_batch["label"]


def test_batch_answers_in_order_with_mixed_forms(client, torch_model) -> None:
    model, data = torch_model
    xs = data.test.x[:4]
    instances = [
        xs[0].tolist(),
        dict(zip(data.feature_names, xs[1].tolist(), strict=True)),
        xs[2].tolist(),
        xs[3].tolist(),
    ]
    body = client.post("/predict/batch", json={"instances": instances}).json()
    got = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    np.testing.assert_allclose(got, torch_probs(model, xs), atol=1e-5)
    assert all(p["model_version"] == body["model_version"] for p in body["predictions"])


def test_single_sample_uses_running_statistics_not_batch_statistics(client, torch_model) -> None:
    """The answer the service gives is what eval mode gives, and measurably NOT what the
    same network gives when BN normalises with the statistics of a batch."""
    model, data = torch_model
    xs = data.test.x[:8]
    served = np.array(
        [list(client.post("/predict", json={"features": x.tolist()}).json()["probabilities"].values()) for x in xs]
    )
    np.testing.assert_allclose(served, torch_probs(model, xs), atol=1e-5)
    batch_mode = model.__class__(model.config)
    batch_mode.load_state_dict(model.state_dict())
    batch_mode.train()  # BN uses the statistics of these 8 samples
    with torch.no_grad():
        with_batch_stats = torch.softmax(batch_mode(torch.from_numpy(xs)), dim=1).numpy()
    assert np.abs(served - with_batch_stats).max() > 1e-2


def test_digits_take_64_values_or_an_8x8_or_1x8x8_image(image_client, image) -> None:
    model, ckpt = load_checkpoint(image.checkpoint)
    data = load_dataset("digits", ckpt["dataset"]["split_seed"])
    img = data.test.x[0]  # (1, 8, 8)
    answers = [
        image_client.post("/predict", json={"features": f}).json()
        for f in (img.reshape(-1).tolist(), img[0].tolist(), img.tolist())
    ]
    assert answers[0] == answers[1] == answers[2]
    np.testing.assert_allclose(list(answers[0]["probabilities"].values()), torch_probs(model, img[None])[0], atol=1e-5)
    assert len(answers[0]["probabilities"]) == 10


def test_bound_runs_give_the_batch_answers_from_many_threads_at_once(tabular) -> None:
    """One sample, and a batch whose size came twice in a row, run through buffers bound once
    (runtime._Runs); a thread that finds them busy takes session.run. Either way each sample gets
    its own answer, and the one the whole split gets."""
    from concurrent.futures import ThreadPoolExecutor

    from service.runtime import ModelRuntime

    runtime = ModelRuntime.load(tabular.folded)
    x = load_dataset("breast_cancer").test.x.astype(np.float32)
    together = runtime.probabilities(x)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            alone = list(pool.map(lambda row: runtime.probabilities(row[np.newaxis])[0], x))
            np.testing.assert_allclose(np.stack(alone), together, rtol=1e-6, atol=1e-7)
            chunks = list(pool.map(lambda i: runtime.probabilities(x[i : i + 7]), range(0, len(x) - 6, 7)))
            np.testing.assert_allclose(np.concatenate(chunks), together[: 7 * len(chunks)], rtol=1e-6, atol=1e-7)
    assert runtime._runs.batch is not None and runtime._runs.batch.rows == 7  # the bound batch took part
    for row, want in zip(x[:5], together[:5], strict=True):  # with the drift outputs too
        probs, reports = runtime.infer(row[np.newaxis], drift=True)
        np.testing.assert_allclose(probs[0], want, rtol=1e-6, atol=1e-7)
        assert reports is not None and reports[0]["score"] >= 0
