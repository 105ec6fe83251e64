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

    python -m scripts.screenshots --wall --runs /tmp/wall-runs

shoots instead the class wall (wall.png) of a mock class on a runs folder of its own: 17 quick demos, most of
two epochs with one or two settings changed (CLASS below), queued one at a time as the Train page queues them
(CVAE_MAX_RUNS=1), shot once all but the last two have finished, while the next to last trains and the last
waits.

    python -m scripts.screenshots --roles [--runs checkpoints/roles]

shoots instead every page of the navigation as a lecturer and as a student (lecturer_<page>.png,
student_<page>.png in docs/screenshots/roles/), signed in through the app's own sign-in page with per-student
accounts (`[cvae] sign_in = "accounts"`) on a runs folder of its own (empty or not there yet): `cvae class add`
makes prof (a lecturer), alice and bob; each changes their one-time password on first sign-in. The runs are
3-epoch quick demos started as the Train page starts them, one training at a time (CVAE_MAX_RUNS=1): prof's
first, pinned for the class with the Train page's button; then alice's and bob's, and alice's β = 4 twin forked
on her Train page, which waits at position 2 with its estimated start (queue.png; the lecturer's class wall then,
queue_wall.png); prof's twin; and the Complete a digit page's preset, clicked by alice, while it trains
(complete_preset.png). Along the way it checks what each role may see: no class settings for a student, no Stop
on the lecturer's run, no classmate's run unless pinned (student_train_pinned.png: alice on prof's run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 720
RUNS = {  # run id -> (name shown in the app, options besides the quick demo's)
    "demo-z2": ("quick demo, z=2", {}),
    "demo-z10": ("quick demo, z=10", {"latent_dim": 10}),
    "demo-z2-slow": ("quick demo, z=2, lr 5e-4", {"learning_rate": 5e-4}),
}


CLASS = [  # the mock class of the wall: (student, options besides the quick demo's); two epochs unless said
    ("ana", {}), ("ben", {"latent_dim": 10}), ("chloe", {"learning_rate": 1e-3}), ("dev", {"kl_weight": 4.0}),
    ("emil", {"latent_dim": 5}), ("fatima", {"mlp_hidden": (256, 256)}), ("gus", {"batch_size": 64}),
    ("hana", {"latent_dim": 10, "kl_weight": 0.5}), ("ivan", {"free_bits": 0.5}), ("jo", {}),
    ("kim", {"kl_warmup_epochs": 1.0}), ("lena", {"latent_dim": 20}), ("max", {"learning_rate": 1e-2}),
    ("nora", {"epochs": 3}), ("omar", {"latent_dim": 10, "epochs": 3}),
    ("pia", {"epochs": 12}), ("quinn", {"epochs": 12}),  # training, and waiting behind it, when shot
]  # fmt: skip


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
    ap.add_argument("--runs", type=Path, default=None, help="[checkpoints/screenshots; with --roles checkpoints/roles]")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per training run [1]")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--cluster", action="store_true", help="the Train page of runs on a Slurm cluster instead")
    ap.add_argument("--draw", action="store_true", help="the Draw and Complete a digit pages, drawn on, instead")
    ap.add_argument("--roles", action="store_true", help="every page as a lecturer and as a student, signed in")
    ap.add_argument("--wall", action="store_true", help="the class wall of a mock class of 17 runs instead")
    args = ap.parse_args()
    runs = (args.runs or ROOT / "checkpoints" / ("roles" if args.roles else "screenshots")).resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.roles:
        return roles(runs, out / "roles", args.chromium)
    if args.cluster:
        return cluster(runs, out, args.chromium)
    if args.draw:
        return drawn(runs, out, args.chromium, args.threads)
    if args.wall:
        return wall(runs, out, args.chromium, args.threads)
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


def serve(runs: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """The app on `runs` (more `streamlit run` flags in `args`), in its own session (stopped with os.killpg); its
    address once it answers."""
    port = free_port()
    log = open(runs / "server.log", "ab")  # noqa: SIM115 - the server's own, for its life
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", *args],
        cwd=ROOT, env={**os.environ, "CVAE_RUNS_DIR": str(runs)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait(lambda: _healthy(url), 90, "streamlit")
    return server, url


@contextlib.contextmanager
def browsing(runs: Path, chromium: str) -> Iterator[tuple[Any, str]]:
    """The app served on `runs` and a headless Chromium page at 1280x720: (page, the app's address); the
    browser and the server are stopped on the way out."""
    server, url = serve(runs)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                yield browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}), url
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


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
    try:
        with browsing(runs, chromium) as (page, url):
            wait(lambda: len(first.read_metrics()) >= 2, 600, "two epochs on the cluster")
            page.goto(f"{url}/?run={first.id}")
            page.get_by_text("test −ELBO").first.wait_for(timeout=60_000)
            shot(page, out, "train_cluster_running", settle_ms=4000)
            page.goto(f"{url}/?run={second.id}")
            page.get_by_text("Queued on the cluster").wait_for(timeout=60_000)
            shot(page, out, "train_cluster_pending", settle_ms=2000)
    finally:
        for run in (first, second):
            jobs.stop(run)
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


