"""The ``etchr`` command. Services are named by import string, so this module imports none of them."""

from __future__ import annotations

import asyncio
import importlib
import json
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


data_app = typer.Typer(help="Build SFT/RL/eval corpora (manifest.jsonl + images).", no_args_is_help=True)
app.add_typer(data_app, name="data")


class CorpusKind(StrEnum):
    maze = "maze"
    frozenlake = "frozenlake"
    jigsaw = "jigsaw"
    bbox = "bbox"


def _options(pairs: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values parsed as JSON where they are (numbers, lists), else kept as text."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--option")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


@data_app.command("build")
def data_build(
    kind: Annotated[CorpusKind, typer.Argument(help="which family to generate")],
    n: Annotated[int, typer.Option("--n", min=1, help="rows to generate")],
    out: Annotated[Path, typer.Option("--out", help="output directory (manifest.jsonl + images/)")],
    seed: Annotated[int, typer.Option(help="the same seed gives the same corpus")] = 0,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="generator option key=value (docs/data.md)")
    ] = None,
) -> None:
    """Generate a synthetic corpus (maze, frozenlake, jigsaw) or draw box targets from a manifest (bbox)."""
    build = importlib.import_module("etchr.data.build")
    try:
        path = build.build_corpus(kind.value, n=n, out=out, seed=seed, **_options(option or []))
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"wrote {path}")


@data_app.command("import")
def data_import(
    benchmark: Annotated[str, typer.Argument(help="vstar, hrbench, chartqa, charxiv or viewspatial")],
    source: Annotated[Path, typer.Option(help="the benchmark as you downloaded it (file or folder)")],
    out: Annotated[Path, typer.Option(help="output directory")],
    seed: Annotated[int, typer.Option(help="option shuffling seed (V*)")] = 0,
    limit: Annotated[int | None, typer.Option(help="import at most this many rows")] = None,
) -> None:
    """Turn a downloaded public benchmark into a manifest (docs/importers.md)."""
    importers = importlib.import_module("etchr.data.importers")
    try:
        path = importers.import_benchmark(benchmark, source, out, seed=seed, limit=limit)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"wrote {path}")


@app.command("eval")
def eval_cmd(
    manifest: Annotated[Path, typer.Option(help="manifest.jsonl to evaluate")],
    out: Annotated[Path, typer.Option(help="results.jsonl, summary.json/.md and charts go here")],
    modes: Annotated[str, typer.Option(help="comma-separated: direct, edit, evr")] = "direct,evr",
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight to the verifier")] = 8,
    limit: Annotated[int | None, typer.Option(help="evaluate only the first N rows")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Pass@1 per task family and mode through the verifier (ETCHR_VERIFIER_URL); resumable."""
    from etchr.eval.harness import EvalRun, Evaluator, load_results
    from etchr.eval.report import markdown_table, summarize, write_report
    from etchr.mllm import MLLMClient
    from etchr.settings import EvalSettings

    settings = EvalSettings()

    async def run() -> EvalRun:
        judge = MLLMClient.from_settings(settings, "judge")
        evaluator = Evaluator(
            settings.verifier_url, api_key=settings.verifier_api_key, concurrency=concurrency, judge=judge
        )
        try:
            return await evaluator.run(
                manifest,
                [m.strip() for m in modes.split(",") if m.strip()],
                out,
                limit=limit,
                progress=progress,
            )
        finally:
            await evaluator.aclose()
            await judge.aclose()

    try:
        result = asyncio.run(run())
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    results = load_results(result.results_path)
    if results:
        write_report(results, out)
        typer.echo(markdown_table(summarize(results)))
    typer.echo(f"recorded {result.recorded}, skipped {result.skipped} already done; results in {out}")
    if result.failed:
        for line in result.failed[:10]:
            typer.echo(f"failed: {line}", err=True)
        typer.echo(
            f"{len(result.failed)} requests failed and were not recorded; rerun to retry them", err=True
        )
        raise typer.Exit(1)


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
