"""docker-compose.yml and .env.example: the one-box stack agrees with the CLI, the settings and its files."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from etchr_tools.cli import DEFAULT_PORTS
from tests.deploy import compose, envcheck, images, manifests

ETCHR_SERVICES = ("editor", "verifier", "reward")
EXPECTED_COMMANDS = {
    # One GPU box: the editor front runs its worker in-process (Kubernetes splits them).
    "editor": ["etchr", "serve", "editor", "--host", "0.0.0.0"],
    "verifier": ["etchr", "serve", "verifier", "--host", "0.0.0.0"],
    "reward": ["etchr", "serve", "reward", "--host", "0.0.0.0"],
}
MONITORING_MOUNTS = {
    "prometheus": {
        "./deploy/monitoring/prometheus.yml": "/etc/prometheus/prometheus.yml",
        "./deploy/monitoring/alerts.yml": "/etc/prometheus/alerts.yml",
    },
    "grafana": {
        "./deploy/monitoring/grafana/provisioning": "/etc/grafana/provisioning",
        "./deploy/monitoring/grafana/dashboards": "/var/lib/grafana/dashboards",
    },
}
ENV_EXAMPLE = compose.REPO / ".env.example"


@pytest.fixture(scope="module")
def stack() -> dict:
    return compose.load()


def services(stack: dict) -> dict[str, dict]:
    return stack["services"]


def bind_mounts(service: dict) -> dict[str, str]:
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[source] = target
    return mounts


def gpu_devices(service: dict) -> list[dict]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def test_services_and_profiles(stack: dict) -> None:
    profiles = {name: tuple(s.get("profiles", ())) for name, s in services(stack).items()}
    assert {name for name, p in profiles.items() if not p} == {"redis", *ETCHR_SERVICES}
    assert profiles["vllm"] == ("vllm",)
    assert profiles["prometheus"] == profiles["grafana"] == ("monitoring",)


def test_every_service_has_a_healthcheck_and_a_pinned_image(stack: dict) -> None:
    for name, service in services(stack).items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        _, tag, digest = manifests.split_image(service["image"])
        assert digest or (tag and tag != "latest" and re.search(r"\d", tag)), f"{name}: {service['image']}"


def test_etchr_services_run_the_cli_on_its_ports_and_build_from_their_dockerfile(stack: dict) -> None:
    for name in ETCHR_SERVICES:
        service = services(stack)[name]
        assert service["command"] == EXPECTED_COMMANDS[name]
        port = DEFAULT_PORTS[name]
        assert any(p.endswith(f":{port}:{port}") for p in service["ports"]), name
        assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"]), name
        assert service["build"]["context"] == "."
        assert (compose.REPO / service["build"]["dockerfile"]).is_file()
        assert service.get("init") is True, f"{name}: SIGTERM must reach the service"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_reservations(stack: dict) -> None:
    assert gpu_devices(services(stack)["editor"]), "the editor (with its in-process worker) needs the GPU"
    assert gpu_devices(services(stack)["vllm"])
    for name in ("verifier", "reward", "redis"):
        assert not gpu_devices(services(stack)[name]), name


def test_editor_may_finish_its_batch_on_stop(stack: dict) -> None:
    editor = services(stack)["editor"]
    settings = envcheck.load(envcheck.SERVICE_SETTINGS["editor"], compose.environment(editor))
    assert compose.duration_s(editor["stop_grace_period"]) >= settings.queue_reclaim_s
    # Long enough for the real checkpoint to load from the volume, short enough that an editor whose model
    # never loads turns unhealthy (docs/deployment.md, "Health checks").
    assert 600 <= compose.duration_s(editor["healthcheck"]["start_period"]) <= 1800


def test_etchr_variables_are_real_settings_with_valid_values(stack: dict) -> None:
    known = envcheck.all_env_names()
    raw = compose.COMPOSE.read_text()
    referenced = {v for v in compose.variables(raw) if v.startswith(envcheck.PREFIX)}
    assert referenced <= known, f"unknown ETCHR_ variables: {sorted(referenced - known)}"
    for name in ETCHR_SERVICES:
        env = compose.environment(services(stack)[name])
        cls = envcheck.SERVICE_SETTINGS[name]
        etchr = {k for k in env if k.startswith(envcheck.PREFIX)}
        assert etchr <= envcheck.env_names(cls), f"{name}: {sorted(etchr - envcheck.env_names(cls))}"
        envcheck.load(cls, env)  # every value parses


def test_service_urls_point_at_compose_services(stack: dict) -> None:
    all_services = services(stack)
    for name in ETCHR_SERVICES:
        env = compose.environment(all_services[name])
        redis = urlsplit(env["ETCHR_REDIS_URL"])
        assert (redis.hostname, redis.port) == ("redis", 6379)
    editor = urlsplit(compose.environment(all_services["verifier"])["ETCHR_EDITOR_URL"])
    assert (editor.hostname, editor.port) == ("editor", DEFAULT_PORTS["editor"])
    vllm = all_services["vllm"]
    for name in ("verifier", "reward"):
        env = compose.environment(all_services[name])
        mllm = urlsplit(env["ETCHR_MLLM_BASE_URL"])
        assert mllm.hostname == "vllm" and f"--port={mllm.port}" in vllm["command"]
        assert env["ETCHR_MLLM_MODEL"] == vllm["command"][0], "the model vLLM serves is the one asked for"


def test_monitoring_profile_mounts_the_monitoring_config(stack: dict) -> None:
    for name, expected in MONITORING_MOUNTS.items():
        assert bind_mounts(services(stack)[name]) == expected, name
    if not (compose.REPO / "deploy/monitoring").is_dir():
        pytest.skip("deploy/monitoring has not landed yet")
    for expected in MONITORING_MOUNTS.values():
        for source in expected:
            assert (compose.REPO / source).exists(), f"{source} is mounted but missing"
    prometheus = (compose.REPO / "deploy/monitoring/prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in prometheus, "Prometheus must load the mounted alert rules"
    for name in ETCHR_SERVICES:
        assert f"{name}:{DEFAULT_PORTS[name]}" in prometheus, f"Prometheus does not scrape {name}"


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(set variables, commented-out example variables) of .env.example."""
    active: dict[str, str] = {}
    examples: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            active[match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line):
            examples.add(match.group(1))
    return active, examples


