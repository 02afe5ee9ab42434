"""Hosting a queue worker: inside an HTTP front's lifespan, or alone as a process that drains on SIGTERM.

The editor and the reward service both run "a front, plus a worker in-process unless told not to" and
"a worker alone, which Kubernetes scales". One scaffold for both means they stop the same way: ``stop`` is
set, the worker finishes what it holds, and only then does the app or the process go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Protocol

import uvicorn
from fastapi import FastAPI

from etchr import serving
from etchr.settings import CommonSettings

logger = logging.getLogger("etchr.workers")


class QueueWorker(Protocol):
    """What a service's worker offers the scaffold."""

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish the work in hand and return."""
        ...


Readiness = Callable[[], Awaitable[str | None]]


@contextlib.asynccontextmanager
async def hosted_worker(worker: QueueWorker | None) -> AsyncIterator[None]:
    """Run ``worker`` in the background while the body runs (a front's lifespan); on exit, stop it and wait
    for the batch it holds. A worker that crashed (its model failed to load) is logged, not re-raised: the
    front keeps answering, and its readiness says why no edits come."""
    if worker is None:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM (an orchestrator) and SIGINT (Ctrl-C) ask the worker to drain instead of killing it."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


class _ProbeServer(uvicorn.Server):
    """uvicorn for a worker's probe port; SIGTERM/SIGINT stay with the worker, which drains first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def probe_server(app: FastAPI | None, settings: CommonSettings, port: int) -> AsyncIterator[None]:
    """Serve a standalone worker's ``/healthz``, ``/readyz`` and ``/metrics`` on ``port`` while the body
    runs (``app`` None: no probes). Lifespan off: the worker, not the app, owns Redis and the model."""
    if app is None:
        yield
        return
    config = serving.uvicorn_config(
        app, settings=settings, host="0.0.0.0", port=port, lifespan="off", log_level="warning"
    )
    server = _ProbeServer(config)
    task = asyncio.create_task(server.serve())
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task


async def run_worker_process(
    worker: QueueWorker, settings: CommonSettings, *, probes: FastAPI | None = None, probe_port: int = 0
) -> None:
    """``etchr worker X``: run ``worker`` until SIGTERM/SIGINT, with its probes served on ``probe_port``."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with probe_server(probes if probe_port else None, settings, probe_port):
        await worker.run(stop)
