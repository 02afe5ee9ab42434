"""Run services for tests over real HTTP: uvicorn in a thread, or a real ``etchr`` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from tests.support.redis_server import free_port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class UvicornThread:
    """A real uvicorn server for an app object, on a free port, in a background thread."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 60) -> UvicornThread:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout, "uvicorn to start")
        if wait_ready:
            wait_until(lambda: _ready(self.url), timeout, f"{self.url}/readyz")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class EtchrProcess:
    """A real ``etchr`` command in a subprocess (what ops run), with its output captured to a file."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "etchr_tools.cli", *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def mllm_wiring(redis_url: str, prefix: str, mllm_url: str) -> dict[str, Any]:
    """The settings a test service that talks to the test MLLM starts from: its Redis and key prefix, and
    the one backend, not retried (a scripted failure is seen at once)."""
    return {
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "mllm_base_url": [mllm_url],
        "mllm_model": "test-vlm",
        "mllm_max_retries": 0,
    }


class AppLauncher:
    """Starts differently configured apps of one service over real HTTP; ``stop_all`` ends them.

    ``launch(**overrides)`` builds the settings from ``defaults`` plus the overrides and returns the base URL.
    An app with no MLLM configured is never ready (by design), so it is not waited on.
    """

    def __init__(
        self,
        create_app: Callable[[Any], FastAPI],
        settings_class: Callable[..., Any],
        defaults: Mapping[str, object],
    ) -> None:
        self.create_app = create_app
        self.settings_class = settings_class
        self.defaults = dict(defaults)
        self.servers: list[UvicornThread] = []

    def launch(self, **overrides: object) -> str:
        values = {**self.defaults, **overrides}
        server = UvicornThread(self.create_app(self.settings_class(**values)))
        server.start(wait_ready=bool(values.get("mllm_base_url", True)))
        self.servers.append(server)
        return server.url

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