def wall(runs: Path, out: Path, chromium: str, threads: int) -> int:
    """The class wall of CLASS, queued as the Train page queues runs, one training at a time: shot when the next
    to last run has trained an epoch (every run before it finished) and the last one waits."""
    from cvae import jobs
    from cvae.config import QUICK_DEMO
    from cvae.names import write_meta
    from cvae.runs import RunDir

    os.environ["CVAE_MAX_RUNS"] = "1"
    runs.mkdir(parents=True, exist_ok=True)
    expect(not any(runs.iterdir()), f"{runs} must be empty: the wall shows every run in it")
    started = []
    for student, extra in CLASS:
        run = jobs.start(runs, {**QUICK_DEMO, "epochs": 2, "threads": threads, **extra}, run_id=f"demo-{student}")
        write_meta(run.path, name=f"{student}'s demo", note="")
        started.append(RunDir(run.path))
    *done, training, waiting = started
    wait(lambda: len(training.read_metrics()) >= 1, 3600, "the class's runs")
    expect(all(r.read_status().get("state") == "finished" for r in done), "every run but the last two finished")
    with browsing(runs, chromium) as (page, url):
        page.goto(f"{url}/wall")
        page.locator(".wall .card").first.wait_for(timeout=60_000)
        expect(waiting.read_status().get("state") != "finished", "the last run still waits")
        shot(page, out, "wall", settle_ms=4000)
        report(page)
    return 0


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
    with browsing(runs, chromium) as (page, url):
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
    return 0


# ---------------------------------------------------------------- --roles: what a lecturer and a student see

PEOPLE = {"prof": "lecturer", "alice": "student", "bob": "student"}  # the accounts, as `cvae class add` makes them
DEMO_EPOCHS = 3  # short quick demos (they train one after another), with an animation of 3 epochs to look at
# What a page shows once it has drawn its main picture (the Latent space and Draw pages are acted on instead).
DRAWN = {"train": "Finished:", "reconstructions": "Over the epochs", "generate": "400 random codes",
         "complete": "Draw again", "compare": "Final figures", "twins": "Epoch (both runs)"}  # fmt: skip
# The page's visible leaf elements on the first screen whose text is under 16 px (what the pages aim at for a
# projector), by size, and those that reach past the right edge (cut off): printed beside each shot, to look at.
# The sidebar is left out: it is the same on every page.
LOOK = """() => { const small = {}; let cut = 0;
  for (const e of document.querySelectorAll('[data-testid=stMain] *')) {
    if (e.children.length || !e.textContent.trim()) continue;
    const r = e.getBoundingClientRect();
    if (!r.width || !r.height || r.bottom <= 0 || r.top >= innerHeight) continue;
    if (!e.checkVisibility({visibilityProperty: true, opacityProperty: true})) continue;
    if (r.right > innerWidth + 1) cut += 1;
    const size = parseFloat(getComputedStyle(e).fontSize);
    if (size < 16) (small[size] ||= []).push(e.textContent.trim().slice(0, 20));
  }
  return [small, cut]; }"""


