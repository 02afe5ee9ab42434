"""The verifier as a chat app's model: the official openai client (sync and async, streamed and not) and
LangChain's ChatOpenAI against the real verifier, the tiny editor and the scripted MLLM over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from PIL import Image

from etchr.model_names import model_ids
from etchr.settings import VerifierSettings
from etchr_verifier import streaming
from etchr_verifier.api import create_app as create_verifier_app
from tests.editor.test_api import png_b64
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, mllm_wiring, wait_until
from tests.verifier.conftest import SLOW_STEPS, Script, VerifierFactory, kind_of, requests_of

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
IMAGE_URL = f"data:image/png;base64,{png_b64(80, 64)}"
OTHER_IMAGE_URL = f"data:image/png;base64,{png_b64(96, 72)}"
# Word as Qwen3-VL in thinking mode does: reasoning first, then the boxed answer.
EDIT_ANSWER = (
    "<think>The red line leaves the green square, turns twice and ends at the right edge.</think>\n"
    "Following the drawn path from the green start, it reaches the exit on the right.\n\\boxed{B}"
)
DIRECT_ANSWER = "Looking at the maze alone, the left corridor seems open, so I would say (A).\n\\boxed{A}"


def user_turn(text: str, image_url: str | None = IMAGE_URL) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return {"role": "user", "content": content}


@pytest.fixture
def chat_script(script: Script) -> Script:
    script.route = "logic"
    script.verdict = "Yes. The path is drawn correctly from start to exit.\n\\boxed{1}"
    script.edit_answer = EDIT_ANSWER
    script.direct_answer = DIRECT_ANSWER
    return script


def usage_of(request: RecordedRequest, reply: str) -> tuple[int, int]:
    """What the scripted MLLM reports for one call (tests/support/mllm_server.py)."""
    return len(request.text.split()) + 256 * request.image_count, len(reply.split())


def expected_usage(mllm: ScriptedMLLM, kinds: set[str]) -> dict[str, int]:
    """The usage the scripted MLLM reported for its requests of ``kinds`` (as its responder replies)."""
    prompt = completion = 0
    for request in mllm.requests:
        if kind_of(request) in kinds:
            reply = mllm.responder(request)
            p, c = usage_of(request, str(reply.content if isinstance(reply, Reply) else reply))
            prompt, completion = prompt + p, completion + c
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def check_chunk(chunk: dict[str, Any], completion_id: str) -> None:
    """The fields OpenAI's reference requires of a chat.completion.chunk, with their types."""
    assert chunk["id"] == completion_id and chunk["object"] == "chat.completion.chunk"
    assert isinstance(chunk["created"], int) and isinstance(chunk["model"], str)
    for choice in chunk["choices"]:
        assert isinstance(choice["index"], int) and isinstance(choice["delta"], dict)
        assert "finish_reason" in choice and choice["finish_reason"] in (None, "stop")


