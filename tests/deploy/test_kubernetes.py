"""k8s/: every kustomization renders, validates strictly, and agrees with the code it deploys.

The real kustomize renders (``kubectl kustomize``, tests/deploy/manifests.py) and the schema checks are
offline and strict; the rest reads the rendered objects the way the kubelet, KEDA and the NetworkPolicy
controller would, and compares them with the CLI, the settings classes and the queue's key names, so a
manifest cannot drift from the services without a test failing.
"""

from __future__ import annotations

import copy
import shutil
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import redis.asyncio as aioredis
import yaml

from etchr_editor.jobs import QUEUE_NAME, editor_queue
from etchr_tools.cli import DEFAULT_PORTS
from tests.deploy import envcheck, images, manifests

DIRS = manifests.kustomization_dirs()
OVERLAYS = manifests.overlay_dirs()
IDS = {path: str(path.relative_to(manifests.K8S)) for path in DIRS}

# What each Deployment must run: the `etchr` commands, with the editor split into front and GPU workers.
EXPECTED_COMMANDS = {
    "editor": ["etchr", "serve", "editor", "--no-worker", "--host", "0.0.0.0"],
    "editor-worker": ["etchr", "worker", "editor"],
    "verifier": ["etchr", "serve", "verifier", "--host", "0.0.0.0"],
    "reward": ["etchr", "serve", "reward", "--host", "0.0.0.0"],
}
# Metadata keys of KEDA's redis-streams scaler (pkg/scalers/redis_streams_scaler.go and the address parser).
REDIS_STREAMS_KEYS = frozenset(
    {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "usernameFromEnv",
        "passwordFromEnv",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
    }
)


@cache
def rendered(path: Path) -> manifests.Rendered:
    return manifests.render(path)


def etchr_workloads(r: manifests.Rendered) -> dict[str, manifests.Resource]:
    return {w["metadata"]["name"]: w for w in r.workloads() if w["metadata"]["name"] in EXPECTED_COMMANDS}


def main_container(workload: manifests.Resource) -> manifests.Resource:
    (container,) = manifests.pod_spec(workload)["containers"]
    return container


def command_of(container: manifests.Resource) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def container_port(container: manifests.Resource, port: int | str) -> int:
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in container.get("ports", [])), (
            f"port {port} not declared"
        )
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def autoscaled(r: manifests.Rendered) -> dict[str, manifests.Resource]:
    """Workload name -> the HPA or ScaledObject that owns its replica count."""
    owners = {h["spec"]["scaleTargetRef"]["name"]: h for h in r.of_kind("HorizontalPodAutoscaler")}
    owners |= {s["spec"]["scaleTargetRef"]["name"]: s for s in r.of_kind("ScaledObject")}
    return owners


def min_replicas(r: manifests.Rendered, workload: manifests.Resource) -> int:
    owner = autoscaled(r).get(workload["metadata"]["name"])
    if owner is None:
        return workload["spec"].get("replicas", 1)
    return owner["spec"].get("minReplicas", owner["spec"].get("minReplicaCount", 1))


# --- structure and schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_kustomization_renders_and_every_object_validates(path: Path) -> None:
    """Files exist, patches hit real objects, and each object passes the strict schema (two k8s versions)."""
    r = rendered(path)
    assert r.resources
    for resource in r.resources:
        try:
            manifests.validate(resource)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{IDS[path]}: {manifests.ident(resource)} at {where}: {exc.message}")


