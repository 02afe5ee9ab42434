"""The ``etchr`` command. Services are named by import string, so this module imports none of them."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="ETCHR services: question-conditioned image editing for multimodal reasoning.", no_args_is_help=True
)

DEFAULT_PORTS = {"editor": 8001, "verifier": 8002, "reward": 8003}
APP_FACTORIES = {
    "editor": "etchr_editor.api:create_app",
    "verifier": "etchr_verifier.api:create_app",
    "reward": "etchr_reward.api:create_app",
}
# `etchr worker X`: the module with `serve_worker(settings)` and the settings class it takes.
WORKERS = {
    "editor": ("etchr_editor.worker", "EditorSettings"),
    "reward": ("etchr_reward.worker", "RewardSettings"),
}


class Service(StrEnum):
    editor = "editor"
    verifier = "verifier"
    reward = "reward"


class WorkerService(StrEnum):
    editor = "editor"
    reward = "reward"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    service: Annotated[Service, typer.Argument(help="which service")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "0.0.0.0",
    port: Annotated[int | None, typer.Option(help="port (editor 8001, verifier 8002, reward 8003)")] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="editor/reward: run a worker in-process")
    ] = True,
    log_level: Annotated[str, typer.Option(help="log level")] = "info",
) -> None:
    """Run a service's HTTP API with uvicorn."""
    import uvicorn

    if service in (Service.editor, Service.reward):
        os.environ[f"ETCHR_{service.value.upper()}_WORKER"] = "true" if worker else "false"
    _logging(log_level)
    uvicorn.run(
        APP_FACTORIES[service.value],
        factory=True,
        host=host,
        port=port or DEFAULT_PORTS[service.value],
        log_level=log_level.lower(),
        timeout_graceful_shutdown=30,
    )


@app.command("worker")
def worker_cmd(
    service: Annotated[WorkerService, typer.Argument(help="which service's worker")],
    log_level: Annotated[str, typer.Option(help="log level")] = "info",
) -> None:
    """Run a queue worker alone (what Kubernetes scales on queue depth)."""
    _logging(log_level)
    module, settings_class = WORKERS[service.value]
    settings = getattr(importlib.import_module("etchr.settings"), settings_class)()
    asyncio.run(importlib.import_module(module).serve_worker(settings))


@app.command("tiny-editor")
def tiny_editor(
    out: Annotated[Path, typer.Argument(help="directory to write the checkpoint to")],
    seed: Annotated[int, typer.Option(help="weight-init seed")] = 0,
) -> None:
    """Write the tiny random-init Flux2Klein checkpoint (tests, CI, CPU-only use; it draws noise)."""
    tiny = importlib.import_module("etchr_editor.tiny")
    path = tiny.save_tiny_editor(out, seed=seed)
    typer.echo(f"tiny Flux2Klein checkpoint written to {path}")


if __name__ == "__main__":
    app()
