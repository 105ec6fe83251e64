"""The README's screenshots, from runs trained as long as the quick demo, at 1280x720 (a classroom projector).

    python -m scripts.screenshots --out docs/screenshots [--runs checkpoints/screenshots]

Trains three runs through the app's launcher, as the Train page starts them
(unless `--runs` already holds them: then they are reused), side by side: the quick demo
(full MNIST, MLP, z = 2, 12 epochs, cosine schedule), the same with z = 10, and
the same with a ten times smaller learning rate, so the comparison shows what
differs. Then opens `streamlit run` on that runs folder in headless Chromium and
shoots every page: the live Train page while the first run trains, then, once
all have finished, Train, Latent space (a dot clicked), Reconstructions,
Generate (grids, sliders, interpolation) and Compare runs. The runs folder is
inside the project by default, so the sidebar shows a short, stable path (no
temporary folder).

    python -m scripts.screenshots --draw --runs /tmp/draw-runs

shoots instead the two pages that are drawn on: a 7 drawn with the mouse on the Draw page of the quick demo
(z = 2), and, on Complete a digit, the given quadrant of the Complete page's preset cleared and the bottom-left
of a 0 drawn in it (draw.png; complete.png as the page opens, complete_draw.png drawn on); the two runs are
trained first if `--runs` lacks them.

    python -m scripts.screenshots --cluster --runs /tmp/cluster-runs

shoots instead the Train page of runs sent to a Slurm cluster (CVAE_BACKEND=slurm; the test cluster of
scripts/slurm_cluster.sh will do): one run holding every CPU of the cluster's node, training, and one
pending behind it (train_cluster_running.png, train_cluster_pending.png).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 720
RUNS = {  # run id -> (name shown in the app, options besides the quick demo's)
    "demo-z2": ("quick demo, z=2", {}),
    "demo-z10": ("quick demo, z=10", {"latent_dim": 10}),
    "demo-z2-slow": ("quick demo, z=2, lr 5e-4", {"learning_rate": 5e-4}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_runs(runs: Path, threads: int) -> list:
    """Queue the runs that are not there yet (one trains at a time), named as in RUNS."""
    from cvae import jobs
    from cvae.config import QUICK_DEMO
    from cvae.names import write_meta
    from cvae.runs import RunDir

    started = []
    for run_id, (name, extra) in RUNS.items():
        if (runs / run_id / "config.json").is_file():
            continue
        run = jobs.start(runs, {**QUICK_DEMO, "threads": threads, **extra}, run_id=run_id)
        write_meta(run.path, name=name, note="")
        started.append(RunDir(run.path))
    return started


def wait(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--runs", type=Path, default=ROOT / "checkpoints" / "screenshots")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per training run [1]")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--cluster", action="store_true", help="the Train page of runs on a Slurm cluster instead")
    ap.add_argument("--draw", action="store_true", help="the Draw and Complete a digit pages, drawn on, instead")
    args = ap.parse_args()
    runs, out = args.runs.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.cluster:
        return cluster(runs, out, args.chromium)
    if args.draw:
        return drawn(runs, out, args.chromium, args.threads)
    os.environ["CVAE_MAX_RUNS"] = str(len(RUNS))  # all three train at once, a thread each
    runs.mkdir(parents=True, exist_ok=True)
    started = start_runs(runs, args.threads)
    port = free_port()
    env = {**os.environ, "CVAE_RUNS_DIR": str(runs)}
    log = open(runs / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _healthy(url), 90, "streamlit")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium,
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])  # fmt: skip
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            first = next((r for r in started if r.id == "demo-z2"), None)
            if first is not None:  # the live page: after a few epochs, while it trains
                wait(lambda: len(first.read_metrics()) >= 3, 3600, "three epochs of demo-z2")
                page.goto(f"{url}/?run=demo-z2")
                page.get_by_text("test −ELBO").first.wait_for(timeout=60_000)
                shot(page, out, "train_live", settle_ms=4000)
            from cvae.runs import RunDir

            wait(lambda: all(RunDir(runs / r).read_status().get("state") == "finished" for r in RUNS), 3 * 3600,
                 "the runs to finish")  # fmt: skip
            pages(page, url, out)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
        log.close()
    return 0


def serve(runs: Path) -> tuple[subprocess.Popen, str]:
    """The app on `runs`, in its own session (stopped with os.killpg); its address once it answers."""
    port = free_port()
    log = open(runs / "server.log", "ab")  # noqa: SIM115 - the server's own, for its life
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, env={**os.environ, "CVAE_RUNS_DIR": str(runs)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait(lambda: _healthy(url), 90, "streamlit")
    return server, url


def cluster(runs: Path, out: Path, chromium: str) -> int:
    """The Train page of a run training on a Slurm node and of one pending behind it."""
    os.environ["CVAE_BACKEND"] = "slurm"
    from cvae import jobs
    from cvae.config import QUICK_DEMO
    from cvae.names import write_meta

    cpus = subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, check=True)
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.update(CVAE_SLURM_CPUS=cpus.stdout.split()[0], CVAE_SLURM_MEM="2G", CVAE_SLURM_TIME="00:20:00")
    first = jobs.start(runs, {**QUICK_DEMO, "epochs": 40}, run_id="on-the-cluster")
    write_meta(first.path, name="quick demo on the cluster", note="")
    os.environ["CVAE_SLURM_CPUS"] = "1"
    second = jobs.start(runs, {**QUICK_DEMO, "epochs": 5}, run_id="waiting-for-a-node")
    write_meta(second.path, name="waiting for a node", note="")
    server, url = serve(runs)
    try:
        wait(lambda: len(first.read_metrics()) >= 2, 600, "two epochs on the cluster")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(f"{url}/?run={first.id}")
            page.get_by_text("test −ELBO").first.wait_for(timeout=60_000)
            shot(page, out, "train_cluster_running", settle_ms=4000)
            page.goto(f"{url}/?run={second.id}")
            page.get_by_text("Queued on the cluster").wait_for(timeout=60_000)
            shot(page, out, "train_cluster_pending", settle_ms=2000)
            browser.close()
    finally:
        for run in (first, second):
            jobs.stop(run)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    return 0


# Strokes as a person draws them: polylines in shares of the canvas's side (x to the right, y down).
SEVEN = [[(0.27, 0.22), (0.72, 0.22), (0.42, 0.82)]]
ZERO_BOTTOM_LEFT = [[(0.46, 0.52), (0.3, 0.6), (0.24, 0.75), (0.3, 0.9), (0.46, 0.94)]]  # the bottom-left quadrant


def draw_strokes(page, canvas, lines: list[list[tuple[float, float]]]) -> None:
    """Draw on a canvas (a Playwright locator) with the mouse: for each line, press, move through its points,
    release, as a person draws."""
    box = canvas.bounding_box()
    for line in lines:
        points = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in line]
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y, steps=12)
        page.mouse.up()


def drawn(runs: Path, out: Path, chromium: str, threads: int) -> int:
    """The Draw page with a 7 drawn on the quick demo, and Complete a digit as it opens and with the bottom-left
    of a 0 drawn on the page's preset; each run trained first where `runs` lacks it."""
    from cvae import jobs
    from cvae.config import QUICK_DEMO
    from cvae.runs import RunDir

    wanted = {"demo-z2": QUICK_DEMO, "complete-q1": {"condition": "quadrants", "quadrants": 1, "epochs": 1}}
    runs.mkdir(parents=True, exist_ok=True)
    for run_id, options in wanted.items():
        if not (runs / run_id / "config.json").is_file():
            jobs.start(runs, {**options, "threads": threads}, run_id=run_id)
    wait(lambda: all(RunDir(runs / r).read_status().get("state") == "finished" for r in wanted), 3600, "the runs")
    server, url = serve(runs)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(f"{url}/draw?run=demo-z2")
            canvas = page.locator("canvas.ink")
            canvas.wait_for(timeout=60_000)
            draw_strokes(page, canvas, SEVEN)
            page.get_by_text("The red ring").wait_for(timeout=60_000)
            shot(page, out, "draw", settle_ms=2500)
            page.goto(f"{url}/complete?run=complete-q1")
            canvas = page.locator("canvas.ink")
            canvas.wait_for(timeout=60_000)
            baseline = page.locator('[data-testid="stImage"] img').first
            baseline.wait_for(timeout=60_000)
            shot(page, out, "complete", settle_ms=2500)  # as it opens: test digit #1's given quadrant
            changed = "s => document.querySelector('[data-testid=\"stImage\"] img').src !== s"
            for act in (lambda: page.get_by_role("button", name="Clear").click(),
                        lambda: draw_strokes(page, canvas, ZERO_BOTTOM_LEFT)):  # fmt: skip
                before = baseline.get_attribute("src")
                act()
                page.wait_for_function(changed, arg=before, timeout=60_000)  # the baseline of the new drawing
            shot(page, out, "complete_draw", settle_ms=2500)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    return 0


