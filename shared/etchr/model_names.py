"""The one rule from an OpenAI ``model`` name to an ETCHR task, for every OpenAI-compatible surface.

The verifier's chat facade (``/v1/chat/completions``, ``/v1/models``) and the editor's ``/v1/images/edits``
read model names the same way, so a name means one thing wherever a client sends it:

- ``etchr`` — automatic routing (``auto``): the verifier picks the family, or ``none``;
- ``etchr-<task>`` (``etchr-perception`` … ``etchr-3d``) — that family; a bare ``<task>`` is read the same;
- ``etchr-none`` — no edit: the understanding model answers from the original image.

The editor cannot route (it has no understanding model) and always edits, so it refuses ``etchr`` and
``etchr-none`` with a message naming the family names it takes (docs/api.md).
"""

from __future__ import annotations

from etchr.tasks import TASK_IDS

__all__ = ["AUTO", "BASE_MODEL", "NO_EDIT", "UnknownModel", "model_ids", "task_for_model"]

BASE_MODEL = "etchr"
AUTO = "auto"
NO_EDIT = "none"


class UnknownModel(ValueError):
    """A model name the rule does not know; the message lists the names it does."""


def model_ids(task_ids: tuple[str, ...] = TASK_IDS) -> list[str]:
    """Every model name in ``/v1/models`` order: ``etchr``, ``etchr-<task>``, ``etchr-none``."""
    return [BASE_MODEL, *(f"{BASE_MODEL}-{task}" for task in task_ids), f"{BASE_MODEL}-{NO_EDIT}"]


def task_for_model(model: str, task_ids: tuple[str, ...] = TASK_IDS) -> str:
    """``auto``, ``none`` or a task id for ``model``; :class:`UnknownModel` for any other name."""
    if model == BASE_MODEL:
        return AUTO
    name = model.removeprefix(f"{BASE_MODEL}-")
    if name in (*task_ids, NO_EDIT, AUTO):
        return name
    raise UnknownModel(f"unknown model {model!r}; use one of: {', '.join(model_ids(task_ids))}")
