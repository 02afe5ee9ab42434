"""``etchr up``: the whole stack on one machine (Redis, editor, verifier, reward) under one supervisor.

The children are the same ``etchr serve …`` commands ops run one by one, so there is no second way to run a
service; this module only plans them from the settings, starts a local ``redis-server`` when the configured
one is unreachable, streams the children's logs with a per-service prefix, waits for their probes, and stops
them in dependency order: verifier and reward first (their in-flight requests still reach the editor and
Redis), then the editor (its worker finishes the batch in hand), then the Redis it started. Children run in
their own session, so a terminal's Ctrl-C reaches only the supervisor and cannot stop Redis before the editor
has drained; a second Ctrl-C kills whatever is still running.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO
from urllib.parse import unquote, urlsplit

import httpx
import redis

from etchr.protocol.errors import error_detail
from etchr.settings import MLLMSettings

SERVICES: tuple[str, ...] = ("editor", "verifier", "reward")
# Hosts for which an unreachable Redis is ours to start; anything else is someone else's server.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Shutdown phases, in order: each phase's in-flight work may still need the phases after it.
STOP_PHASES: tuple[tuple[str, ...], ...] = (("verifier", "reward"), ("editor",), ("redis",))
SELF = "etchr-up"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
POLL_S = 0.2
PROGRESS_EVERY_S = 15.0


class StackError(Exception):
    """Why the stack cannot start, or had to stop; printed as one line, exit status 1."""


@dataclass(frozen=True)
class ChildSpec:
    """One process of the stack: its command, the environment it adds, and how to probe it."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None  # HTTP base URL for /healthz and /readyz; None for redis-server
    needs_ready: bool = True  # False: /healthz is enough (it cannot be ready, e.g. no MLLM configured)
    stdin: str | None = None  # written to the child's stdin, then closed: secrets stay out of `ps`


@dataclass(frozen=True)
class StackPlan:
    """Everything ``etchr up`` will start, decided before anything is."""

    services: tuple[ChildSpec, ...]
    redis_url: str
    redis: ChildSpec | None  # a local redis-server to start; None when the configured Redis answers
    editor_model: str
    warnings: tuple[str, ...] = ()


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def http_url(host: str, port: int) -> str:
    target = connect_host(host)
    return f"http://[{target}]:{port}" if ":" in target else f"http://{target}:{port}"


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def missing_mllm_settings(settings: MLLMSettings) -> list[str]:
    """The variables the verifier and reward still need before they can answer (empty: none)."""
    missing = []
    if not settings.mllm_base_url:
        missing.append("ETCHR_MLLM_BASE_URL")
    if not settings.mllm_model:
        missing.append("ETCHR_MLLM_MODEL")
    return missing


def redis_problem(url: str, timeout_s: float = 1.0) -> str | None:
    """None when Redis at ``url`` answers PING, else why it does not."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as exc:
        return f"invalid URL: {exc}"
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def plan_redis(url: str, problem: str | None, binary: str | None) -> ChildSpec | None:
    """The redis-server to start for ``url``, None when it already answers; StackError when not ours to start.

    Only a plain ``redis://`` URL on this machine is started, in memory and without persistence (a
    development stack; nothing is written, so the system's temp dir serves as its working directory). A
    remote or TLS Redis that does not answer is the operator's to fix.
    """
    if problem is None:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "redis" or host not in LOCAL_HOSTS:
        raise StackError(
            f"Redis at {redact(url)} is unreachable ({problem}); etchr up starts a redis-server only for a "
            "redis:// URL on this machine: start that Redis or point ETCHR_REDIS_URL at one that runs"
        )
    if binary is None:
        raise StackError(
            f"Redis at {redact(url)} is unreachable ({problem}) and redis-server is not installed: "
            "install it (apt-get install redis-server) or point ETCHR_REDIS_URL at a running Redis"
        )
    port = parts.port or 6379
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "-::1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", tempfile.gettempdir(), "--loglevel", "warning"]
    if not parts.password:
        return ChildSpec(name="redis", argv=tuple(argv))
    # The password goes in through a config read from stdin ("-"), not the command line anyone can `ps`.
    config = f"requirepass {_redis_quoted(unquote(parts.password))}\n"
    return ChildSpec(name="redis", argv=(binary, "-", *argv[1:]), stdin=config)


def _redis_quoted(value: str) -> str:
    """A redis.conf double-quoted string: \\ and \" escaped, bytes outside printable ASCII as \\xHH."""
    escaped = []
    for byte in value.encode():
        char = chr(byte)
        escaped.append("\\" + char if char in '\\"' else char if 0x20 <= byte < 0x7F else f"\\x{byte:02x}")
    return '"' + "".join(escaped) + '"'


