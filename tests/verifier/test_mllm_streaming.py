"""``MLLMClient.chat(..., listener=...)``: U's reply streamed over real HTTP from the test MLLM, put back
together exactly as the non-streamed call returns it, with usage, and asked again when a stream breaks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from etchr.mllm import Backend, ChatResult, MLLMClient, user_message
from tests.support.mllm_server import Reply, ScriptedMLLM

ANSWER = "<think>The path turns right twice.</think>\nIt reaches the right exit.\n\\boxed{B}"


@dataclass
class Heard:
    pieces: list[str] = field(default_factory=list)
    restarts: int = 0

    def delta(self, text: str) -> None:
        self.pieces.append(text)

    def restart(self) -> None:
        self.restarts += 1
        self.pieces.clear()


def chat(mllm: ScriptedMLLM, listener: Heard | None) -> ChatResult:
    async def run() -> ChatResult:
        client = MLLMClient([Backend(mllm.base_url, "key", "test-vlm")], max_retries=1)
        try:
            return await client.chat([user_message("Which exit?")], listener=listener)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_streamed_reply_equals_the_whole_one_with_usage() -> None:
    with ScriptedMLLM(lambda _: ANSWER) as mllm:
        whole = chat(mllm, None)
        heard = Heard()
        streamed = chat(mllm, heard)
        assert mllm.requests[1].body["stream"] is True
        assert mllm.requests[1].body["stream_options"] == {"include_usage": True}
    assert len(heard.pieces) > 3 and "".join(heard.pieces) == ANSWER
    assert streamed.texts == whole.texts == [ANSWER]
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (
        whole.prompt_tokens,
        whole.completion_tokens,
    )
    assert whole.prompt_tokens == 2 and whole.completion_tokens == len(ANSWER.split())


def test_a_stream_cut_mid_reply_is_asked_again_and_the_listener_told() -> None:
    with ScriptedMLLM(lambda _: ANSWER) as mllm:
        mllm.reply_next(Reply(content=ANSWER, cut_after=2))
        heard = Heard()
        result = chat(mllm, heard)
        assert len(mllm.requests) == 2
    assert heard.restarts == 1 and "".join(heard.pieces) == ANSWER
    assert result.texts == [ANSWER] and result.was_truncated(0) is False


def test_a_listener_takes_one_decoding_only() -> None:
    with ScriptedMLLM() as mllm, pytest.raises(ValueError, match="exactly 1"):

        async def run() -> None:
            client = MLLMClient([Backend(mllm.base_url, "key", "test-vlm")])
            try:
                await client.chat([user_message("q")], n=2, listener=Heard())
            finally:
                await client.aclose()

        asyncio.run(run())
