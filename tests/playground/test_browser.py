"""The playground in a real headless Chromium against the running stack (tiny editor, test MLLM, Redis).

What a newcomer does: open the page, choose an image, type a question, send it, and see the original and the
edited image side by side with the answer, the verdict and the timings.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.playground.conftest import png_bytes
from tests.support.mllm_server import ScriptedMLLM
from tests.verifier.conftest import Script, VerifierFactory, requests_of

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
TOKEN = "playground-secret"


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "maze.png"
    path.write_bytes(png_bytes(80, 64))
    return path


def open_page(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{url}/")
    wait_for(browser, lambda: text(browser, "service-status") != "Checking the verifier…", "readiness line")


def wait_for(browser: WebDriver, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: condition(), message=what)


def element(browser: WebDriver, id_: str) -> WebElement:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, id_)


def text(browser: WebDriver, id_: str) -> str:
    return element(browser, id_).text.strip()


def visible(browser: WebDriver, id_: str) -> bool:
    return element(browser, id_).is_displayed()


def choose(browser: WebDriver, id_: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(element(browser, id_)).select_by_value(value)


def image_width(browser: WebDriver, id_: str) -> int:
    """The decoded width of an <img> (0 until it has loaded a real image)."""
    return browser.execute_script(
        "const img = document.getElementById(arguments[0]); return img.complete ? img.naturalWidth : 0;", id_
    )


def submit_and_wait(browser: WebDriver) -> None:
    element(browser, "submit").click()

    def settled() -> bool:
        shown = visible(browser, "outcome") or visible(browser, "error")
        return shown and text(browser, "submit") == "Ask"

    wait_for(browser, settled, "an answer or an error")


def save_full_page(browser: WebDriver, path: Path) -> None:
    """A screenshot of the whole page, below the fold included (Chromium's DevTools protocol)."""
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]  # type: ignore[attr-defined]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def fill(browser: WebDriver, image: Path, *, task: str, mode: str) -> None:
    element(browser, "image-input").send_keys(str(image))
    wait_for(browser, lambda: image_width(browser, "original-image") == 80, "the original image preview")
    element(browser, "question").clear()
    element(browser, "question").send_keys(QUESTION)
    choose(browser, "task", task)
    choose(browser, "mode", mode)


