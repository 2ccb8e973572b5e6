"""The Kubernetes manifests (packaging/kubernetes) against the Kubernetes schemas that
kubernetes-validate ships (offline, strict: unknown fields are errors), and what the issue
asks of them: hostNetwork, readiness on /readyz, a preStop drain, an HPA; the ConfigMap's
natkit.yaml is a valid natkit config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from natkit.config import loads

ROOT = Path(__file__).resolve().parents[2] / "packaging" / "kubernetes"
VERSION = "1.37.0"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(ROOT.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}", doc))
    return found


DOCS = _docs()


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    doc = dict(_by_kind("DaemonSet"))
    doc["spec"] = {**doc["spec"], "replicas": "two"}  # no such field on a DaemonSet
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def _by_kind(kind: str) -> dict[str, Any]:
    return next(d for _, d in DOCS if d["kind"] == kind)


@pytest.mark.parametrize("kind", ["DaemonSet", "Deployment"])
def test_workloads_run_on_the_host_network_with_readiness_and_a_drain(kind: str) -> None:
    pod = _by_kind(kind)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "kill -TERM 1" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert pod["terminationGracePeriodSeconds"] > 35  # turn.drain_timeout 30 + 5 s of streams


def test_hpa_scales_the_deployment() -> None:
    target = _by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        _by_kind("Deployment")["metadata"]["name"],
    )


def test_the_configmap_is_a_valid_natkit_fleet_config() -> None:
    text = _by_kind("ConfigMap")["data"]["natkit.yaml"]
    env = {
        "NATKIT_TURN_SECRET": "s",
        "NATKIT_HOST_IP": "198.51.100.7",
        "NATKIT_REDIS_URL": "rediss://:pw@redis.example:6380/0",
        "NATKIT_NODE_ID": "node-1",
    }
    config = loads(text, "natkit.yaml", env=env)
    assert config.cluster.redis == env["NATKIT_REDIS_URL"] and config.cluster.node_id == "node-1"
    assert config.metrics.listen == "198.51.100.7:9641"
