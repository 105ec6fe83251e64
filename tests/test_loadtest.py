"""The load test's light client (scripts/loadtest.py's LightPage) speaks the real app's websocket protocol: it
finds and presses Quick demo, follows the page to the new run, keeps the live part refreshing at the server's
pace, and fetches the pictures, as a browser does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cvae.runs import is_run_id
from scripts.loadtest import QUICK_DEMO, LightPage


def test_a_light_client_presses_quick_demo_and_receives_its_own_runs_first_pictures(tmp_path: Path,
                                                                                     app_server) -> None:  # fmt: skip
    async def student(url: str) -> tuple[str, int, int, float]:
        page = LightPage(url)
        try:
            await page.open()
            await asyncio.wait_for(page.wait_button(QUICK_DEMO), 120)
            assert not page.shown()  # an empty server: no run on the page yet
            t0 = time.perf_counter()
            await page.click()
            while not (page.shown() and await page.shows("Their reconstructions", "Where the encoder puts")):
                assert time.perf_counter() - t0 < 240, sorted(set(page.texts.values()))[:20]
                await asyncio.sleep(0.2)
            return page.shown(), page.pictures, len(page.timers), time.perf_counter() - t0
        finally:
            await page.close()

    with app_server(tmp_path) as url:
        run, pictures, timers, _ = asyncio.run(student(url))
    assert is_run_id(run) and (tmp_path / "runs" / run / "status.json").is_file()  # the click started a real run
    assert pictures >= 1  # the reconstructions came as a picture, fetched from the server
    assert timers >= 1  # the live part refreshes itself, at the interval the server asked for
