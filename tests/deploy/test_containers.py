"""The built images, run as Compose would run them, end to end on one Docker network.

Run by the CI container stage (scripts/ci-containers.sh), which builds etchr/front and etchr/editor on
stand-in base images and the tiny editor checkpoint first; skipped elsewhere. No Compose >= 2.24 installs
here, so docker-compose.yml (+ docker-compose.cpu.yml) is resolved by tests/deploy/compose.py and each
service becomes the ``docker run`` Compose would issue: image, command, environment, volumes, init, shm,
healthcheck, stop grace period, GPU reservation, in ``depends_on`` order with its conditions. Two
deviations, both for CI's sake: host ports are ephemeral (8001-8003 may be taken on a CI box) and the probe
interval is 2 s instead of 30 s (the probe command, timeout, retries and start period are the file's).

The test MLLM (tests/support/mllm_server.py) runs in this process, listening on the network's gateway
address, so every request the containers send it is recorded here.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from etchr_tools.cli import DEFAULT_PORTS
from tests.deploy import compose, images
from tests.editor.test_api import png_b64
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.verifier.conftest import JUDGE_MARK, ROUTE_MARK

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("ETCHR_CONTAINER_STAGE") != "1",
        reason="the CI container stage (scripts/ci-containers.sh) builds the images and runs these",
    ),
    pytest.mark.timeout(900),
]

DOCKER = os.environ.get("DOCKER", "docker")
REPO = compose.REPO
IMAGE_TAG = os.environ.get("IMAGE_TAG", "0.1.0")
MODEL = "qwen3-vl-8b-instruct"
QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
UID = "10001"  # the images' USER; k8s/ pods run as the same UID
PROBE_INTERVAL = "2s"
HEALTH_TIMEOUT_S = 240.0


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {shlex.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def inspect(container: str) -> dict[str, Any]:
    return json.loads(docker("inspect", container).stdout)[0]


def health(container: str) -> str:
    state = inspect(container)["State"]
    return state.get("Health", {}).get("Status", "none") if state["Running"] else "exited"


def wait_health(container: str, wanted: str, timeout: float = HEALTH_TIMEOUT_S) -> float:
    """Seconds until ``container`` reports ``wanted`` (healthy/unhealthy); else fail with probes and logs."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        status = health(container)
        if status == wanted:
            return time.monotonic() - start
        if status == "exited":
            break
        time.sleep(0.5)
    probes = inspect(container)["State"].get("Health", {}).get("Log", [])[-2:]
    logs = docker("logs", "--tail", "30", container, check=False)
    raise AssertionError(
        f"{container} is {health(container)}, not {wanted}, after {time.monotonic() - start:.0f} s; "
        f"last probes {probes}\n{logs.stdout}{logs.stderr}"
    )


def published(container: str, port: int) -> str:
    binding = inspect(container)["NetworkSettings"]["Ports"][f"{port}/tcp"][0]
    return f"http://127.0.0.1:{binding['HostPort']}"


def seconds(duration: str) -> int:
    return max(1, round(compose.duration_s(duration)))


def respond(request: RecordedRequest) -> Reply | str:
    """Worded like Qwen3-VL: U reasons from the edit (two images) to B, from the original alone to A."""
    if ROUTE_MARK in request.text:
        return "logic"
    if JUDGE_MARK in request.text:
        return (
            "<think>The drawn path runs from the green start to the right-hand exit without a gap.</think>\n"
            "The edit shows the evidence clearly. \\boxed{1}"
        )
    if request.image_count == 2:
        return "Following the highlighted path, it reaches the right exit.\n\\boxed{B}"
    return "The path seems to bend left.\n\\boxed{A}"


