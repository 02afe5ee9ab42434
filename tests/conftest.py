from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway Redis per test process (per xdist worker)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A unique Redis key prefix so tests sharing one server never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tiny_editor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-init Flux2Klein checkpoint (SPEC §7) on disk, built once per test process.

    torch/diffusers are imported inside, so test files that never touch the model collect fast.
    """
    from etchr_editor.tiny import save_tiny_editor

    return save_tiny_editor(tmp_path_factory.mktemp("tiny-editor"))
