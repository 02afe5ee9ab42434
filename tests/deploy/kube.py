"""Offline stand-ins for ``kustomize build`` and the API server's schema check, used by tests/deploy.

There is no kubectl, kustomize or cluster in development or CI. ``render`` re-implements the part of kustomize
the overlays use (resources, namespace, images, replicas, generators, strategic-merge and JSON6902 patches)
and refuses every other kustomization field, so no manifest can lean on behaviour these tests do not
emulate. ``validate`` checks built-in kinds against the Kubernetes OpenAPI schemas bundled with
kubernetes-validate and KEDA's kinds against the CRD schemas vendored in schemas/, both strict: an unknown
field fails, as it would under ``kubectl apply --validate=strict``, instead of being silently dropped.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
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

KUSTOMIZATION_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "images",
        "replicas",
        "patches",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
    }
)
CLUSTER_SCOPED = frozenset({"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"})
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
# Built-in API groups: their strategic merge patches merge these lists by key; CRDs get JSON merge semantics.
BUILTIN_GROUPS = frozenset({"", "apps", "autoscaling", "policy", "networking.k8s.io", "batch"})
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
KEDA_SCHEMAS = {
    "ScaledObject": "keda.sh_scaledobjects.v1alpha1.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.v1alpha1.yaml",
}


class RenderError(Exception):
    """A kustomization that ``kustomize build`` would reject (or that uses a feature not emulated here)."""


def load_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


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


def render(directory: Path) -> Rendered:
    """What ``kustomize build directory`` outputs, for the features listed in KUSTOMIZATION_FIELDS.

    A generator's ``envs`` file that is absent is read from ``<file>.example`` instead (secrets.env is
    git-ignored); the rendering is otherwise what kustomize does.
    """
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{directory} has no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields {sorted(unknown)} are not emulated by tests/deploy/kube.py")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += render(path).resources
        elif path.is_file():
            resources += [copy.deepcopy(doc) for doc in load_docs(path)]
        else:
            raise RenderError(f"{kfile}: resource {entry} does not exist")
    _generate(spec, directory, resources)
    for entry in spec.get("patches", []):
        _apply_patch(entry, directory, resources)
    namespace = spec.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    _set_images(spec.get("images", []), resources)
    _set_replicas(spec.get("replicas", []), resources)
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        if ident(resource) in seen:
            raise RenderError(f"{kfile}: {ident(resource)} is defined twice")
        seen.add(ident(resource))
    return Rendered(directory, namespace, resources)


def _generator_data(gen: Mapping[str, Any], directory: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    for literal in gen.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise RenderError(f"literal {literal!r} is not KEY=VALUE")
        data[key] = value
    for name in gen.get("envs", []):
        path = directory / name
        if not path.is_file():
            path = directory / f"{name}.example"
        if not path.is_file():
            raise RenderError(f"{directory / name} does not exist (and has no .example)")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key] = value
    if gen.get("files"):
        raise RenderError("generator `files` are not emulated")
    return data


def _generate(spec: Mapping[str, Any], directory: Path, resources: list[Resource]) -> None:
    renames: dict[tuple[str, str], str] = {}
    default_hash = not spec.get("generatorOptions", {}).get("disableNameSuffixHash", False)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key, []):
            data = _generator_data(gen, directory)
            behavior = gen.get("behavior", "create")
            existing = next((r for r in resources if ident(r) == (kind, gen["name"])), None)
            if behavior == "create":
                if existing is not None:
                    raise RenderError(f"{kind}/{gen['name']} already exists: use behavior merge or replace")
                resource: Resource = {
                    "apiVersion": "v1",
                    "kind": kind,
                    "metadata": {"name": gen["name"]},
                }
                if kind == "Secret":
                    resource["type"] = gen.get("type", "Opaque")
                    resource["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                else:
                    resource["data"] = data
                resources.append(resource)
                if not gen.get("options", {}).get("disableNameSuffixHash", not default_hash):
                    digest = hashlib.sha256(json.dumps(resource["data"], sort_keys=True).encode()).hexdigest()
                    renames[(kind, gen["name"])] = f"{gen['name']}-{digest[:10]}"
            else:
                raise RenderError(f"generator behavior {behavior!r} is not emulated")
    for (kind, old), new in renames.items():
        for resource in resources:
            if ident(resource) == (kind, old):
                resource["metadata"]["name"] = new
            if resource["kind"] in POD_TEMPLATE_KINDS:
                _rename_refs(resource["spec"]["template"]["spec"], kind, old, new)


def _rename_refs(pod: Resource, kind: str, old: str, new: str) -> None:
    """kustomize's name-reference fix-up for generated names, as it does it: built-in pod fields only."""
    ref_key = "configMapRef" if kind == "ConfigMap" else "secretRef"
    key_ref = "configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            if source.get(ref_key, {}).get("name") == old:
                source[ref_key]["name"] = new
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get(key_ref)
            if ref and ref.get("name") == old:
                ref["name"] = new
    for volume in pod.get("volumes", []):
        if kind == "ConfigMap" and volume.get("configMap", {}).get("name") == old:
            volume["configMap"]["name"] = new
        if kind == "Secret" and volume.get("secret", {}).get("secretName") == old:
            volume["secret"]["secretName"] = new


