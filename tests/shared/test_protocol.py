from __future__ import annotations

from typing import get_args

from etchr.protocol.answer import AnswerTask
from etchr.protocol.edit import EditTask
from etchr.tasks import TASK_IDS, TaskRegistry


def test_payload_task_ids_match_the_task_registry() -> None:
    """The schemas spell the families out (for OpenAPI); they must not drift from the registry."""
    assert get_args(EditTask) == TASK_IDS == TaskRegistry.default().ids()
    assert get_args(AnswerTask) == ("auto", "none", *TASK_IDS)
