"""The editor as ``etchr serve editor`` runs it: the HTTP front, plus a GPU worker in-process unless
``ETCHR_EDITOR_WORKER`` is off (``--no-worker``).

The worker (torch, diffusers, the model) is imported here only when this process runs one, so a front
started with ``--no-worker`` never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from etchr.queue import JobQueue
from etchr.settings import EditorSettings
from etchr_editor import api
from etchr_editor.metrics import EditorMetrics

if TYPE_CHECKING:
    from etchr_editor.model import LoadedEditor


def create_app(settings: EditorSettings | None = None, *, editor: LoadedEditor | None = None) -> FastAPI:
    """The editor service. ``editor``: an already loaded ``LoadedEditor`` for the in-process worker to
    serve, instead of loading ``ETCHR_EDITOR_MODEL`` (the GPU benchmark builds its pipeline first)."""
    settings = settings or EditorSettings()
    if not settings.editor_worker:
        if editor is not None:
            raise ValueError("an editor was given but ETCHR_EDITOR_WORKER is off: nothing would serve it")
        return api.create_app(settings)

    from etchr_editor.worker import EditorWorker  # torch and the model: only where a worker runs

    def worker(queue: JobQueue, metrics: EditorMetrics) -> EditorWorker:
        return EditorWorker(queue, settings, metrics, editor=editor)

    return api.create_app(settings, worker=worker)
