"""The Kubernetes base in deploy/kubernetes, on paper (no cluster here): every manifest valid
against Kubernetes' own schema (kubernetes-validate, strict: no unknown fields), and consistent
with the images and the services: workloads run as the images' non-root user, probes ask
imgsearch-health on the port the service serves, Services select real pods on real ports, the
embedder is reached through a headless Service and scaled by an HPA, and secrets come only from
a Secret."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from imgsearch import defaults
from tests.conftest import ROOT
from tests.deploy_helpers import CONSOLE_SCRIPTS, SECRET_NAME, known_settings

BASE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still in wide use; 1.37 is checked too
IMAGE_USER = 10001  # the Dockerfile's `useradd --uid`
SERVES = {"searcher": defaults.SEARCHER_PORT, "embedder": defaults.EMBEDDER_PORT}


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def objects(kustomization) -> list[dict[str, Any]]:
    found = []
    for resource in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((BASE / resource).read_text()) if doc]
    return found


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**named(objects, "Deployment"), **named(objects, "StatefulSet")}


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, "1.37.0"])
def test_every_manifest_is_valid_against_the_kubernetes_schema(objects, version: str) -> None:
    assert {o["kind"] for o in objects} >= {"Deployment", "StatefulSet", "Service",
                                            "HorizontalPodAutoscaler"}  # fmt: skip
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field(objects) -> None:
    searcher = yaml.safe_load(yaml.safe_dump(named(objects, "Deployment")["searcher"]))
    searcher["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(searcher, KUBERNETES_VERSION, strict=True)


def test_the_services_run_as_the_images_user_and_probe_their_own_port(objects) -> None:
    for name, port in SERVES.items():
        pod = named(objects, "Deployment")[name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == IMAGE_USER
        (container,) = pod["containers"]
        assert container["image"] == f"imgsearch-{name}"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"name": "grpc", "containerPort": port} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command == ["imgsearch-health", f"localhost:{port}"], (name, probe)
            assert command[0] in CONSOLE_SCRIPTS
        assert "memory" in container["resources"]["limits"], name


def test_services_select_real_pods_on_ports_they_open(objects) -> None:
    pods = {
        name: (w["spec"]["template"]["metadata"]["labels"], w["spec"]["template"]["spec"])
        for name, w in workloads(objects).items()
    }
    for name, workload in workloads(objects).items():
        assert workload["spec"]["selector"]["matchLabels"].items() <= pods[name][0].items()
    for name, service in named(objects, "Service").items():
        matched = [spec for labels, spec in pods.values()
                   if service["spec"]["selector"].items() <= labels.items()]  # fmt: skip
        assert len(matched) == 1, name
        opened = {p["containerPort"] for c in matched[0]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in opened, (name, port)


def test_the_embedder_is_reached_pod_by_pod_and_scaled_on_cpu(objects) -> None:
    assert named(objects, "Service")["embedder"]["spec"]["clusterIP"] == "None"  # headless
    (hpa,) = named(objects, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "embedder")
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_settings_are_real_and_secrets_come_from_a_secret(objects, kustomization) -> None:
    for name, workload in workloads(objects).items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                key = variable["name"]
                if key.startswith("IMGSEARCH_"):
                    assert key in known_settings(), f"{name}: {key}"
                if SECRET_NAME.search(key):
                    assert "value" not in variable, f"{name}: {key} must come from a Secret"
                    assert variable["valueFrom"]["secretKeyRef"]["name"] == "imgsearch"
    text = "\n".join((BASE / r).read_text() for r in kustomization["resources"])
    assert not re.search(r"postgresql://\w+:[^@$]+@", text), "no password in a manifest"
    images = {i["name"] for i in kustomization["images"]}
    assert images == {f"imgsearch-{name}" for name in SERVES}
