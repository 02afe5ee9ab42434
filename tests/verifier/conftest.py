"""Verifier fixtures: the test MLLM server (scripted by prompt kind), the tiny editor, verifier apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etchr.settings import EditorSettings, VerifierSettings
from etchr.tasks import JUDGE_REPLY_CONVENTION
from etchr_editor.service import create_app as create_editor_app
from etchr_verifier.api import create_app as create_verifier_app
from tests.editor.test_api import editor_settings
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, UvicornThread, mllm_wiring
from tests.support.slow_editor import start_slow_editor

ROUTE_MARK = "Reply with exactly one word from"
JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it


def kind_of(request: RecordedRequest) -> str:
    """Which stage sent a request, from its prompt: route, judge, reason_edit or reason_direct."""
    if ROUTE_MARK in request.text:
        return "route"
    if JUDGE_MARK in request.text:
        return "judge"
    return "reason_edit" if request.image_count == 2 else "reason_direct"


@dataclass
class Script:
    """What the test MLLM answers per stage; tests change fields to script a scenario."""

    route: str = "logic"
    verdict: str = "1"
    edit_answer: str = "Following the drawn path, the exit is B.\n\\boxed{B}"
    direct_answer: str = "It looks like A.\n\\boxed{A}"

    def __call__(self, request: RecordedRequest) -> Reply | str:
        return {
            "route": self.route,
            "judge": self.verdict,
            "reason_edit": self.edit_answer,
            "reason_direct": self.direct_answer,
        }[kind_of(request)]


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def mllm(script: Script) -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(script).start()
    yield server
    server.stop()


def requests_of(mllm: ScriptedMLLM, kind: str) -> list[RecordedRequest]:
    return [request for request in mllm.requests if kind_of(request) == kind]


@pytest.fixture(scope="module")
def editor_url(redis_server: RedisServer, tiny_editor_dir: Path) -> Iterator[str]:
    """The real editor (tiny checkpoint, in-process worker) the verifier calls over HTTP."""
    settings = EditorSettings(
        redis_url=redis_server.url,
        redis_prefix="verifier-editor",
        editor_model=str(tiny_editor_dir),
        editor_device="cpu",
        editor_steps=2,
    )
    server = UvicornThread(create_editor_app(settings)).start()
    yield server.url
    server.stop()


SLOW_STEPS = 12
SLOW_STEP_DELAY_S = (
    0.15  # per transformer forward (one per step): an edit takes about 2 s, long enough to watch
)


@pytest.fixture(scope="module")
def slow_editor_url(redis_server: RedisServer, tiny_editor_dir: Path) -> Iterator[str]:
    """The editor front with one worker on a copy of the tiny checkpoint that sleeps at every denoising step,
    so an edit's progress (queued, then step i of N) can be watched."""
    settings = editor_settings(
        redis_server.url, "slow-editor", tiny_editor_dir, editor_steps=SLOW_STEPS, editor_max_batch=1
    )
    server = start_slow_editor(settings, tiny_editor_dir, SLOW_STEP_DELAY_S)
    yield server.url
    server.stop()


VerifierFactory = Callable[..., str]


@pytest.fixture
def verifier(
    redis_server: RedisServer, key_prefix: str, editor_url: str, mllm: ScriptedMLLM
) -> Iterator[VerifierFactory]:
    """Starts verifier apps wired to the editor and the test MLLM; keyword arguments override settings."""
    launcher = AppLauncher(
        create_verifier_app,
        VerifierSettings,
        {
            **mllm_wiring(redis_server.url, key_prefix, mllm.base_url),
            "editor_url": editor_url,
            "max_image_pixels": 512 * 512,
        },
    )
    yield launcher.launch
    launcher.stop_all()
