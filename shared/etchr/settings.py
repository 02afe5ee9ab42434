"""Every ``ETCHR_`` environment variable, one pydantic-settings class per service.

A ``.env`` file in the working directory is read too; real environment variables win.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    """Lists arrive from the environment as comma-separated strings."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class CommonSettings(BaseSettings):
    """What every service reads: Redis, auth, input limits."""

    model_config = SettingsConfigDict(env_prefix="ETCHR_", env_file=".env", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    # Every Redis key and stream the services use starts with this; two stacks can share one Redis.
    redis_prefix: str = "etchr"
    # Connections per process; callers beyond it wait for one (see etchr.redis_client).
    redis_max_connections: int = Field(default=256, ge=4)
    # Comma-separated bearer tokens; empty turns auth off (logged as a warning at start-up).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Decoded pixel count above which an input image is refused (400). 16.7 MP ≈ 4096².
    max_image_pixels: int = Field(default=4096 * 4096, gt=0)
    # Request body limit (413). Base64 inflates by 4/3: 32 MiB carries a ~24 MB image.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Slow clients (etchr.serving): a request head must arrive within the header timeout (else 408 and
    # close); a body may pause at most the body timeout and must average the min rate (bytes/s, 0: no rate
    # rule) after that grace (else 408); idle keep-alive connections close after keep-alive seconds; a
    # request line or head above max head bytes gets 414/431.
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    http_body_min_rate: int = Field(default=16 * 1024, ge=0)
    http_keep_alive_s: float = Field(default=5.0, gt=0)
    http_max_head_bytes: int = Field(default=32 * 1024, ge=1024)
    # Redis queues: a job a dead worker held is re-delivered after this idle time (keep it above the slowest
    # batch); after max deliveries it is dead-lettered; finished jobs stay readable for the result TTL.
    queue_reclaim_s: float = Field(default=600.0, gt=0)
    queue_max_deliveries: int = Field(default=3, ge=1)
    queue_result_ttl_s: int = Field(default=3600, ge=1)
    # Optional JSON file overriding task-family meta-prompts / judge prompts (see docs/tasks.md).
    tasks_file: str | None = None
    log_level: str = "INFO"

    _split_keys = field_validator("api_keys", mode="before")(_split_csv)


class EditorSettings(CommonSettings):
    """The editor HTTP front and its GPU workers."""

    # Flux2KleinPipeline checkpoint: hub id or local directory. Required by the worker only.
    editor_model: str | None = None
    # Optional LoRA file(s)/dir(s), comma-separated, fused into the weights at load.
    editor_lora: Annotated[list[str], NoDecode] = Field(default_factory=list)
    editor_lora_scale: float = 1.0
    editor_device: str = "auto"
    editor_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    editor_compile: bool = False
    editor_steps: int = Field(default=40, ge=1, le=200)
    editor_guidance: float = Field(default=3.5, ge=0.0, le=30.0)
    # Pixel budget the model works in (the released checkpoint: about 1 MP); outputs are scaled back.
    editor_max_model_pixels: int = Field(default=1024 * 1024, ge=64 * 64)
    # Rows (images) per denoising batch and how long a worker waits to fill one. Defaults from
    # bench/batch_throughput.py: batching buys nothing on a compute-bound GPU, so no waiting by default.
    editor_max_batch: int = Field(default=4, ge=1, le=64)
    editor_batch_wait_ms: int = Field(default=0, ge=0, le=10_000)
    editor_max_n: int = Field(default=16, ge=1, le=64)
    editor_max_steps: int = Field(default=100, ge=1, le=500)
    # Backpressure: jobs waiting or running above which new edits get 429 + Retry-After.
    editor_queue_max: int = Field(default=256, ge=1)
    # How long POST /edit waits for its result before 504 (the job keeps running; poll /jobs/{id}).
    editor_deadline_s: float = Field(default=300.0, gt=0)
    editor_warmup: bool = True
    # Square sides the worker warms up at before it is ready (1-step edits, fitted into the pixel budget).
    # Empty: 64 eager; 512 and 1024 with ETCHR_EDITOR_COMPILE, so compiling happens before the first request
    # and, having seen two sizes, torch compiles shape-generic graphs that later requests reuse.
    editor_warmup_sizes: Annotated[list[Annotated[int, Field(ge=1, le=8192)]], NoDecode] = Field(
        default_factory=list
    )
    # Run a worker inside the HTTP front (`etchr serve editor`); `--no-worker` turns it off.
    editor_worker: bool = True
    # Standalone workers serve Prometheus metrics on this port (0 = off).
    editor_worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    # Workers publish each running job's denoising step to Redis (GET /jobs/{id}, /events); off only to
    # measure what publishing costs (bench/served_throughput.py --progress-compare).
    editor_progress: bool = True

    _split_loras = field_validator("editor_lora", mode="before")(_split_csv)
    _split_warmup_sizes = field_validator("editor_warmup_sizes", mode="before")(_split_csv)


class MLLMSettings(CommonSettings):
    """The understanding model U and the judge J: any OpenAI-compatible chat-completions endpoint(s).

    ``ETCHR_MLLM_BASE_URL`` may list several comma-separated URLs (e.g. one vLLM per GPU): load is spread
    over them and a dead one is skipped. Judge settings left unset fall back to the MLLM's.
    """

    mllm_base_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mllm_api_key: str = "EMPTY"
    mllm_model: str | None = None
    judge_base_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    judge_api_key: str | None = None
    judge_model: str | None = None
    # Per request; retries (with backoff, honouring Retry-After) on 429/5xx/timeouts before a backend
    # counts as failed; concurrency bounds in-flight requests per client.
    mllm_timeout_s: float = Field(default=120.0, gt=0)
    mllm_max_retries: int = Field(default=2, ge=0, le=10)
    mllm_concurrency: int = Field(default=64, ge=1)
    # A backend that failed is skipped for this long while another is available.
    mllm_backend_cooldown_s: float = Field(default=10.0, ge=0)
    # Longest reply text (characters, per decoding) callers see; a longer one keeps its head and its tail (the
    # final answer / verdict) with the cut marked. A 4096-token reasoning reply is ~16-20k characters, so
    # 32768 leaves honest replies whole while a runaway or hostile 10 MB one cannot bloat /answer or Redis.
    mllm_max_reply_chars: int = Field(default=32_768, ge=1024)
    # JSON overriding the answer / routing prompts (verifier and reward service alike; docs/prompts.md).
    prompts_file: str | None = None

    _split_mllm = field_validator("mllm_base_url", "judge_base_url", mode="before")(_split_csv)


class VerifierSettings(MLLMSettings):
    """The verifier (Edit-Verify-Reason)."""

    editor_url: str = "http://localhost:8001"
    # Bearer token the verifier presents to the editor when the editor has ETCHR_API_KEYS set.
    editor_api_key: str | None = None
    # How long the verifier waits for an edit before answering without it.
    verifier_edit_timeout_s: float = Field(default=120.0, gt=0)
    # In evr mode, answer from the original image while the edit is made, so a rejected edit costs no wait.
    verifier_speculative: bool = True
    # In evr mode, reason with the edit while the judge reads it: a yes costs one MLLM round trip after the
    # edit instead of two; a no cancels that call (or throws its reply away if it already came). False keeps
    # the strict order (judge first, U only after a yes): for backends whose capacity is scarcer than latency.
    verifier_speculative_reasoning: bool = True
    # Reasoning replies (the authors' release: 4096) and judge replies (a thinking judge reasons before its
    # verdict; a cut reply with no verdict counts as not reliable). Also the routing call's budget.
    verifier_max_tokens: int = Field(default=4096, ge=1)
    verifier_judge_max_tokens: int = Field(default=2048, ge=1)
    verifier_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    verifier_route_cache_ttl_s: int = Field(default=86400, ge=1)
    # One deadline for a whole /answer (or chat completion): past it, 504 and its MLLM calls are cancelled.
    # 300 s covers a slow healthy EVR (routing, an edit up to its 120 s timeout, a thinking judge, a
    # 4096-token reasoning reply at ~50 tokens/s) but not a hanging MLLM, which ETCHR_MLLM_TIMEOUT_S × (1 +
    # ETCHR_MLLM_MAX_RETRIES) would hold for 360 s per call. Same value as ETCHR_EDITOR_DEADLINE_S.
    verifier_deadline_s: float = Field(default=300.0, gt=0)


class RewardSettings(MLLMSettings):
    """The reward service: R_guid / R_corr queries through a Redis stream to bounded-concurrency workers."""

    # Run query workers inside the API process (`etchr worker reward` adds more, anywhere).
    reward_worker: bool = True
    # Queries one worker process keeps in flight; ETCHR_MLLM_CONCURRENCY bounds the requests to the backends.
    reward_max_in_flight: int = Field(default=256, ge=1)
    # Temperatures of U's K guidance decodings and J's K correctness decodings (stochastic: soft rewards).
    reward_temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    reward_judge_temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    # Per decoding: U's answers (R_guid, Eq. 1) and the judge's verdicts (R_corr, open answers). A reply cut
    # with no answer/verdict fails its query (502), never a made-up score.
    reward_max_tokens: int = Field(default=4096, ge=1)
    reward_judge_max_tokens: int = Field(default=2048, ge=1)
    # What R_corr's judge sees: "both" = [original, edit]; "edit" = the edit alone (the authors' release).
    reward_correctness_images: Literal["both", "edit"] = "both"
    # Ask the judge when the matching rules cannot decide an open answer (else it counts as wrong).
    reward_open_judge: bool = True
    reward_cache_ttl_s: int = Field(default=7 * 86400, ge=1)
    reward_deadline_s: float = Field(default=600.0, gt=0)
    # MLLM queries one request may need (items × G × 2); the client splits larger batches.
    reward_max_queries: int = Field(default=8192, ge=1)


class EvalSettings(MLLMSettings):
    """``etchr eval``: where the verifier is; the judge settings decide open answers the rules cannot."""

    verifier_url: str = "http://localhost:8002"
    verifier_api_key: str | None = None
    # The open-answer judge's budget (a thinking judge reasons before its verdict).
    eval_judge_max_tokens: int = Field(default=2048, ge=1)
