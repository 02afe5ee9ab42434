"""The ``etchr`` command: serve, run workers, build data, evaluate, train.

It sits on top of the services, the trainers and the data tools; each verb imports what it runs inside its
function, so ``etchr serve verifier`` never loads torch and ``etchr --help`` stays quick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

app = typer.Typer(
    help="ETCHR services: question-conditioned image editing for multimodal reasoning.", no_args_is_help=True
)

DEFAULT_PORTS = {"editor": 8001, "verifier": 8002, "reward": 8003}


class Service(StrEnum):
    editor = "editor"
    verifier = "verifier"
    reward = "reward"


class WorkerService(StrEnum):
    editor = "editor"
    reward = "reward"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def app_factory(service: Service) -> Callable[[], FastAPI]:
    """The service's app factory. The editor's is ``etchr_editor.service``, which imports its worker (and
    torch) only when ``ETCHR_EDITOR_WORKER`` is on."""
    if service is Service.editor:
        from etchr_editor.service import create_app
    elif service is Service.verifier:
        from etchr_verifier.api import create_app
    else:
        from etchr_reward.api import create_app
    return create_app


@app.command()
def serve(
    service: Annotated[Service, typer.Argument(help="which service")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "0.0.0.0",
    port: Annotated[int | None, typer.Option(help="port (editor 8001, verifier 8002, reward 8003)")] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="editor/reward: run a worker in-process")
    ] = True,
    log_level: Annotated[str, typer.Option(envvar="ETCHR_LOG_LEVEL", help="log level")] = "info",
) -> None:
    """Run a service's HTTP API with uvicorn (connection limits: etchr.serving, ETCHR_HTTP_*)."""
    from etchr import serving
    from etchr.settings import CommonSettings

    if service in (Service.editor, Service.reward):
        os.environ[f"ETCHR_{service.value.upper()}_WORKER"] = "true" if worker else "false"
    _logging(log_level)
    serving.run(
        app_factory(service),
        settings=CommonSettings(),
        factory=True,
        host=host,
        port=port or DEFAULT_PORTS[service.value],
        log_level=log_level,
    )


TINY_EDITOR_DIR = Path("artifacts/tiny-editor")


