"""End to end in a real headless Chromium at 1280x720 (a classroom projector): start a short run from the form,
watch it train, look at every page with its main element on the first screen, drag a latent slider, compare three
runs; no request may leave the machine. Screenshots go to $CVAE_SHOTS_DIR (else a temporary folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cvae.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.e2e


@pytest.fixture()
def server(tmp_path: Path, app_server, even_priority):
    """`streamlit run streamlit_app.py` on a free port, with its runs in tmp_path; the tests wait for their
    runs' epochs to end, so the runs train at even priority."""
    with app_server(tmp_path) as url:
        yield url, tmp_path / "runs"


def _number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(400)


def _points(page, index: int) -> int:
    """Number of points in the first trace of the index-th plotly chart on the page (as plotly drew them: the
    figure may send its arrays as base64 typed arrays, which only the drawn data holds decoded)."""
    return page.evaluate(
        "i => { const p = document.querySelectorAll('.js-plotly-plot')[i];"
        " return p && p._fullData && p._fullData[0] ? p._fullData[0].x.length : 0 }",
        index,
    )


def _chart(page, title: str) -> int:
    """The index of the plotly chart whose title holds `title` (-1 while none is drawn)."""
    return page.evaluate(
        "t => [...document.querySelectorAll('.js-plotly-plot')].findIndex(p => p._fullLayout &&"
        " p._fullLayout.title && String(p._fullLayout.title.text || '').includes(t))",
        title,
    )


WIDTH, HEIGHT = 1280, 720  # a classroom projector


def _shot(page, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(folder / f"{name}.png"))


def _on_first_screen(locator, what: str) -> None:
    """The element is drawn whole inside the 1280x720 viewport, without scrolling."""
    locator.wait_for(timeout=60_000)
    box = locator.bounding_box()
    assert box is not None, f"{what}: not drawn"
    assert box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT + 1, f"{what} is not on the first screen: {box}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH + 1, f"{what} is cut at the side: {box}"


def _title(page, title: str) -> None:
    """Each page has its own browser-tab title (set when the page runs, so wait for it)."""
    page.wait_for_function("t => document.title === t", arg=title, timeout=30_000)


