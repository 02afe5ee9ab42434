"""An editor front whose worker sleeps at every denoising step, so an edit's progress can be watched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from etchr.settings import EditorSettings
from etchr_editor.api import create_app
from etchr_editor.metrics import EditorMetrics
from etchr_editor.model import load_editor
from etchr_editor.worker import EditorWorker
from tests.support.servers import UvicornThread


def start_slow_editor(settings: EditorSettings, checkpoint: Path, step_delay_s: float) -> UvicornThread:
    """A front hosting one worker on its own copy of ``checkpoint`` whose transformer sleeps ``step_delay_s``
    per forward (one forward per denoising step); stop the returned server when done."""
    slow = load_editor(str(checkpoint), device="cpu")
    slow.pipe.transformer.register_forward_hook(lambda *_: time.sleep(step_delay_s))

    def worker(queue: Any, metrics: EditorMetrics) -> EditorWorker:
        return EditorWorker(queue, settings, metrics, editor=slow)

    return UvicornThread(create_app(settings, worker=worker)).start()