def roles(runs: Path, out: Path, chromium: str) -> int:
    """Every page as a lecturer and as a student, the queue with positions and the Complete preset training, in a
    fresh runs folder with per-student accounts (the module's docstring says what happens in which order)."""
    from cvae import forkserver, jobs
    from cvae.classroom import User
    from cvae.names import write_meta
    from cvae.runs import RunDir, is_run_id

    if runs.is_dir() and any(runs.iterdir()):
        raise SystemExit(f"--roles needs a runs folder of its own, empty or not there yet: {runs} is not empty")
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["CVAE_MAX_RUNS"] = "1"  # one run trains at a time: the others wait, with their positions
    users = {name: User(name, role) for name, role in PEOPLE.items()}
    one_time = accounts(runs)

    def start(name: str, title: str) -> RunDir:
        """A short quick demo of `name`'s, started as the Train page's launch() starts one."""
        run = jobs.start(runs, {**jobs.QUICK_DEMO_OPTIONS, "epochs": DEMO_EPOCHS}, user=users[name],
                         data_roots=jobs.data_roots())  # fmt: skip
        write_meta(run.path, name=title, note="", user=users[name])
        return run

    def done(*waited: RunDir, seconds: float = 1800) -> None:
        wait(lambda: all(r.read_status().get("state") == "finished" for r in waited), seconds, "the runs to finish")

    with tempfile.TemporaryDirectory() as folder:
        secrets = Path(folder) / "secrets.toml"
        secrets.write_text('[cvae]\nsign_in = "accounts"\n')
        server, url = serve(runs, "--secrets.files", str(secrets))
        try:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox",
                                            "--disable-gpu", "--disable-background-networking"])  # fmt: skip
                prof, alice = (sign_in(browser, url, name, one_time[name]) for name in ("prof", "alice"))
                lecture = start("prof", "lecture demo, z=2")
                prof.goto(f"{url}/?run={lecture.id}")
                prof.get_by_role("button", name="Pin for the class").click()  # every student sees it
                prof.get_by_role("button", name="Unpin").wait_for(timeout=60_000)
                done(lecture)  # a finished run with the class's flags: the queue can say when the next ones start
                theirs, bobs = start("alice", "alice's quick demo"), start("bob", "bob's quick demo")
                twin = fork_twin(alice, url, theirs, runs)  # behind bob's: position 2
                alice.goto(f"{url}/?run={twin.id}")
                alice.get_by_text("Queued — position 2").first.wait_for(timeout=120_000)
                alice.get_by_text("it starts in about").wait_for(timeout=120_000)
                shot(alice, out, "queue")
                report(alice)
                prof.goto(f"{url}/wall")
                prof.get_by_text("queued — position 2").first.wait_for(timeout=60_000)
                shot(prof, out, "queue_wall", settle_ms=2500)
                report(prof)
                profs_twin = fork_twin(prof, url, lecture, runs)  # a lecturer's run: ahead of the students' waiting
                done(theirs)  # alice has one run going (her twin), below the class's limit of 2
                alice.goto(f"{url}/complete")
                alice.get_by_role("button", name="Train the 1-quadrant model").click()
                alice.locator('[data-testid="stProgress"]').wait_for(timeout=1_800_000)
                shot(alice, out, "complete_preset", settle_ms=3000)
                report(alice)
                done(*[RunDir(f) for f in runs.iterdir() if f.is_dir() and is_run_id(f.name)])
                see_what_roles_allow(prof, alice, url, out, lecture, bobs)
                every_page(prof, url, out, "lecturer", lecture, [lecture, profs_twin, theirs, bobs])
                every_page(alice, url, out, "student", theirs, [theirs, twin, lecture])
                browser.close()
        finally:
            for run in [RunDir(f) for f in runs.iterdir() if f.is_dir() and is_run_id(f.name)]:
                jobs.stop(run)
            forkserver.stop(runs)
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
    return 0


# Run controls a student may not have on a run of someone else's (the widgets' keys): stop or cancel, resume and
# its epochs, start again, delete, pin, measure the bounds; and the form that renames it (its expander's label).
OWNERS_CONTROLS = ("stop", "resume", "more_epochs", "start_again", "delete", "pin", "measure_bounds")


def see_what_roles_allow(lecturer, student, url: str, out: Path, pinned, classmates) -> None:
    """Fail where the app shows a student more than docs/hosting.md's "Who may do what" allows: the class
    settings, an owner's controls on the lecturer's pinned run (shot: student_train_pinned.png), a classmate's run
    that is not shared; and where it shows a lecturer less: the class settings, the classmate's run."""
    expect(lecturer.get_by_role("button", name="Class settings").count() == 1, "the lecturer has Class settings")
    expect(student.get_by_role("button", name="Class settings").count() == 0, "a student has no Class settings")
    student.goto(f"{url}/?run={pinned.id}")
    student.get_by_text("Started by prof").first.wait_for(timeout=60_000)
    student.wait_for_timeout(1500)
    shown = [key for key in OWNERS_CONTROLS if student.locator(f".st-key-{key}").count()]
    shown += ["rename"] if student.get_by_text("Name and note").count() else []
    expect(not shown, f"a student has none of the owner's controls on the lecturer's run (shown: {shown})")
    shot(student, out, "student_train_pinned")
    report(student)
    student.goto(f"{url}/?run={classmates.id}")
    student.get_by_text(f"No run called '{classmates.id}'").wait_for(timeout=60_000)
    lecturer.goto(f"{url}/?run={classmates.id}")
    lecturer.get_by_text("bob's quick demo").first.wait_for(timeout=60_000)
    lecturer.wait_for_timeout(1500)
    shown = [key for key in ("resume", "delete") if lecturer.locator(f".st-key-{key}").count()]
    shown += ["rename"] if lecturer.get_by_text("Name and note").count() else []
    expect(len(shown) == 3, f"the lecturer may resume, delete and rename a student's run (shown: {shown})")


