"""docker/: the three Dockerfiles, their build context, the pinned dependencies and the healthcheck script.

No Docker engine runs here, so images are not built: hadolint lints the files (its wheel ships the binary),
and the properties the deployment relies on are read from the parsed Dockerfiles and checked against
pyproject.toml, the CLI and the Kubernetes manifests.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from etchr.cli import DEFAULT_PORTS
from etchr.settings import EditorSettings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SERVICES = ("editor", "verifier", "reward")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Provided by the CUDA PyTorch base image, never pinned by docker/constraints.txt.
FROM_BASE_IMAGE = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
TORCH_STACK = {"torch", "diffusers", "transformers", "peft", "accelerate"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{path} ends inside a continued line"
    return out


def dockerfile(service: str) -> Path:
    return DOCKER / f"{service}.Dockerfile"


def one(items: list[tuple[str, str]], name: str) -> str:
    found = [args for word, args in items if word == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def base_image(service: str) -> tuple[str, str]:
    image = one(instructions(dockerfile(service)), "FROM").split()[0]
    name, _, tag = image.partition(":")
    return name, tag


def env_of(items: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in items:
        if word == "ENV":
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args))
    return env


# --- lint and properties -------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).is_file():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings it)")
    files = [str(dockerfile(s)) for s in SERVICES]
    result = subprocess.run([binary, "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_base_image_is_pinned_to_an_exact_version(service: str) -> None:
    items = instructions(dockerfile(service))
    froms = [args for word, args in items if word == "FROM"]
    assert len(froms) == 1, "one stage: nothing else to pin"
    image = froms[0].split()[0]
    assert "$" not in image, "a variable base image cannot be checked (or linted)"
    tag = image.partition(":")[2]
    assert "@sha256:" in image or re.match(r"^\d+\.\d+\.\d+", tag), f"{image}: pin an exact version"


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_the_non_root_uid_the_pods_expect(service: str) -> None:
    items = instructions(dockerfile(service))
    users = [args for word, args in items if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (runAsNonRoot can only verify numbers)"
    deployment = yaml.safe_load_all((REPO / f"k8s/base/{service}.yaml").read_text())
    pods = [d["spec"]["template"]["spec"] for d in deployment if d and d["kind"] == "Deployment"]
    assert pods and all(p["securityContext"]["runAsUser"] == int(uid) for p in pods)


@pytest.mark.parametrize("service", SERVICES)
def test_healthcheck_command_and_ports(service: str) -> None:
    items = instructions(dockerfile(service))
    healthcheck = one(items, "HEALTHCHECK")
    assert " CMD " in f" {healthcheck} " and "NONE" not in healthcheck.split()
    port = DEFAULT_PORTS[service]
    assert env_of(items)["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/healthz"
    expected = ["etchr", "serve", service, "--host", "0.0.0.0"]
    assert json.loads(one(items, "CMD")) == expected
    exposed = {int(p) for p in one(items, "EXPOSE").split()}
    worker_port = EditorSettings.model_fields["editor_worker_metrics_port"].default
    assert exposed == ({port, worker_port} if service == "editor" else {port})


@pytest.mark.parametrize("service", SERVICES)
def test_install_uses_the_constraints_and_the_right_extras(service: str) -> None:
    runs = [args for word, args in instructions(dockerfile(service)) if word == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    install = installs[0]
    assert "PIP_CONSTRAINT=/src/docker/constraints.txt" in install
    assert "--mount=type=bind,target=/src" in install
    target = re.search(r"pip install (\S+)", install).group(1).strip("\"'")
    if service == "editor":
        assert target == "/src[editor]"
    else:
        assert target == "/src", "verifier and reward install the base package only: no torch"


def test_slim_images_use_a_python_the_project_supports() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for service in ("verifier", "reward"):
        name, tag = base_image(service)
        assert name == "python" and "-slim" in tag, f"{service}: {name}:{tag}"
        assert Version(tag.split("-")[0]) in requires


def test_editor_base_image_carries_a_torch_pyproject_accepts() -> None:
    name, tag = base_image("editor")
    assert name == "pytorch/pytorch" and re.search(r"-cuda[\d.]+-cudnn\d+-runtime$", tag), tag
    torch = next(
        Requirement(r)
        for r in PYPROJECT["project"]["optional-dependencies"]["editor"]
        if r.startswith("torch")
    )
    assert Version(tag.split("-")[0]) in torch.specifier, f"base image torch {tag} vs pyproject {torch}"


# --- dependencies --------------------------------------------------------------------------------------


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def test_constraints_pin_every_direct_dependency_within_its_range() -> None:
    pins = constraints()
    assert not [n for n in pins if FROM_BASE_IMAGE.match(n)], "torch comes from the base image, never a pin"
    project = PYPROJECT["project"]
    direct = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["editor"]]
    for req in direct:
        name = canonical(req.name)
        if FROM_BASE_IMAGE.match(name):
            continue
        assert name in pins, f"{req} is not pinned: run python docker/update-constraints.py"
        assert Version(pins[name]) in req.specifier, f"pin {name}=={pins[name]} is outside {req.specifier}"


def _closure(roots: list[Requirement]) -> Iterator[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        yield name
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        todo += [
            r for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})
        ]


def test_base_install_pulls_no_torch() -> None:
    """What the slim images install (pyproject's base dependencies, transitively) has no torch stack."""
    reached = set(_closure([Requirement(r) for r in PYPROJECT["project"]["dependencies"]]))
    assert not reached & TORCH_STACK, sorted(reached & TORCH_STACK)


# --- build context -------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; ``!`` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = _glob_regex(pattern.strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_what_the_build_needs_and_nothing_secret() -> None:
    patterns = ignore_patterns()
    needed = ["pyproject.toml", "README.md", "docker/constraints.txt", "docker/healthcheck.py"]
    for where in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]:
        needed += [
            str(p.relative_to(REPO)) for p in (REPO / where).rglob("*.py") if "__pycache__" not in p.parts
        ]
    for package, globs in PYPROJECT["tool"]["setuptools"].get("package-data", {}).items():
        for root in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]:
            for glob in globs:
                needed += [
                    str(p.relative_to(REPO)) for p in (REPO / root / package).glob(glob) if p.is_file()
                ]
    missing = [path for path in needed if dockerignored(path, patterns)]
    assert not missing, f"excluded from the build context: {missing[:5]}"
    for path in [".env", ".git/config", ".venv/bin/python", "tests/conftest.py", "artifacts/tiny-editor/x",
                 "k8s/overlays/production/secrets.env", "shared/etchr/__pycache__/settings.cpython-311.pyc",
                 "etchr_services.egg-info/PKG-INFO", "docker-compose.yml"]:  # fmt: skip
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!shared/", "**/__pycache__"]
    assert dockerignored("README.md", patterns)
    assert not dockerignored("shared/etchr/x.py", patterns)
    assert dockerignored("shared/etchr/__pycache__/x.pyc", patterns)
    assert not dockerignored("shared/etchr/x.py", [*patterns, "!**/x.py"])


# --- the healthcheck script ----------------------------------------------------------------------------


class _Probe(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def healthcheck(*args: str, env: dict[str, str] | None = None) -> int:
    base = {"PATH": "/usr/bin:/bin", "HEALTHCHECK_TIMEOUT_S": "2"}
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), *args],
        env={**base, **(env or {})},
        capture_output=True,
        timeout=20,
    ).returncode


def test_healthcheck_script_exit_codes(probe_server: str) -> None:
    assert healthcheck(f"{probe_server}/healthz") == 0
    assert healthcheck(f"{probe_server}/readyz") == 1  # 503
    assert healthcheck(env={"HEALTHCHECK_URL": f"{probe_server}/healthz"}) == 0
    # A proxy configured for the MLLM backends must not swallow the local probe.
    assert (
        healthcheck(f"{probe_server}/healthz", env={"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}) == 0
    )
    closed = probe_server.rsplit(":", 1)[0] + ":9"
    assert healthcheck(f"{closed}/healthz") == 1
