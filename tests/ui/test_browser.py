"""`stmod-run ui` in a real browser: headless Chromium (Debian's package) driven by Playwright.

From a shapes-world clip (two white discs on grass) to an edit on the ``tiny`` backbone: load the clip
by path, draw two regions by box on the keyframe, preview their masks, type prompts (a wrong local
prompt is flagged as typed and refused by Run with the CLI's line), run, and find side_by_side.mp4 on
the page; plus a clip path that does not exist. Then what must not go stale: a new run clears the last
run's error, Cancel keeps the last result, a second upload with the same file name leaves a saved run's
clip alone; and what a first visit needs: the crop drawn on the keyframe before any preview, the
examples loading with their prompts and boxes. Screenshots of each stage go to the test's tmp folder
(``<tmp>/screens``). Skipped, with the reason, without Gradio, Playwright or Chromium.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from stmod.backbones.shapes.demo import DEMO_CASE
from stmod.backbones.shapes import world
from stmod.core.io.video import write_frames, write_mp4
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

    def value(self, elem_id: str) -> str:
        return self.tab.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()

    def picture(self, elem_id: str) -> np.ndarray:
        """The pixels of the picture shown in ``elem_id``, as the server sent them (not a screenshot)."""
        from PIL import Image

        src = self.tab.locator(f"#{elem_id} img").first.get_attribute("src")
        if src.startswith("data:"):
            data = base64.b64decode(src.partition(",")[2])
        else:
            with urllib.request.urlopen(urllib.parse.urljoin(self.tab.url, src)) as reply:
                data = reply.read()
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

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
        fit = min(1.0, width / natural_w, height / natural_h)  # Gradio shrinks a picture to fit, never enlarges it
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

    assert sorted(p.name for p in runs.glob("run-*")) == ["run-001"]  # the refused run left nothing
    job = runs / "run-001" / "job.yaml"
    assert f"stmod-run edit {job}" in note and (job.parent / "result" / "side_by_side.mp4").exists()
    print(f"browser flow: {time.perf_counter() - started:.1f} s; screenshots in {page.screens}")


def _clip_with_two_regions(page: Page, tmp_path: Path, *, local_2: str = "blue disc") -> None:
    """Load the demo clip by path (4 frames at 64x64), box both discs, type the prompts, pick tiny, 2 steps."""
    clip, boxes = _boxes(4)
    write_frames(tmp_path / "clip", clip)
    page.fill("clip-path", str(tmp_path / "clip"))
    for elem_id, value in (("count", "4"), ("width", "64"), ("height", "64")):
        page.fill(elem_id, value)
    page.tab.click("#load")
    page.wait_text("clip-note", "at 64x64")
    _draw_and_type(page, boxes, local_2)


def _draw_and_type(page: Page, boxes: list[tuple[int, int, int, int]], local_2: str) -> None:
    for slot, (name, box) in enumerate(zip(("left_disc", "right_disc"), boxes)):
        page.tab.locator("#slot label").nth(slot).click()
        page.click_keyframe(box[0], box[1], f"region {slot + 1}, frame 0: corner")
        page.click_keyframe(box[2], box[3], f"region {slot + 1}, frame 0: box")
        page.fill(f"name-{slot + 1}", name)
    page.tab.locator("#backbone input").first.click()
    page.tab.get_by_role("option", name="tiny").click()
    page.fill("steps", "2")
    page.fill("prompt", "a red disc and a blue disc on grass")
    page.fill("local-1", "red disc")
    page.fill("local-2", local_2)


def test_a_new_run_clears_the_last_error(browser_page: Page, tmp_path: Path) -> None:
    """The refused run's error is gone as soon as the next run starts (not greyed under its progress)."""
    page = browser_page
    _clip_with_two_regions(page, tmp_path, local_2="blue cat")
    page.tab.click("#run")
    page.wait_text("run-note", "stmod-run: error: local prompt 'blue cat'")
    page.fill("local-2", "blue disc")
    page.tab.click("#run")
    # at once, while the run is still checking the job: the note is this run's, the error gone
    assert "error" not in page.wait_text("run-note", "starting the run", timeout=10_000)
    assert "wrote" in page.wait_text("run-note", "wrote", timeout=120_000)