def test_there_is_a_base_and_overlays() -> None:
    assert manifests.K8S / "base" in DIRS
    assert {p.name for p in OVERLAYS} >= {"dev", "production"}


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_overlay_sets_its_namespace_and_keeps_every_base_object(path: Path) -> None:
    r = rendered(path)
    assert r.namespace, "an overlay must set a namespace"
    assert r.get("Namespace", r.namespace)
    base = {manifests.ident(res) for res in rendered(manifests.K8S / "base").resources}
    assert base <= {manifests.ident(res) for res in r.resources}
    for resource in r.resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == r.namespace, manifests.ident(resource)


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_every_reference_resolves(path: Path) -> None:
    """ConfigMaps, Secrets and their keys, scale targets, Service and PDB selectors, KEDA's auth."""
    r = rendered(path)
    workloads = r.workloads()
    for workload in workloads:
        for container in manifests.all_containers(workload):
            manifests.container_env(r, container)  # raises on a missing ConfigMap, Secret or key
    for owner in [*r.of_kind("HorizontalPodAutoscaler"), *r.of_kind("ScaledObject")]:
        target = owner["spec"]["scaleTargetRef"]
        assert r.find(target.get("kind", "Deployment"), target["name"]), (
            f"{manifests.ident(owner)} targets nothing"
        )
    for service in r.of_kind("Service"):
        selected = [
            w
            for w in workloads
            if manifests.selector_matches(
                {"matchLabels": service["spec"]["selector"]}, manifests.pod_labels(w)
            )
        ]
        assert len(selected) == 1, f"Service/{service['metadata']['name']} selects {len(selected)} workloads"
        for port in service["spec"]["ports"]:
            container_port(main_container(selected[0]), port.get("targetPort", port["port"]))
    for pdb in r.of_kind("PodDisruptionBudget"):
        selected = [
            w
            for w in workloads
            if manifests.selector_matches(pdb["spec"]["selector"], manifests.pod_labels(w))
        ]
        assert len(selected) == 1, f"{manifests.ident(pdb)} selects {len(selected)} workloads"
    for scaled in r.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            auth = r.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
            for ref in auth["spec"].get("secretTargetRef", []):
                secret = r.get("Secret", ref["name"])
                assert ref["key"] in secret.get("data", {}) | secret.get("stringData", {}), ref


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_every_container_has_probes_resources_and_runs_unprivileged(path: Path) -> None:
    """The issue's "every container has probes and resources", plus the restricted Pod Security profile."""
    r = rendered(path)
    for workload in r.workloads():
        pod = manifests.pod_spec(workload)
        name = workload["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, name
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True and pod_security.get("runAsUser", 0) != 0, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in manifests.all_containers(workload):
            where = f"{name}/{container['name']}"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert probe in container, f"{where} has no {probe}"
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    if kind in container[probe]:
                        container_port(container, container[probe][kind]["port"])
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where} lacks {part}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("readOnlyRootFilesystem") is True, where
            _, tag, digest = manifests.split_image(container["image"])
            assert digest or (tag and tag != "latest"), f"{where}: image {container['image']} is not pinned"


# --- agreement with the code ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_commands_ports_and_probe_paths_match_the_cli(path: Path) -> None:
    r = rendered(path)
    workloads = etchr_workloads(r)
    assert set(workloads) == set(EXPECTED_COMMANDS)
    for name, workload in workloads.items():
        container = main_container(workload)
        assert command_of(container) == EXPECTED_COMMANDS[name], name
        if name == "editor-worker":
            continue
        service = envcheck.service_of(container["args"])
        http = container_port(container, "http")
        assert http == DEFAULT_PORTS[service], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(http), name


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_etchr_variables_are_real_settings_with_valid_values(path: Path) -> None:
    """Each container gets only variables its own settings class reads, and that class accepts the values."""
    r = rendered(path)
    redis_service = r.get("Service", "redis")
    editor_service = r.get("Service", "editor")
    for name, workload in etchr_workloads(r).items():
        container = main_container(workload)
        cls = envcheck.SERVICE_SETTINGS[envcheck.service_of(container["args"])]
        env = manifests.container_env(r, container)
        etchr = {k for k in env if k.startswith(envcheck.PREFIX)}
        unknown = etchr - envcheck.env_names(cls)
        assert not unknown, (
            f"{name}: {sorted(unknown)} are not read by {cls.__name__} (typo or wrong ConfigMap)"
        )
        settings = envcheck.load(cls, env)
        url = urlsplit(settings.redis_url)
        assert (url.hostname, url.port) == ("redis", redis_service["spec"]["ports"][0]["port"]), name
        assert url.password == env["REDIS_PASSWORD"], f"{name}: ETCHR_REDIS_URL does not carry the password"
        if hasattr(settings, "editor_url") and name != "editor":
            editor = urlsplit(settings.editor_url)
            assert (editor.hostname, editor.port) == ("editor", editor_service["spec"]["ports"][0]["port"])


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_redis_password_is_the_one_the_services_and_keda_use(path: Path) -> None:
    r = rendered(path)
    redis_container = main_container(r.get("StatefulSet", "redis"))
    env = manifests.container_env(r, redis_container)
    args = [manifests._VAR_REF.sub(lambda m: env[m.group(1)], a) for a in redis_container["args"]]
    password = args[args.index("--requirepass") + 1]
    assert password and "$(" not in password
    (scaled,) = r.of_kind("ScaledObject")
    auth = r.get("TriggerAuthentication", scaled["spec"]["triggers"][0]["authenticationRef"]["name"])
    (ref,) = [ref for ref in auth["spec"]["secretTargetRef"] if ref["parameter"] == "password"]
    secret = r.get("Secret", ref["name"])
    assert manifests._secret_value(secret, ref["key"]) == password


