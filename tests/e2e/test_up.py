"""``etchr up``: the whole stack under one supervisor, and the plan it makes before starting anything."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
import redis

from etchr.settings import MLLMSettings
from etchr_tools.stack import (
    ChildSpec,
    StackError,
    StackPlan,
    Supervisor,
    check_ports_free,
    http_url,
    plan_redis,
    plan_services,
    plan_stack,
    redact,
)
from tests.e2e.conftest import VERIFIER_MODEL, Answers, UpProcess, alive, base_env, port_free, probe
from tests.editor.test_api import png_b64
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import wait_until

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
PORTS = {"editor": 18001, "verifier": 18002, "reward": 18003}


@pytest.fixture
def mllm() -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(Answers()).start()
    yield server
    server.stop()


def run_up(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``etchr up`` expected to refuse before starting anything."""
    return subprocess.run(
        [sys.executable, "-m", "etchr_tools.cli", "up", *args],
        env={**os.environ, **base_env(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ------------------------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_up_serves_the_stack_and_ctrl_c_drains_and_stops_everything(
    tmp_path: Path, tiny_editor_dir: Path, mllm: ScriptedMLLM
) -> None:
    shutil.copytree(tiny_editor_dir, tmp_path / "artifacts" / "tiny-editor")  # what --tiny uses when present
    redis_port = free_port()  # nothing listens there: etchr up must start its own redis-server
    ports = {name: free_port() for name in ("editor", "verifier", "reward")}
    env = {
        "ETCHR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "ETCHR_EDITOR_MODEL": "",
        "ETCHR_EDITOR_DEVICE": "cpu",
        "ETCHR_EDITOR_STEPS": "2",
        "ETCHR_MLLM_BASE_URL": mllm.base_url,
        "ETCHR_MLLM_MODEL": VERIFIER_MODEL,
    }
    args = ["--tiny", *(f"--{name}-port={port}" for name, port in ports.items())]
    up = UpProcess.start(args, env, tmp_path)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:

        def ready() -> bool:
            assert up.proc.poll() is None, up.log()
            return "etchr-up | ready:" in up.log()

        wait_until(ready, 240, "etchr up to report the stack ready", interval=0.2)
        assert all(probe(url) == 200 for url in urls.values()), up.log()
        log = up.log()
        assert "etchr-up | WARNING" not in log  # the MLLM is configured
        for name, url in urls.items():
            assert re.search(rf"etchr-up \|\s+{name}\s+{re.escape(url)}", log), log
        assert re.search(r"^editor\s+\| .*Application startup complete", log, re.M)  # prefixed child logs
        assert redis.Redis(port=redis_port).ping()

        first = httpx.post(
            f"{urls['verifier']}/answer",
            json={"image": png_b64(80, 64), "question": QUESTION, "task": "logic"},
            timeout=120,
        )
        assert first.status_code == 200 and first.json()["used_edit"] is True, first.text

        # Ctrl-C while an answer is in flight: it still completes (with its edit), then everything stops
        mllm.latency_s = 1.0
        mllm.reset()
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post,
                f"{urls['verifier']}/answer",
                json={"image": png_b64(72, 64), "question": QUESTION, "task": "logic"},
                timeout=120,
            )
            wait_until(lambda: mllm.in_flight > 0, 30, "the answer to reach the MLLM")
            up.proc.send_signal(signal.SIGINT)
            response = in_flight.result(timeout=120)
        assert response.status_code == 200 and response.json()["used_edit"] is True, response.text
        assert up.proc.wait(timeout=120) == 0, up.log()

        log = up.log()
        children = up.child_pids()
        assert set(children) == {"redis", "editor", "verifier", "reward"}, log
        for name, pid in children.items():
            wait_until(lambda p=pid: not alive(p), 10, f"{name} (pid {pid}) to be gone")
        for port in (*ports.values(), redis_port):
            assert port_free(port), f"port {port} still taken"
        stopped = [log.index(f"etchr-up | {name} stopped") for name in ("verifier", "editor", "redis")]
        assert stopped == sorted(stopped), "stop order: verifier, then editor, then redis"
        assert re.search(r"^editor\s+\| .*worker .* stopped", log, re.M)  # the editor's worker drained
        assert log.rstrip().endswith("etchr-up | stopped")
    finally:
        up.stop()


@pytest.mark.slow
def test_up_stops_the_stack_when_a_child_dies(tmp_path: Path, tiny_editor_dir: Path) -> None:
    redis_port = free_port()
    env = {
        "ETCHR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "ETCHR_EDITOR_MODEL": str(tiny_editor_dir),
        "ETCHR_EDITOR_DEVICE": "cpu",
        "ETCHR_REWARD_MAX_IN_FLIGHT": "0",  # invalid: the reward service exits at start-up
    }
    ports = [f"--{name}-port={free_port()}" for name in ("editor", "verifier", "reward")]
    up = UpProcess.start(ports, env, tmp_path)
    try:
        assert up.proc.wait(timeout=120) == 1, up.log()
        log = up.log()
        assert "error: reward exited unexpectedly (exit status 1); stopping the stack" in log
        assert "reward_max_in_flight" in log  # the child's own error, prefixed, above it
        children = up.child_pids()
        assert {"redis", "editor", "verifier", "reward"} <= set(children), log
        for name, pid in children.items():
            wait_until(lambda p=pid: not alive(p), 10, f"{name} (pid {pid}) to be gone")
        assert port_free(redis_port)
    finally:
        up.stop()


def test_up_refuses_clearly_before_starting_anything(tmp_path: Path) -> None:
    no_model = run_up(env={"ETCHR_EDITOR_MODEL": ""}, cwd=tmp_path)
    assert no_model.returncode == 2
    assert "ETCHR_EDITOR_MODEL is not set" in no_model.stderr and "--tiny" in no_model.stderr

    ports = [f"--{name}-port={free_port()}" for name in PORTS]
    remote = run_up(
        *ports,
        env={"ETCHR_EDITOR_MODEL": str(tmp_path), "ETCHR_REDIS_URL": "redis://192.0.2.1:6379/0"},
        cwd=tmp_path,
    )
    assert remote.returncode == 1, remote.stderr
    assert "unreachable" in remote.stderr and "ETCHR_REDIS_URL" in remote.stderr
    assert "started" not in remote.stdout

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_up(
            *ports,
            f"--editor-port={taken.getsockname()[1]}",
            env={"ETCHR_EDITOR_MODEL": str(tmp_path)},
            cwd=tmp_path,
        )
    assert busy.returncode == 1 and "is in use" in busy.stderr and "--editor-port" in busy.stderr


# ------------------------------------------------------------------------------------------------ the plan


def test_plan_wires_the_services_and_warns_without_an_mllm() -> None:
    services, warnings = plan_services(
        host="0.0.0.0", ports=PORTS, mllm_missing=["ETCHR_MLLM_BASE_URL"], log_level="info", extra_env={}
    )
    by_name = {spec.name: spec for spec in services}
    assert list(by_name) == ["editor", "verifier", "reward"]
    assert by_name["verifier"].env["ETCHR_EDITOR_URL"] == "http://127.0.0.1:18001"  # reachable, not 0.0.0.0
    assert by_name["editor"].argv[-6:] == ("--host", "0.0.0.0", "--port", "18001", "--log-level", "info")
    assert [spec.needs_ready for spec in services] == [True, False, False]
    (warning,) = warnings
    assert warning.startswith("ETCHR_MLLM_BASE_URL is not set") and "not ready" in warning

    configured, none = plan_services(
        host="127.0.0.1", ports=PORTS, mllm_missing=[], log_level="info", extra_env={}
    )
    assert none == () and all(spec.needs_ready for spec in configured)
    with pytest.raises(StackError, match="different ports"):
        plan_services(
            host="::", ports={**PORTS, "reward": 18001}, mllm_missing=[], log_level="info", extra_env={}
        )
    assert http_url("::", 8002) == "http://[::1]:8002"


def test_missing_mllm_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from etchr_tools.stack import missing_mllm_settings

    monkeypatch.setenv("ETCHR_MLLM_BASE_URL", "")
    monkeypatch.setenv("ETCHR_MLLM_MODEL", "")
    assert missing_mllm_settings(MLLMSettings(_env_file=None)) == ["ETCHR_MLLM_BASE_URL", "ETCHR_MLLM_MODEL"]
    monkeypatch.setenv("ETCHR_MLLM_BASE_URL", "http://gpu:8000/v1")
    monkeypatch.setenv("ETCHR_MLLM_MODEL", "Qwen/Qwen3-VL-8B-Instruct")
    assert missing_mllm_settings(MLLMSettings(_env_file=None)) == []


def test_redis_is_started_only_when_it_is_ours_to_start(redis_server: RedisServer) -> None:
    assert plan_redis(redis_server.url, None, "/usr/bin/redis-server") is None  # it answers: use it
    spec = plan_redis("redis://:s3cret@localhost:6390/2", "refused", "/usr/bin/redis-server")
    assert spec is not None and spec.argv[:4] == ("/usr/bin/redis-server", "-", "--port", "6390")
    assert "s3cret" not in " ".join(spec.argv) and "--save" in spec.argv
    assert spec.stdin == 'requirepass "s3cret"\n'  # read by redis-server from stdin ("-")
    plain = plan_redis("redis://localhost:6390/0", "refused", "/usr/bin/redis-server")
    assert plain is not None and plain.stdin is None and "-" not in plain.argv
    for url in ("redis://cache.internal:6379/0", "rediss://localhost:6379/0", "unix:///run/redis.sock"):
        with pytest.raises(StackError, match="ETCHR_REDIS_URL"):
            plan_redis(url, "refused", "/usr/bin/redis-server")
    with pytest.raises(StackError, match="redis-server is not installed"):
        plan_redis("redis://localhost:6390/0", "refused", None)
    assert redact("redis://:s3cret@localhost:6390/2") == "redis://:***@localhost:6390/2"


def test_started_redis_takes_its_password_from_stdin_not_the_command_line() -> None:
    """The password (percent-decoded as redis-py does, quotes and all) is required; `ps` never shows it."""
    password = 'p@ss wo"rd\\é'
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{free_port()}/0"
    spec = plan_redis(url, "refused", shutil.which("redis-server"))
    assert spec is not None
    out = io.StringIO()
    supervisor = Supervisor(StackPlan(services=(), redis_url=url, redis=spec, editor_model="-"), out=out)

    def check_then_interrupt() -> None:
        try:
            wait_until(lambda: "etchr-up | redis is up" in out.getvalue(), 30, "redis")
            port = urlsplit(url).port
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis(port=port).ping()
            assert redis.from_url(url).ping()
            pid = supervisor.children["redis"].proc.pid
            assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            checked.set()
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    checked = threading.Event()
    threading.Thread(target=check_then_interrupt, daemon=True).start()
    assert supervisor.run() == 0, out.getvalue()
    assert checked.is_set(), out.getvalue()
    assert password not in out.getvalue() and quote(password, safe="") not in out.getvalue()


def test_ports_in_use_are_refused_and_an_existing_redis_is_reused(redis_server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StackError, match="in use"):
            check_ports_free("127.0.0.1", [taken.getsockname()[1]])
    free = {name: free_port() for name in PORTS}
    plan = plan_stack(
        redis_url=redis_server.url,
        editor_model="/m",
        mllm=MLLMSettings(_env_file=None),
        host="127.0.0.1",
        ports=free,
    )
    assert plan.redis is None and all(spec.env["ETCHR_EDITOR_MODEL"] == "/m" for spec in plan.services)


def test_supervisor_reports_a_child_that_cannot_start_and_stops_the_rest() -> None:
    """In-process: a plan whose one child exits at once; the other is stopped, the status is 1."""
    sleeper = ChildSpec(
        "editor", (sys.executable, "-c", "import time; time.sleep(60)"), url="http://127.0.0.1:9"
    )
    failing = ChildSpec("reward", (sys.executable, "-c", "print('bad settings'); raise SystemExit(3)"))
    out = io.StringIO()
    supervisor = Supervisor(
        StackPlan(services=(sleeper, failing), redis_url="redis://x", redis=None, editor_model="m"),
        out=out,
        stop_timeout_s=10,
    )
    assert supervisor.run() == 1
    text = out.getvalue()
    assert "reward   | bad settings" in text
    assert "error: reward exited unexpectedly (exit status 3)" in text
    assert "editor stopped (by SIGTERM)" in text
    assert all(child.proc.poll() is not None for child in supervisor.children.values())


def test_supervisor_without_an_mllm_announces_the_stack_with_a_plain_warning(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Real verifier and reward children that can never be ready: the stack comes up anyway, and says why."""
    ports = {name: free_port() for name in PORTS}
    env = {**base_env(), "ETCHR_REDIS_URL": redis_server.url, "ETCHR_REDIS_PREFIX": key_prefix}
    services, warnings = plan_services(
        host="127.0.0.1",
        ports=ports,
        mllm_missing=["ETCHR_MLLM_BASE_URL", "ETCHR_MLLM_MODEL"],
        log_level="warning",
        extra_env={**env, "ETCHR_MLLM_BASE_URL": "", "ETCHR_MLLM_MODEL": ""},
    )
    plan = StackPlan(
        services=services[1:], redis_url=redis_server.url, redis=None, editor_model="-", warnings=warnings
    )
    out = io.StringIO()
    supervisor = Supervisor(plan, out=out, stop_timeout_s=30)

    def interrupt_when_ready() -> None:  # what a user's Ctrl-C does, once the summary is out
        try:
            wait_until(lambda: "etchr-up | Ctrl-C stops the stack" in out.getvalue(), 60, "the summary")
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    assert supervisor.run() == 0, out.getvalue()
    text = out.getvalue()
    for name in ("verifier", "reward"):
        url = f"http://127.0.0.1:{ports[name]}"
        playground = f"playground {url}/  " if name == "verifier" else ""
        assert re.search(rf"{name}\s+{url}  {playground}NOT READY: no MLLM configured", text), text
    assert "WARNING: ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL are not set" in text
    assert "until you set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL" in text
    assert text.rstrip().endswith("etchr-up | stopped")
    assert all(child.proc.poll() is not None for child in supervisor.children.values())