def _scrubber(page):
    """The frame of the shown tab's scrubber (ui.scrub), once its sheet has drawn: the other tabs' scrubbers
    are laid out at zero size until their tab is opened."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for frame in page.frames:
            try:
                if frame.evaluate(
                    "() => { const c = document.getElementById('c');"
                    " return !!(c && c.dataset.tile && c.getBoundingClientRect().width > 0) }"
                ):
                    return frame
            except Exception:  # noqa: BLE001 - a frame that is navigating or gone: try the next one
                continue
        page.wait_for_timeout(300)
    pytest.fail("the latent sliders did not draw")


def _small_run(runs: Path, name: str, **kw) -> None:
    from cvae.train import main

    main(dataset="MNIST", decoder_type="Bernoulli", epochs=2, batch_size=64, learning_rate=1e-3, arch="mlp",
         mlp_hidden=(64,), train_subset=512, test_subset=256, latent_subset=200, run_dir=str(runs / name),
         quiet=True, threads=1, **kw)  # fmt: skip


def test_app_in_a_browser(server, tmp_path: Path, watch_outside) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    url, runs = server
    shots = Path(os.environ.get("CVAE_SHOTS_DIR") or tmp_path / "shots")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})

        outside = watch_outside(page)
        page.goto(url)
        page.get_by_text("No runs yet").wait_for(timeout=30_000)
        _title(page, "Train · CVAE lab")
        _shot(page, shots, "empty")

        # A short run from the form (open while there are no runs): 4 epochs of 4,000 MNIST images, one thread.
        _number(page, "Epochs", 4)
        page.get_by_text("More options").click()
        _number(page, "Batch size", 16)
        _number(page, "Train images", 4000)
        _number(page, "Test images", 500)
        _number(page, "CPU threads (0 = all)", 1)
        _number(page, "Refine q at the end: steps", 5)
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url("**run=*", timeout=20_000)
        run_id = page.url.split("run=")[1].split("&")[0]
        assert (runs / run_id / "status.json").is_file()

        # The form folds away; the live run takes the first screen: progress, the four numbers, the model's own
        # pictures while it learns (reconstructions and latent scatter), then the loss chart.
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Start training").count() == 0
        deadline = time.time() + 60
        while _chart(page, "Batch loss") < 0 and time.time() < deadline:
            page.wait_for_timeout(300)
        first = _points(page, _chart(page, "Batch loss"))
        while _points(page, _chart(page, "Batch loss")) <= first and time.time() < deadline:
            page.wait_for_timeout(500)
        assert _points(page, _chart(page, "Batch loss")) > first, "the loss chart did not update"
        if page.locator('[data-testid="stProgress"]').count():
            _on_first_screen(page.locator('[data-testid="stProgress"]'), "the progress bar")
        _on_first_screen(page.locator('[data-testid="stMetric"]').nth(3), "the fourth number")
        page.get_by_text("Their reconstructions").first.wait_for(timeout=60_000)  # live, before an epoch ends
        _on_first_screen(page.locator('[data-testid="stImage"]').nth(1), "the live reconstructions")
        _on_first_screen(page.get_by_text("Where the encoder puts").first, "the live latent scatter")
        page.get_by_text("test −ELBO").first.wait_for(timeout=60_000)  # the first epoch's numbers are drawn
        _shot(page, shots, "train_live")
        # the reference conv net on one thread: about two minutes on a slow 2-core machine, more when it is busy
        page.get_by_text("Finished: 4 epochs").wait_for(timeout=400_000)
        # the latent scatter, the batch loss, the per-epoch curves and the ELBO's ledger
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length == 4", timeout=20_000)
        page.get_by_text("refined for each test image by 5 gradient steps").wait_for(timeout=20_000)
        _on_first_screen(page.get_by_text("Their reconstructions after epoch 4").first, "the last reconstructions")
        _shot(page, shots, "train")

        # Latent space: the scatter with Play and the epoch slider on the first screen; a clicked dot beside it.
        page.get_by_role("link", name="Latent space").click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
        assert f"run={run_id}" in page.url  # the run stays in the address across pages
        _title(page, "Latent space · CVAE lab")
        frames = "() => { const p = document.querySelector('.js-plotly-plot'); return p && p._transitionData ? p._transitionData._frames.length : 0 }"
        page.wait_for_function(f"({frames})() === 4", timeout=30_000)  # one frame per epoch
        _on_first_screen(page.locator(".js-plotly-plot").first, "the latent scatter with Play and the slider")
        _on_first_screen(page.locator(".updatemenu-button").first, "Play")
        page.wait_for_timeout(1500)
        xy = page.evaluate(
            """() => { const p = document.querySelector('.js-plotly-plot'); const L = p._fullLayout;
                       const r = p.getBoundingClientRect(); const d = p.calcdata[1][0];
                       return [r.left + L.xaxis._offset + L.xaxis.c2p(d.x), r.top + L.yaxis._offset + L.yaxis.c2p(d.y)]; }"""
        )
        page.mouse.click(xy[0], xy[1])
        page.get_by_text("reconstructed, epoch 4").wait_for(timeout=30_000)
        _on_first_screen(page.locator('[data-testid="stImage"]').nth(1), "the clicked dot's reconstruction")
        _shot(page, shots, "latent")

        page.get_by_role("link", name="Reconstructions").click()
        page.get_by_text("Over the epochs").wait_for(timeout=30_000)
        _on_first_screen(page.locator('[data-testid="stImage"]').nth(1), "the reconstructions")
        _shot(page, shots, "reconstructions")

        page.get_by_role("link", name="Generate").click()
        page.get_by_text("400 random codes").wait_for(timeout=60_000)
        _on_first_screen(page.get_by_text("Class (every tab)"), "the class picker")
        _on_first_screen(page.locator('[data-testid="stImage"]').first, "the uniform grid")
        _shot(page, shots, "generate")

        # A latent slider changes the picture while it is dragged, before the mouse is released.
        page.get_by_role("tab", name="Latent sliders").click()
        deadline = time.time() + 60
        while True:  # the frame that drew, once the tab has laid it out (on a busy machine that lags the drawing)
            frame = _scrubber(page)
            box = frame.locator("#s0").bounding_box()
            if box is not None or time.time() > deadline:
                break
            page.wait_for_timeout(300)
        assert box is not None, "the latent sliders never showed"
        before = frame.evaluate(
            "() => [document.getElementById('c').dataset.tile, document.getElementById('c').toDataURL()]"
        )
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2  # the thumb starts in the middle (z = 0)
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + box["width"] * 0.3, y, steps=8)
        page.wait_for_timeout(200)
        during = frame.evaluate(
            "() => [document.getElementById('c').dataset.tile, document.getElementById('c').toDataURL()]"
        )
        page.mouse.up()
        assert during[0] != before[0] and during[1] != before[1], "the picture did not change while dragging"
        _shot(page, shots, "generate_sliders")

        # Compare: three runs overlaid, named by what differs, chosen in the address.
        _small_run(runs, "cmp-z3", latent_dim=3)
        _small_run(runs, "cmp-z5", latent_dim=5)
        page.goto(f"{url}/compare?runs={run_id},cmp-z3,cmp-z5")
        page.get_by_text("Final figures").wait_for(timeout=60_000)
        _title(page, "Compare runs · CVAE lab")
        page.locator(".js-plotly-plot").first.locator(".legendtext").first.wait_for(timeout=30_000)  # drawn
        legend = (
            page.locator(".js-plotly-plot").first.locator(".legendtext").evaluate_all("l => l.map(e => e.textContent)")
        )
        assert len(legend) == 3 and any("z=3" in t for t in legend), legend
        _on_first_screen(page.locator(".js-plotly-plot").first, "the comparison chart")
        _shot(page, shots, "compare")

        # A reload, or a link straight to a page, finds the run again from the address.
        page.goto(f"{url}/?run={run_id}")
        page.get_by_text("Finished: 4 epochs").wait_for(timeout=30_000)
        page.goto(f"{url}/generate?run={run_id}")
        page.get_by_text("400 random codes").wait_for(timeout=30_000)
        assert page.get_by_text("CVAE lab").count() >= 1  # the entry point ran: shared sidebar
        browser.close()
    assert not outside, f"requests left this machine: {outside[:5]}"


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
        shown = page.get_by_text("reconstructed, epoch")
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


def test_complete_a_digit_in_a_browser(server, tmp_path: Path) -> None:
    """The preset button queues the 1-quadrant model; a trained one shows the given part, the baseline,
    the spread, the samples and the walk on the first screen, and Draw again draws new samples."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    from cvae.train import main

    url, runs = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                   "--disable-background-networking"])  # fmt: skip
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(f"{url}/complete")
        page.get_by_text("No run completes digits yet").wait_for(timeout=30_000)
        _title(page, "Complete a digit · CVAE lab")
        page.get_by_role("button", name="Train the 1-quadrant model (about a minute)").click()
        page.get_by_text("One is training").wait_for(timeout=30_000)  # the server fixture stops it at the end
        page.get_by_text("epoch 1 of 1").wait_for(timeout=180_000)  # its progress, drawn without a reload
        main(dataset="MNIST", condition="quadrants", quadrants=1, epochs=1, train_subset=512, test_subset=128,
             latent_dim=4, mlp_hidden=(64,), run_dir=str(runs / "tiny-q1"), quiet=True, threads=1)  # fmt: skip
        page.goto(f"{url}/complete?run=tiny-q1")
        page.get_by_text("Walk through z").wait_for(timeout=60_000)
        images = page.locator('[data-testid="stImage"] img')
        _on_first_screen(page.locator("canvas.ink"), "the given part, on its canvas")
        for k, what in enumerate(["the baseline", "the spread", "the CVAE samples", "the latent walk"]):
            _on_first_screen(images.nth(k), what)
        grid = images.nth(2).get_attribute("src")
        page.get_by_role("button", name="Draw again").click()
        page.wait_for_function(
            "s => document.querySelectorAll('[data-testid=\"stImage\"] img')[2].src !== s", arg=grid, timeout=30_000
        )
        browser.close()