# --- images --------------------------------------------------------------------------------------------


def kustomization(path: Path) -> manifests.Resource:
    return yaml.safe_load((path / "kustomization.yaml").read_text()) or {}


def source_image(path: Path, name: str) -> str:
    """The image name the manifests under ``path`` were written with, before ``images: newName`` moved it
    (to a registry, say)."""
    spec = kustomization(path)
    name = next((e["name"] for e in spec.get("images", []) if e.get("newName") == name), name)
    bases = [(path / entry).resolve() for entry in spec.get("resources", []) if (path / entry).is_dir()]
    return source_image(bases[0], name) if bases else name


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_only_the_editor_workers_run_the_cuda_image(path: Path) -> None:
    """The editor's front (`--no-worker`) runs the slim image the verifier and the reward service run: it
    needs no torch. Only the GPU workers, which load the model, run the CUDA editor image."""
    r = rendered(path)
    for name, workload in etchr_workloads(r).items():
        container = main_container(workload)
        image = source_image(path, manifests.split_image(container["image"])[0])
        assert image == images.image_for(command_of(container)[1:]), f"{name} runs {image}"
    front, verifier, reward, worker = (
        main_container(r.get("Deployment", name))["image"]
        for name in ("editor", "verifier", "reward", "editor-worker")
    )
    assert front == verifier == reward != worker, "one slim image for the three HTTP fronts"


def test_image_entries_name_the_images_built_here() -> None:
    """A kustomize `images` entry that names no image in use changes nothing, silently: each must name an
    image docker/ builds, and an overlay that sets images sets every one it runs (one tag for all)."""
    for path in DIRS:
        entries = kustomization(path).get("images", [])
        named = {entry["name"] for entry in entries}
        assert named <= set(images.DOCKERFILES), f"{IDS[path]}: {sorted(named - set(images.DOCKERFILES))}"
        if entries:
            used = {
                source_image(path, manifests.split_image(c["image"])[0])
                for w in etchr_workloads(rendered(path)).values()
                for c in manifests.all_containers(w)
            }
            assert used <= named, f"{IDS[path]} sets no tag for {sorted(used - named)}"
            assert len({str(entry.get("newTag")) for entry in entries}) == 1, "one release, one tag"


