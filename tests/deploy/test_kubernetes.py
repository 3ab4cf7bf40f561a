"""deploy/kubernetes validated offline against the Kubernetes schemas (kubernetes-validate --strict)."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSION = kubernetes_validate.latest_version()


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"])
def test_manifest_is_valid_and_strict(name: str) -> None:
    kubernetes_validate.validate(load(name), VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:  # the check itself can fail
    bad = load("deployment.yaml")
    bad["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_deployment_probes_resources_and_security() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(c["resources"]) == {"requests", "limits"}
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["BNSERVE_HOST"] == "0.0.0.0" and env["BNSERVE_MODEL_PATH"] == "/models/model.onnx"
    assert pod["terminationGracePeriodSeconds"] > int(env["BNSERVE_DRAIN_SECONDS"])
    hpa, pdb = load("hpa.yaml"), load("pdb.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "bnserve"
    assert pdb["spec"]["selector"] == load("deployment.yaml")["spec"]["selector"]


def test_kserve_inference_service_runs_the_image_as_a_v2_predictor() -> None:
    isvc = load("kserve-inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    (c,) = isvc["spec"]["predictor"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # The CRD's schema is not bundled: its container is checked as a core Kubernetes container.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [copy.deepcopy(c)]}}
    kubernetes_validate.validate(pod, VERSION, strict=True)