@dataclass
class Project:
    """One Compose project started with ``docker run``: its containers, network and volumes."""

    name: str
    network: str
    services: dict[str, dict[str, Any]]
    started: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def container(self, service: str) -> str:
        return f"{self.name}-{service}"

    def run_args(self, service: str, spec: Mapping[str, Any]) -> list[str]:
        args = ["run", "-d", "--name", self.container(service), "--network", self.network]
        args += ["--network-alias", service, "--label", f"etchr.ci={self.name}"]
        if spec.get("init"):
            args.append("--init")
        if spec.get("restart"):
            args += ["--restart", spec["restart"]]
        for key, value in compose.environment(spec).items():
            args += ["-e", f"{key}={value}"]
        for volume in spec.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/")):
                source = str((REPO / source).resolve())
            else:
                source = f"{self.name}-{source}"
            args += ["-v", ":".join([source, target, *mode])]
        for port in spec.get("ports", []):
            args += ["-p", f"127.0.0.1::{port.rsplit(':', 1)[1]}"]
        if "shm_size" in spec:
            args += ["--shm-size", spec["shm_size"]]
        if "stop_grace_period" in spec:
            args += ["--stop-timeout", str(seconds(spec["stop_grace_period"]))]
        check = spec.get("healthcheck")
        if check:
            kind, *command = check["test"]
            assert kind == "CMD", f"{service}: healthcheck test must be an exec-form CMD"
            args += ["--health-cmd", shlex.join(command), "--health-interval", PROBE_INTERVAL]
            args += ["--health-timeout", check.get("timeout", "30s")]
            args += ["--health-retries", str(check.get("retries", 3))]
            args += ["--health-start-period", check.get("start_period", "1s")]
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        for device in devices:
            if "gpu" in device.get("capabilities", []):
                args += ["--gpus", "device=" + ",".join(device.get("device_ids", ["0"]))]
        return [*args, spec["image"], *spec.get("command", [])]

    def up(self) -> None:
        """Start every service in dependency order; a required dependency that failed stops its dependents."""
        for service in compose.start_order(self.services):
            spec = self.services[service]
            for dependency, condition in spec.get("depends_on", {}).items():
                if dependency in self.failed or dependency not in self.started:
                    if condition.get("required", True):
                        self.failed[service] = f"required dependency {dependency} did not start"
                        break
                    continue
                if condition.get("condition") == "service_healthy":
                    wait_health(self.container(dependency), "healthy")
            if service in self.failed:
                continue
            result = docker(*self.run_args(service, spec), check=False)
            if result.returncode != 0:
                self.failed[service] = result.stderr.strip()
                docker("rm", "-f", self.container(service), check=False)
                continue
            self.started.append(service)

    def down(self) -> None:
        ids = docker("ps", "-aq", "--filter", f"label=etchr.ci={self.name}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False, timeout=300)
        volumes = docker("volume", "ls", "-q", "--filter", f"name={self.name}-", check=False).stdout.split()
        if volumes:
            docker("volume", "rm", *volumes, check=False)


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[str, str]]:
    """A user-defined Docker network and its gateway: the address this host has on it."""
    name = f"etchr-ci-{uuid.uuid4().hex[:8]}"
    docker("network", "create", name)
    try:
        gateway = inspect_network(name)
        yield name, gateway
    finally:
        docker("network", "rm", name, check=False)


def inspect_network(name: str) -> str:
    config = json.loads(docker("network", "inspect", name).stdout)[0]["IPAM"]["Config"][0]
    return config["Gateway"]


@pytest.fixture(scope="module")
def mllm(network: tuple[str, str]) -> Iterator[tuple[ScriptedMLLM, str]]:
    """The test MLLM on the gateway address, so the containers on the network reach it."""
    server = ScriptedMLLM(respond, models=(MODEL,))
    server._server.server.config.host = network[1]
    server.start()
    deadline = time.monotonic() + 30
    while not server._server.server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield server, f"http://{network[1]}:{server.port}/v1"
    finally:
        server.stop()


def project_env(mllm_url: str) -> dict[str, str]:
    """What an operator's .env would hold: the MLLM, the tiny checkpoint's folder, the image tag."""
    return {
        "ETCHR_MLLM_BASE_URL": mllm_url,
        "ETCHR_MLLM_MODEL": MODEL,
        "MODELS_DIR": str(REPO / "artifacts"),
        "IMAGE_TAG": IMAGE_TAG,
    }


@pytest.fixture(scope="module")
def stack(network: tuple[str, str], mllm: tuple[ScriptedMLLM, str]) -> Iterator[Project]:
    """docker-compose.yml + docker-compose.cpu.yml, as ``docker compose up`` would start it here."""
    assert (REPO / "artifacts/tiny-editor/model_index.json").is_file(), (
        "run `etchr tiny-editor artifacts/tiny-editor`"
    )
    resolved = compose.load(project_env(mllm[1]), compose.COMPOSE, compose.CPU_OVERRIDE)
    project = Project(f"etchr-ci-{uuid.uuid4().hex[:6]}", network[0], compose.active_services(resolved))
    try:
        project.up()
        yield project
    finally:
        project.down()


