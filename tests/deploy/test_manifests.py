"""deploy/kubernetes: schema validation (offline, kubernetes-validate) and the hardening issue 8 asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.helpers import (
    AGENT_CONTAINER,
    BROKER_CONTAINER,
    CUSTOM_KINDS,
    KUBERNETES_DIR,
    container,
    manifest_files,
    manifests,
    only,
    pod_spec,
    yaml_documents,
)

# The newest Kubernetes release whose schemas kubernetes-validate ships (pyproject pins >= 1.37).
KUBERNETES_VERSION = "1.37.0"


def test_schemas_for_the_chosen_kubernetes_version_are_installed() -> None:
    latest = kubernetes_validate.latest_version()
    assert tuple(int(n) for n in latest.split(".")[:2]) >= (1, 37), latest


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBERNETES_DIR)))
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    for doc in yaml_documents(path):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue  # checked structurally below
        # strict: unknown fields (typos such as readOnlyRootFileSystem) are errors too
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_only_known_custom_resources_skip_schema_validation() -> None:
    custom = [(m["apiVersion"], m["kind"]) for m in manifests() if (m["apiVersion"], m["kind"]) in CUSTOM_KINDS]
    assert custom == [("monitoring.coreos.com/v1", "PodMonitor")]


def test_podmonitor_scrapes_the_broker_ops_port() -> None:
    monitor = only("PodMonitor")
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    pod_labels = only("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["path"] == "/metrics"
    port_names = [p["name"] for p in container(BROKER_CONTAINER)["ports"]]
    assert endpoint["port"] in port_names
    for key in ("interval", "scrapeTimeout"):
        assert str(endpoint[key]).rstrip("s").isdigit(), f"{key} must be a duration such as 30s"


def _kustomization(directory: Path) -> dict[str, Any]:
    (doc,) = yaml_documents(directory / "kustomization.yaml")
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and doc["kind"] == "Kustomization"
    return doc


def _resolve(directory: Path) -> list[Path]:
    """Files a kustomization pulls in, following directory resources (as `kubectl apply -k` does)."""
    files: list[Path] = []
    for entry in _kustomization(directory)["resources"]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        files.extend(_resolve(target) if target.is_dir() else [target])
    return files


def test_kustomizations_cover_every_manifest_once() -> None:
    base = _resolve(KUBERNETES_DIR)
    with_monitoring = _resolve(KUBERNETES_DIR / "monitoring")
    assert len(base) == len(set(base)) and len(with_monitoring) == len(set(with_monitoring))
    assert set(with_monitoring) == set(manifest_files())
    # The base applies on any cluster: no custom resources in it.
    base_kinds = {(d["apiVersion"], d["kind"]) for path in base for d in yaml_documents(path)}
    assert not base_kinds & CUSTOM_KINDS
    for directory in (KUBERNETES_DIR, KUBERNETES_DIR / "monitoring"):
        assert _kustomization(directory)["namespace"] == only("Namespace")["metadata"]["name"]
    (image,) = _kustomization(KUBERNETES_DIR)["images"]
    assert container(BROKER_CONTAINER)["image"].split(":")[0] == image["name"]


def test_broker_is_a_native_sidecar_next_to_the_agent() -> None:
    spec = pod_spec()
    (broker,) = spec["initContainers"]
    assert broker["name"] == BROKER_CONTAINER and broker["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == [AGENT_CONTAINER]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "httpGet" in broker[probe], probe
    assert {"requests", "limits"} <= set(broker["resources"])


def test_every_container_is_locked_down() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    for item in spec["initContainers"] + spec["containers"]:
        context = item["securityContext"]
        assert context["runAsNonRoot"] is True, item["name"]
        assert context["readOnlyRootFilesystem"] is True, item["name"]
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, item["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, item["name"]
        assert all("hostPort" not in p for p in item.get("ports", [])), item["name"]
        mounts = {m["mountPath"]: m["name"] for m in item.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/tmp"]]["emptyDir"]["medium"] == "Memory", f"{item['name']}: /tmp must be a tmpfs"
        assert {"requests", "limits"} <= set(item["resources"]), item["name"]


def test_workload_identity_wiring() -> None:
    template = only("Deployment")["spec"]["template"]
    account = only("ServiceAccount")
    config = only("ConfigMap", "agent-token-broker-config")["data"]
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    annotations = account["metadata"]["annotations"]
    # The federated credential is on the blueprint: the same app id the broker signs in as.
    assert annotations["azure.workload.identity/client-id"] == config["AzureAd__ClientId"]
    assert annotations["azure.workload.identity/tenant-id"] == config["AzureAd__TenantId"]
    # The webhook must give the token to the broker only, never to the agent.
    skipped = template["metadata"]["annotations"]["azure.workload.identity/skip-containers"].split(";")
    assert skipped == [AGENT_CONTAINER]


def test_agent_container_gets_no_blueprint_configuration() -> None:
    agent = container(AGENT_CONTAINER)
    assert "envFrom" not in agent
    names = {e["name"] for e in agent.get("env", [])}
    assert not {n for n in names if n.split("__")[0] in ("AzureAd", "Broker", "DownstreamApis")}


def test_network_policy_admits_only_the_ops_port() -> None:
    policy = only("NetworkPolicy")
    pod_labels = only("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    ops = next(p["containerPort"] for p in container(BROKER_CONTAINER)["ports"] if p["name"] == "ops")
    assert ingress_ports == {ops}
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ("TCP", 443) in egress_ports and ("UDP", 53) in egress_ports