def _matches_target(resource: Resource, target: Mapping[str, Any]) -> bool:
    version = resource["apiVersion"].split("/")[-1]
    checks = {
        "kind": resource["kind"],
        "group": group_of(resource),
        "version": version,
        "namespace": resource["metadata"].get("namespace"),
    }
    for key, value in target.items():
        if key == "name":
            if not re.fullmatch(value, resource["metadata"]["name"]):
                return False
        elif key in checks:
            if checks[key] != value:
                return False
        else:
            raise RenderError(f"patch target field {key!r} is not emulated")
    return True


def _apply_patch(entry: Mapping[str, Any], directory: Path, resources: list[Resource]) -> None:
    if "path" in entry:
        path = directory / entry["path"]
        if not path.is_file():
            raise RenderError(f"patch {path} does not exist")
        docs = load_docs(path)
        where = str(path)
    else:
        docs = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
        where = f"inline patch in {directory}"
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):
        if not target:
            raise RenderError(f"{where}: a JSON6902 patch needs a target")
        matched = [r for r in resources if _matches_target(r, target)]
        if not matched:
            raise RenderError(f"{where}: target {target} matches no resource")
        for resource in matched:
            json_patch(resource, docs[0])
        return
    for doc in docs:
        if target:
            matched = [r for r in resources if _matches_target(r, target)]
        else:
            matched = [r for r in resources if ident(r) == (doc["kind"], doc["metadata"]["name"])]
        if not matched:
            raise RenderError(f"{where}: {doc['kind']}/{doc['metadata']['name']} matches no resource")
        for resource in matched:
            merged = strategic_merge(resource, doc, builtin=group_of(resource) in BUILTIN_GROUPS)
            resource.clear()
            resource.update(merged)


def strategic_merge(base: Any, patch: Any, *, builtin: bool) -> Any:
    """A strategic merge patch: maps merge, ``null`` deletes, keyed lists of built-in kinds merge by key."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key.startswith("$"):
            raise RenderError(f"patch directive {key} is not emulated")
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, builtin=builtin)
        elif (
            isinstance(value, list) and builtin and isinstance(out.get(key), list) and _merge_key(key, value)
        ):
            out[key] = _merge_list(out[key], value, _merge_key(key, value), builtin=builtin)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_key(field_name: str, items: list[Any]) -> str | None:
    if field_name == "ports":
        return "containerPort" if any("containerPort" in item for item in items) else "port"
    return MERGE_KEYS.get(field_name)


def _merge_list(base: list[Any], patch: list[Any], key: str | None, *, builtin: bool) -> list[Any]:
    out = copy.deepcopy(base)
    for item in patch:
        index = next((i for i, old in enumerate(out) if old.get(key) == item.get(key)), None)
        if index is None:
            out.append(copy.deepcopy(item))
        else:
            out[index] = strategic_merge(out[index], item, builtin=builtin)
    return out


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def json_patch(document: Resource, operations: list[Mapping[str, Any]]) -> None:
    """RFC 6902 add / replace / remove / test, in place; a path that does not resolve is an error."""
    for op in operations:
        *parents, last = _pointer(op["path"])
        node: Any = document
        for part in parents:
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError) as exc:
                raise RenderError(f"JSON patch path {op['path']} does not resolve") from exc
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif index >= len(node):
                raise RenderError(f"JSON patch path {op['path']} does not resolve")
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            elif kind == "test":
                if node[index] != op["value"]:
                    raise RenderError(f"JSON patch test failed at {op['path']}")
            else:
                raise RenderError(f"JSON patch op {kind!r} is not emulated")
        elif kind == "add":
            node[last] = copy.deepcopy(op["value"])
        elif last not in node:
            raise RenderError(f"JSON patch path {op['path']} does not resolve")
        elif kind == "replace":
            node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[last]
        elif kind == "test":
            if node[last] != op["value"]:
                raise RenderError(f"JSON patch test failed at {op['path']}")
        else:
            raise RenderError(f"JSON patch op {kind!r} is not emulated")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry port is not mistaken for a tag."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        return name, tag, digest or None
    return name, None, digest or None


def _set_images(entries: list[Mapping[str, Any]], resources: list[Resource]) -> None:
    for resource in resources:
        if resource["kind"] not in POD_TEMPLATE_KINDS:
            continue
        for container in all_containers(resource):
            name, tag, digest = split_image(container["image"])
            for entry in entries:
                if entry["name"] == name:
                    name = entry.get("newName", name)
                    tag = str(entry["newTag"]) if "newTag" in entry else tag
                    digest = entry.get("digest", digest)
            container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _set_replicas(entries: list[Mapping[str, Any]], resources: list[Resource]) -> None:
    for entry in entries:
        matched = [
            r for r in resources if r["kind"] in POD_TEMPLATE_KINDS and r["metadata"]["name"] == entry["name"]
        ]
        if not matched:
            raise RenderError(f"replicas: no workload named {entry['name']}")
        for resource in matched:
            resource["spec"]["replicas"] = entry["count"]


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