# --- the stack comes up, healthy, unprivileged -------------------------------------------------------------


def test_every_service_starts_and_its_healthcheck_reaches_healthy(stack: Project) -> None:
    assert not stack.failed, stack.failed
    assert set(stack.started) == {"redis", "editor", "verifier", "reward"}
    for service in stack.started:
        took = wait_health(stack.container(service), "healthy")
        print(f"{service}: healthy after {took:.1f} s more")


# Every process in a container: its real UID, its name and its command line, tab-separated.
PROCESS_LIST = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        uid = next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:"))
        comm = open(f"/proc/{pid}/comm").read().strip()
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
    except (OSError, StopIteration):
        continue  # gone meanwhile
    print(uid, comm, " ".join(cmd.split()), sep="\\t")
"""


def test_etchr_processes_run_as_the_non_root_uid(stack: Project) -> None:
    for service in ("editor", "verifier", "reward"):
        container = stack.container(service)
        assert inspect(container)["Config"]["User"] == f"{UID}:{UID}", service
        listed = docker("exec", container, "python3", "-c", PROCESS_LIST).stdout.splitlines()
        processes = [line.split("\t") for line in listed]
        # A concurrent `docker exec` (the HEALTHCHECK's, every few seconds) shows for a moment as runc's init,
        # as root, until it execs the command as the container's user: the runtime's, not an ETCHR process.
        ours = [(uid, cmd) for uid, comm, cmd in processes if not comm.startswith("runc:")]
        assert any("etchr" in cmd for _, cmd in ours), f"{service}: no etchr process in {listed}"
        assert all(uid == UID for uid, _ in ours), f"{service} runs processes as root: {listed}"


# --- the paths users rely on -------------------------------------------------------------------------------


def test_evr_answer_reasons_on_the_edit_the_editor_container_made(
    stack: Project, mllm: tuple[ScriptedMLLM, str]
) -> None:
    server = mllm[0]
    before = len(server.requests)
    original = png_b64(80, 64)
    response = httpx.post(
        f"{published(stack.container('verifier'), 8002)}/answer",
        json={"image": original, "question": QUESTION, "task": "logic", "return_images": True},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "B" and body["used_edit"] is True and body["fallback_reason"] is None, body
    edited = body["edited_image"]
    assert edited and edited != original
    reasoned = [r for r in server.requests[before:] if r.image_count == 2 and JUDGE_MARK not in r.text]
    assert reasoned, "U never saw the edit"
    assert reasoned[0].images[1].split(",", 1)[1] == edited, "U reasoned on another image than the edit"


def test_reward_scores_a_group_of_edits_from_the_editor_container(
    stack: Project, mllm: tuple[ScriptedMLLM, str]
) -> None:
    rollouts = httpx.post(
        f"{published(stack.container('editor'), 8001)}/edit",
        json={"image": png_b64(64, 64), "question": QUESTION, "task": "logic", "n": 2, "seed": 7},
        timeout=180,
    )
    assert rollouts.status_code == 200, rollouts.text
    edits = rollouts.json()["images"]
    assert len(edits) == 2
    item = {"id": "q1", "image": png_b64(64, 64), "question": QUESTION, "answer": "B", "task": "logic"}
    response = httpx.post(
        f"{published(stack.container('reward'), 8003)}/reward",
        json={"items": [{**item, "edits": edits}], "k": 2},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    (scored,) = response.json()["items"]
    # U answers B from every (original, edit) pair and J accepts every edit: each edit scores 1 on both.
    assert scored["rewards"] == [{"guidance": 1.0, "correctness": 1.0, "reward": 1.0}] * 2, scored
    assert len(scored["advantages"]) == len(scored["win_rates"]) == 2
    seen = {r.images[1].split(",", 1)[1] for r in mllm[0].requests if r.image_count == 2}
    assert {base64.b64decode(e) for e in edits} <= {base64.b64decode(s) for s in seen}


# --- lifecycle ---------------------------------------------------------------------------------------------


def submit_jobs(editor_url: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        body = {"image": png_b64(64, 48), "question": QUESTION, "task": "logic", "seed": i, "steps": 4}
        accepted = httpx.post(f"{editor_url}/jobs", json=body, timeout=30)
        assert accepted.status_code == 202, accepted.text
        ids.append(accepted.json()["id"])
    return ids


def wait_done(editor_url: str, ids: list[str], timeout: float = 300) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(done) < len(ids):
        for job_id in ids:
            if job_id in done:
                continue
            try:
                status = httpx.get(f"{editor_url}/jobs/{job_id}", timeout=10)
            except httpx.HTTPError:
                continue
            assert status.status_code == 200, f"{job_id}: {status.status_code} {status.text}"
            if status.json()["status"] in ("done", "failed", "cancelled"):
                done[job_id] = status.json()
        time.sleep(0.5)
    return done


def test_nothing_is_lost_across_a_docker_restart_of_the_worker_container(stack: Project) -> None:
    """Jobs queued (and one in hand) when the editor container restarts all finish afterwards."""
    editor = stack.container("editor")
    ids = submit_jobs(published(editor, 8001), 6)
    docker("restart", editor, timeout=700)
    wait_health(editor, "healthy")
    finished = wait_done(published(editor, 8001), ids)  # the published port may change on restart
    assert set(finished) == set(ids), f"lost across the restart: {sorted(set(ids) - set(finished))}"
    assert all(job["status"] == "done" for job in finished.values()), finished


def assert_stopped_gracefully(project: Project, service: str) -> float:
    """``docker stop`` returns before the grace period and the process ended on its own SIGTERM handling:
    exit 0, or 143 (uvicorn re-raises SIGTERM after its graceful shutdown); 137 is the SIGKILL at the end."""
    container = project.container(service)
    grace = seconds(project.services[service]["stop_grace_period"])
    start = time.monotonic()
    docker("stop", container, timeout=grace + 60)
    took = time.monotonic() - start
    state = inspect(container)["State"]
    assert state["ExitCode"] in (0, 143) and not state["OOMKilled"], f"{service} exited {state['ExitCode']}"
    assert took < grace, f"{service} took {took:.0f} s of its {grace} s"
    return took


def test_docker_stop_drains_within_the_grace_period(stack: Project, mllm: tuple[ScriptedMLLM, str]) -> None:
    """SIGTERM (through init) lets each service finish what it holds before it exits."""
    server = mllm[0]
    url = published(stack.container("verifier"), 8002)
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "logic"}
    server.latency_s = 2.0
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{url}/answer", json=body, timeout=120)
            time.sleep(1.0)  # the verifier is waiting on the MLLM
            assert_stopped_gracefully(stack, "verifier")
            answered = in_flight.result()
    finally:
        server.latency_s = 0.0
    assert answered.status_code == 200 and answered.json()["answer"] == "B", answered.text
    assert_stopped_gracefully(stack, "reward")

    editor = stack.container("editor")
    ids = submit_jobs(published(editor, 8001), 2)
    time.sleep(1.0)  # the worker has taken the first batch
    assert_stopped_gracefully(stack, "editor")
    # What the editor held when it stopped is stored or still queued: after a start, all of it finishes.
    docker("start", editor)
    wait_health(editor, "healthy")
    finished = wait_done(published(editor, 8001), ids)
    assert set(finished) == set(ids) and all(job["status"] == "done" for job in finished.values()), finished


# --- the images' own HEALTHCHECKs tell the truth --------------------------------------------------------


TINY, BROKEN = "/models/local/tiny-editor", "/models/local/missing"


def serve(service: str) -> tuple[str, ...]:
    return ("etchr", "serve", service, "--host", "0.0.0.0")


def run_image(name: str, image: str, *command: str, env: Mapping[str, str], network: str, wanted: str) -> str:
    """A container on the image's own HEALTHCHECK command, labelled for cleanup. Only the timing changes: a
    2 s interval, and where it must turn unhealthy a 1 s start period instead of the image's (0 would mean
    "the image's"), so CI need not wait it out; a success counts at once within the image's start period."""
    args = ["run", "-d", "--name", name, "--network", network, "--label", f"etchr.ci={name}", "--init"]
    args += ["--health-interval", PROBE_INTERVAL, "--health-retries", "2"]
    if wanted == "unhealthy":
        args += ["--health-start-period", "1s"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    args += ["-v", f"{REPO / 'artifacts'}:/models/local:ro"]
    docker(*args, f"{image}:{IMAGE_TAG}", *command)
    return name


def test_image_healthchecks_are_healthy_only_when_the_service_can_serve(
    stack: Project, network: tuple[str, str], mllm: tuple[ScriptedMLLM, str]
) -> None:
    """Defect 1 of issue 19: an editor whose model failed to load must not report healthy."""
    redis = f"redis://{stack.container('redis')}:6379/1"
    docker("start", stack.container("redis"), check=False)
    wait_health(stack.container("redis"), "healthy")
    cpu = {"ETCHR_REDIS_URL": redis, "ETCHR_EDITOR_DEVICE": "cpu", "ETCHR_EDITOR_STEPS": "2"}
    ok, broken = {**cpu, "ETCHR_EDITOR_MODEL": TINY}, {**cpu, "ETCHR_EDITOR_MODEL": BROKEN}
    no_mllm = {"ETCHR_REDIS_URL": redis}
    run = f"etchr-ci-img-{uuid.uuid4().hex[:6]}"
    served = {"ETCHR_REDIS_URL": redis, "ETCHR_MLLM_BASE_URL": mllm[1], "ETCHR_MLLM_MODEL": MODEL}
    cases = {
        # what: (container suffix, image, command, environment, the health it must reach)
        "editor, tiny model": ("ok", images.EDITOR, (), ok, "healthy"),
        "editor, broken model path": ("broken", images.EDITOR, (), broken, "unhealthy"),
        "reward, MLLM set": ("reward", images.FRONT, serve("reward"), served, "healthy"),
        "verifier, no MLLM": ("verifier", images.FRONT, serve("verifier"), no_mllm, "unhealthy"),
    }
    names = {what: f"{run}-{suffix}" for what, (suffix, *_) in cases.items()}
    try:
        for what, (_, image, command, env, wanted) in cases.items():
            run_image(names[what], image, *command, env=env, network=network[0], wanted=wanted)
        for what, (_, _, command, _, wanted) in cases.items():
            if wanted == "healthy":
                took = wait_health(names[what], "healthy")
            else:
                service = command[2] if command else "editor"  # the editor image's CMD serves the editor
                took = wait_serving_but_unhealthy(names[what], DEFAULT_PORTS[service])
            print(f"{what}: {wanted} after {took:.1f} s")
    finally:
        docker("rm", "-f", *names.values(), check=False, timeout=300)


def wait_serving_but_unhealthy(container: str, port: int, timeout: float = HEALTH_TIMEOUT_S) -> float:
    """Seconds until the process answers /healthz (alive, so its load or its config has been tried) while
    the image's own probe keeps failing with a 503 across several intervals: unhealthy for what it is, not
    merely because the process has not started listening yet."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        alive = docker(
            "exec", container, "etchr-healthcheck", f"http://127.0.0.1:{port}/healthz", check=False
        )
        if alive.returncode == 0:
            break
        assert health(container) != "exited", docker("logs", "--tail", "30", container, check=False).stderr
        time.sleep(0.5)
    else:
        raise AssertionError(f"{container} never answered /healthz")
    time.sleep(3 * compose.duration_s(PROBE_INTERVAL))
    wait_health(container, "unhealthy", timeout=30)
    probes = inspect(container)["State"]["Health"]["Log"][-3:]
    assert probes and all(p["ExitCode"] == 1 and "503" in p["Output"] for p in probes), probes
    return time.monotonic() - start


# --- Compose without a GPU -----------------------------------------------------------------------------


def test_without_a_gpu_compose_still_starts_every_service_that_needs_none(
    network: tuple[str, str], mllm: tuple[ScriptedMLLM, str]
) -> None:
    """Defect 2 of issue 19: docker-compose.yml alone, on this GPU-less machine. The editor cannot get its
    GPU (Docker refuses the reservation); Redis, the verifier and the reward service start regardless."""
    resolved = compose.load(project_env(mllm[1]), compose.COMPOSE)
    project = Project(f"etchr-ci-{uuid.uuid4().hex[:6]}", network[0], compose.active_services(resolved))
    try:
        project.up()
        assert set(project.failed) == {"editor"}, project.failed
        assert "gpu" in project.failed["editor"].lower() or "device driver" in project.failed["editor"]
        for service in ("redis", "verifier", "reward"):
            wait_health(project.container(service), "healthy")
    finally:
        project.down()