# --- the editor's GPU workers and KEDA -----------------------------------------------------------------


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_editor_workers_get_a_gpu_a_model_load_window_and_time_to_drain(path: Path) -> None:
    r = rendered(path)
    worker = r.get("Deployment", "editor-worker")
    container = main_container(worker)
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    # Workers (not the front) hold the GPU; the front must not.
    assert "nvidia.com/gpu" not in main_container(r.get("Deployment", "editor"))["resources"]["limits"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model download + load + warm-up"
    common = r.get("ConfigMap", "etchr-common")["data"]
    reclaim_s = float(
        common.get(
            "ETCHR_QUEUE_RECLAIM_S",
            envcheck.SERVICE_SETTINGS["editor"].model_fields["queue_reclaim_s"].default,
        )
    )
    grace = manifests.pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace >= reclaim_s, (
        "a worker being removed must be allowed to finish any batch that is not yet reclaimable"
    )
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert "kill -TERM 1" in " ".join(pre_stop), "preStop asks the worker (PID 1) to drain"


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_autoscaled_workloads_leave_replicas_to_their_autoscaler(path: Path) -> None:
    """A `replicas` in an HPA/KEDA-owned Deployment would reset the scale on every `kubectl apply`."""
    r = rendered(path)
    owners = autoscaled(r)
    assert {"editor-worker", "verifier", "reward"} <= set(owners)
    assert isinstance(owners["editor-worker"], dict) and owners["editor-worker"]["kind"] == "ScaledObject"
    for name in owners:
        assert "replicas" not in r.get("Deployment", name)["spec"], name
    for hpa in r.of_kind("HorizontalPodAutoscaler"):
        target = main_container(r.get("Deployment", hpa["spec"]["scaleTargetRef"]["name"]))
        assert "cpu" in target["resources"]["requests"], "CPU utilization needs a CPU request"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_keda_scales_editor_workers_on_the_editor_stream(path: Path) -> None:
    r = rendered(path)
    (scaled,) = r.of_kind("ScaledObject")
    spec = scaled["spec"]
    worker = r.get("Deployment", spec["scaleTargetRef"]["name"])
    assert command_of(main_container(worker)) == EXPECTED_COMMANDS["editor-worker"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert set(meta) <= REDIS_STREAMS_KEYS, (
        f"unknown redis-streams keys {sorted(set(meta) - REDIS_STREAMS_KEYS)}"
    )

    # The stream the workers read: the editor's queue contract (etchr_editor.jobs, which the front and the
    # workers both use), configured from the workers' own settings.
    env = manifests.container_env(r, main_container(worker))
    settings = envcheck.load(envcheck.SERVICE_SETTINGS["editor"], env)
    queue = editor_queue(aioredis.Redis(), settings)
    assert queue.stream.startswith(f"{settings.redis_prefix}:{QUEUE_NAME}:")
    assert meta["stream"] == queue.stream, "the editor's stream changed: update the trigger"
    assert int(meta["databaseIndex"]) == int(urlsplit(settings.redis_url).path.lstrip("/") or 0)

    # Busy workers must count: XLEN mode (no consumerGroup: finished entries are deleted, so the stream
    # length is waiting + running), or a lag trigger paired with a pending-entries one.
    if "consumerGroup" in meta:
        assert meta["consumerGroup"] == queue.group
        assert "pendingEntriesCount" in meta or any(
            "pendingEntriesCount" in t["metadata"] for t in spec["triggers"]
        )
    else:
        assert int(meta["streamLength"]) >= 1
    assert int(meta.get("activationLagCount", 0)) == 0, "a single queued job must wake a scaled-to-zero pool"

    # KEDA's operator resolves the address from its own namespace.
    host, _, port = meta["address"].rpartition(":")
    redis_service = r.get("Service", "redis")
    assert int(port) == redis_service["spec"]["ports"][0]["port"]
    assert host == f"redis.{r.namespace}.svc.cluster.local", host


@pytest.mark.parametrize("path", DIRS, ids=IDS.get)
def test_disruption_budgets_never_block_a_drain(path: Path) -> None:
    r = rendered(path)
    names = {pdb["metadata"]["name"] for pdb in r.of_kind("PodDisruptionBudget")}
    assert set(EXPECTED_COMMANDS) <= names
    for pdb in r.of_kind("PodDisruptionBudget"):
        (workload,) = [
            w
            for w in r.workloads()
            if manifests.selector_matches(pdb["spec"]["selector"], manifests.pod_labels(w))
        ]
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < min_replicas(r, workload), manifests.ident(pdb)
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1, manifests.ident(pdb)


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_network_policies_allow_exactly_the_intended_traffic(path: Path) -> None:
    r = rendered(path)
    ns = r.namespace
    assert ns
    workloads = {w["metadata"]["name"]: w for w in r.workloads()}
    redis = workloads["redis"]
    outsider = manifests.Peer("someone-else", {"app": "curious"})
    for name in EXPECTED_COMMANDS:
        assert manifests.ingress_allowed(
            r, redis, 6379, manifests.Peer(ns, manifests.pod_labels(workloads[name]))
        ), name
    assert manifests.ingress_allowed(r, redis, 6379, manifests.Peer("keda")), (
        "KEDA's operator reads the stream"
    )
    assert not manifests.ingress_allowed(r, redis, 6379, outsider)
    assert not manifests.ingress_allowed(r, redis, 6379, manifests.Peer(ns, {"app": "unrelated"}))
    for name in ("editor", "verifier", "reward"):
        port = container_port(main_container(workloads[name]), "http")
        assert manifests.ingress_allowed(r, workloads[name], port, outsider), (
            f"{name}:{port} is the public API"
        )
        assert not manifests.ingress_allowed(r, workloads[name], port + 1000, outsider)
    metrics = container_port(main_container(workloads["editor-worker"]), "metrics")
    assert manifests.ingress_allowed(r, workloads["editor-worker"], metrics, manifests.Peer("monitoring"))
    assert not manifests.ingress_allowed(r, workloads["editor-worker"], metrics, outsider)


@pytest.mark.parametrize("path", OVERLAYS, ids=IDS.get)
def test_worker_metrics_port_is_the_setting_it_probes(path: Path) -> None:
    """The standalone worker's probes and metrics share one port: 0 would leave the probes nothing. Startup
    and readiness wait on /readyz (the model loaded), liveness asks /healthz."""
    r = rendered(path)
    container = main_container(r.get("Deployment", "editor-worker"))
    settings = envcheck.load(envcheck.SERVICE_SETTINGS["editor"], manifests.container_env(r, container))
    assert settings.editor_worker_metrics_port == container_port(container, "metrics") != 0
    for probe, path_ in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        assert container[probe]["httpGet"] == {"path": path_, "port": "metrics"}, probe


def test_production_secrets_template_names_only_known_variables() -> None:
    example = manifests.K8S / "overlays/production/secrets.env.example"
    keys = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    }
    etchr = {k for k in keys if k.startswith(envcheck.PREFIX)}
    assert etchr <= envcheck.all_env_names(), sorted(etchr - envcheck.all_env_names())
    assert keys - etchr <= {"REDIS_PASSWORD", "HF_TOKEN"}
    ignored = (manifests.K8S / "overlays/production/.gitignore").read_text().split()
    assert "secrets.env" in ignored, "the real secrets file must stay out of git"


# --- the checks above can fail -------------------------------------------------------------------------


def test_validation_rejects_unknown_fields_in_builtin_and_keda_objects() -> None:
    r = rendered(manifests.K8S / "base")
    worker = copy.deepcopy(r.get("Deployment", "editor-worker"))
    manifests.pod_spec(worker)["containers"][0]["livenesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        manifests.validate(worker)
    (scaled,) = copy.deepcopy(r.of_kind("ScaledObject"))
    scaled["spec"]["minReplicas"] = 1  # KEDA's field is minReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        manifests.validate(scaled)
    auth = copy.deepcopy(r.of_kind("TriggerAuthentication")[0])
    auth["spec"]["secretTargetRef"][0]["paramater"] = "password"
    with pytest.raises(jsonschema.ValidationError):
        manifests.validate(auth)


def test_kustomize_rejects_a_patch_for_a_missing_object(tmp_path: Path) -> None:
    """A patch whose target was renamed away must fail the render, not silently patch nothing."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(manifests.K8S, copy_root)
    small = copy_root / "overlays/dev/small.yaml"
    small.write_text(small.read_text().replace("name: editor\n", "name: editr\n", 1))
    with pytest.raises(manifests.RenderError, match="editr"):
        manifests.render(copy_root / "overlays/dev")


def test_production_patches_land_as_a_strategic_merge() -> None:
    """What kustomize's merge does to the production overlay's patches, as the cluster will get it."""
    r = rendered(manifests.K8S / "overlays/production")
    volumes = {v["name"]: v for v in manifests.pod_spec(r.get("Deployment", "editor-worker"))["volumes"]}
    assert volumes["models"] == {"name": "models", "persistentVolumeClaim": {"claimName": "etchr-models"}}
    assert "tmp" in volumes, "a strategic merge keeps the list items it does not name"
    assert r.get("Deployment", "editor")["spec"]["replicas"] == 3


def test_the_secrets_file_an_operator_fills_in_is_what_renders(tmp_path: Path) -> None:
    """Where secrets.env exists (an operator copied the example), kustomize reads it, not the example."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(manifests.K8S, copy_root)
    overlay = copy_root / "overlays/production"
    example = (overlay / "secrets.env.example").read_text()
    (overlay / "secrets.env").write_text(
        "\n".join(
            "REDIS_PASSWORD=0123abcd" if line.startswith("REDIS_PASSWORD=") else line
            for line in example.splitlines()
        )
    )
    secret = manifests.render(overlay).get("Secret", "etchr-secrets")
    assert manifests._secret_value(secret, "REDIS_PASSWORD") == "0123abcd"
    (overlay / "secrets.env").unlink()
    with pytest.raises(manifests.RenderError, match=r"secrets\.env"):
        manifests.render(overlay)  # outside k8s/ nothing stands in for a missing file


def test_hash_suffixed_secret_would_break_keda_and_is_caught(tmp_path: Path) -> None:
    """kustomize renames a generated Secret in pod specs, not in KEDA's CRDs: the suffix must stay off."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(manifests.K8S, copy_root)
    kfile = copy_root / "overlays/dev/kustomization.yaml"
    kfile.write_text(kfile.read_text().replace("disableNameSuffixHash: true", "disableNameSuffixHash: false"))
    r = manifests.render(copy_root / "overlays/dev")
    (auth,) = r.of_kind("TriggerAuthentication")
    assert r.find("Secret", auth["spec"]["secretTargetRef"][0]["name"]) is None
    assert r.find("Secret", "etchr-secrets") is None
    env = manifests.container_env(r, main_container(r.get("Deployment", "verifier")))  # pods were rewritten
    assert env["ETCHR_API_KEYS"] == "dev-token"
