"""The whole stack as ops run it: real ``etchr`` processes, a real redis-server, real HTTP.

The only stand-in is the external MLLM (the scripted test server). One server answers both services, told
apart by the model name each is configured with: the verifier's requests are answered per EVR stage
(tests/verifier's Script), the reward's from the colours of the images (tests/reward's responder), so every
score is known in advance. The stack is built once per module and *healed* before each test (Redis up, the
MLLM up, an editor front, a running worker, verifier and reward alive), so each test stands alone while
tests run in file order cost no restarts beyond the faults they inject.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.reward.conftest import respond as reward_respond
from tests.support.mllm_server import RecordedRequest, Reply, Responder, ScriptedMLLM
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import EtchrProcess, UvicornThread, wait_until
from tests.verifier.conftest import Script

VERIFIER_MODEL = "e2e-verifier"
REWARD_MODEL = "e2e-reward"
PREFIX = "e2e"
EDITOR_QUEUE_MAX = 2
START_TIMEOUT_S = 180  # processes importing torch on a loaded 2-core CI box


class Answers:
    """The test MLLM's answers: by EVR stage for the verifier's model, by image colour for the reward's."""

    def __init__(self) -> None:
        self.verifier = Script()

    def __call__(self, request: RecordedRequest) -> Reply | str:
        return self.verifier(request) if request.model == VERIFIER_MODEL else reward_respond(request)