def test_a_question_shows_both_images_the_answer_verdict_and_timings(
    browser: WebDriver, verifier: VerifierFactory, mllm: ScriptedMLLM, image_file: Path, artifacts: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    mllm.reset()
    open_page(browser, verifier())
    assert text(browser, "service-status") == "Verifier ready."
    assert not visible(browser, "token-row"), "no token is asked for when auth is off"
    fill(browser, image_file, task="logic", mode="evr")
    # keyboard: Ctrl+Enter in the question sends it
    element(browser, "question").send_keys(Keys.CONTROL, Keys.ENTER)
    wait_for(browser, lambda: visible(browser, "outcome"), "the answer")

    assert not visible(browser, "error")
    assert text(browser, "answer") == "B"
    assert text(browser, "baseline-answer") == "A"
    assert text(browser, "task-used") == "logic"
    assert text(browser, "verdict") == "reliable"
    assert text(browser, "verdict-raw") == '"1"'
    assert text(browser, "used-edit") == "yes"
    assert text(browser, "mllm-calls") == "3"
    assert len(text(browser, "request-id")) >= 16
    assert text(browser, "edited-caption") == "Edited (used)"
    # both images are real decoded PNGs at the input size, side by side
    assert image_width(browser, "original-image") == 80
    assert image_width(browser, "edited-image") == 80
    original = element(browser, "original-image").rect
    edited = element(browser, "edited-image").rect
    assert edited["x"] > original["x"] + original["width"] - 1 and abs(edited["y"] - original["y"]) < 2
    stages = browser.execute_script(
        "return [...document.querySelectorAll('#timings tr')].map(r => r.dataset.stage)"
    )
    assert {"edit", "verify", "reason_edit", "total"} <= set(stages)
    # the request really went through the stack: the judge and the reasoning call saw the edit
    assert len(requests_of(mllm, "judge")) == 1 and requests_of(mllm, "reason_edit")[0].image_count == 2

    screenshot = artifacts / "playground.png"  # what a laptop screen shows
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    save_full_page(browser, artifacts / "playground-full.png")


def test_auto_routing_and_a_rejected_edit_with_the_sample_image(
    browser: WebDriver, verifier: VerifierFactory, script: Script, artifacts: Path
) -> None:
    script.verdict = "0"
    open_page(browser, verifier())
    element(browser, "sample-button").click()
    wait_for(browser, lambda: image_width(browser, "original-image") > 0, "the sample image")
    assert element(browser, "question").get_attribute("value").startswith("Which exit")
    choose(browser, "task", "auto")
    submit_and_wait(browser)

    assert not visible(browser, "error")
    assert text(browser, "task-used") == "logic (chosen by automatic routing)"
    assert text(browser, "verdict") == "not reliable" and text(browser, "verdict-raw") == '"0"'
    assert text(browser, "answer") == "A", "the fallback answers from the original"
    assert text(browser, "used-edit").startswith("no (unreliable")
    assert not visible(browser, "baseline-row")
    assert text(browser, "edited-caption") == "Edited (not used)"
    assert image_width(browser, "edited-image") == image_width(browser, "original-image")
    browser.save_screenshot(str(artifacts / "playground-fallback.png"))


def test_with_api_keys_the_page_asks_for_a_token_and_shows_401s(
    browser: WebDriver, verifier: VerifierFactory, mllm: ScriptedMLLM, image_file: Path, artifacts: Path
) -> None:
    open_page(browser, verifier(api_keys=[TOKEN]))
    assert visible(browser, "token-row"), "the page asks for a token when the verifier requires one"
    fill(browser, image_file, task="logic", mode="direct")

    submit_and_wait(browser)
    assert visible(browser, "error") and not visible(browser, "outcome")
    assert text(browser, "error-title") == "401 unauthorized"
    assert text(browser, "error-message") == "missing bearer token"

    element(browser, "token").send_keys("wrong-token")
    submit_and_wait(browser)
    assert text(browser, "error-title") == "401 unauthorized"
    assert text(browser, "error-message") == "invalid bearer token"
    assert browser.switch_to.active_element.get_attribute("id") == "token", "focus goes to the token field"
    browser.save_screenshot(str(artifacts / "playground-401.png"))

    mllm.reset()
    element(browser, "token").clear()
    element(browser, "token").send_keys(TOKEN)
    submit_and_wait(browser)
    assert not visible(browser, "error")
    assert text(browser, "answer") == "A" and text(browser, "verdict") == "not verified"
    assert text(browser, "edited-empty") == "no edit for this question"
    assert len(mllm.requests) == 1, "only the accepted request reached the MLLM"


def test_no_mllm_configured_shows_the_503_and_what_to_set(
    browser: WebDriver, verifier: VerifierFactory, image_file: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, verifier(mllm_base_url=[]))
    assert text(browser, "service-status").startswith("Verifier not ready: no MLLM configured")
    # keyboard: Tab walks the form in reading order, the file picker included
    order = []
    for _ in range(6):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        order.append(browser.switch_to.active_element.get_attribute("id"))
    assert order == ["image-input", "sample-button", "question", "task", "mode", "submit"]
    fill(browser, image_file, task="logic", mode="evr")
    submit_and_wait(browser)
    assert visible(browser, "error") and not visible(browser, "outcome")
    assert text(browser, "error-title") == "503 mllm_not_configured"
    assert "ETCHR_MLLM_BASE_URL" in text(browser, "error-message")
    assert element(browser, "submit").is_enabled(), "the form is usable again after an error"
