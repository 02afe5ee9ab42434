"""The playground's progress bar in a real headless Chromium, fed by the verifier's streamed progress while a
real (tiny, slowed) editor denoises step by step: the bar must move during the edit, not jump at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from etchr.settings import VerifierSettings
from etchr_verifier.api import create_app as create_verifier_app
from tests.playground.test_browser import element, fill, open_page, text, visible, wait_for
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, mllm_wiring
from tests.verifier.conftest import SLOW_STEPS as STEPS

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def slow_verifier(
    redis_server: RedisServer, key_prefix: str, slow_editor_url: str, mllm: ScriptedMLLM
) -> Iterator[str]:
    launcher = AppLauncher(
        create_verifier_app,
        VerifierSettings,
        {**mllm_wiring(redis_server.url, key_prefix, mllm.base_url), "editor_url": slow_editor_url},
    )
    yield launcher.launch()
    launcher.stop_all()


# Samples the bar every 20 ms in the page itself: (value, max) while it shows a value, null while it does not.
SAMPLER = """
window.__bar = [];
const bar = document.getElementById('edit-bar');
window.__sampler = setInterval(() => {
  const shown = !document.getElementById('edit-progress').hidden;
  window.__bar.push(shown && bar.hasAttribute('value') ? [bar.value, bar.max] : null);
}, 20);
"""


def test_the_progress_bar_moves_step_by_step_during_the_edit(
    browser: WebDriver, slow_verifier: str, mllm: ScriptedMLLM, tmp_path: Path, artifacts: Path
) -> None:
    from tests.playground.conftest import png_bytes

    image = tmp_path / "maze.png"
    image.write_bytes(png_bytes(80, 64))
    mllm.reset()
    open_page(browser, slow_verifier)
    fill(browser, image, task="logic", mode="evr")
    browser.execute_script(SAMPLER)
    element(browser, "submit").click()

    wait_for(
        browser, lambda: "step" in text(browser, "edit-progress-text"), "the bar's first step", timeout=30
    )
    assert visible(browser, "edit-progress") and not visible(browser, "outcome"), (
        "the bar shows while it runs"
    )
    screenshot = artifacts / "playground-progress.png"
    assert browser.save_screenshot(str(screenshot))
    wait_for(browser, lambda: visible(browser, "outcome"), "the answer", timeout=60)
    samples = browser.execute_script("clearInterval(window.__sampler); return window.__bar;")

    shown = [(value, top) for value, top in (sample for sample in samples if sample is not None)]
    assert shown and {top for _, top in shown if top != 1} == {STEPS}, "the bar counts the editor's N steps"
    during = sorted({value for value, top in shown if top == STEPS and 0 < value < STEPS})
    assert len(during) >= 3, f"the bar moved through intermediate steps, saw {during}"
    values = [value for value, top in shown if top == STEPS]
    assert values == sorted(values), "it only moves forward"
    assert values[-1] == STEPS, "it is full once the edit is done"
    assert text(browser, "answer") == "B" and text(browser, "used-edit") == "yes"