def plan_services(
    *,
    host: str,
    ports: Mapping[str, int],
    mllm_missing: Sequence[str],
    log_level: str,
    extra_env: Mapping[str, str],
    python: str = sys.executable,
) -> tuple[tuple[ChildSpec, ...], tuple[str, ...]]:
    """``etchr serve`` for each service, wired to each other; warnings for what is knowingly not ready."""
    ports = {name: ports[name] for name in SERVICES}
    if len(set(ports.values())) != len(ports):
        raise StackError(f"the services need three different ports, got {ports}")
    services = []
    for name in SERVICES:
        argv = (python, "-m", "etchr_tools.cli", "serve", name, "--host", host, "--port", str(ports[name]))
        env = {**extra_env, "PYTHONUNBUFFERED": "1"}
        if name == "verifier":
            env["ETCHR_EDITOR_URL"] = http_url(host, ports["editor"])
        answers = name != "editor"
        services.append(
            ChildSpec(
                name=name,
                argv=(*argv, "--log-level", log_level),
                env=env,
                url=http_url(host, ports[name]),
                needs_ready=not (answers and mllm_missing),
            )
        )
    warnings = []
    if mllm_missing:
        variables = " and ".join(mllm_missing)
        warnings.append(
            f"{variables} {'is' if len(mllm_missing) == 1 else 'are'} not set: the verifier and reward are "
            f"up but not ready to answer (/readyz, /answer and /reward are 503) until you set {variables} "
            "and restart etchr up"
        )
    return tuple(services), tuple(warnings)


def check_ports_free(host: str, ports: Iterable[int]) -> None:
    """Fail before starting anything when a port is taken (most often: a stack already running)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise StackError(
                    f"port {port} on {host} is in use ({exc.strerror}): is a stack already running? "
                    "Choose others with --editor-port/--verifier-port/--reward-port"
                ) from None


class _Output:
    """Line-atomic, prefixed output shared by the supervisor and the log pumps."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self.width = max(len(name) for name in (*SERVICES, "redis", SELF))

    def line(self, source: str, text: str) -> None:
        with self._lock:
            self.stream.write(f"{source:<{self.width}} | {text.rstrip()}\n")
            self.stream.flush()

    def say(self, text: str) -> None:
        self.line(SELF, text)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[str]
    pump: threading.Thread
    up: bool = False  # ready (or, with needs_ready False, alive on /healthz)
    stopping: bool = False


