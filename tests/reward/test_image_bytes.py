"""Images cross the wire once in the reward service: the bytes a trainer sends reach the MLLM unchanged (a
JPEG edit as that JPEG), each image travels through Redis once per request (queries name it by digest), and
a worker reads and encodes an image shown by many queries once.

Real parts: the reward app over HTTP with its in-process worker, a real Redis, the test MLLM recording the
data URLs it was sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from PIL import Image

from etchr.settings import RewardSettings
from etchr_reward.jobs import ImagesGone, ImageStore, reward_queue
from etchr_reward.scoring import Query, QueryImage
from tests.reward.conftest import RewardFactory, kind_of, png
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer

QUESTION = "Which exit does the path reach? (A) left (B) right"


def encoded(image_format: str, colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    """An image as a trainer's own encoder writes it (so its bytes are not what a re-encode would give)."""
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], 5):  # some structure: a re-encode would change the bytes
        image.putpixel((x, x % size[1]), (x * 5 % 256, 40, 200))
    buffer = io.BytesIO()
    options = {"quality": 83} if image_format in ("JPEG", "WEBP") else {}
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def data_url_bytes(url: str) -> tuple[str, bytes]:
    header, _, payload = url.partition(",")
    assert header.endswith(";base64"), header
    return header.removeprefix("data:").removesuffix(";base64"), base64.b64decode(payload, validate=True)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.mark.parametrize(("edit_format", "mime"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_a_trainers_edit_reaches_the_mllm_byte_identical(
    reward_service: RewardFactory,
    mllm: ScriptedMLLM,
    redis_client: redis.Redis,
    key_prefix: str,
    edit_format: str,
    mime: str,
) -> None:
    original = encoded("PNG", (3, 0, 9))
    edits = [encoded(edit_format, (200, 180, 0)), encoded(edit_format, (10, 250, 30), size=(64, 64))]
    item = {
        "id": "q1",
        "image": b64(original),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [f"data:{mime};base64,{b64(edit)}" for edit in edits],
    }
    response = httpx.post(f"{reward_service()}/reward", json={"items": [item], "k": 3}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["queries"] == 4

    sent = [r for r in mllm.requests if kind_of(r) in ("guidance", "correctness")]
    assert len(sent) == 4  # n = k: one request per query
    seen_edits = set()
    for request in sent:
        (first_mime, first), (edit_mime, edit) = (data_url_bytes(url) for url in request.images)
        assert (first_mime, first) == ("image/png", original)
        assert edit_mime == mime and edit in edits, "the edit must reach the MLLM as the bytes sent"
        seen_edits.add(edit)
    assert seen_edits == set(edits)
    # The request's images are deleted from Redis once its queries are answered.
    assert list(redis_client.scan_iter(f"{key_prefix}:reward:image:*")) == []


def test_filter_sends_a_jpeg_original_as_sent(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    original, edited = encoded("JPEG", (2, 9, 9)), encoded("JPEG", (2, 0, 0))
    item = {
        "id": "f1",
        "image": b64(original),
        "edited_image": b64(edited),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
    }
    response = httpx.post(f"{reward_service()}/filter", json={"items": [item]}, timeout=60)
    assert response.status_code == 200, response.text
    for request in mllm.requests:
        urls = [data_url_bytes(url) for url in request.images]
        assert urls[0] == ("image/jpeg", original)
        if len(urls) == 2:
            assert urls[1] == ("image/jpeg", edited)


def test_stream_entries_name_images_by_digest(
    reward_service: RewardFactory, mllm: ScriptedMLLM, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A group of G edits is 2G queries all showing the original: the entries carry digests, and each image
    is stored once for the request (the API alone enqueues here: no worker takes the entries away)."""
    url = reward_service(reward_worker=False, reward_deadline_s=2)
    original = encoded("PNG", (1, 1, 1))
    edits = [png((g, 1, 0)) for g in range(1, 5)]
    item = {
        "id": "q",
        "image": b64(original),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": edits,
    }
    response = httpx.post(f"{url}/reward", json={"items": [item], "k": 1}, timeout=60)
    assert response.status_code == 504  # nobody answers; the entries stay for us to read

    entries = redis_client.xrange(f"{key_prefix}:reward:jobs")
    assert len(entries) == 8
    digests = {hashlib.sha256(original).hexdigest()} | {
        hashlib.sha256(base64.b64decode(edit)).hexdigest() for edit in edits
    }
    named = set()
    for _, fields in entries:
        assert not any(key.startswith(b"image0") for key in fields)
        assert max(len(value) for value in fields.values()) < 2048, "no image bytes in a stream entry"
        named.update(fields[b"images"].decode().split(","))
    assert named == digests
    stored = list(redis_client.scan_iter(f"{key_prefix}:reward:image:*"))
    assert len(stored) == len(digests) == 5  # once each, kept for the TTL since the request gave up
    assert 0 < redis_client.ttl(stored[0]) <= 2 + 60
    assert mllm.requests == []


def test_a_worker_reads_and_encodes_a_shared_image_once(redis_server: RedisServer, key_prefix: str) -> None:
    settings = RewardSettings(redis_url=redis_server.url, redis_prefix=key_prefix)  # type: ignore[call-arg]
    original, edit = (
        QueryImage.from_bytes(encoded("PNG", (5, 5, 5))),
        QueryImage.from_bytes(encoded("JPEG", (9, 9, 9))),
    )

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        queue = reward_queue(client, settings)
        front, worker = ImageStore.for_deadline(queue, settings.reward_deadline_s), ImageStore(queue, ttl_s=1)
        async with client.pipeline(transaction=False) as pipe:
            keys = front.put(pipe, "r1", [original, edit, original])
            await pipe.execute()
        assert len(keys) == 2
        before = (await client.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0)
        # 2G + 1 queries of one group, read at once: one MGET, one prepared image (one data URL) each.
        results = await asyncio.gather(
            *(worker.get("r1", [original.digest, edit.digest]) for _ in range(9)),
            worker.get("r1", [original.digest]),
        )
        after = (await client.info("commandstats"))["cmdstat_mget"]["calls"]
        assert after - before == 1
        assert all(result[0] is results[0][0] for result in results)
        assert results[0][0].data == original.data and results[0][1].data == edit.data
        assert results[0][1].image.data_url is results[5][1].image.data_url  # built once
        await front.drop(keys)
        assert await client.exists(*keys) == 0
        # From its cache the worker still answers; a fresh one finds the images gone.
        assert (await worker.get("r1", [edit.digest]))[0].data == edit.data
        with pytest.raises(ImagesGone, match="no longer in Redis"):
            await ImageStore(queue, ttl_s=1).get("r1", [edit.digest])
        await client.aclose()

    asyncio.run(scenario())


def test_an_entry_in_the_previous_format_is_still_answered(
    reward_service: RewardFactory, mllm: ScriptedMLLM, redis_server: RedisServer, key_prefix: str
) -> None:
    """Rolling upgrade: an entry an older front wrote (the image bytes beside the query) is still scored."""
    reward_service()
    settings = RewardSettings(redis_url=redis_server.url, redis_prefix=key_prefix)  # type: ignore[call-arg]
    original, edit = encoded("PNG", (1, 1, 1)), encoded("JPEG", (200, 200, 0))
    query = Query(kind="guidance", task="logic", question=QUESTION, answer="B", k=2)

    async def scenario() -> dict[str, object]:
        client = aioredis.Redis.from_url(redis_server.url)
        queue = reward_queue(client, settings)
        fields = {"query": query.model_dump_json(), "images": "2", "image0": original, "image1": edit}
        await queue.enqueue("legacy-1", fields, meta={"kind": "guidance"})
        record = await queue.wait("legacy-1", 30)
        await client.aclose()
        assert record is not None and record.result is not None, record
        return json.loads(record.result)

    result = asyncio.run(scenario())
    assert len(result["texts"]) == 2  # type: ignore[arg-type]
    (request,) = mllm.requests
    assert [data_url_bytes(url) for url in request.images] == [("image/png", original), ("image/jpeg", edit)]


def _corrupt_pngs() -> dict[str, bytes]:
    raw = encoded("PNG", (7, 7, 7))
    idat = raw.index(b"IDAT") + 8
    flipped = raw[:idat] + bytes([raw[idat] ^ 0xFF]) + raw[idat + 1 :]
    return {"truncated": raw[: len(raw) // 2], "bad IDAT CRC": flipped, "no IEND": raw[:-12]}


@pytest.mark.parametrize("damage", ["truncated", "bad IDAT CRC", "no IEND"])
def test_a_damaged_png_is_refused_before_any_query(
    reward_service: RewardFactory, mllm: ScriptedMLLM, damage: str
) -> None:
    """PNGs are checked by their header and every chunk's CRC (no pixel decode): damage is still a 400."""
    item = {
        "id": "q",
        "image": b64(encoded("PNG", (1, 1, 1))),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [b64(_corrupt_pngs()[damage])],
    }
    response = httpx.post(f"{reward_service()}/reward", json={"items": [item], "k": 1}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_image" and "edits[0]" in error["message"]
    assert mllm.requests == []


def test_a_png_over_the_pixel_limit_is_refused(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    url = reward_service(max_image_pixels=40 * 40)
    item = {
        "id": "q",
        "image": b64(encoded("PNG", (1, 1, 1), size=(41, 40))),
        "question": QUESTION,
        "answer": "B",
    }
    response = httpx.post(
        f"{url}/filter", json={"items": [{**item, "edited_image": png((1, 1, 1))}]}, timeout=60
    )
    assert response.status_code == 400, response.text
    assert "limit is 1600 pixels" in response.json()["error"]["message"]
    assert mllm.requests == []
