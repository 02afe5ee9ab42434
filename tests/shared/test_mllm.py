"""The MLLM client pool over real HTTP against the scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from PIL import Image

from etchr.mllm import (
    Backend,
    MLLMClient,
    MLLMNotConfigured,
    MLLMRejected,
    MLLMUnavailable,
    cap_reply,
    image_part,
    user_message,
)
from etchr.settings import MLLMSettings
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import free_port

MODEL = "test-mllm"
FAST_RETRY = {"retry-after-ms": "1"}  # the openai client's own backoff is ~0.5 s per retry

MakeClient = Callable[..., MLLMClient]


@pytest.fixture
def mllm() -> Iterator[ScriptedMLLM]:
    with ScriptedMLLM() as server:
        yield server


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Builds clients for base URLs (fast defaults for tests) and closes them afterwards."""
    clients: list[MLLMClient] = []

    def make(*urls: str, **options: object) -> MLLMClient:
        options = {"timeout_s": 5.0, "max_retries": 1, **options}
        client = MLLMClient([Backend(url, "test-key", MODEL) for url in urls], **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url_bytes(url: str) -> bytes:
    header, payload = url.split(",", 1)
    assert header.endswith(";base64")
    return base64.b64decode(payload)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ETCHR_MLLM_", "ETCHR_JUDGE_")):
            monkeypatch.delenv(name)


# ------------------------------------------------------------------------------------------ messages


def test_image_part_from_bytes_and_pil() -> None:
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg"
    part = image_part(jpeg, "image/jpeg")
    assert part["type"] == "image_url"
    assert part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert data_url_bytes(part["image_url"]["url"]) == jpeg

    pil = Image.new("RGB", (5, 3), (10, 200, 30))
    url = image_part(pil, "image/jpeg")["image_url"]["url"]  # PIL images always travel as PNG
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(data_url_bytes(url)))
    assert decoded.format == "PNG" and decoded.size == (5, 3)
    assert decoded.convert("RGB").getpixel((4, 2)) == (10, 200, 30)


def test_user_message_puts_images_before_text() -> None:
    message = user_message("what?", [b"a", b"b"])
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["image_url", "image_url", "text"]
    assert message["content"][-1]["text"] == "what?"
    assert user_message("only text")["content"] == [{"type": "text", "text": "only text"}]


# ---------------------------------------------------------------------------------------- round trip