def test_env_example_names_real_variables() -> None:
    active, examples = _env_example()
    names = set(active) | examples
    etchr = {n for n in names if n.startswith(envcheck.PREFIX)}
    known = envcheck.all_env_names()
    assert etchr <= known, f"unknown ETCHR_ variables: {sorted(etchr - known)}"
    compose_vars = compose.variables(compose.COMPOSE.read_text())
    others = names - etchr
    assert others <= compose_vars, f"not used by docker-compose.yml: {sorted(others - compose_vars)}"
    for cls in envcheck.SERVICE_SETTINGS.values():
        envcheck.load(cls, {k: v for k, v in active.items() if k in envcheck.env_names(cls)})


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert compose.interpolate("${SET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}", env) == "x/d//d"
    assert compose.interpolate("${UNSET:-${SET:-y}}-$$SET-$SET", env) == "x-$SET-x"
    with pytest.raises(compose.InterpolationError):
        compose.interpolate("${UNSET:?needed}", env)
    assert compose.duration_s("1h30m") == 5400
    with pytest.raises(ValueError):
        compose.duration_s("10 minutes")


def test_each_service_builds_and_runs_the_image_its_command_needs(stack: dict) -> None:
    """The editor hosts its GPU worker in-process here, so it runs the CUDA editor image; the verifier and
    the reward service run the slim front image, built once from one Dockerfile."""
    for name in ETCHR_SERVICES:
        service = services(stack)[name]
        image = manifests.split_image(service["image"])[0]
        assert image == images.image_for(images.etchr_args(service["command"])), name
        assert compose.REPO / service["build"]["dockerfile"] == images.DOCKERFILES[image], name
    assert services(stack)["editor"]["image"].startswith(f"{images.EDITOR}:")
    verifier, reward = services(stack)["verifier"], services(stack)["reward"]
    assert verifier["image"].startswith(f"{images.FRONT}:")
    assert (verifier["image"], verifier["build"]) == (reward["image"], reward["build"]), "one front image"


def test_dockerfiles_named_by_compose_exist(stack: dict) -> None:
    dockerfiles = {Path(s["build"]["dockerfile"]).name for s in services(stack).values() if "build" in s}
    assert dockerfiles == {path.name for path in images.DOCKERFILES.values()}


# --- a box without a GPU (issue 19, defect 2) ----------------------------------------------------------


def test_the_verifier_does_not_require_the_editor(stack: dict) -> None:
    """Without its GPU the editor cannot start; the verifier answers without edits, so it must start."""
    dependency = services(stack)["verifier"]["depends_on"]["editor"]
    assert dependency == {"condition": "service_started", "required": False}
    for name in ("redis", "reward"):
        assert "editor" not in services(stack)[name].get("depends_on", {}), name


def test_cpu_override_runs_the_editor_without_a_gpu_and_changes_nothing_else(stack: dict) -> None:
    cpu = compose.load({}, compose.COMPOSE, compose.CPU_OVERRIDE)
    editor = services(cpu)["editor"]
    assert not gpu_devices(editor) and "deploy" not in editor
    env = compose.environment(editor)
    settings = envcheck.load(envcheck.SERVICE_SETTINGS["editor"], env)
    assert settings.editor_device == "cpu"
    # The tiny checkpoint by default, read from the folder mounted at /models/local (MODELS_DIR).
    assert settings.editor_model == "/models/local/tiny-editor"
    assert bind_mounts(editor)["./models"] == "/models/local"
    assert env["ETCHR_REDIS_URL"] == compose.environment(services(stack)["editor"])["ETCHR_REDIS_URL"]
    assert editor["healthcheck"]["test"] == services(stack)["editor"]["healthcheck"]["test"]
    for name in set(services(stack)) - {"editor"}:
        assert services(cpu)[name] == services(stack)[name], name
    chosen = compose.load({"ETCHR_EDITOR_MODEL": "/models/local/mine"}, compose.COMPOSE, compose.CPU_OVERRIDE)
    assert compose.environment(services(chosen)["editor"])["ETCHR_EDITOR_MODEL"] == "/models/local/mine"


def test_override_merge_follows_compose_rules() -> None:
    base = {"environment": {"A": "1", "B": "2"}, "command": ["x", "y"], "ports": ["1:1"], "deploy": {"r": 1}}
    override = {
        "environment": {"B": "3"},
        "command": ["z"],
        "ports": ["2:2"],
        "deploy": compose.RESET,
        "healthcheck": compose.Override({"test": ["CMD", "true"]}),
    }
    assert compose.merge(base, override) == {
        "environment": {"A": "1", "B": "3"},
        "command": ["z"],
        "ports": ["1:1", "2:2"],
        "healthcheck": {"test": ["CMD", "true"]},
    }
    assert compose.start_order({"a": {"depends_on": {"b": {}}}, "b": {}}) == ["b", "a"]
    with pytest.raises(ValueError, match="cycle"):
        compose.start_order({"a": {"depends_on": {"b": {}}}, "b": {"depends_on": {"a": {}}}})
