"""The Kubernetes manifests: valid against the Kubernetes schemas (`kubernetes-validate --strict`,
offline), hardened, and consistent with the image and with each other."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from app.config import Settings
from tests.deploy.deployfiles import (
    K8S_DIR, K8S_FILES, dockerfile_stages, exposed_port, find_tool, instructions, k8s_container, k8s_documents,
    k8s_port, pod_spec,
)

AUTOSCALING = K8S_DIR / "autoscaling.yaml"
KSERVE = K8S_DIR / "kserve-inferenceservice.yaml"


def kubernetes_validate(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([find_tool("kubernetes-validate"), "--strict", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def workloads() -> dict[str, dict]:
    """kind -> document, for each manifest that runs the genserve image."""
    return {kind: doc for path in K8S_FILES for kind, doc in k8s_documents(path).items() if pod_spec(doc)}


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_manifests_pass_strict_validation(path):
    result = kubernetes_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kserve_predictor_is_a_valid_pod(tmp_path):
    """KServe's schema is not Kubernetes', but its predictor inlines a PodSpec: validate that as a Pod."""
    (service,) = k8s_documents(KSERVE).values()
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    pod = tmp_path / "pod.yaml"
    pod.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "genserve"},
                                   "spec": pod_spec(service)}))
    result = kubernetes_validate(pod)
    assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr
    (container,) = pod_spec(service)["containers"]
    assert container["name"] == "kserve-container"  # the container KServe routes to
    assert container["image"] == k8s_container()["image"]


def test_strict_validation_rejects_a_misspelt_field(tmp_path):
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S_DIR / "deployment.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFs"))
    result = kubernetes_validate(broken)
    assert result.returncode != 0 and "readOnlyRootFs" in result.stdout + result.stderr


def test_deployment_asks_for_a_gpu_and_serves_the_image_port():
    docs = k8s_documents()
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    container = k8s_container()
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert k8s_port(container, "http") == exposed_port(dockerfile_stages())
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert k8s_port(container, port["targetPort"]) == exposed_port(dockerfile_stages())


@pytest.mark.parametrize("kind", ["Deployment", "InferenceService"])
def test_pods_are_hardened(kind):
    spec = pod_spec(workloads()[kind])
    (container,) = spec["containers"]
    api_user = instructions(dockerfile_stages(), "api", "USER")[-1]
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == api_user
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume:
            assert volume["emptyDir"].get("sizeLimit"), f"emptyDir {volume['name']} is unbounded"
    grace = Settings.model_construct().shutdown_grace_s  # the app's default drain after SIGTERM
    assert spec["terminationGracePeriodSeconds"] > grace, "the kubelet would kill requests still draining"


def test_autoscaler_and_disruption_budget_fit_the_deployment():
    deployment = k8s_documents()["Deployment"]
    docs = k8s_documents(AUTOSCALING)
    hpa, pdb = docs["HorizontalPodAutoscaler"], docs["PodDisruptionBudget"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Utilisation is measured against the request: without one the autoscaler has nothing to divide by.
    (metric,) = hpa["spec"]["metrics"]
    assert k8s_container()["resources"]["requests"][metric["resource"]["name"]]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The budget must leave room for a drain at the autoscaler's floor, or no node ever drains.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