def _healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200
    except OSError:
        return False


def shot(page, out: Path, name: str, settle_ms: int = 1500) -> None:
    page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(out / f"{name}.png"))
    print("wrote", out / f"{name}.png")


def pages(page, url: str, out: Path) -> None:
    page.goto(f"{url}/?run=demo-z2")
    page.get_by_text("Finished: 12 epochs").wait_for(timeout=60_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=30_000)
    shot(page, out, "train")

    page.get_by_role("link", name="Latent space").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2500)
    xy = page.evaluate(
        """() => { const p = document.querySelector('.js-plotly-plot'); const L = p._fullLayout;
                   const r = p.getBoundingClientRect(); const d = p.calcdata[7][3];
                   return [r.left + L.xaxis._offset + L.xaxis.c2p(d.x), r.top + L.yaxis._offset + L.yaxis.c2p(d.y)]; }"""
    )  # a dot of class 7
    page.mouse.click(xy[0], xy[1])
    page.get_by_text("reconstructed, epoch").wait_for(timeout=60_000)
    shot(page, out, "latent")

    page.get_by_role("link", name="Reconstructions").click()
    page.get_by_text("Over the epochs").wait_for(timeout=60_000)
    shot(page, out, "reconstructions", settle_ms=2500)

    page.get_by_role("link", name="Generate").click()
    page.get_by_text("400 random codes").wait_for(timeout=60_000)
    shot(page, out, "generate", settle_ms=2500)
    page.get_by_role("tab", name="Latent sliders").click()
    shot(page, out, "generate_sliders", settle_ms=4000)
    page.get_by_role("tab", name="Interpolation").click()
    shot(page, out, "generate_interpolation", settle_ms=4000)

    page.goto(f"{url}/compare?runs={','.join(RUNS)}")
    page.get_by_text("Final figures").wait_for(timeout=60_000)
    shot(page, out, "compare", settle_ms=2500)


if __name__ == "__main__":
    sys.exit(main())
