"""The class wall and the Twin runs page in a real headless Chromium at 1280x720 (a classroom projector): twelve
cards whole on the first screen with their text at 16 px or more; a run and its twin at one epoch, the slider and
both reconstructions on the first screen; nothing fetched from outside the machine."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 720

pytestmark = pytest.mark.e2e


def test_the_wall_and_twins_on_a_projector(tmp_path: Path, tiny_run: Path, app_server) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    root = tmp_path / "runs"
    for k in range(14):
        shutil.copytree(tiny_run, root / f"run{k:02d}")
    config = json.loads((root / "run01" / "config.json").read_text())
    config["model"]["kl_weight"] = 4.0  # run01 is run00's twin: β = 4
    (root / "run01" / "config.json").write_text(json.dumps(config))
    record = {"parent": "run00", "setting": "kl_weight", "value": 4.0, "parent_value": 1.0, "created": 0}
    (root / "run01" / "twin.json").write_text(json.dumps(record))
    outside: list[str] = []
    with app_server(tmp_path) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})

        def note(request) -> None:  # every request stays on this machine: a classroom may be offline
            host = urllib.parse.urlparse(request.url).hostname
            if request.url.split(":", 1)[0] in ("http", "https", "ws", "wss") and host not in (
                "127.0.0.1",
                "localhost",
            ):
                outside.append(request.url)

        page.on("request", note)
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
        page.goto(f"{url}/twins?run=run01")
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