def raw_stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of every server-sent event, as sent (``[DONE]`` as the string)."""
    events: list[Any] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_list_and_retrieve(verifier: VerifierFactory) -> None:
    client = openai.OpenAI(base_url=f"{verifier()}/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids == [
        "etchr",
        "etchr-perception",
        "etchr-chart",
        "etchr-logic",
        "etchr-jigsaw",
        "etchr-3d",
        "etchr-none",
    ]
    assert ids == model_ids()
    assert all(model.object == "model" and model.owned_by and model.created > 0 for model in models.data)
    assert client.models.retrieve("etchr-logic").id == "etchr-logic"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.body["param"] == "model" and caught.value.body["type"] == "model_not_found"  # type: ignore[index]

    guarded = verifier(api_keys=["chat-app-key"])
    keyed = openai.OpenAI(base_url=f"{guarded}/v1", api_key="chat-app-key", max_retries=0)
    assert [model.id for model in keyed.models.list()] == ids
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=f"{guarded}/v1", api_key="wrong", max_retries=0).models.list()
    assert (
        refused.value.body["type"] == "unauthorized" and "retry-after" not in refused.value.response.headers
    )  # type: ignore[index]


def test_streamed_answer_equals_the_non_streamed_one(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """Routing, the edit, the verdict and answering stream as reasoning_content; the content is the answer
    (U's raw reply) in pieces as U streamed it; usage arrives last and equals the non-streamed usage."""
    url = verifier()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages: Any = [user_turn(QUESTION)]
    completion = client.chat.completions.create(model="etchr", messages=messages)
    assert completion.choices[0].message.content == EDIT_ANSWER
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.role == "assistant"
    # Every MLLM call was used: route, judge, U with the edit and the baseline on the original.
    assert completion.usage is not None
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == (
        expected_usage(mllm, {"route", "judge", "reason_edit", "reason_direct"})
    )
    assert completion.model_extra["etchr"]["usage"] == completion.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    )

    mllm.reset()  # the routing decision is cached now: the streamed answer makes no routing call
    chunks = list(
        client.chat.completions.create(
            model="etchr", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == completion.choices[0].message.content
    pieces = [
        chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(pieces) > 3, "U's reply streams through in pieces, not in one block"
    reasoning = "".join(
        (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for chunk in chunks
        if chunk.choices
    )
    for said in (
        "Choosing a task family",
        "Routed to logic",
        "Editing the image",
        "The judge accepted the edit",
        "Answering with the edit",
    ):
        assert said in reasoning
    assert (
        reasoning.index("Routed to logic")
        < reasoning.index("The judge accepted")
        < reasoning.index("Answering")
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == (
        expected_usage(mllm, {"judge", "reason_edit", "reason_direct"})
    )
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert len({chunk.id for chunk in chunks}) == 1

    # The wire itself: the fields OpenAI's reference requires of a chat.completion, with their types ...
    whole = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "etchr", "messages": messages}, timeout=60
    ).json()
    assert whole["object"] == "chat.completion" and whole["id"].startswith("chatcmpl-")
    assert isinstance(whole["created"], int) and whole["model"] == "etchr"
    [choice] = whole["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["message"] == {"role": "assistant", "content": EDIT_ANSWER, "refusal": None}
    assert set(whole["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    # ... and of every chunk, the [DONE] terminator, no usage chunk unasked.
    events = raw_stream(url, {"model": "etchr-logic", "messages": messages, "stream": True})
    assert events[-1] == "[DONE]"
    chunk_events = events[:-1]
    for chunk in chunk_events:
        check_chunk(chunk, chunk_events[0]["id"])
    assert all(chunk["choices"] for chunk in chunk_events)
    assert chunk_events[0]["choices"][0]["delta"]["role"] == "assistant"
    progress = [chunk["etchr_progress"] for chunk in chunk_events if "etchr_progress" in chunk]
    assert [p["stage"] for p in progress if p["state"] == "started"] == ["edit", "verify", "reason"]
    assert chunk_events[-1]["etchr"]["answer"] == "B" and chunk_events[-1]["etchr"]["used_edit"] is True


def test_a_rejected_edit_streams_only_the_fallback_answer(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """U's answer with the edit was started speculatively and streamed into a buffer; the judge said no, so
    not a word of it reaches the client, nor its tokens the usage."""
    verdict = Reply(
        content="<think>The line crosses a wall near the top.</think>\nNo, the path is not valid. 0"
    )
    verdict.delay_s = 0.5  # U's speculative answer with the edit comes back (into the buffer) first
    mllm.responder = lambda request: verdict if kind_of(request) == "judge" else chat_script(request)
    client = openai.OpenAI(base_url=f"{verifier()}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="etchr-logic",
        messages=[user_turn(QUESTION)],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == DIRECT_ANSWER
    reasoning = "".join(
        (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for chunk in chunks
        if chunk.choices
    )
    assert "Not using the edit" in reasoning and "Answering from the original image" in reasoning
    assert requests_of(mllm, "reason_edit"), "the speculative call was made (and its reply thrown away)"
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == expected_usage(
        mllm, {"judge", "reason_direct"}
    )


def test_async_client_streamed_and_not(verifier: VerifierFactory, chat_script: Script) -> None:
    url = verifier()

    async def chat() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            whole = await client.chat.completions.create(model="etchr-logic", messages=[user_turn(QUESTION)])  # type: ignore[list-item]
            stream = await client.chat.completions.create(
                model="etchr-logic",
                messages=[user_turn(QUESTION)],
                stream=True,  # type: ignore[list-item]
            )
            pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            return whole.choices[0].message.content or "", "".join(pieces)

    whole, streamed = asyncio.run(chat())
    assert whole == streamed == EDIT_ANSWER


def test_three_turn_chat_with_a_system_prompt(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """Follow-ups without an image ask about the most recent image; U sees the system prompt and the earlier
    turns (text only) before the question; a later image replaces an earlier one."""
    client = openai.OpenAI(base_url=f"{verifier()}/v1", api_key="unused", max_retries=0)
    system = {"role": "system", "content": "You are a careful maze tutor. Answer in one sentence."}
    first = user_turn(QUESTION)
    history: list[Any] = [system, first]
    reply = client.chat.completions.create(model="etchr-logic", messages=history)
    history += [{"role": "assistant", "content": reply.choices[0].message.content}]
    history += [
        user_turn("And which exit would the path reach if the top wall were removed?", image_url=None)
    ]
    mllm.reset()
    second = client.chat.completions.create(model="etchr-logic", messages=history)
    assert second.choices[0].message.content == EDIT_ANSWER
    [reasoned] = requests_of(mllm, "reason_edit")
    roles = [message["role"] for message in reasoned.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert reasoned.messages[0]["content"] == system["content"]
    assert reasoned.messages[1]["content"] == QUESTION, "earlier turns go as text only"
    assert "top wall were removed" in reasoned.last_user_text
    assert reasoned.images[0] == IMAGE_URL, "the image of the first turn is the one asked about"
    [judged] = requests_of(mllm, "judge")
    assert "top wall were removed" in judged.text and "You are a careful maze tutor" not in judged.text

    history += [{"role": "assistant", "content": second.choices[0].message.content}]
    history += [user_turn("Now this one: which exit does it reach?", image_url=OTHER_IMAGE_URL)]
    mllm.reset()
    third = client.chat.completions.create(model="etchr-logic", messages=history)
    assert third.choices[0].message.content == EDIT_ANSWER
    [reasoned] = requests_of(mllm, "reason_edit")
    assert [message["role"] for message in reasoned.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert reasoned.images[0] == OTHER_IMAGE_URL, "the most recent image in the conversation"

    # Several images in one message: the last one is used, consistently.
    mllm.reset()
    both = user_turn(QUESTION, image_url=IMAGE_URL)
    both["content"].append({"type": "image_url", "image_url": {"url": OTHER_IMAGE_URL}})
    client.chat.completions.create(model="etchr-logic", messages=[both])
    assert requests_of(mllm, "reason_edit")[0].images[0] == OTHER_IMAGE_URL


def test_langchain_chat_openai(verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script) -> None:
    """LangChain's ChatOpenAI (what many chat tools build on), invoked and streamed, with a system prompt."""
    chat = ChatOpenAI(base_url=f"{verifier()}/v1", api_key="unused", model="etchr-logic", max_retries=0)  # type: ignore[arg-type]
    messages = [
        SystemMessage("You are a careful maze tutor."),
        HumanMessage(
            content=[
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": IMAGE_URL}},
            ]
        ),
    ]
    answer = chat.invoke(messages)
    assert isinstance(answer, AIMessage) and answer.content == EDIT_ANSWER
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] > 0
    streamed = "".join(str(piece.content) for piece in chat.stream(messages))
    assert streamed == EDIT_ANSWER
    follow_up = chat.invoke([*messages, answer, HumanMessage("Why not the left exit?")])
    assert follow_up.content == EDIT_ANSWER
    assert requests_of(mllm, "reason_edit")[-1].messages[0]["role"] == "system"


def test_errors_have_openai_shape(verifier: VerifierFactory) -> None:
    url = verifier()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="etchr", messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.body == {
        "type": "invalid_field",
        "message": caught.value.body["message"],  # type: ignore[index]
        "param": "messages",
        "code": None,
    }
    assert "no image in the conversation" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="etchr-astrology", messages=[user_turn(QUESTION)])  # type: ignore[list-item]
    assert caught.value.body["param"] == "model" and "etchr-logic" in caught.value.message  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="etchr", messages=[user_turn(QUESTION, "https://example.invalid/m.png")]
        )  # type: ignore[list-item]
    assert caught.value.body["param"] == "messages.0.content.1.image_url.url"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
        client.chat.completions.create(
            model="etchr", messages=[user_turn("What is it?"), user_turn("And now?", corrupt)]
        )
    assert caught.value.body["type"] == "invalid_image"  # type: ignore[index]
    assert caught.value.body["param"] == "messages.1.content.1.image_url.url", "the image in use is named"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model="etchr", messages=[])
    assert caught.value.body["param"] == "messages" and caught.value.body["type"] == "validation_error"  # type: ignore[index]
    for response, status in (
        (httpx.get(f"{url}/v1/nothing-here"), 404),
        (httpx.get(f"{url}/v1/chat/completions"), 405),
        (
            httpx.post(
                f"{url}/v1/chat/completions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            422,
        ),
    ):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"type", "message", "param", "code"}
        assert "retry-after" not in response.headers, "a 4xx is never worth retrying as is"


def test_no_mllm_configured_fails_at_once_without_retries(verifier: VerifierFactory) -> None:
    """The official client retries a 503 by default; it must not here: asking again cannot help."""
    url = verifier(mllm_base_url=[], mllm_model=None)
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)  # default retries
    for stream in (False, True):
        sent.clear()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="etchr", messages=[user_turn(QUESTION)], stream=stream)  # type: ignore[call-overload]
        assert caught.value.status_code == 503 and caught.value.body["type"] == "mllm_not_configured"  # type: ignore[index]
        assert "retry-after" not in caught.value.response.headers
        assert sent == ["/v1/chat/completions"], "one request, no retries"
    response = httpx.post(f"{url}/answer", json={"image": png_b64(80, 64), "question": QUESTION})
    assert response.status_code == 503 and "retry-after" not in response.headers


def test_a_client_that_disconnects_cancels_the_work(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """Once the client is gone, nothing further is asked of the MLLM: routing was under way, the edit, the
    judge and U never are."""
    routing = Reply(content="logic", delay_s=1.5)
    mllm.responder = lambda request: routing if kind_of(request) == "route" else chat_script(request)
    url = verifier(verifier_speculative=False)
    question = f"{QUESTION} (asked once: {uuid.uuid4().hex})"  # not in the routing cache
    body = {"model": "etchr", "messages": [user_turn(question)], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        wait_until(lambda: bool(requests_of(mllm, "route")), 10, "the routing call")
    time.sleep(3.0)  # well past the routing reply: a request still running would have gone on by now
    assert [kind_of(request) for request in mllm.requests] == ["route"]


def test_answer_endpoint_streams_progress_then_the_answer(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """What the playground reads: 'progress' events (EVRProgress), then one 'answer' event, usage included."""
    url = verifier()
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "logic", "stream": True}
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", f"{url}/answer", json=body, timeout=60) as response:
        assert response.status_code == 200
        name = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    names = [name for name, _ in events]
    assert names[-1] == "answer" and set(names[:-1]) == {"progress"}
    stages = [(data["stage"], data["state"]) for name, data in events if name == "progress"]
    assert (
        stages[0] == ("edit", "started")
        and ("verify", "done") in stages
        and stages[-1] == ("reason", "started")
    )
    answer = events[-1][1]
    assert answer["answer"] == "B" and answer["usage"]["total_tokens"] > 0
    plain = httpx.post(f"{url}/answer", json={**body, "stream": False}, timeout=60).json()
    assert plain["raw_answer"] == answer["raw_answer"] and plain["usage"]["total_tokens"] > 0


def test_the_stream_follows_the_edit_step_by_step(
    redis_server: RedisServer, key_prefix: str, slow_editor_url: str, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """The edit's progress from the editor (step i of N) reaches the chat as reasoning_content, in order."""
    launcher = AppLauncher(
        create_verifier_app,
        VerifierSettings,
        {**mllm_wiring(redis_server.url, key_prefix, mllm.base_url), "editor_url": slow_editor_url},
    )
    try:
        client = openai.OpenAI(base_url=f"{launcher.launch()}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="etchr-logic", messages=[user_turn(QUESTION)], stream=True
        )  # type: ignore[list-item]
        chunks = list(stream)
    finally:
        launcher.stop_all()
    progress = [
        chunk.model_extra["etchr_progress"] for chunk in chunks if "etchr_progress" in chunk.model_extra
    ]
    steps = [
        event["step"] for event in progress if event["stage"] == "edit" and event.get("step") is not None
    ]
    assert len(set(steps)) >= 3 and steps == sorted(steps), steps
    assert {event["steps"] for event in progress if event.get("steps")} == {SLOW_STEPS}
    reasoning = "".join(
        (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for chunk in chunks
    )
    assert f"Editing: step {steps[-1]} of {SLOW_STEPS}" in reasoning
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == EDIT_ANSWER


def test_image_suffix_appends_the_edit_as_a_markdown_image(
    verifier: VerifierFactory, chat_script: Script
) -> None:
    """``etchr-…+image``: chat UIs render the helper view under the answer, streamed or not."""
    client = openai.OpenAI(base_url=f"{verifier()}/v1", api_key="unused", max_retries=0)
    messages: Any = [user_turn(QUESTION)]
    whole = (
        client.chat.completions.create(model="etchr-logic+image", messages=messages)
        .choices[0]
        .message.content
    )
    stream = client.chat.completions.create(model="etchr-logic+image", messages=messages, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    for content in (whole or "", streamed):
        head = f"{EDIT_ANSWER}\n\n![helper view (used for the answer)](data:image/png;base64,"
        assert content.startswith(head) and content.endswith(")")
        picture = Image.open(io.BytesIO(base64.b64decode(content.removeprefix(head)[:-1])))
        assert picture.format == "PNG" and picture.size == (80, 64)
    plain = client.chat.completions.create(model="etchr-logic", messages=messages).choices[0].message.content
    assert plain == EDIT_ANSWER, "without the suffix the content is the answer alone"


def test_a_quiet_stream_is_kept_alive(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While nothing happens (a slow routing call here), comment lines keep proxies from closing the stream;
    clients skip them and the stream ends as usual."""
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.2)
    routing = Reply(content="logic", delay_s=1.0)
    mllm.responder = lambda request: routing if kind_of(request) == "route" else chat_script(request)
    question = f"{QUESTION} (asked once: {uuid.uuid4().hex})"  # not in the routing cache
    body = {"model": "etchr", "messages": [user_turn(question)], "stream": True}
    with httpx.stream("POST", f"{verifier()}/v1/chat/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line]
    assert ": ping" in lines and lines[-1] == "data: [DONE]"


def test_a_backend_dying_mid_answer_still_gives_the_whole_answer(
    verifier: VerifierFactory, mllm: ScriptedMLLM, chat_script: Script
) -> None:
    """Part of U's answer already went out when its stream broke; the call is asked again and the client's
    content is still exactly the answer (the rest follows what was sent)."""
    broken: list[RecordedRequest] = []

    def responder(request: RecordedRequest) -> Reply | str:
        if kind_of(request) == "reason_edit" and not broken:
            broken.append(request)
            return Reply(content=EDIT_ANSWER, cut_after=3)
        return chat_script(request)

    mllm.responder = responder
    url = verifier(verifier_speculative=False, verifier_speculative_reasoning=False, mllm_max_retries=1)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="etchr-logic", messages=[user_turn(QUESTION)], stream=True)  # type: ignore[list-item]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == EDIT_ANSWER
    assert len(requests_of(mllm, "reason_edit")) == 2