async def test_chat_round_trip_and_what_the_server_saw(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    mllm.responder = lambda request: f"saw {request.image_count} images"
    client = make_client(mllm.base_url)
    first, second = png_bytes((255, 0, 0)), png_bytes((0, 0, 255), (4, 4))
    messages = [
        {"role": "system", "content": "You are careful."},
        user_message("Which colour is first?", [first, Image.open(io.BytesIO(second))]),
    ]
    result = await client.chat(messages, temperature=0.2, max_tokens=16)

    assert result.texts == ["saw 2 images"]
    assert result.backend == f"{MODEL} at {mllm.base_url}"
    assert result.requests == 1
    (request,) = mllm.requests
    assert request.model == MODEL
    assert (request.n, request.temperature, request.max_tokens) == (1, 0.2, 16)
    assert request.text == "You are careful.\nWhich colour is first?"
    assert request.last_user_text == "Which colour is first?"
    assert request.image_count == 2
    assert all(url.startswith("data:image/png;base64,") for url in request.images)
    assert data_url_bytes(request.images[0]) == first
    assert Image.open(io.BytesIO(data_url_bytes(request.images[1]))).getpixel((0, 0)) == (0, 0, 255)
    assert request.headers["authorization"] == "Bearer test-key"


# ------------------------------------------------------------------------ empty replies (issue 21, item 1)

QWEN_ANSWER = "The path from the green start turns right twice, so it reaches exit B.\n\nAnswer: B"
THINKING_ANSWER = (
    "<think>\nThe user asks which exit the path reaches. Following it from the start: right, down, right."
    "\n</think>\n\nThe path ends at the right-hand exit, so the answer is \\boxed{B}."
)
EMPTY_REPLIES = {
    "null content": Reply(content=None),
    "empty string": Reply(content=""),
    "whitespace only": Reply(content=" \n\t \n"),
    "no choices": Reply(content=[]),
}


@pytest.mark.parametrize("empty", EMPTY_REPLIES.values(), ids=EMPTY_REPLIES.keys())
async def test_an_empty_reply_is_retried_then_unavailable_naming_the_backend(
    mllm: ScriptedMLLM, make_client: MakeClient, empty: Reply
) -> None:
    mllm.responder = lambda request: empty
    client = make_client(mllm.base_url, max_retries=2)
    with pytest.raises(MLLMUnavailable) as caught:
        await client.chat([user_message("Which exit does the path reach? (A) left (B) right")])
    label = f"{MODEL} at {mllm.base_url}"
    message = str(caught.value)
    expected = "no choices" if empty.content == [] else "empty content"
    assert f"{label}: answered with {expected}" in message and "3 times" in message
    assert caught.value.backend == label
    assert len(mllm.requests) == 3  # one try + max_retries, like a 5xx


async def test_a_null_reply_then_a_real_one_succeeds(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    mllm.responder = lambda request: THINKING_ANSWER
    mllm.reply_next(Reply(content=None), Reply(content=[]))
    result = await make_client(mllm.base_url, max_retries=2).chat([user_message("Which exit?")])
    assert result.texts == [THINKING_ANSWER]
    assert result.truncated == [False]
    assert result.requests == 3 and len(mllm.requests) == 3  # both empty replies counted


async def test_an_empty_backend_is_failed_over_and_cooled_down(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    mllm.responder = lambda request: Reply(content=None)
    with ScriptedMLLM(lambda request: QWEN_ANSWER) as healthy:
        client = make_client(mllm.base_url, healthy.base_url, max_retries=1, cooldown_s=60)
        results = [await client.chat([user_message(f"question {i}")]) for i in range(4)]
        assert all(result.texts == [QWEN_ANSWER] for result in results)
        assert all(result.backend == f"{MODEL} at {healthy.base_url}" for result in results)
        # The null backend is tried once (1 + max_retries requests), then cooled down and skipped.
        assert len(mllm.requests) == 2
        assert sum(result.requests for result in results) == len(mllm.requests) + len(healthy.requests) == 6


async def test_all_backends_null_is_unavailable_naming_each(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    mllm.responder = lambda request: Reply(content=None)
    with ScriptedMLLM(lambda request: Reply(content=" ")) as blank:
        client = make_client(mllm.base_url, blank.base_url, max_retries=0)
        with pytest.raises(MLLMUnavailable) as caught:
            await client.chat([user_message("Which exit?")])
    for label in client.labels:
        assert f"{label}: answered with empty content" in str(caught.value)
        assert label in caught.value.backend


async def test_blank_choices_among_good_ones_are_asked_for_again(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    """Good decodings are kept; only the blank ones are asked for again, and truncation stays aligned."""
    replies = iter(
        [
            Reply(
                content=["Answer: B", None, "Reasoning first... so \\boxed{A}", "  "],
                finish_reason=["stop", "stop", "length", "stop"],
            ),
            Reply(content=["", "Looking at the edit, the answer is B."]),
            Reply(content=[THINKING_ANSWER]),
        ]
    )
    mllm.responder = lambda request: next(replies)
    result = await make_client(mllm.base_url, max_retries=0).chat([user_message("Which exit?")], n=4)
    assert result.texts == [
        "Answer: B",
        "Reasoning first... so \\boxed{A}",
        "Looking at the edit, the answer is B.",
        THINKING_ANSWER,
    ]
    assert result.truncated == [False, True, False, False]
    assert [request.n for request in mllm.requests] == [4, 2, 1]
    assert result.requests == 3


async def test_a_blank_reply_cut_at_max_tokens_is_the_callers_to_judge(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    """A thinking model that spent max_tokens in reasoning_content: null content, finish_reason "length".

    Asking again with the same budget gives the same cut, so it is no backend failure: the caller sees an
    empty, truncated decoding and raises MLLMIncomplete (naming the setting to raise) or marks it unreliable.
    """
    mllm.responder = lambda request: Reply(content=None, finish_reason="length")
    client = make_client(mllm.base_url, max_retries=2)
    result = await client.chat([user_message("Which exit?")], max_tokens=64)
    assert result.texts == [""] and result.truncated == [True] and result.was_truncated(0)
    assert result.requests == 1


# ---------------------------------------------------------------------- reply size cap (issue 21, item 5)

CUT_MARKER = re.compile(r"\n\[… ([\d,]+) characters cut …\]\n")


def split_at_cut(capped: str) -> tuple[str, int, str]:
    """(head kept, characters cut, tail kept) of a capped reply; exactly one marker."""
    (match,) = CUT_MARKER.finditer(capped)
    return capped[: match.start()], int(match[1].replace(",", "")), capped[match.end() :]


async def test_an_oversized_reply_keeps_head_and_tail_with_the_cut_marked(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    head = "<think>\nLet me trace the path from the green start.\n"
    tail = "\n</think>\n\nThe path reaches the right exit.\n\\boxed{B}"
    reply = head + "It goes right, then down. " * 400_000 + tail  # ~10.4 MB
    mllm.responder = lambda request: reply
    result = await make_client(mllm.base_url, max_reply_chars=4096).chat([user_message("Which exit?")])
    (text,) = result.texts
    assert 4000 < len(text) <= 4096
    kept_head, cut, kept_tail = split_at_cut(text)
    assert kept_head.startswith(head) and kept_tail.endswith(tail)
    assert len(kept_head) + cut + len(kept_tail) == len(reply)
    assert reply.startswith(kept_head) and reply.endswith(kept_tail)
    assert result.truncated == [False]  # capping is not the backend's max_tokens cut


async def test_a_reply_at_the_cap_is_untouched_one_just_over_is_cut(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    reply = "x" * 4090 + " \\boxed{B}"
    assert len(reply) > 4096  # just over: cut
    mllm.responder = lambda request: Reply(content=[reply[:4096], reply])
    texts = (await make_client(mllm.base_url, max_reply_chars=4096).chat([user_message("hi")], n=2)).texts
    assert texts[0] == reply[:4096]
    assert len(texts[1]) <= 4096 and texts[1].endswith("\\boxed{B}") and "characters cut" in texts[1]


@pytest.mark.parametrize("length", [255, 256, 257, 1000, 99_999, 10**7])
def test_cap_reply_keeps_head_and_tail_within_the_limit(length: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    capped = cap_reply(text, 256)
    if length <= 256:
        assert capped == text
        return
    assert 200 < len(capped) <= 256
    head, cut, tail = split_at_cut(capped)
    assert text.startswith(head) and text.endswith(tail) and abs(len(head) - len(tail)) <= 1
    assert len(head) + cut + len(tail) == length


async def test_the_cap_comes_from_the_environment(
    clean_env: None, mllm: ScriptedMLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCHR_MLLM_BASE_URL", mllm.base_url)
    monkeypatch.setenv("ETCHR_MLLM_MODEL", MODEL)
    monkeypatch.setenv("ETCHR_MLLM_MAX_REPLY_CHARS", "2048")
    settings = MLLMSettings(_env_file=None)
    assert settings.mllm_max_reply_chars == 2048
    assert MLLMSettings(_env_file=None, mllm_max_reply_chars=32_768).mllm_max_reply_chars == 32_768
    mllm.responder = lambda request: "reasoning " * 10_000 + "Answer: B"
    for role in ("mllm", "judge"):
        client = MLLMClient.from_settings(settings, role)  # type: ignore[arg-type]
        (text,) = (await client.chat([user_message("hi")])).texts
        await client.aclose()
        assert len(text) <= 2048 and text.endswith("Answer: B") and "characters cut" in text


# ----------------------------------------------------------------------------------- retries / errors


async def test_503_then_success_is_retried(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    mllm.fail_next(1, 503)
    result = await make_client(mllm.base_url, max_retries=2).chat([user_message("hi")])
    assert result.texts == ["ok"]
    assert len(mllm.requests) == 2
    assert result.requests == 2


async def test_429_honours_retry_after(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    replies = iter([Reply(status=429, headers={"retry-after": "2"})])
    mllm.responder = lambda request: next(replies, "fine")
    started = time.monotonic()
    result = await make_client(mllm.base_url, max_retries=1).chat([user_message("hi")])
    assert result.texts == ["fine"]
    assert len(mllm.requests) == 2
    # The client's own first backoff is at most 1 s; the server asked for 2 s and got it.
    assert time.monotonic() - started >= 1.9


async def test_persistent_500_is_unavailable_naming_the_backend(
    mllm: ScriptedMLLM, make_client: MakeClient
) -> None:
    mllm.responder = lambda request: Reply(status=500, content="GPU on fire", headers=FAST_RETRY)
    client = make_client(mllm.base_url, max_retries=1)
    with pytest.raises(MLLMUnavailable) as caught:
        await client.chat([user_message("hi")])
    label = f"{MODEL} at {mllm.base_url}"
    message = str(caught.value)
    assert label in message and "HTTP 500" in message and "GPU on fire" in message
    assert caught.value.backend == label
    assert len(mllm.requests) == 2  # one try + one retry


async def test_connection_refused_is_unavailable(make_client: MakeClient) -> None:
    url = dead_url()
    with pytest.raises(MLLMUnavailable, match="connection failed") as caught:
        await make_client(url, max_retries=0).chat([user_message("hi")])
    assert url in str(caught.value)


async def test_400_is_rejected_without_retry(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    def refuse(request: RecordedRequest) -> Reply:
        return Reply(status=400, content="this model cannot take images")

    mllm.responder = refuse
    with ScriptedMLLM(refuse) as other:
        client = make_client(mllm.base_url, other.base_url, max_retries=2)
        for expected in client.labels:  # the round robin starts with each backend in turn
            with pytest.raises(MLLMRejected, match="cannot take images") as caught:
                await client.chat([user_message("hi")])
            assert caught.value.backend == expected
        assert len(mllm.requests) == 1 and len(other.requests) == 1  # not retried, not failed over


async def test_timeout_is_unavailable(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    mllm.responder = lambda request: Reply(delay_s=3.0)
    started = time.monotonic()
    with pytest.raises(MLLMUnavailable, match="timed out"):
        await make_client(mllm.base_url, timeout_s=0.3, max_retries=0).chat([user_message("hi")])
    assert time.monotonic() - started < 2.0


# -------------------------------------------------------------------------------------- backend pool


async def test_dead_backend_is_skipped_and_cooled_down(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    client = make_client(dead_url(), mllm.base_url, max_retries=0, cooldown_s=60)
    results = [await client.chat([user_message(f"q{i}")]) for i in range(6)]
    assert all(result.texts == ["ok"] and result.backend == client.labels[1] for result in results)
    assert len(mllm.requests) == 6
    # The dead one costs at most one (refused) request; then it cools down and is not tried again.
    assert sum(result.requests for result in results) <= 7


async def test_load_spreads_over_live_backends(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    with ScriptedMLLM() as other:
        client = make_client(mllm.base_url, other.base_url)
        await asyncio.gather(*(client.chat([user_message(f"q{i}")]) for i in range(6)))
        assert len(mllm.requests) == 3 and len(other.requests) == 3


async def test_all_backends_dead_names_each(make_client: MakeClient) -> None:
    first, second = dead_url(), dead_url()
    client = make_client(first, second, max_retries=0)
    with pytest.raises(MLLMUnavailable) as caught:
        await client.chat([user_message("hi")])
    assert first in str(caught.value) and second in str(caught.value)
    assert first in caught.value.backend and second in caught.value.backend


# ----------------------------------------------------------------------------------------- n decodings


async def test_n_is_sent_in_one_request(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    mllm.responder = lambda request: Reply(content=[f"answer {i}" for i in range(request.n)])
    result = await make_client(mllm.base_url).chat([user_message("hi")], n=4, temperature=1.0)
    assert result.texts == ["answer 0", "answer 1", "answer 2", "answer 3"]
    assert result.requests == 1
    assert [request.n for request in mllm.requests] == [4]


async def test_backend_ignoring_n_is_asked_again(make_client: MakeClient) -> None:
    counter = iter(range(100))
    with ScriptedMLLM(lambda request: f"t{next(counter)}", honour_n=False) as single:
        result = await make_client(single.base_url).chat([user_message("hi")], n=4, temperature=1.0)
        assert result.texts == ["t0", "t1", "t2", "t3"]
        assert result.requests == 4
        assert [request.n for request in single.requests] == [4, 3, 2, 1]


# ----------------------------------------------------------------------------------------- concurrency


async def test_concurrency_is_bounded(make_client: MakeClient) -> None:
    with ScriptedMLLM(latency_s=0.3) as slow:
        client = make_client(slow.base_url, concurrency=2)
        results = await asyncio.gather(*(client.chat([user_message(f"q{i}")]) for i in range(6)))
        assert len(results) == 6
        assert slow.max_in_flight == 2
        assert len(slow.requests) == 6


async def test_server_takes_64_concurrent_requests(make_client: MakeClient) -> None:
    with ScriptedMLLM(latency_s=0.3) as server:
        client = make_client(server.base_url, concurrency=64, max_retries=0)
        results = await asyncio.gather(*(client.chat([user_message(f"q{i}")]) for i in range(64)))
        assert [result.texts for result in results] == [["ok"]] * 64
        assert sum(result.requests for result in results) == 64  # nothing was reset and retried
        assert server.max_in_flight == 64
        assert sorted(request.last_user_text for request in server.requests) == sorted(
            f"q{i}" for i in range(64)
        )


# -------------------------------------------------------------------------------------------- settings


async def test_judge_falls_back_to_mllm_settings(clean_env: None, mllm: ScriptedMLLM) -> None:
    settings = MLLMSettings(
        _env_file=None,
        mllm_base_url=mllm.base_url,
        mllm_model=MODEL,
        mllm_api_key="u-key",
        mllm_max_retries=0,
    )
    judge = MLLMClient.from_settings(settings, "judge")
    assert judge.configured and judge.labels == [f"{MODEL} at {mllm.base_url}"]
    await judge.chat([user_message("hi")])
    assert mllm.requests[-1].headers["authorization"] == "Bearer u-key"
    await judge.aclose()

    settings = MLLMSettings(
        _env_file=None,
        mllm_base_url=f"{dead_url()},{dead_url()}",
        mllm_model="u",
        judge_base_url=mllm.base_url,
        judge_model="j",
        judge_api_key="j-key",
    )
    assert len(MLLMClient.from_settings(settings).labels) == 2
    judge = MLLMClient.from_settings(settings, "judge")
    assert judge.labels == [f"j at {mllm.base_url}"]
    await judge.chat([user_message("hi")])
    assert mllm.requests[-1].model == "j"
    assert mllm.requests[-1].headers["authorization"] == "Bearer j-key"
    await judge.aclose()


async def test_not_configured_names_the_variables(clean_env: None) -> None:
    client = MLLMClient.from_settings(MLLMSettings(_env_file=None))
    assert not client.configured
    with pytest.raises(MLLMNotConfigured) as caught:
        await client.chat([user_message("hi")])
    assert "ETCHR_MLLM_BASE_URL" in str(caught.value) and "ETCHR_MLLM_MODEL" in str(caught.value)
    assert await client.ping() == str(caught.value)

    only_url = MLLMClient.from_settings(MLLMSettings(_env_file=None, mllm_base_url="http://x/v1"))
    with pytest.raises(MLLMNotConfigured, match="ETCHR_MLLM_MODEL") as caught:
        await only_url.chat([user_message("hi")])
    assert "BASE_URL" not in str(caught.value)

    judge = MLLMClient.from_settings(MLLMSettings(_env_file=None, mllm_model="u"), "judge")
    with pytest.raises(MLLMNotConfigured, match="ETCHR_JUDGE_BASE_URL"):
        await judge.chat([user_message("hi")])


# ---------------------------------------------------------------------------------------------- ping


async def test_ping(mllm: ScriptedMLLM, make_client: MakeClient) -> None:
    assert await make_client(mllm.base_url).ping() is None
    assert await make_client(dead_url(), mllm.base_url).ping() is None  # one live backend is enough
    url = dead_url()
    problem = await make_client(url).ping()
    assert problem is not None and url in problem and "connection failed" in problem
    assert mllm.requests == []  # a ping is no chat request


# ---------------------------------------------------------------------------------------- test server


def test_recorded_request_helpers() -> None:
    request = RecordedRequest(
        model="m",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            user_message("second", [b"x"]),
        ],
        n=1,
        temperature=None,
        max_tokens=None,
        text="",
        images=["data:image/png;base64,eA=="],
        headers={},
        body={},
    )
    assert request.last_user_text == "second"
    assert request.image_count == 1


def test_judge_on_the_same_backends_shares_one_pool() -> None:
    from etchr.settings import MLLMSettings

    same = MLLMSettings(mllm_base_url=["http://a/v1"], mllm_model="m", _env_file=None)
    mllm, judge = MLLMClient.pair_from_settings(same)
    assert judge is mllm  # one concurrency bound for both roles

    other = MLLMSettings(mllm_base_url=["http://a/v1"], mllm_model="m", judge_model="j", _env_file=None)
    mllm, judge = MLLMClient.pair_from_settings(other)
    assert judge is not mllm and judge.labels == ["j at http://a/v1"]
