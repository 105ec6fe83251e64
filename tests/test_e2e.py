"""End to end in a real headless Chromium: start a short run from the form, watch it train,
look at every page, and save a screenshot of each into docs/screenshots/ (the README's pictures).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cvae.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path: Path):
    """`streamlit run streamlit_app.py` on a free port, with its runs in tmp_path."""
    port = _free_port()
    env = {**os.environ, "CVAE_RUNS_DIR": str(tmp_path / "runs")}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        pytest.fail("streamlit did not start: " + (tmp_path / "server.log").read_text()[-2000:])
    yield url, tmp_path / "runs"
    # Stop any training run the test started, then the server.
    for status in (tmp_path / "runs").glob("*/status.json"):
        from cvae.jobs import stop
        from cvae.runs import RunDir

        stop(RunDir(status.parent))
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def _number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(400)


def _points(page, index: int) -> int:
    """Number of points in the first trace of the index-th plotly chart on the page."""
    return page.evaluate(
        "i => { const p = document.querySelectorAll('.js-plotly-plot')[i]; return p && p.data ? p.data[0].x.length : 0 }",
        index,
    )


def _shot(page, name: str, height: int) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_app_in_a_browser(server) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    url, runs = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("No runs yet").wait_for(timeout=30_000)
        _shot(page, "empty", 900)

        # A short run from the form: 4 epochs of 4,000 MNIST images in batches of 16, one thread.
        page.get_by_text("New run").click()
        _number(page, "Epochs", 4)
        page.get_by_text("More options").click()
        _number(page, "Batch size", 16)
        _number(page, "Train images (0 = all)", 4000)
        _number(page, "Test images (0 = all)", 500)
        _number(page, "CPU threads (0 = all)", 1)
        _number(page, "Refine q at the end: steps", 5)
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url("**run=*", timeout=20_000)
        run_id = page.url.split("run=")[1].split("&")[0]
        assert (runs / run_id / "status.json").is_file()

        # The live batch-loss chart appears and grows while the run trains.
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        first = _points(page, 0)
        deadline = time.time() + 60
        while _points(page, 0) <= first and time.time() < deadline:
            page.wait_for_timeout(500)
        assert _points(page, 0) > first, "the loss chart did not update"
        page.get_by_text("test −ELBO").first.wait_for(timeout=60_000)  # the first epoch's numbers are drawn
        page.screenshot(path=str(SHOTS / "train_live.png"))
        page.get_by_text("Finished: 4 epochs").wait_for(timeout=90_000)
        # Batch loss and per-epoch curves (stale copies from the last live refresh may linger a moment).
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length == 2", timeout=20_000)
        page.get_by_text("refined for each test image by 5 gradient steps").wait_for(timeout=20_000)
        _shot(page, "train", 1900)

        # Latent space: the animated scatter draws, with a frame per epoch; clicking a dot shows it.
        page.get_by_role("link", name="Latent space").click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
        assert f"run={run_id}" in page.url  # the run stays in the address across pages
        frames = "() => { const p = document.querySelector('.js-plotly-plot'); return p && p._transitionData ? p._transitionData._frames.length : 0 }"
        page.wait_for_function(f"({frames})() === 4", timeout=30_000)  # one frame per epoch
        page.set_viewport_size({"width": 1400, "height": 1500})
        page.wait_for_timeout(1500)
        xy = page.evaluate(
            """() => { const p = document.querySelector('.js-plotly-plot'); const L = p._fullLayout;
                       const r = p.getBoundingClientRect(); const d = p.calcdata[1][0];
                       return [r.left + L.xaxis._offset + L.xaxis.c2p(d.x), r.top + L.yaxis._offset + L.yaxis.c2p(d.y)]; }"""
        )
        page.mouse.click(xy[0], xy[1])
        page.get_by_text("its reconstruction").wait_for(timeout=30_000)
        page.locator('[data-testid="stImage"]').nth(1).wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "latent.png"))

        page.get_by_role("link", name="Reconstructions").click()
        page.get_by_text("Over the epochs").wait_for(timeout=30_000)
        _shot(page, "reconstructions", 1700)

        page.get_by_role("link", name="Generate").click()
        page.get_by_text("400 random codes").wait_for(timeout=60_000)
        _shot(page, "generate", 1250)

        # A reload, or a link straight to a page, finds the run again from the address.
        page.goto(f"{url}/?run={run_id}")
        page.get_by_text("Finished: 4 epochs").wait_for(timeout=30_000)
        page.goto(f"{url}/generate?run={run_id}")
        page.get_by_text("400 random codes").wait_for(timeout=30_000)
        assert page.get_by_text("CVAE lab").count() == 1  # the entry point ran: shared sidebar
        browser.close()


def test_a_clicked_latent_dot_stays_shown_when_an_epoch_ends(server) -> None:
    """While a run trains, each new epoch redraws the latent plot; the dot the user clicked stays shown."""
    from cvae import jobs

    url, runs = server
    # Many epochs, so the run is still training when the page has drawn (on a quiet machine 40 epochs
    # were over before the next redraw); the test stops it when done.
    opts = dict(arch="mlp", latent_dim=2, epochs=5000, batch_size=64, train_subset=2000, test_subset=300,
                latent_subset=300, threads=1)  # fmt: skip
    run = jobs.start(runs, opts, run_id="live-latent")
    try:
        _click_a_dot_and_watch_an_epoch_end(url, run)
    finally:
        jobs.stop(run)


def _click_a_dot_and_watch_an_epoch_end(url: str, run: RunDir) -> None:
    from playwright.sync_api import sync_playwright

    deadline = time.time() + 90
    while len(run.epochs_with("latent.npy")) < 1 and time.time() < deadline:
        time.sleep(0.5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                   "--disable-background-networking"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(f"{url}/latent?run={run.id}")
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        xy = page.evaluate(
            """() => { const p = document.querySelector('.js-plotly-plot'); const L = p._fullLayout;
                       const r = p.getBoundingClientRect(); const d = p.calcdata[1][0];
                       return [r.left + L.xaxis._offset + L.xaxis.c2p(d.x), r.top + L.yaxis._offset + L.yaxis.c2p(d.y)]; }"""
        )
        page.mouse.click(xy[0], xy[1])
        shown = page.get_by_text("its reconstruction")
        shown.wait_for(timeout=30_000)
        caption = page.get_by_text("Training: showing epochs").inner_text()
        page.wait_for_function(
            "c => { const e = [...document.querySelectorAll('p')].find(p => p.innerText.startsWith('Training: showing'));"
            " return e && e.innerText !== c; }",
            arg=caption, timeout=60_000,
        )  # fmt: skip
        page.wait_for_timeout(1500)
        assert shown.is_visible(), "the clicked image vanished when the plot was redrawn for a new epoch"
        browser.close()
