"""Time the browser app as a first-time user meets it: app start, mask preview, first run, cached run.

Not a test. Starts ``stmod-run ui`` as a user does (a fresh process, an empty inversion cache and
output folder under ``--work``), then drives the page in headless Chromium (Playwright) through the
*shapes demo* example: load it, *Preview masks on every frame*, *Run the edit*, and *Run* again (the
inversion now comes from the cache). Each time is wall clock, measured from the click (or the process
start) to what the user waits for on the page. A screenshot of each stage goes to ``--shots``.

    python bench/ui.py --shots docs/ui-shots

Needs the extras ``ui`` and ``ui-test`` and Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _serve(work: Path) -> tuple[subprocess.Popen, str, float]:
    """``stmod-run ui`` on a free port; returns the process, its address and the seconds until the page
    answered."""
    env = {**os.environ, "STMOD_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    began = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "stmod", "ui", "--port", "0", "--out", str(work / "runs")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            address = found.group(0)
            break
    else:
        raise SystemExit(f"ui: stmod-run ui ended without an address (exit {server.wait()})")
    while True:
        try:
            with urllib.request.urlopen(address, timeout=5) as reply:
                if reply.status == 200:
                    return server, address, time.perf_counter() - began
        except OSError:
            time.sleep(0.05)


def _wait_text(tab, elem_id: str, needle: str, timeout_s: float = 600) -> str:
    tab.wait_for_function("([id, s]) => (document.getElementById(id)?.innerText || '').includes(s)",
                          arg=[elem_id, needle], timeout=timeout_s * 1000)
    return tab.locator(f"#{elem_id}").inner_text()


def _run(tab) -> float:
    """Click Run; seconds until the run's note says it wrote the result."""
    began = time.perf_counter()
    tab.click("#run")
    _wait_text(tab, "run-note", "starting the run", 60)
    _wait_text(tab, "run-note", "wrote")
    return time.perf_counter() - began


def measure(work: Path, shots: Path | None, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    server, address, start = _serve(work)
    times = {"app start (process to page served)": start}
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=ARGS)
            tab = browser.new_page(viewport={"width": 1280, "height": 1800})
            began = time.perf_counter()
            tab.goto(address)
            tab.wait_for_selector("#example-1")
            times["page load (to the examples shown)"] = time.perf_counter() - began

            def shot(name: str) -> None:
                if shots is not None:
                    tab.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            shot("1-start")
            began = time.perf_counter()
            tab.click("#example-1")
            _wait_text(tab, "flag-2", "✓", 120)
            tab.wait_for_selector("#clip-video video")
            times["example loaded (clip, video, prompts checked)"] = time.perf_counter() - began
            shot("2-clip")
            began = time.perf_counter()
            tab.click("#preview")
            _wait_text(tab, "preview-note", "masks of every frame")
            times["preview masks"] = time.perf_counter() - began
            shot("3-regions")
            times["first run (empty inversion cache)"] = _run(tab)
            shot("4-result")
            times["second run (inversion from the cache)"] = _run(tab)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--shots", type=Path, default=None, help="where the screenshots go (default: none)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("ui: needs a Chromium browser: apt-get install chromium")
    if args.shots is not None:
        args.shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stmod-bench-ui-") as tmp:
        times = measure(args.work or Path(tmp), args.shots, chromium)
    print("| stage | seconds |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(times, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
