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

from etchr.answers import match_answer
from etchr.data.manifest import ManifestRow, read_manifest
from etchr.mllm import MLLMClient, MLLMError
from etchr.verdicts import judge_open_answer

RESULTS_NAME = "results.jsonl"
MODES = ("direct", "edit", "evr")


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
        judge_max_tokens: int = 2048,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=verifier_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self.concurrency = concurrency
        self.judge = judge if judge is not None and judge.configured else None
        self.judge_max_tokens = judge_max_tokens

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
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise httpx.HTTPStatusError(
                f"HTTP {response.status_code}: {message}", request=response.request, response=response
            )
        body = response.json()
        match = match_answer(body["raw_answer"], row.answer, scorer=row.scorer or "auto", meta=row.meta)
        correct, undecided = match.correct, False
        if correct is None:
            correct, undecided = await self._judge(row, body["raw_answer"])
        return RowResult(
            id=row.id,
            mode=mode,
            task=row.task,
            correct=correct,
            rule=match.rule,
            undecided=undecided,
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

    async def _judge(self, row: ManifestRow, raw: str) -> tuple[bool, bool]:
        """(correct, undecided) for an open answer the rules could not decide: the same open-answer judge as
        the reward service's, so evaluation and R_guid agree. Only a clear yes is correct; a judge that is
        down, or cut at max_tokens before its verdict, fails the row (retried on the next run)."""
        if self.judge is None:
            return False, True
        verdict, _ = await judge_open_answer(
            self.judge,
            question=row.question,
            answer_text=raw,
            expected=row.answer,
            max_tokens=self.judge_max_tokens,
            setting="ETCHR_EVAL_JUDGE_MAX_TOKENS",
        )
        return verdict.reliable, False
