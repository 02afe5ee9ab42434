"""Reward fixtures: a test MLLM whose answers are read off the images, so every score is known in advance.

An edit image of colour (g, c, 0) makes U answer correctly in the first g of its k decodings and J say
"1" in the first c of its k decodings; an original of colour (b, *, *) makes U right in b decodings when it
sees the original alone (Eq. 1's base query). The ground truth is always option B.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from etchr.settings import RewardSettings
from etchr.tasks import JUDGE_REPLY_CONVENTION
from etchr_reward.api import create_app
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, mllm_wiring

RIGHT, WRONG = "The evidence shows it.\n\\boxed{B}", "\\boxed{A}"
JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it


def png(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def colour_of(data_url: str) -> tuple[int, int, int]:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))  # type: ignore[return-value]


def kind_of(request: RecordedRequest) -> str:
    if request.image_count == 0:
        return "open_judge"
    if request.image_count == 1:
        return "base"
    return "correctness" if JUDGE_MARK in request.text else "guidance"


def respond(request: RecordedRequest) -> Reply | str:
    kind = kind_of(request)
    if kind == "open_judge":
        return "1" if "bicycle" in request.text and "bike" in request.text else "0"
    if kind == "base":
        right = colour_of(request.images[0])[0]
        return Reply(content=[RIGHT if i < right else WRONG for i in range(request.n)])
    guidance, correctness, _ = colour_of(request.images[1])
    if kind == "correctness":
        return Reply(content=["1" if i < correctness else "0" for i in range(request.n)])
    return Reply(content=[RIGHT if i < guidance else WRONG for i in range(request.n)])


@pytest.fixture
def mllm() -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(respond).start()
    yield server
    server.stop()


RewardFactory = Callable[..., str]


@pytest.fixture
def reward_service(redis_server: RedisServer, key_prefix: str, mllm: ScriptedMLLM) -> Iterator[RewardFactory]:
    """Starts reward apps (in-process worker) wired to the test MLLM; keyword arguments override settings."""
    launcher = AppLauncher(
        create_app,
        RewardSettings,
        {
            **mllm_wiring(redis_server.url, key_prefix, mllm.base_url),
            "reward_deadline_s": 30,
        },
    )
    yield launcher.launch
    launcher.stop_all()
