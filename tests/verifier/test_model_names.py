"""The one model-name rule, read the same by the verifier's chat facade and the editor's images API."""

from __future__ import annotations

import openai
import pytest

from etchr.model_names import UnknownModel, model_ids, task_for_model
from etchr.tasks import TASK_IDS
from tests.playground.conftest import png_bytes


@pytest.mark.parametrize(
    ("model", "task"),
    [
        ("etchr", "auto"),
        ("etchr-logic", "logic"),
        ("etchr-3d", "3d"),
        ("etchr-none", "none"),
        ("chart", "chart"),
    ],
)
def test_model_names_map_to_tasks(model: str, task: str) -> None:
    assert task_for_model(model) == task


@pytest.mark.parametrize("model", ["gpt-4o", "etchr-astrology", "ETCHR", "etchr-", ""])
def test_other_names_are_refused_with_the_valid_ones(model: str) -> None:
    with pytest.raises(UnknownModel, match="etchr-perception"):
        task_for_model(model)


def test_every_listed_model_is_read_back() -> None:
    assert [task_for_model(name) for name in model_ids()] == ["auto", *TASK_IDS, "none"]


def test_the_editor_reads_model_names_by_the_same_rule(editor_url: str) -> None:
    """``etchr`` asks for routing and ``etchr-none`` for no edit: the editor can do neither, and says so,
    naming ``model``, instead of quietly editing as ``perception``."""
    client = openai.OpenAI(base_url=f"{editor_url}/v1", api_key="unused", max_retries=0)
    image = ("maze.png", png_bytes(80, 64), "image/png")
    edited = client.images.edit(image=image, prompt="Where is the red square?", model="etchr-perception")
    assert edited.data and edited.data[0].b64_json
    for model in ("etchr", "etchr-none"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(image=image, prompt="Where is the red square?", model=model)
        assert caught.value.body["param"] == "model" and "etchr-logic" in caught.value.message  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.images.edit(image=image, prompt="Where is the red square?", model="dall-e-2")