class Supervisor:
    """Starts a :class:`StackPlan`, watches it, and stops it; ``run`` returns the exit status."""

    def __init__(self, plan: StackPlan, *, out: TextIO | None = None, stop_timeout_s: float = 120.0) -> None:
        self.plan = plan
        self.out = _Output(out or sys.stdout)
        self.stop_timeout_s = stop_timeout_s
        self.children: dict[str, _Child] = {}
        self._stop = threading.Event()
        self._force = threading.Event()  # a second signal: kill instead of waiting
        self._signals: list[str] = []

    # ------------------------------------------------------------------------------------------ public

    def run(self) -> int:
        """Run until Ctrl-C/SIGTERM (0), or until a child dies or cannot start (1, saying which and why)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            status = self._start_and_watch()
        except StackError as exc:
            self.out.say(f"error: {exc}")
            status = 1
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.out.say("stopped" if status == 0 else "stopped after an error")
        return status

    # --------------------------------------------------------------------------------------- internals

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        """Only flags: the main thread may hold the output lock when a signal arrives."""
        self._signals.append(signal.Signals(signum).name)
        (self._force if self._stop.is_set() else self._stop).set()

    def _start_and_watch(self) -> int:
        """0 after a requested stop; 1 when a child died (said here, with its name and exit status)."""
        if self.plan.redis is not None:
            self.out.say(f"no Redis at {redact(self.plan.redis_url)}: starting redis-server (in memory)")
            self._spawn(self.plan.redis)
            self._wait_for_redis()
        for spec in self.plan.services:
            if self._stop.is_set():
                break
            self._spawn(spec)
        announced = False
        last_progress = time.monotonic()
        while not self._stop.wait(POLL_S):
            if (dead := self._dead_child()) is not None:
                code = self.children[dead].proc.returncode
                self.out.say(f"error: {dead} exited unexpectedly ({_status(code)}); stopping the stack")
                return 1
            if announced:
                continue
            waiting = self._probe()
            if not waiting:
                self._announce()
                announced = True
            elif time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                for name, why in waiting.items():
                    self.out.say(f"waiting for {name}: {why}")
        self.out.say(f"{' then '.join(self._signals) or 'stop requested'}: stopping the stack")
        return 0

    def _spawn(self, spec: ChildSpec) -> None:
        proc = subprocess.Popen(
            spec.argv,
            env={**os.environ, **spec.env},
            stdin=subprocess.DEVNULL if spec.stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # Ctrl-C in the terminal reaches the supervisor only
        )
        if spec.stdin is not None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # a child that died at once is reported by the watcher
                try:
                    proc.stdin.write(spec.stdin)
                finally:
                    proc.stdin.close()
        pump = threading.Thread(target=self._pump, args=(spec.name, proc), daemon=True)
        pump.start()
        self.children[spec.name] = _Child(spec, proc, pump)
        argv = ["etchr", *spec.argv[3:]] if spec.argv[1:3] == ("-m", "etchr_tools.cli") else list(spec.argv)
        self.out.say(f"started {spec.name} (pid {proc.pid}): {shlex.join(argv)}")

    def _pump(self, name: str, proc: subprocess.Popen[str]) -> None:
        """Copy a child's output; keep draining even if ours is gone, or the child would block on logging."""
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(OSError, ValueError):
                self.out.line(name, line)

    def _wait_for_redis(self) -> None:
        child = self.children["redis"]
        deadline = time.monotonic() + 10
        while (problem := redis_problem(self.plan.redis_url, timeout_s=0.5)) is not None:
            if child.proc.poll() is not None:
                raise StackError(f"redis-server exited ({_status(child.proc.returncode)}); see its log above")
            if time.monotonic() > deadline:
                raise StackError(f"redis-server did not answer within 10 s: {problem}")
            if self._stop.wait(0.05):
                return
        child.up = True
        self.out.say("redis is up")

    def _dead_child(self) -> str | None:
        for name, child in self.children.items():
            if child.proc.poll() is not None:
                return name
        return None

    def _probe(self) -> dict[str, str]:
        """Services not up yet, with why; marks the rest up (and says so once)."""
        waiting = {}
        for child in self.children.values():
            if child.up or child.spec.url is None:
                continue
            path = "/readyz" if child.spec.needs_ready else "/healthz"
            try:
                response = httpx.get(f"{child.spec.url}{path}", timeout=2)
            except httpx.HTTPError as exc:
                waiting[child.spec.name] = f"not listening yet ({type(exc).__name__})"
                continue
            if response.status_code == 200:
                child.up = True
                self.out.say(f"{child.spec.name} is {'ready' if child.spec.needs_ready else 'up'}")
            else:
                waiting[child.spec.name] = _problem(response)
        return waiting

    def _announce(self) -> None:
        say = self.out.say
        say("ready:")
        for child in self.children.values():
            spec = child.spec
            if spec.url is None:
                continue
            note = f"model {self.plan.editor_model}" if spec.name == "editor" else ""
            if spec.name == "verifier":
                note = f"playground {spec.url}/"
            if not spec.needs_ready:
                note = f"{note}  NOT READY: no MLLM configured".strip()
            say(f"  {spec.name:<9}{spec.url}  {note}".rstrip())
        origin = "started by etchr up, in memory, stopped with it" if self.plan.redis else "already running"
        say(f"  {'redis':<9}{redact(self.plan.redis_url)}  ({origin})")
        for warning in self.plan.warnings:
            say(f"WARNING: {warning}")
        say("Ctrl-C stops the stack")

    def shutdown(self) -> None:
        """SIGTERM phase by phase, waiting for each (the editor drains its batch); SIGKILL past it."""
        for phase in STOP_PHASES:
            group = [self.children[name] for name in phase if name in self.children]
            running = [child for child in group if child.proc.poll() is None]
            for child in running:
                child.stopping = True
                self.out.say(f"stopping {child.spec.name} (SIGTERM)")
                _signal(child.proc, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            for child in running:
                while child.proc.poll() is None:
                    if self._force.is_set() or time.monotonic() > deadline:
                        why = "second signal" if self._force.is_set() else f"{self.stop_timeout_s:g} s passed"
                        self.out.say(f"{child.spec.name} still running after SIGTERM ({why}): SIGKILL")
                        _signal(child.proc, signal.SIGKILL)
                        child.proc.wait()
                        break
                    self._force.wait(0.1)
            for child in group:
                child.pump.join(timeout=5)
                if child.stopping:
                    self.out.say(f"{child.spec.name} stopped ({_status(child.proc.returncode)})")


def _signal(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already reaped
        proc.send_signal(sig)


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _problem(response: httpx.Response) -> str:
    return error_detail(response.status_code, response.content).message


def plan_stack(
    *,
    redis_url: str,
    editor_model: str,
    mllm: MLLMSettings,
    host: str,
    ports: Mapping[str, int],
    log_level: str = "info",
    extra_env: Mapping[str, str] | None = None,
) -> StackPlan:
    """Decide the whole stack from the settings; raises StackError for what cannot work."""
    check_ports_free(host, ports.values())
    redis_spec = plan_redis(redis_url, redis_problem(redis_url), shutil.which("redis-server"))
    services, warnings = plan_services(
        host=host,
        ports=ports,
        mllm_missing=missing_mllm_settings(mllm),
        log_level=log_level,
        extra_env={"ETCHR_EDITOR_MODEL": editor_model, **(extra_env or {})},
    )
    return StackPlan(
        services=services, redis_url=redis_url, redis=redis_spec, editor_model=editor_model, warnings=warnings
    )