def expect(holds: bool, what: str) -> None:
    if not holds:
        raise SystemExit(f"not so: {what}")


def every_page(page, url: str, out: Path, who: str, run, compared: list) -> None:
    """Each page of the navigation, in its order, with `run` picked (Compare runs: `compared`), brought to what a
    person looks at (a dot clicked, a 7 drawn), shot as <who>_<page>.png; what to look at printed beside it."""
    from urllib.parse import urlparse

    page.goto(f"{url}/?run={run.id}")
    links = page.locator('[data-testid="stSidebarNavLink"]')
    links.first.wait_for(timeout=60_000)
    for href in links.evaluate_all("links => links.map(a => a.href)"):
        slug = urlparse(href).path.strip("/") or "train"
        query = f"run={run.id}" + (f"&runs={','.join(r.id for r in compared)}" if slug == "compare" else "")
        page.goto(f"{href.split('?')[0]}?{query}")
        page.locator("h1").first.wait_for(timeout=60_000)
        if slug == "latent":
            click_a_dot(page)
        elif slug == "draw":
            canvas = page.locator("canvas.ink")
            canvas.wait_for(timeout=60_000)
            draw_strokes(page, canvas, SEVEN)
            page.get_by_text("The red ring").wait_for(timeout=60_000)
        elif slug == "wall":
            page.locator(".wall .card").first.wait_for(timeout=60_000)
        elif slug in DRAWN:
            page.get_by_text(DRAWN[slug]).first.wait_for(timeout=60_000)
        shot(page, out, f"{who}_{slug}", settle_ms=2500)
        report(page)


def report(page) -> None:
    """What to look at on the shot just taken: its first screen's text under 16 px, and what is cut off."""
    small, cut = page.evaluate(LOOK)
    sizes = {float(size): texts[:6] for size, texts in sorted(small.items())}
    print(f"  under 16 px: {sizes}; cut off at the right: {cut}")


def accounts(runs: Path) -> dict[str, str]:
    """PEOPLE's accounts, made as a lecturer makes them (`cvae class add`): name -> one-time password."""
    made = {}
    for role in ("lecturer", "student"):
        flags = ["--lecturer"] if role == "lecturer" else []
        printed = subprocess.run(
            [sys.executable, "-m", "cvae", "class", "--runs-dir", str(runs), "add", *flags,
             *[name for name, r in PEOPLE.items() if r == role]],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        made.update(line.split("\t") for line in printed.splitlines())
    return made


def sign_in(browser, url: str, name: str, one_time: str):
    """A browser context of its own at 1280x720, signed in on the app's sign-in page: the one-time password,
    then the person's own, chosen on the page that follows."""
    page = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}).new_page()
    page.goto(url)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(one_time)
    page.get_by_role("button", name="Sign in").click()
    for label in ("New password", "New password again"):
        page.get_by_label(label, exact=True).fill(f"{name}'s own password")
    page.get_by_role("button", name="Save and sign in").click()
    page.get_by_text(f"Signed in as {name}").wait_for(timeout=60_000)
    return page


def fork_twin(page, url: str, run, runs: Path):
    """Fork `run` with β = 4 on its Train page, as a person does; the twin's run folder."""
    from cvae import twins

    page.goto(f"{url}/?run={run.id}")
    page.get_by_text("Fork as a twin").first.click()
    box = page.get_by_label("KL weight β", exact=True)
    box.fill("4")
    box.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Start the twin").click()
    wait(lambda: twins.twins_of(runs, run.id), 60, f"a twin of {run.id}")
    return twins.twins_of(runs, run.id)[-1]


def _healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200
    except OSError:
        return False


def shot(page, out: Path, name: str, settle_ms: int = 1500) -> None:
    page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(out / f"{name}.png"))
    print("wrote", out / f"{name}.png")


def click_a_dot(page) -> None:
    """Click a dot of class 7 on the Latent space page and wait for its reconstruction."""
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2500)
    xy = page.evaluate(
        """() => { const p = document.querySelector('.js-plotly-plot'); const L = p._fullLayout;
                   const r = p.getBoundingClientRect(); const d = p.calcdata[7][3];
                   return [r.left + L.xaxis._offset + L.xaxis.c2p(d.x), r.top + L.yaxis._offset + L.yaxis.c2p(d.y)]; }"""
    )
    page.mouse.click(xy[0], xy[1])
    page.get_by_text("reconstructed, epoch").wait_for(timeout=60_000)


def pages(page, url: str, out: Path) -> None:
    page.goto(f"{url}/?run=demo-z2")
    page.get_by_text("Finished: 12 epochs").wait_for(timeout=60_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=30_000)
    shot(page, out, "train")

    page.get_by_role("link", name="Latent space").click()
    click_a_dot(page)
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