def _browser(sync_api):
    return sync_api.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                   "--disable-background-networking"])  # fmt: skip


def test_draw_a_digit_in_a_browser(server, tmp_path: Path) -> None:
    """A 7 drawn with the mouse on the Draw page: the model's reading, the reconstructions under every class and
    the drawing's place among the test images' codes, on the first screen; Clear empties the canvas again."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    from scripts.screenshots import SEVEN, draw_strokes

    url, runs = server
    _small_run(runs, "tiny", latent_dim=2)
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(f"{url}/draw?run=tiny")
        _title(page, "Draw a digit · CVAE lab")
        canvas = page.locator("canvas.ink")
        _on_first_screen(canvas, "the canvas")
        page.get_by_text("Draw a digit in the black square").wait_for(timeout=30_000)
        draw_strokes(page, canvas, SEVEN)
        page.get_by_text("The model reads a").wait_for(timeout=60_000)
        _on_first_screen(page.get_by_text("decoded under every class"), "the reconstructions' caption")
        _on_first_screen(page.locator('[data-testid="stImage"] img').last, "the reconstructions")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.js-plotly-plot')].some(p => p._fullData &&"
            " p._fullData.some(t => t.name === 'your digit'))", timeout=30_000,
        )  # fmt: skip
        _on_first_screen(page.locator(".js-plotly-plot").first, "the latent scatter with the drawing")
        _shot(page, Path(os.environ.get("CVAE_SHOTS_DIR") or tmp_path / "shots"), "draw")
        page.get_by_role("button", name="Clear").click()
        page.get_by_text("Draw a digit in the black square").wait_for(timeout=30_000)
        browser.close()


def test_draw_the_given_part_of_a_digit_in_a_browser(server) -> None:
    """On Complete a digit, a stroke drawn with the mouse over the given quadrant changes the completions; the
    hidden part of the canvas takes no ink."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    from cvae.train import main
    from scripts.screenshots import draw_strokes

    url, runs = server
    main(dataset="MNIST", condition="quadrants", quadrants=1, epochs=1, train_subset=512, test_subset=128,
         latent_dim=4, mlp_hidden=(64,), run_dir=str(runs / "tiny-q1"), quiet=True, threads=1)  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(f"{url}/complete?run=tiny-q1")
        canvas = page.locator("canvas.ink")
        _on_first_screen(canvas, "the canvas")
        images = page.locator('[data-testid="stImage"] img')
        images.nth(3).wait_for(timeout=60_000)
        before = [images.nth(k).get_attribute("src") for k in range(3)]  # baseline, spread, samples
        draw_strokes(page, canvas, [[(0.05, 0.8), (0.95, 0.8)]])  # across the given bottom-left into the hidden part
        # The three pictures reach the browser one after another on a busy machine: wait for all of them.
        page.wait_for_function(
            "b => { const im = document.querySelectorAll('[data-testid=\"stImage\"] img');"
            " return b.every((s, k) => im[k] && im[k].src !== s); }", arg=before, timeout=30_000,
        )  # fmt: skip
        after = [images.nth(k).get_attribute("src") for k in range(3)]
        assert all(a != b for a, b in zip(after, before, strict=True)), "the completions did not follow the drawing"
        ink = canvas.evaluate(
            "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = c.width;"
            " const at = (x, y) => d[4 * (Math.round(y * n) * n + Math.round(x * n))];"
            " return [at(0.25, 0.8), at(0.75, 0.8)]; }"
        )
        assert ink[0] > 200 and ink[1] == 0, f"ink in the given / hidden part: {ink}"
        browser.close()