class PinnedMLLM(ScriptedMLLM):
    """The scripted MLLM on a port the test chooses, so it can go down and come back at the same URL."""

    def __init__(self, responder: Responder, port: int) -> None:
        super().__init__(responder)
        self._server = UvicornThread(self._app(), port=port)
        self._server.server.config.timeout_graceful_shutdown = 5


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def probe(url: str, path: str = "/readyz") -> int:
    try:
        return httpx.get(f"{url}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def base_env() -> dict[str, str]:
    """Settings a developer's shell might carry that would change what the tests see."""
    return {
        "ETCHR_API_KEYS": "",
        "ETCHR_JUDGE_BASE_URL": "",
        "ETCHR_JUDGE_MODEL": "",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Service:
    """A running ``etchr serve``/``etchr worker`` process and where it listens."""

    name: str
    process: EtchrProcess
    url: str = ""
    metrics_url: str = ""

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def running(self) -> bool:
        return self.process.proc.poll() is None

    def log(self) -> str:
        return self.process.log()


@dataclass
class Stack:
    """Redis, the scripted MLLM, an editor front (no in-process worker) with standalone workers, a verifier
    and a reward service, each a real process; the methods start, pause and heal its parts."""

    tmp: Path
    model: Path
    redis: RedisServer
    mllm: PinnedMLLM
    answers: Answers
    editor: Service | None = None
    verifier: Service | None = None
    reward: Service | None = None
    workers: list[Service] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)
    mllm_down: bool = False
    _count: int = 0

    # ----------------------------------------------------------------------------------------- settings

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **base_env(),
            "ETCHR_REDIS_URL": self.redis.url,
            "ETCHR_REDIS_PREFIX": PREFIX,
            "ETCHR_QUEUE_RECLAIM_S": "1",
            **extra,
        }

    def mllm_env(self, model: str) -> dict[str, str]:
        return {
            "ETCHR_MLLM_BASE_URL": self.mllm.base_url,
            "ETCHR_MLLM_MODEL": model,
            "ETCHR_MLLM_MAX_RETRIES": "0",
        }

    def take_mllm_down(self) -> None:
        """The MLLM's port refuses connections (as a crashed vLLM); bring_mllm_back() restores it."""
        self.mllm.stop()
        self.mllm_down = True

    def bring_mllm_back(self) -> None:
        if self.mllm_down:
            self.mllm = PinnedMLLM(self.answers, self.mllm.port).start()
            self.mllm_down = False

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> EtchrProcess:
        self._count += 1
        return EtchrProcess(args, env, self.tmp / f"{self._count:02d}-{name}.log")

    # ------------------------------------------------------------------------------------------ starting

    def spawn_editor(self) -> Service:
        """The editor front; a replacement keeps the port, so the verifier (configured once) finds it."""
        port = int(self.editor.url.rsplit(":", 1)[1]) if self.editor is not None else free_port()
        env = self.env(
            ETCHR_EDITOR_STEPS="2", ETCHR_EDITOR_QUEUE_MAX=str(EDITOR_QUEUE_MAX), ETCHR_EDITOR_DEADLINE_S="90"
        )
        args = ["serve", "editor", "--no-worker", "--host", "127.0.0.1", "--port", str(port)]
        self.editor = Service("editor", self._spawn("editor", args, env), f"http://127.0.0.1:{port}")
        return self.editor

    def spawn_worker(self) -> Service:
        """``etchr worker editor`` on the tiny checkpoint, its Prometheus metrics on a port of its own."""
        metrics_port = free_port()
        env = self.env(
            ETCHR_EDITOR_MODEL=str(self.model),
            ETCHR_EDITOR_DEVICE="cpu",
            ETCHR_EDITOR_WORKER_METRICS_PORT=str(metrics_port),
        )
        worker = Service(
            "worker",
            self._spawn("worker", ["worker", "editor"], env),
            metrics_url=f"http://127.0.0.1:{metrics_port}",
        )
        self.workers.append(worker)
        return worker

    def spawn_service(self, name: str, **extra_env: str) -> Service:
        """A verifier or reward process wired to this stack's editor, Redis and MLLM (overridable)."""
        port = free_port()
        model = VERIFIER_MODEL if name == "verifier" else REWARD_MODEL
        env = {**self.env(), **self.mllm_env(model), **extra_env}
        if name == "verifier":
            assert self.editor is not None
            env = {"ETCHR_EDITOR_URL": self.editor.url, "ETCHR_VERIFIER_EDIT_TIMEOUT_S": "90", **env}
        else:
            env = {"ETCHR_REWARD_DEADLINE_S": "60", **env}
        args = ["serve", name, "--host", "127.0.0.1", "--port", str(port)]
        return Service(name, self._spawn(name, args, env), f"http://127.0.0.1:{port}")

    @staticmethod
    def wait_ready(service: Service, path: str = "/readyz") -> None:
        def ready() -> bool:
            if not service.running:
                raise AssertionError(f"{service.name} exited:\n{service.log()}")
            return probe(service.url, path) == 200

        wait_until(ready, START_TIMEOUT_S, f"{service.name} {path}", interval=0.1)

    @staticmethod
    def wait_worker(worker: Service) -> None:
        def loaded() -> bool:
            if not worker.running:
                raise AssertionError(f"worker exited:\n{worker.log()}")
            return "ready in" in worker.log()

        wait_until(loaded, START_TIMEOUT_S, "the editor worker to load its model", interval=0.1)

    # ------------------------------------------------------------------------------------------ workers

    def live_workers(self) -> list[Service]:
        return [worker for worker in self.workers if worker.running]

    def pause_workers(self) -> None:
        """SIGSTOP every worker: a stalled GPU worker; jobs stay queued (or pending) until resumed."""
        for worker in self.live_workers():
            os.kill(worker.pid, signal.SIGSTOP)
            self.paused.add(worker.pid)

    def resume_workers(self) -> None:
        for worker in self.live_workers():
            if worker.pid in self.paused:
                os.kill(worker.pid, signal.SIGCONT)
        self.paused.clear()

    # ------------------------------------------------------------------------------------------ healing

    def heal(self) -> None:
        """Bring back whatever an earlier test took down; start what is missing, in parallel."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        self.bring_mllm_back()
        self.resume_workers()
        self.mllm.latency_s = 0.0
        self.answers.verifier = Script()
        started: list[Service] = []
        if self.editor is None or not self.editor.running:
            started.append(self.spawn_editor())
        if not self.live_workers():
            started.append(self.spawn_worker())
        for name in ("verifier", "reward"):
            current = getattr(self, name)
            if current is None or not current.running:
                setattr(self, name, self.spawn_service(name))
                started.append(getattr(self, name))
        for service in started:
            if service.name == "worker":
                self.wait_worker(service)
            else:
                self.wait_ready(service)
        for name in ("editor", "verifier", "reward"):
            service = getattr(self, name)
            wait_until(lambda s=service: probe(s.url) == 200, 30, f"{name} ready again", interval=0.1)
        self.mllm.reset()

    def stop(self) -> None:
        self.resume_workers()
        for service in (self.verifier, self.reward, self.editor, *self.workers):
            if service is not None:
                service.process.stop()
        if not self.mllm_down:
            self.mllm.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def e2e_stack(tmp_path_factory: pytest.TempPathFactory, tiny_editor_dir: Path) -> Iterator[Stack]:
    answers = Answers()
    mllm = PinnedMLLM(answers, free_port()).start()
    stack = Stack(tmp_path_factory.mktemp("e2e"), tiny_editor_dir, RedisServer().start(), mllm, answers)
    try:
        stack.heal()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(e2e_stack: Stack) -> Stack:
    """The module's stack, healed: every part up and ready, the MLLM's script and recordings fresh."""
    e2e_stack.heal()
    return e2e_stack


@dataclass
class UpProcess:
    """``etchr up`` as a user runs it (its own cwd, output to a file); stop() leaves nothing behind."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, args: list[str], env: Mapping[str, str], cwd: Path) -> UpProcess:
        log_path = cwd / "up.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "etchr_tools.cli", "up", *args],
                env={**os.environ, **base_env(), **env},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(proc, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> dict[str, int]:
        """The children it reported starting ("started NAME (pid N)")."""
        import re

        return {name: int(pid) for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", self.log())}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.child_pids().values():  # a failed test must not leave servers behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
