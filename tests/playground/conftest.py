"""Playground fixtures: the real stack (tiny editor, verifier, reward, Redis, test MLLM) and Chromium.

The stack is built once per test process; the verifier is launched per test because its settings (auth, no
MLLM) vary. The browser is Debian's chromium driven through its own chromedriver: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from etchr.settings import EditorSettings, RewardSettings, VerifierSettings
from etchr_editor.service import create_app as create_editor_app
from etchr_reward.api import create_app as create_reward_app
from etchr_verifier.api import create_app as create_verifier_app
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, UvicornThread, mllm_wiring
from tests.verifier.conftest import Script, VerifierFactory
from tests.verifier.conftest import (
    slow_editor_url as slow_editor_url,  # the slowed editor, for the progress bar
)

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "test-screenshots"
# Without the background-networking flags Chromium's own update/sync traffic fails in a closed network and
# it refuses connections; --disable-quic keeps it on plain HTTP to the loopback servers.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1366,900",  # a laptop screen
)


def png_bytes(width: int, height: int) -> bytes:
    """A PNG with some structure (stripes and a red square), so both the VAE and a person see something."""
    image = Image.new("RGB", (width, height), (235, 235, 225))
    for x in range(0, width, 8):
        for y in range(height):
            image.putpixel((x, y), (40, 40, 60))
    for x in range(width // 3, width // 2):
        for y in range(height // 3, height // 2):
            image.putpixel((x, y), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def stack_script() -> Script:
    return Script()


@pytest.fixture
def script(stack_script: Script) -> Iterator[Script]:
    """The test MLLM's per-stage replies for this test; restored to the defaults afterwards."""
    yield stack_script
    for field in dataclasses.fields(Script):
        setattr(stack_script, field.name, field.default)


@pytest.fixture(scope="session")
def mllm(stack_script: Script) -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(stack_script).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def editor_url(redis_server: RedisServer, tiny_editor_dir: Path) -> Iterator[str]:
    """The real editor front with its in-process worker on the tiny checkpoint."""
    settings = EditorSettings(
        redis_url=redis_server.url,
        redis_prefix="playground-editor",
        editor_model=str(tiny_editor_dir),
        editor_device="cpu",
        editor_steps=2,
    )
    server = UvicornThread(create_editor_app(settings)).start()
    yield server.url
    server.stop()


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
        },
    )
    yield launcher.launch
    launcher.stop_all()


@pytest.fixture(scope="session")
def reward_url(redis_server: RedisServer, mllm: ScriptedMLLM) -> Iterator[str]:
    """The real reward service (in-process query workers) on the same test MLLM."""
    launcher = AppLauncher(
        create_reward_app,
        RewardSettings,
        {
            **mllm_wiring(redis_server.url, "playground-reward", mllm.base_url),
            "reward_deadline_s": 30,
        },
    )
    yield launcher.launch()
    launcher.stop_all()


def _chromium_missing() -> str | None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        installs = "scripts/bootstrap.sh installs chromium + chromium-driver"
        return f"{', '.join(missing)} not installed ({installs})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless Debian Chromium. Missing in CI is a failure (the browser test must run there), else a skip."""
    problem = _chromium_missing()
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="etchr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium then never runs its driver manager (which would try to download).
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (gitignored /artifacts/); CI keeps the folder as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
