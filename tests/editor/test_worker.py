"""The worker's start-up: what it warms up, on a pipeline it was given, and that compiling ends there."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from etchr.imaging import fit_model_size
from etchr.settings import EditorSettings
from etchr_editor.jobs import editor_queue
from etchr_editor.metrics import EditorMetrics
from etchr_editor.worker import EditorWorker, WarmUp, warmup_plan

if TYPE_CHECKING:
    from etchr_editor.model import LoadedEditor


def settings(**values: object) -> EditorSettings:
    return EditorSettings(_env_file=None, **values)  # type: ignore[arg-type]


def worker_serving(editor: LoadedEditor, chosen: EditorSettings) -> EditorWorker:
    """A worker given ``editor``; its queue's client never connects (``load`` does not use Redis)."""
    queue = editor_queue(aioredis.Redis.from_url(chosen.redis_url), chosen)
    return EditorWorker(queue, chosen, EditorMetrics(), editor=editor)


def warm_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(" in ")[0] for r in caplog.records if r.getMessage().startswith("warmed")]


def test_eager_warmup_is_one_small_cfg_edit_by_default() -> None:
    assert warmup_plan(settings()) == [WarmUp((64, 64), 1, 2.0)]


def test_compiled_warmup_walks_sizes_batches_and_cfg() -> None:
    assert warmup_plan(settings(editor_compile=True)) == [
        WarmUp((512, 512), 1, 2.0),
        WarmUp((512, 512), 1, 1.0),
        WarmUp((1024, 1024), 2, 2.0),
        WarmUp((1024, 1024), 1, 1.0),
    ]
    one_row = warmup_plan(settings(editor_compile=True, editor_max_batch=1))
    assert [warm.requests for warm in one_row] == [1, 1, 1, 1]


def test_warmup_sizes_are_fitted_like_requests_and_deduplicated() -> None:
    chosen = settings(editor_warmup_sizes=[40, 64, 3000, 5000], editor_max_model_pixels=512 * 512)
    assert [warm.size for warm in warmup_plan(chosen)] == [(64, 64), (512, 512)]


def test_load_warms_a_given_pipeline_up_at_each_size(
    tiny_editor: LoadedEditor, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = settings(editor_warmup_sizes=[64, 100], editor_max_batch=2)
    worker = worker_serving(tiny_editor, chosen)
    assert not worker.ready
    with caplog.at_level(logging.INFO, logger="etchr.editor.worker"):
        worker.load()
    assert worker.ready and worker.editor is tiny_editor
    side = fit_model_size(100, 100, max_pixels=chosen.editor_max_model_pixels)[0]
    assert warm_messages(caplog) == [
        "warmed up at 64×64 (1 request(s), guidance 2.0)",
        f"warmed up at {side}×{side} (1 request(s), guidance 2.0)",
    ]


def test_no_warmup_when_turned_off(tiny_editor: LoadedEditor, caplog: pytest.LogCaptureFixture) -> None:
    worker = worker_serving(tiny_editor, settings(editor_warmup=False))
    with caplog.at_level(logging.INFO, logger="etchr.editor.worker"):
        worker.load()
    assert worker.ready and warm_messages(caplog) == []


@pytest.mark.slow
def test_after_a_compiled_warmup_no_request_compiles(tiny_editor_dir: Path) -> None:
    """New sizes, batches, rollouts and CFG off all reuse the graphs the warm-up compiled."""
    import torch._dynamo.utils
    from PIL import Image

    from etchr_editor.model import load_editor
    from etchr_editor.sampler import SampleRequest

    torch._dynamo.reset()
    editor = load_editor(str(tiny_editor_dir), device="cpu", compile=True)  # its own: compiling mutates it
    worker = worker_serving(editor, settings(editor_compile=True, editor_warmup_sizes=[64, 96]))
    worker.load()
    assert worker.sampler is not None
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2, "the warm-up compiled nothing"

    def request(side: int, seeds: tuple[int, ...] = (1,), guidance: float = 3.0) -> SampleRequest:
        return SampleRequest(Image.new("RGB", (side, side), (90, 20, 20)), "q", seeds, 2, guidance)

    for batch in (
        [request(128)],
        [request(160, (1, 2)), request(160)],
        [request(80, (1, 2, 3, 4))],
        [request(112, guidance=1.0)],
        [request(144, (1, 2), guidance=1.0)],
    ):
        worker.sampler.sample(batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