@app.command()
def up(
    host: Annotated[str, typer.Option(help="interface the services bind (0.0.0.0: all)")] = "127.0.0.1",
    editor_port: Annotated[int, typer.Option(help="editor port")] = DEFAULT_PORTS["editor"],
    verifier_port: Annotated[int, typer.Option(help="verifier port")] = DEFAULT_PORTS["verifier"],
    reward_port: Annotated[int, typer.Option(help="reward port")] = DEFAULT_PORTS["reward"],
    tiny: Annotated[
        bool, typer.Option("--tiny", help=f"serve the tiny random-init checkpoint ({TINY_EDITOR_DIR}; noise)")
    ] = False,
    stop_timeout: Annotated[
        float, typer.Option(min=1, help="seconds each service gets to drain on Ctrl-C before it is killed")
    ] = 120.0,
    log_level: Annotated[str, typer.Option(envvar="ETCHR_LOG_LEVEL", help="log level (all)")] = "info",
) -> None:
    """The whole stack on one machine: Redis (a local redis-server if ETCHR_REDIS_URL is unreachable),
    editor, verifier, reward; their logs prefixed; Ctrl-C stops it."""
    from etchr.settings import EditorSettings, MLLMSettings
    from etchr_tools.stack import StackError, Supervisor, check_ports_free, plan_stack

    editor = EditorSettings()
    if not tiny and not editor.editor_model:
        typer.echo(
            "etchr up: ETCHR_EDITOR_MODEL is not set: point it at a Flux2KleinPipeline checkpoint (hub id or "
            "local dir), or run `etchr up --tiny` for the tiny random-init one (its edits are noise)",
            err=True,
        )
        raise typer.Exit(2)
    ports = {"editor": editor_port, "verifier": verifier_port, "reward": reward_port}
    try:
        check_ports_free(host, ports.values())  # before the slow part, so a second `etchr up` fails at once
    except StackError as exc:
        typer.echo(f"etchr up: {exc}", err=True)
        raise typer.Exit(1) from None
    extra_env: dict[str, str] = {}
    editor_model = editor.editor_model or ""
    if tiny:
        model = TINY_EDITOR_DIR.resolve()
        if not (model / "model_index.json").is_file():
            typer.echo(f"writing the tiny random-init checkpoint to {model}")
            from etchr_editor.tiny import save_tiny_editor

            save_tiny_editor(model)
        if editor.editor_model:
            typer.echo(f"--tiny: serving {model}, not ETCHR_EDITOR_MODEL={editor.editor_model}")
        if "editor_steps" not in editor.model_fields_set:
            extra_env["ETCHR_EDITOR_STEPS"] = "4"  # noise either way; keeps CPU edits quick
        editor_model = str(model)
    try:
        plan = plan_stack(
            redis_url=editor.redis_url,
            editor_model=editor_model,
            mllm=MLLMSettings(),
            host=host,
            ports=ports,
            log_level=log_level,
            extra_env=extra_env,
        )
    except StackError as exc:
        typer.echo(f"etchr up: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(Supervisor(plan, stop_timeout_s=stop_timeout).run())


@app.command("worker")
def worker_cmd(
    service: Annotated[WorkerService, typer.Argument(help="which service's worker")],
    log_level: Annotated[str, typer.Option(envvar="ETCHR_LOG_LEVEL", help="log level")] = "info",
) -> None:
    """Run a queue worker alone (what Kubernetes scales on queue depth)."""
    _logging(log_level)
    if service is WorkerService.editor:
        from etchr.settings import EditorSettings
        from etchr_editor.worker import serve_worker as serve_editor_worker

        asyncio.run(serve_editor_worker(EditorSettings()))
    else:
        from etchr.settings import RewardSettings
        from etchr_reward.worker import serve_worker as serve_reward_worker

        asyncio.run(serve_reward_worker(RewardSettings()))


data_app = typer.Typer(help="Build SFT/RL/eval corpora (manifest.jsonl + images).", no_args_is_help=True)
app.add_typer(data_app, name="data")


class CorpusKind(StrEnum):
    maze = "maze"
    frozenlake = "frozenlake"
    jigsaw = "jigsaw"
    bbox = "bbox"


def _option_value(value: str, *, split_commas: bool) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        if split_commas and "," in value:
            return [_option_value(item.strip(), split_commas=False) for item in value.split(",")]
        return value


def _options(pairs: list[str], *, split_commas: bool = False) -> dict[str, object]:
    """``key=value`` pairs; values parsed as JSON where they are (numbers, lists), else kept as text; with
    ``split_commas`` an unparsed ``a,b`` is the list of its items (``baseline=0.05,0.6``)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--option")
        options[key.replace("-", "_")] = _option_value(value, split_commas=split_commas)
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
    from etchr_tools.data.build import build_corpus

    try:
        path = build_corpus(kind.value, n=n, out=out, seed=seed, **_options(option or []))
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(_family_summary(path))
    typer.echo(f"wrote {path}")


def _family_summary(manifest: Path) -> str:
    """Rows per task family of a manifest, and how many carry a target edit: what a corpus step ends with."""
    from collections import Counter

    from etchr.manifest import read_manifest

    rows, edits = Counter[str](), Counter[str]()
    for row in read_manifest(manifest):
        rows[row.task] += 1
        edits[row.task] += row.edited_image is not None
    lines = [f"{'family':<12}{'rows':>8}{'with edit':>11}"]
    lines += [f"{task:<12}{rows[task]:>8}{edits[task]:>11}" for task in sorted(rows)]
    lines.append(f"{'all':<12}{rows.total():>8}{edits.total():>11}")
    return "\n".join(lines)


@data_app.command("import")
def data_import(
    source_name: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="a benchmark (vstar, hrbench, chartqa, charxiv, charxiv-descriptive, viewspatial) or one "
            "of the paper's SFT sources (vstar-train, refchartqa, spatial-ssrl-jigsaw, dl3dv)",
        ),
    ],
    source: Annotated[Path, typer.Option(help="the release as you downloaded it (file or folder)")],
    out: Annotated[Path, typer.Option(help="output directory")],
    seed: Annotated[int, typer.Option(help="option shuffling and pair selection seed")] = 0,
    limit: Annotated[int | None, typer.Option(help="import at most this many rows")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="importer option key=value, a,b for a list (docs/importers.md)"),
    ] = None,
) -> None:
    """Turn a downloaded benchmark or SFT source into a manifest (docs/importers.md); ends with rows per
    family."""
    from etchr_tools.data.importers import import_benchmark

    options = _options(option or [], split_commas=True)
    try:
        path = import_benchmark(source_name, source, out, seed=seed, limit=limit, **options)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(_family_summary(path))
    typer.echo(f"wrote {path}")


@data_app.command("mix")
def data_mix(
    manifests: Annotated[list[Path], typer.Argument(help="manifest.jsonl files (or folders) to draw from")],
    out: Annotated[Path, typer.Option(help="the RL set goes to OUT/manifest.jsonl (+ mix_summary.json)")],
    per_family: Annotated[int, typer.Option(min=1, help="rows drawn per family (the paper: 2,000)")] = 2000,
    seed: Annotated[int, typer.Option(help="the same inputs and seed give the same set")] = 0,
    family: Annotated[
        list[str] | None, typer.Option(help="draw only these families (repeatable) [default: all present]")
    ] = None,
    require_edit: Annotated[
        bool, typer.Option(help="draw only rows with a target edit (Eq. 1 needs it)")
    ] = True,
) -> None:
    """The RL set: a stratified draw of --per-family rows per task family, then `etchr train filter` (Eq. 1).

    Images stay where they are; the mixed manifest points at them. A family with fewer usable rows gives
    what it has and is flagged in the summary.
    """
    from etchr_tools.data.mix import mix_manifests, mix_table

    try:
        report = mix_manifests(
            manifests, out, per_family=per_family, seed=seed, families=family, require_edit=require_edit
        )
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(mix_table(report))
    typer.echo(f"drew {report.drawn} rows: {report.manifest}")


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
    from etchr.mllm import MLLMClient
    from etchr.settings import EvalSettings
    from etchr_tools.eval.harness import EvalRun, Evaluator, load_results
    from etchr_tools.eval.report import markdown_table, summarize, write_report

    settings = EvalSettings()

    async def run() -> EvalRun:
        judge = MLLMClient.from_settings(settings, "judge")
        evaluator = Evaluator(
            settings.verifier_url,
            api_key=settings.verifier_api_key,
            concurrency=concurrency,
            judge=judge,
            judge_max_tokens=settings.eval_judge_max_tokens,
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
    fit_vae: Annotated[
        bool,
        typer.Option(
            "--fit-vae/--no-fit-vae",
            help="fit the VAE on synthetic pictures first (~1 min on CPU): different latents then decode "
            "to visibly different images, so image-level rewards (RL) can move",
        ),
    ] = False,
) -> None:
    """Write the tiny random-init Flux2Klein checkpoint (tests, CI, CPU-only use; it draws noise)."""
    from etchr_editor.tiny import save_tiny_editor

    path = save_tiny_editor(out, seed=seed, fit_vae=fit_vae, progress=fit_vae)
    typer.echo(f"tiny Flux2Klein checkpoint{' (fitted VAE)' if fit_vae else ''} written to {path}")


train_app = typer.Typer(
    help="Train the editor: Stage I SFT, Stage II RL, the RL set filter, LoRA merging.", no_args_is_help=True
)
app.add_typer(train_app, name="train")


class MixedPrecisionOption(StrEnum):
    auto = "auto"
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


@train_app.command("sft")
def train_sft(
    data: Annotated[Path, typer.Option(help="manifest.jsonl (or its folder) with edited_image targets")],
    model: Annotated[str, typer.Option(help="base Flux2Klein checkpoint: local dir or hub id")],
    out: Annotated[Path, typer.Option(help="checkpoints, metrics.jsonl and the final LoRA go here")],
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps in all")] = 1000,
    resolution: Annotated[
        int | None,
        typer.Option(
            min=64,
            help="pixel budget resolution² (aspect kept, sides multiples of 16)",
            show_default="the editor's budget: ETCHR_EDITOR_MAX_MODEL_PIXELS, 1 MP",
        ),
    ] = None,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 64,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha [default: the rank]")] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-4,
    seed: Annotated[int, typer.Option(help="data order, timesteps and noise")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per micro-batch and process")] = 1,
    grad_accum: Annotated[int, typer.Option(min=1, help="micro-batches per optimizer step")] = 1,
    targets: Annotated[
        str | None,
        typer.Option(
            help="comma-separated Linear-layer name suffixes (docs/training.md)",
            show_default="every Linear layer of the DiT blocks",
        ),
    ] = None,
    save_every: Annotated[int, typer.Option(min=0, help="checkpoint every N steps (0: at the end)")] = 500,
    resume: Annotated[bool, typer.Option(help="continue from OUT's latest checkpoint")] = False,
    mixed_precision: Annotated[
        MixedPrecisionOption, typer.Option(help="auto = bf16 on a GPU, no (fp32) on the CPU")
    ] = MixedPrecisionOption.auto,
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations: less memory")] = False,
    cache_text_embeddings: Annotated[
        bool, typer.Option(help="encode every prompt once, then move the text encoder off the GPU")
    ] = False,
    lr_warmup_steps: Annotated[int, typer.Option(min=0, help="linear warm-up steps")] = 0,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Stage I: LoRA SFT of the editor's DiT on (image, question) → edited image (docs/training.md)."""
    from pydantic import ValidationError

    from etchr_train import sft
    options: dict[str, object] = {
        "data": data,
        "model": model,
        "out": out,
        "steps": steps,
        "resolution": resolution,
        "rank": rank,
        "alpha": alpha,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "save_every": save_every,
        "resume": resume,
        "mixed_precision": mixed_precision.value,
        "gradient_checkpointing": gradient_checkpointing,
        "cache_text_embeddings": cache_text_embeddings,
        "lr_warmup_steps": lr_warmup_steps,
        "progress": progress,
    }
    if targets is not None:
        options["targets"] = tuple(t.strip() for t in targets.split(",") if t.strip())
    _logging("info")
    try:
        result = sft.train_sft(sft.SFTConfig(**options))
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(
        f"trained steps {result.start_step}→{result.steps}, final loss {result.final_loss:.4f}; "
        f"LoRA: {result.lora} (serve it with ETCHR_EDITOR_LORA={result.out})"
    )


@train_app.command("rl")
def train_rl(
    data: Annotated[Path, typer.Option(help="manifest.jsonl (or its folder): the RL set")],
    model: Annotated[str, typer.Option(help="base Flux2Klein checkpoint: local dir or hub id")],
    out: Annotated[Path, typer.Option(help="checkpoints, metrics.jsonl and the final LoRA go here")],
    lora: Annotated[
        list[str] | None, typer.Option(help="Stage I LoRA to start from (fused into the base); repeatable")
    ] = None,
    reward_url: Annotated[str, typer.Option(help="the reward service")] = "http://localhost:8003",
    reward_api_key: Annotated[
        str | None, typer.Option(envvar="ETCHR_REWARD_API_KEY", help="bearer token of the reward service")
    ] = None,
    group_size: Annotated[int, typer.Option(min=2, help="G: edits per (image, question)")] = 8,
    prompts_per_step: Annotated[int, typer.Option(min=1, help="groups per step and process")] = 4,
    steps: Annotated[int, typer.Option(min=1, help="RL steps in all")] = 100,
    sample_steps: Annotated[int, typer.Option(min=1, help="denoising steps per rollout")] = 25,
    guidance_scale: Annotated[
        float, typer.Option(min=0, help="rollout CFG; ≤ 1 = none, one DiT forward per step (the release)")
    ] = 1.0,
    reward_image: Annotated[
        Literal["x0", "final"],
        typer.Option(help="what the reward sees: last step x0-prediction (the release) or final sample"),
    ] = "x0",
    shared_noise: Annotated[
        bool, typer.Option(help="one start noise per group (the release); SDE noise is per rollout anyway")
    ] = True,
    eta: Annotated[float, typer.Option(help="SDE noise level")] = 0.7,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-5,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 64,
    alpha: Annotated[float, typer.Option(help="LoRA alpha")] = 128.0,
    clip_range: Annotated[float, typer.Option(help="PPO ratio clip")] = 1e-4,
    kl_beta: Annotated[float, typer.Option(min=0, help="KL weight to the reference policy (0: off)")] = 0.0,
    timestep_fraction: Annotated[float, typer.Option(help="share of denoising steps trained on")] = 0.6,
    k: Annotated[int, typer.Option(min=1, help="MLLM decodings per reward query")] = 4,
    resolution: Annotated[int, typer.Option(min=64, help="pixel budget resolution²")] = 512,
    seed: Annotated[int, typer.Option(help="rollout noise, data order, LoRA init")] = 0,
    save_every: Annotated[int, typer.Option(min=0, help="checkpoint every N steps (0: at the end)")] = 50,
    resume: Annotated[bool, typer.Option(help="continue from OUT's latest checkpoint")] = False,
    mixed_precision: Annotated[
        MixedPrecisionOption, typer.Option(help="auto = bf16 on a GPU, no (fp32) on the CPU")
    ] = MixedPrecisionOption.auto,
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations: less memory")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Stage II: Pref-GRPO of the editor's LoRA through the reward service (docs/training.md)."""
    from pydantic import ValidationError

    from etchr_train import rl
    _logging("info")
    try:
        config = rl.RLConfig(
            data=data,
            model=model,
            out=out,
            lora=tuple(lora or ()),
            reward_url=reward_url,
            reward_api_key=reward_api_key,
            group_size=group_size,
            prompts_per_step=prompts_per_step,
            steps=steps,
            sample_steps=sample_steps,
            guidance_scale=guidance_scale,
            reward_image=reward_image,
            shared_noise=shared_noise,
            eta=eta,
            lr=lr,
            rank=rank,
            alpha=alpha,
            clip_range=clip_range,
            kl_beta=kl_beta,
            timestep_fraction=timestep_fraction,
            k=k,
            resolution=resolution,
            seed=seed,
            save_every=save_every,
            resume=resume,
            mixed_precision=mixed_precision.value,
            gradient_checkpointing=gradient_checkpointing,
            progress=progress,
        )
        result = rl.train_rl(config)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    except rl.RewardUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    served = ",".join([*(lora or []), str(result.out)])
    typer.echo(f"trained steps {result.start_step}→{result.steps}; serve with ETCHR_EDITOR_LORA={served}")


@train_app.command("filter")
def train_filter(
    data: Annotated[Path, typer.Option(help="manifest.jsonl (or its folder) with edited_image targets")],
    out: Annotated[Path, typer.Option(help="the kept rows go to OUT/manifest.jsonl")],
    reward_url: Annotated[str, typer.Option(help="the reward service")] = "http://localhost:8003",
    reward_api_key: Annotated[
        str | None, typer.Option(envvar="ETCHR_REWARD_API_KEY", help="bearer token of the reward service")
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(min=1, help="sampled decodings per clause, decided by strict majority [default: 4]"),
    ] = None,
    greedy: Annotated[
        bool, typer.Option(help="decide each clause on one greedy decoding (temperature 0) instead")
    ] = False,
) -> None:
    """The RL set (Eq. 1): keep rows U fails on alone and answers with the ground-truth edit.

    Prints how many rows each clause dropped per family; OUT/filter_summary.json holds the same counts and
    OUT/filter_results.jsonl every row's fractions.
    """
    from etchr.clients.reward import RewardClient, RewardServiceError
    from etchr_train import rl_data

    with RewardClient(reward_url, api_key=reward_api_key) as client:
        try:
            summary = rl_data.filter_manifest(data, out, client, k=k, greedy=greedy)
        except (ValueError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from None
        except RewardServiceError as exc:
            typer.echo(f"error: reward service at {reward_url}: {exc}", err=True)
            raise typer.Exit(1) from None
    how = "one greedy decoding" if summary.report.greedy else f"majority of {summary.report.k} decodings"
    typer.echo(f"Eq. 1 per clause ({how}):")
    typer.echo(rl_data.clause_table(summary.report))
    typer.echo(f"kept {summary.kept} of {summary.seen} rows: {summary.manifest}")
    typer.echo(f"summary: {summary.report_path}")


@train_app.command("merge")
def train_merge(
    model: Annotated[str, typer.Option(help="base Flux2Klein checkpoint: local dir or hub id")],
    lora: Annotated[list[str], typer.Option(help="LoRA file or folder; repeat to fuse several")],
    out: Annotated[Path, typer.Option(help="the merged full checkpoint is written here")],
    lora_scale: Annotated[float, typer.Option(help="scale of the fused LoRA(s)")] = 1.0,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (weights as saved)")] = "float32",
) -> None:
    """Fuse LoRA(s) into the base model and save a full checkpoint (what ETCHR_EDITOR_MODEL loads)."""
    from etchr_editor.model import resolve_device, resolve_dtype
    from etchr_train.lora import merge_lora

    try:
        torch_dtype = resolve_dtype(dtype, resolve_device("cpu"))
        path = merge_lora(model, lora, out, lora_scale=lora_scale, dtype=torch_dtype)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"merged checkpoint written to {path}")


if __name__ == "__main__":
    app()