def test_cancel_keeps_the_last_result(browser_page: Page, served, tmp_path: Path) -> None:
    """A cancelled run leaves the last finished result on the page and says truthfully what it wrote: nothing."""
    page, runs = browser_page, served[1]
    _clip_with_two_regions(page, tmp_path)
    page.tab.click("#run")
    page.wait_text("run-note", "wrote", timeout=120_000)
    shown = page.tab.locator("#result-video video").first.get_attribute("src")
    page.fill("steps", "200")  # long enough to be cancelled mid-way
    page.tab.click("#run")
    deadline = time.monotonic() + 60
    while not (runs / "run-002").exists():  # the run has written its job: it is under way
        assert time.monotonic() < deadline, "the second run did not start"
        time.sleep(0.1)
    page.tab.click("#cancel")
    note = page.wait_text("run-note", "cancelled during", timeout=120_000)
    assert f"nothing was written (run-002 removed); the result shown is still {runs / 'run-001' / 'result'}'s" in note
    assert page.tab.locator("#result-video video").first.get_attribute("src") == shown
    assert sorted(p.name for p in runs.glob("run-*")) == ["run-001"]


def test_an_upload_with_the_same_name_does_not_alter_a_saved_run(browser_page: Page, served, tmp_path: Path) -> None:
    """An upload loads at once (no button) with a video of its frames; a second file called the same is
    stored beside the first, so the saved run's job still points to the bytes it was run on."""
    page, runs = browser_page, served[1]
    clip, boxes = _boxes(4)
    first = write_mp4(tmp_path / "first" / "mine.mp4", clip, fps=8)
    for elem_id, value in (("count", "4"), ("width", "64"), ("height", "64")):
        page.fill(elem_id, value)
    page.tab.locator("#clip-upload input[type=file]").set_input_files(str(first))
    page.wait_text("clip-note", "mine.mp4: 128x128, 4 frames")
    page.tab.wait_for_selector("#clip-video video")
    _draw_and_type(page, boxes, "blue disc")
    page.tab.click("#run")
    page.wait_text("run-note", "wrote", timeout=120_000)
    saved = Path(yaml.safe_load((runs / "run-001" / "job.yaml").read_text())["video"]["path"])
    before = saved.read_bytes()
    second = write_mp4(tmp_path / "second" / "mine.mp4", np.concatenate([255 - clip, clip]), fps=8)
    page.fill("count", "8")
    page.tab.locator("#clip-upload button[aria-label='Clear']").first.click()
    page.tab.locator("#clip-upload input[type=file]").set_input_files(str(second))
    page.wait_text("clip-note", "mine.mp4: 128x128, 8 frames")
    assert saved.read_bytes() == before
    assert len(list((runs / "clips").glob("*/mine.mp4"))) == 2


def test_the_crop_is_drawn_on_the_keyframe_before_any_preview(browser_page: Page, tmp_path: Path) -> None:
    """A 16:9 clip edited square: the keyframe dims the sides the edit drops as soon as the clip loads; a
    new edit size (Enter) redraws it."""
    page = browser_page
    write_frames(tmp_path / "wide", np.full((2, 72, 128, 3), 200, np.uint8))
    page.fill("clip-path", str(tmp_path / "wide"))
    for elem_id, value in (("count", "2"), ("width", "64"), ("height", "64")):
        page.fill(elem_id, value)
    page.tab.click("#load")
    page.wait_text("clip-note", "at 64x64")
    page.tab.wait_for_selector("#keyframe img")
    shown = page.picture("keyframe")  # zoomed 4x: 512x288
    assert shown.shape == (288, 512, 3)
    middle = shown[144]
    assert (middle[:100] < 100).all() and (middle[-100:] < 100).all() and (middle[200:312] == 200).all()
    assert page.tab.locator("#masks-sheet img").count() == 0  # no preview yet
    page.fill("width", "128")
    page.tab.locator("#width input").first.press("Enter")
    page.wait_text("click-note", "editing at 128x64")
    deadline = time.monotonic() + 30
    while (page.picture("keyframe")[144, :100] < 100).all():  # the sides are kept now
        assert time.monotonic() < deadline, "the keyframe was not redrawn for the new size"
        time.sleep(0.2)


def test_the_examples_load_ready_to_run(browser_page: Page) -> None:
    """Each example fills the clip, its video, the prompts, the region names and boxes: the first edit is
    a click on Run (the prompts pass the check of the page's default backbone, shapes)."""
    page = browser_page
    page.tab.click("#example-1")
    assert "example: the demo: two white discs on grass" in page.wait_text("clip-note", "example:")
    page.tab.wait_for_selector("#clip-video video")
    assert page.value("prompt") == DEMO_CASE.prompt and page.value("name-1") == "left_disc"
    assert page.value("local-2") == "blue disc"
    assert page.wait_text("flag-1", "✓").startswith("✓") and page.wait_text("flag-2", "✓").startswith("✓")
    assert page.picture("keyframe").shape == (512, 512, 3)
    page.shot("examples")
    page.tab.click("#example-2")
    assert "Big Buck Bunny" in page.wait_text("clip-note", "Big Buck Bunny")
    assert page.value("width") == "256" and page.value("name-1") == "bunny"
    page.tab.wait_for_function("() => (document.getElementById('flag-1')?.innerText || '').includes('✓')")