def test_hostile_run_files_leave_every_other_run_working_in_a_browser(tmp_path: Path, tiny_run: Path,
                                                                       app_server) -> None:  # fmt: skip
    """A run folder whose status.json is 200,000 nested brackets, one whose config.json is, and one with a
    metrics line of 2 MiB: every page of the good run draws in Chromium, with no error box, and the hostile
    runs each show their one line."""
    import shutil

    from playwright.sync_api import sync_playwright

    root = tmp_path / "runs"
    for name in ("good", "nested-status", "nested-config", "huge-line"):
        shutil.copytree(tiny_run, root / name)
    nested = b"[" * 200_000 + b"]" * 200_000
    (root / "nested-status" / "status.json").write_bytes(nested)
    (root / "nested-config" / "config.json").write_bytes(nested)
    with open(root / "huge-line" / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"epoch": 3, "x": "' + b"y" * (2 << 20) + b'"}\n')
    with app_server(tmp_path) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for path, title in (("", "Train"), ("reconstructions", "Reconstructions"), ("latent", "Latent space"),
                            ("generate", "Generate"), ("compare", "Compare runs")):  # fmt: skip
            page.goto(f"{url}/{path}?run=good")
            _title(page, f"{title} · CVAE lab")
            page.get_by_text("Runs folder").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            assert page.locator("[data-testid=stException]").count() == 0, title
        page.goto(f"{url}/?run=nested-config")
        page.get_by_text("config.json is corrupt").first.wait_for(timeout=60_000)
        assert page.locator("[data-testid=stException]").count() == 0
        browser.close()
