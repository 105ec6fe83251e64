"""The class wall and the Twin runs page in a real headless Chromium at 1280x720 (a classroom projector): twelve
cards whole on the first screen with their text at 16 px or more; a run's twin forked on its Train page, trained,
and the two at one epoch, the slider and both reconstructions on the first screen; nothing fetched from outside."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from cvae import twins

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 720

pytestmark = pytest.mark.e2e


def test_the_wall_and_twins_on_a_projector(tmp_path: Path, tiny_run: Path, app_server, watch_outside,
                                          even_priority) -> None:  # fmt: skip
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    root = tmp_path / "runs"
    for k in range(14):
        shutil.copytree(tiny_run, root / f"run{k:02d}")
    with app_server(tmp_path) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})

        outside = watch_outside(page)
        page.goto(f"{url}/wall")
        page.locator(".wall .card").nth(13).wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        boxes = [page.locator(".wall .card").nth(k).bounding_box() for k in range(14)]
        whole = [
            b for b in boxes if b and b["y"] >= 0 and b["y"] + b["height"] <= HEIGHT and b["x"] + b["width"] <= WIDTH
        ]
        assert len(whole) >= 12, boxes  # twelve cards, whole, without scrolling
        sizes = page.evaluate("() => [...document.querySelectorAll('.wall .card *')].filter(e => e.children.length"
                              " === 0 && e.textContent.trim()).map(e => parseFloat(getComputedStyle(e).fontSize))")  # fmt: skip
        assert sizes and min(sizes) >= 16, sizes
        assert page.locator(".wall .card img").count() == 28  # a curve and a crop of reconstructions each
        # run00's twin with β = 4, forked on its Train page, trained by the app's queue, then beside it at one epoch
        page.goto(f"{url}/?run=run00")
        page.get_by_text("Fork as a twin").click()
        box = page.get_by_label("KL weight β", exact=True)
        box.fill("4")
        box.press("Enter")
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Start the twin").click()
        deadline = time.time() + 240
        while not (done := [t for t in twins.twins_of(root, "run00") if t.read_status().get("state") == "finished"]):
            assert time.time() < deadline, "the twin did not finish"
            time.sleep(1)
        assert twins.read_twin(done[0])["value"] == 4.0
        page.goto(f"{url}/twins?run=run00")
        page.get_by_text("Epoch (both runs)").wait_for(timeout=60_000)
        page.locator("[data-testid=stImage] img").nth(1).wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        for what in ("[data-testid=stSlider]", "[data-testid=stImage] >> nth=0", "[data-testid=stImage] >> nth=1"):
            box = page.locator(what).bounding_box()
            assert box and box["y"] + box["height"] <= HEIGHT and box["x"] + box["width"] <= WIDTH, (what, box)
        assert page.get_by_text("KL weight β=4").first.is_visible()
        assert page.locator("[data-testid=stException]").count() == 0
        browser.close()
    assert not outside, outside
