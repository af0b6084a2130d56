"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against a
real `mgvr serve` on a real index of real videos. Screenshots go to $MGVR_TEST_ARTIFACTS
(default: test-artifacts/ in the repository).

Without Chromium these tests fail, saying how to install it: they are never skipped.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import start_server

ARTIFACTS = Path(os.environ.get("MGVR_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is not installed: the browser tests need it. Install it with "
                    "`apt-get install chromium chromium-driver` (./setup.sh does)")
    return found


@pytest.fixture(scope="module")
def served(indexed_videos):
    _, index = indexed_videos
    process, info = start_server(index, "--workers", "2")
    yield f"http://127.0.0.1:{info.port}"
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860})
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    page.close()
    assert not errors, errors  # no script error, nothing the page's own policy refused


def _thumbnails_loaded(page, selector: str) -> list[int]:
    page.wait_for_function(f"""() => {{
        const images = [...document.querySelectorAll({selector!r})];
        return images.length > 0 && images.every(i => i.complete);
    }}""")
    return page.eval_on_selector_all(selector, "images => images.map(i => i.naturalWidth)")


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all(".card", """cards => cards.map(c => ({
        path: c.dataset.path, moment: Number(c.dataset.moment), clip: c.dataset.clip,
        focused: c === document.activeElement}))""")


def _searched(page, action, loads_page: bool = False) -> None:
    """Do what starts a search, and wait until the page shows its answer (a page loaded
    anew counts its searches from 0)."""
    before = 0 if loads_page else page.evaluate("Number(document.body.dataset.answered || 0)")
    action()
    page.wait_for_function("n => Number(document.body.dataset.answered || 0) > n", arg=before)


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_search_play_and_keyboard(page, served, indexed_videos):
    videos, _ = indexed_videos
    page.goto(served)
    page.fill("#q", "a rabbit in a meadow")
    _searched(page, lambda: page.press("#q", "Enter"))
    assert parse_qs(urlsplit(page.url).query)["q"] == ["a rabbit in a meadow"]
    widths = _thumbnails_loaded(page, ".card .thumb img")
    assert widths and min(widths) > 0  # every card shows its best frame
    assert page.locator(".card .strip .frame").count() > 0  # and its frame strip
    _shot(page, "search.png")

    cards = _cards(page)
    playable = next(i for i, c in enumerate(cards) if c["path"].endswith("bigbuckbunny.mp4"))
    page.locator(".card").nth(playable).click()
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return v.readyState >= 2 && !v.seeking && v.currentTime > 0; }")
    time_now = page.evaluate("document.getElementById('video').currentTime")
    assert abs(time_now - cards[playable]["moment"]) < 0.5
    page.wait_for_function("() => !document.getElementById('video').paused")  # it plays
    assert page.is_visible("#timeline-clip")
    _shot(page, "player.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("#player", state="hidden")
    assert page.evaluate("document.getElementById('video').paused")

    # Keyboard: from the search box down to the first card, right to the next, Enter plays.
    page.focus("#q")
    page.keyboard.press("ArrowDown")
    assert _cards(page)[0]["focused"]
    page.keyboard.press("ArrowRight")
    assert _cards(page)[1]["focused"]
    page.keyboard.press("Enter")
    page.wait_for_selector("#player", state="visible")
    page.keyboard.press("Escape")
    page.wait_for_selector("#player", state="hidden")

    # Reloading the URL gives the same search.
    _searched(page, page.reload, loads_page=True)
    assert page.locator(".card").count() > 0 and page.input_value("#q") == "a rabbit in a meadow"


def test_a_file_the_browser_cannot_play_says_so_and_shows_its_frames(page, served):
    _searched(page, lambda: page.goto(f"{served}/?q=colour+bars&name=c_bars.avi"),
              loads_page=True)
    assert {c["path"].rsplit("/", 1)[1] for c in _cards(page)} == {"c_bars.avi"}
    page.locator(".card").first.click()
    page.wait_for_selector("#player-message", state="visible")
    assert "cannot play AVI files" in page.inner_text("#player-message")
    assert not page.is_visible("#video")
    widths = _thumbnails_loaded(page, "#player-frames img")
    assert len(widths) > 1 and min(widths) > 0
    _shot(page, "unplayable.png")


def test_image_query_more_like_this_filter_group_and_status(page, served, indexed_videos,
                                                            tmp_path):
    videos, index = indexed_videos
    picture = tmp_path / "query.png"
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "1", "-i",
                    str(videos / "samples" / "bigbuckbunny.mp4"), "-frames:v", "1",
                    str(picture)], check=True, timeout=60)
    page.goto(served)
    _searched(page, lambda: page.set_input_files("#image-input", str(picture)))
    assert "query.png" in page.inner_text("#query-banner")
    assert _cards(page)[0]["path"].endswith("bigbuckbunny.mp4")

    _searched(page, page.locator(".card").first.locator("text=More like this").click)
    assert "like=" in page.url and page.locator(".card").count() > 0
    assert "More like this frame" in page.inner_text("#query-banner")

    samples = str(videos / "samples")
    page.fill("#q", "a moving picture")
    _searched(page, lambda: page.press("#q", "Enter"))
    page.fill("#under", samples)
    _searched(page, lambda: page.press("#under", "Enter"))
    assert parse_qs(urlsplit(page.url).query)["under"] == [samples]
    folders = {c["path"].rsplit("/", 1)[0] for c in _cards(page)}
    assert folders == {samples}

    page.fill("#under", "")
    _searched(page, lambda: page.check("#group"))
    assert "group=1" in page.url and "under=" not in page.url
    paths = [c["path"] for c in _cards(page)]
    assert len(paths) == len(set(paths))  # one card per video
    assert page.locator(".video-card .other").count() >= 2  # g_long.mkv's other clips

    page.click("#status-link")
    page.wait_for_selector("#status-view dl")
    text = page.inner_text("#status-view")
    assert re.search(r"Files indexed\s+14", text) and "Failed files (1)" in text
    assert "broken.mp4" in text and "corrupt" in text and "Recent runs" in text
    _shot(page, "status.png")
