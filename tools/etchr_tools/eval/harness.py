"""Run a manifest through ``POST /answer`` in each mode and record one scored result per (row, mode).

Results are appended to ``OUT/results.jsonl`` as they arrive, so an interrupted run resumes where it
stopped: a rerun skips every (row, mode) already recorded. A row whose request fails (verifier or MLLM down)
is NOT recorded — it is retried on the next run — and the run reports how many failed, so an outage never
turns into wrong answers in the table.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from rich.progress import Progress

from etchr.manifest import ManifestRow, read_manifest
from etchr.mllm import MLLMClient, MLLMError
from etchr.open_answer_judge import OpenAnswerJudge, grade_answer
from etchr.protocol.errors import error_detail
from etchr.settings import EvalSettings

RESULTS_NAME = "results.jsonl"
MODES = ("direct", "edit", "evr")
JUDGE_SETTING = "ETCHR_EVAL_JUDGE_MAX_TOKENS"
_DEFAULT_JUDGE_MAX_TOKENS: int = EvalSettings.model_fields["eval_judge_max_tokens"].default


class RowResult(BaseModel):
    """One (row, mode) outcome as recorded in results.jsonl."""

    id: str
    mode: str
    task: str
    correct: bool
    rule: str = ""
    undecided: bool = False  # the rules could not decide and no judge was configured: counted wrong
    expected: str
    answer: str
    raw_answer: str
    used_edit: bool
    verification: dict[str, Any] | None = None
    fallback_reason: str | None = None
    timings: dict[str, float] = {}
    path_length: int | None = None
    source: dict[str, Any] | None = None  # an imported row's meta.source: benchmark, id, category


@dataclass
class EvalRun:
    recorded: int  # results written by this run
    skipped: int  # (row, mode) pairs already in results.jsonl
    failed: list[str]  # "id/mode: reason" for requests that failed (not recorded; rerun to retry)
    results_path: Path


def path_length(row: ManifestRow) -> int | None:
    """Steps of the ground-truth route for logic rows (maze path cells − 1, FrozenLake moves)."""
    meta = row.meta or {}
    if isinstance(meta.get("path"), list):
        return max(0, len(meta["path"]) - 1)
    if isinstance(meta.get("moves"), str):
        return len(meta["moves"])
    return None


def load_results(path: Path) -> list[RowResult]:
    if not path.exists():
        return []
    return [RowResult.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


class Evaluator:
    def __init__(
        self,
        verifier_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600,
        judge: MLLMClient | None = None,
        judge_max_tokens: int = _DEFAULT_JUDGE_MAX_TOKENS,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=verifier_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self.concurrency = concurrency
        # The open-answer fallback the reward service uses too (etchr.open_answer_judge), with this budget;
        # without a configured judge, open answers are counted wrong and flagged ``undecided``.
        self.judge = (
            OpenAnswerJudge(judge, judge_max_tokens, JUDGE_SETTING)
            if judge is not None and judge.configured
            else None
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def run(
        self,
        manifest: Path,
        modes: Sequence[str],
        out: Path,
        *,
        limit: int | None = None,
        progress: bool = True,
    ) -> EvalRun:
        unknown = [mode for mode in modes if mode not in MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; use {', '.join(MODES)}")
        rows = list(read_manifest(manifest))[:limit]
        out.mkdir(parents=True, exist_ok=True)
        results_path = out / RESULTS_NAME
        done = {(r.id, r.mode) for r in load_results(results_path)}
        todo = [(row, mode) for row in rows for mode in modes if (row.id, mode) not in done]
        failed: list[str] = []
        limit_ = asyncio.Semaphore(self.concurrency)
        recorded = 0
        with results_path.open("a") as sink, Progress(disable=not progress) as bar:
            task_id = bar.add_task("evaluating", total=len(todo))

            async def one(row: ManifestRow, mode: str) -> None:
                nonlocal recorded
                async with limit_:
                    try:
                        result = await self._evaluate(row, mode, manifest.parent)
                    except (httpx.HTTPError, MLLMError, ValueError, OSError) as exc:
                        failed.append(f"{row.id}/{mode}: {exc}")
                    else:
                        sink.write(result.model_dump_json() + "\n")
                        sink.flush()
                        recorded += 1
                bar.advance(task_id)

            await asyncio.gather(*(one(row, mode) for row, mode in todo))
        return EvalRun(
            recorded=recorded,
            skipped=len(rows) * len(modes) - len(todo),
            failed=failed,
            results_path=results_path,
        )

    async def _evaluate(self, row: ManifestRow, mode: str, root: Path) -> RowResult:
        image = base64.b64encode((root / row.image).read_bytes()).decode()
        response = await self.http.post(
            "/answer", json={"image": image, "question": row.question, "task": row.task, "mode": mode}
        )
        if response.status_code != 200:
            message = error_detail(response.status_code, response.content).message
            raise httpx.HTTPStatusError(
                f"HTTP {response.status_code}: {message}", request=response.request, response=response
            )
        body = response.json()
        # A judge that is down, or cut at max_tokens before its verdict, fails the row (retried next run).
        graded = await grade_answer(body["raw_answer"], row, judge=self.judge)
        return RowResult(
            id=row.id,
            mode=mode,
            task=row.task,
            correct=graded.correct,
            rule=graded.match.rule,
            undecided=graded.undecided,
            expected=row.answer,
            answer=body["answer"],
            raw_answer=body["raw_answer"],
            used_edit=body["used_edit"],
            verification=body.get("verification"),
            fallback_reason=body.get("fallback_reason"),
            timings=body.get("timings", {}),
            path_length=path_length(row),
            source=source if isinstance(source := (row.meta or {}).get("source"), dict) else None,
        )
