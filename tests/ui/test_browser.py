"""`stmod-run ui` in a real browser: headless Chromium (Debian's package) driven by Playwright.

From a shapes-world clip (two white discs on grass) to an edit on the ``tiny`` backbone: load the clip
by path, draw two regions by box on the keyframe, preview their masks, type prompts (a wrong local
prompt is flagged as typed and refused by Run with the CLI's line), run, and find side_by_side.mp4 on
the page; plus a clip path that does not exist. Screenshots of each stage go to the test's tmp folder
(``<tmp>/screens``). Skipped, with the reason, without Gradio, Playwright or Chromium.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from stmod.backbones.shapes.demo import DEMO_CASE
from stmod.backbones.shapes import world
from stmod.core.io.video import write_frames
from stmod.testing import fresh_plugin_manager

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                       reason="needs gradio: pip install -c constraints.txt -e '.[ui,ui-test]'"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="needs playwright: pip install -c constraints.txt -e '.[ui-test]'"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium browser: apt-get install chromium"),
]


class Page:
    """The stmod page in a Playwright tab, with the steps the test takes."""

    def __init__(self, tab, screens: Path) -> None:
        self.tab, self.screens = tab, screens

    def fill(self, elem_id: str, text: str) -> None:
        self.tab.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)

    def text(self, elem_id: str) -> str:
        return self.tab.locator(f"#{elem_id}").inner_text()

    def wait_text(self, elem_id: str, needle: str, timeout: float = 60_000) -> str:
        self.tab.wait_for_function("([id, s]) => (document.getElementById(id)?.innerText || '').includes(s)",
                                   arg=[elem_id, needle], timeout=timeout)
        return self.text(elem_id)

    def shot(self, name: str) -> None:
        self.tab.screenshot(path=str(self.screens / f"{name}.png"), full_page=True)

    def click_keyframe(self, x: float, y: float, expect: str) -> str:
        """Click source pixel (x, y) of the keyframe (shown zoomed, letterboxed in its element); wait for ``expect``."""
        img = self.tab.locator("#keyframe img").first
        # The keyframe is re-sent after a slot change, so the picture may be swapped at any moment:
        # measure it in the same step that checks it has loaded (naturalWidth is 0 before).
        img.wait_for(state="visible")
        measured = self.tab.wait_for_function(
            "() => { const e = document.querySelector('#keyframe img');"
            " if (!e || !e.complete || !e.naturalWidth) return null;"
            " const r = e.getBoundingClientRect(); return r.width > 0 ? [r.width, r.height, e.naturalWidth,"
            " e.naturalHeight] : null; }", timeout=60_000)
        width, height, natural_w, natural_h = measured.json_value()
        fit = min(width / natural_w, height / natural_h)
        zoom = natural_w / 128  # the page zooms the 128-pixel source by a whole number
        img.click(position={"x": (width - natural_w * fit) / 2 + (x + 0.5) * zoom * fit,
                            "y": (height - natural_h * fit) / 2 + (y + 0.5) * zoom * fit})
        return self.wait_text("click-note", expect)


@pytest.fixture
def served(tmp_path: Path):
    """The app on a free local port; yields ``(address, output folder)``."""
    from stmod.plugins.commands.ui import launch

    page, address = launch(fresh_plugin_manager().registry, tmp_path / "runs", cache=False)
    try:
        yield address, tmp_path / "runs"
    finally:
        page.close()


@pytest.fixture
def browser_page(served, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    screens = tmp_path / "screens"
    screens.mkdir()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 1800})
        tab.set_default_timeout(60_000)
        tab.goto(served[0])
        tab.wait_for_selector("#load")
        try:
            yield Page(tab, screens)
        finally:
            browser.close()


def _boxes(frames: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    clip, bodies, parts = world.render_clip(DEMO_CASE.scene, frames, (128, 128))
    boxes = []
    for k in range(2):
        mask = (bodies | parts)[0, k]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes.append((int(cols[0]) - 3, int(rows[0]) - 3, int(cols[-1]) + 3, int(rows[-1]) + 3))
    return clip, boxes


def test_from_clip_to_edit_in_a_browser(browser_page: Page, served, tmp_path: Path) -> None:
    """The whole flow of the page, the way a user takes it, with two bad inputs on the way."""
    started = time.perf_counter()
    page, runs = browser_page, served[1]
    clip, boxes = _boxes(4)
    write_frames(tmp_path / "clip", clip)

    page.fill("clip-path", str(tmp_path / "missing.mp4"))  # bad input: the CLI's one line
    page.tab.click("#load")
    assert "stmod-run: error:" in page.wait_text("clip-note", "error") and "missing.mp4" in page.text("clip-note")

    page.fill("clip-path", str(tmp_path / "clip"))
    page.fill("count", "4")
    page.fill("width", "64")
    page.fill("height", "64")
    page.tab.click("#load")
    page.wait_text("clip-note", "editing source frames 0, 1, 2, 3 at 64x64")
    page.shot("1-clip")

    for slot, (name, box) in enumerate(zip(("left_disc", "right_disc"), boxes)):
        page.tab.locator("#slot label").nth(slot).click()
        page.click_keyframe(box[0], box[1], f"region {slot + 1}, frame 0: corner at ({box[0]}, {box[1]})")
        page.click_keyframe(box[2], box[3], f"region {slot + 1}, frame 0: box {[box[0], box[1], box[2] + 1, box[3] + 1]}")
        page.fill(f"name-{slot + 1}", name)
    page.tab.click("#preview")
    page.wait_text("preview-note", "masks of every frame")
    assert page.tab.locator("#masks-sheet img").count() == 1
    page.shot("2-regions")

    page.tab.locator("#backbone input").first.click()
    page.tab.get_by_role("option", name="tiny").click()
    page.fill("steps", "2")
    page.fill("prompt", "a red disc and a blue disc on grass")
    page.fill("local-1", "red disc")
    page.fill("local-2", "blue cat")  # bad input: flagged as typed, by the CLI's check
    assert "the word 'cat' does not occur in it" in page.wait_text("flag-2", "⚠")
    assert page.wait_text("flag-1", "✓").startswith("✓")
    page.shot("3-prompts")
    page.tab.click("#run")
    assert page.wait_text("run-note", "stmod-run: error: local prompt 'blue cat' is not a token of")

    page.fill("local-2", "blue disc")
    page.wait_text("flag-2", "✓")
    page.tab.click("#run")
    note = page.wait_text("run-note", "wrote", timeout=120_000)
    page.tab.wait_for_selector("#result-video video")
    assert "side_by_side" in page.tab.locator("#result-video video").first.get_attribute("src")
    metrics = page.text("metrics")
    assert "left_disc" in metrics and "right_disc" in metrics and "modulated" in metrics
    page.shot("4-result")

    job = next(runs.glob("run-*/result")).parent / "job.yaml"  # the failed run left only its job file
    assert f"stmod-run edit {job}" in note and (job.parent / "result" / "side_by_side.mp4").exists()
    print(f"browser flow: {time.perf_counter() - started:.1f} s; screenshots in {page.screens}")
