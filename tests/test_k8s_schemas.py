"""deploy/k8s against the Kubernetes API's own schemas (kubernetes-validate ships them: no cluster, no network).

Every object the base kustomization lists is validated strictly (unknown fields are errors) for the
Kubernetes release the manifests target. The overlay deploy/k8s-internal-tls holds strategic-merge patches,
not objects; tests/test_deploy.py checks them against the base.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES = "1.32.0"


def manifests() -> list[dict[str, Any]]:
    """The objects of the kustomization's resources, in the namespace it sets (as kustomize renders them)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            if document and document["kind"] != "Namespace":
                document["metadata"].setdefault("namespace", kustomization["namespace"])
            if document:
                documents.append(document)
    return documents


def test_every_resource_is_a_valid_kubernetes_object() -> None:
    documents = manifests()
    kinds = {document["kind"] for document in documents}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """A misspelt field and a wrong type, each in a copy of the worker Deployment, fail validation."""
    worker = next(d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "worker")
    misspelt = copy.deepcopy(worker)
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    wrong_type = copy.deepcopy(worker)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES, strict=True)
