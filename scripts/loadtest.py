"""Load test: many browser sessions against a local `streamlit run` while two runs train.

    python -m scripts.loadtest --sessions 10 --rounds 2 --out loadtest.json

Starts the app on a free port with its runs in a temporary folder, queues two
small real training runs (MLP, a subset of MNIST) through the app's launcher
with CVAE_MAX_RUNS=2, waits for their first epoch, then opens `--sessions`
concurrent Playwright browser contexts in one headless Chromium. Each session
opens the app's address once, then moves through the four pages with the
sidebar's links, as a student does, `--rounds` times. Render time is from the
navigation (or click) until the page's main element is visible. Server memory is the
resident set (VmRSS in /proc) of the streamlit process and its children,
sampled every half second; CPU seconds of the server, the trainers and the
browsers are counted while the sessions browse. The trainers run at the app's
lower priority (nice 10, as the app starts them) and the browsers at
`--browser-nice` (19, the lowest): on a real server the browsers are the
students' own machines, here they share its cores. The figure to watch is the
server's CPU seconds per page view: the CPU of the streamlit process and its
children only (not the browsers', not the trainers'), divided by the page loads.
The first draw of the live Train page (each session's first page, opened by its
address) is reported apart. Prints Markdown tables and writes JSON.

    python -m scripts.loadtest --students 10 --within 10 --out class.json

A class instead: the lecturer's page opens the Train page of an empty server
(`--lecturer-first` seconds before the class, as a projector does), then
`--students` browser contexts (1280x720) open it and each presses Quick demo at a random moment within
`--within` seconds, as a class does when told to. For each student: the time
from the click to their own run's first reconstructions and latent scatter on
their page, and to the finished demo (up to `--finish-timeout`). Then one more
visitor opens the app, and the time its Train page takes to draw is reported.
The server runs with the app's own queue settings ($CVAE_MAX_RUNS when set).

    python -m scripts.loadtest --students 30 --within 10 --clients light

The same class, each student's page a light client of Streamlit's websocket protocol instead of a browser
(`LightPage`): it reruns the page's self-refreshing parts at the server's pace, presses the button and fetches
every picture, but draws nothing, so the server keeps its cores, as it does when the browsers are the students'
own machines. Its times are the server's part of each student's wait; the lecturer's page stays a real browser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parent.parent

# Page path -> a selector that is visible once the page has drawn its main content.
# Page -> (its sidebar link, a selector that is visible once the page has drawn its main content).
PAGES = {
    "train": ("Train", "text=test −ELBO"),
    "reconstructions": ("Reconstructions", "text=Over the epochs"),
    "latent": ("Latent space", "text=latent size"),
    "generate": ("Generate", "text=400 random codes"),
}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        found.append(p)
    return found


def rss_kb(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, in kB (0 for a process that is gone)."""
    total = 0
    for p in tree(pid):
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))  # fmt: skip
        except (OSError, ValueError, StopIteration):
            continue
    return total


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pss_kb(pid: int) -> int:
    """Proportional set size of `pid` and its descendants: memory shared between them (torch's pages, the data a
    fork server's children share) counted once in all, not once per process as in RSS."""
    total = 0
    for p in tree(pid):
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
                          if line.startswith("Pss:"))  # fmt: skip
        except (OSError, ValueError, StopIteration):
            continue
    return total


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by groups of processes over a stretch of time, from samples every half second.

    A process that exits between samples keeps its last sample, so short-lived
    browser renderers are counted up to the last half second.
    """

    def __init__(self) -> None:
        self.base: dict[int, float] = {}
        self.last: dict[str, dict[int, float]] = {}
        self.lock = threading.Lock()

    def start(self, pids: list[int]) -> None:
        with self.lock:
            self.base = {p: t for p in pids if (t := cpu_s(p)) is not None}
            self.last = {}

    def sample(self, groups: dict[str, list[int]]) -> None:
        with self.lock:
            for name, pids in groups.items():
                for p in pids:
                    t = cpu_s(p)
                    if t is not None:
                        self.last.setdefault(name, {})[p] = t - self.base.get(p, 0.0)

    def totals(self) -> dict[str, float]:
        with self.lock:
            return {name: round(sum(d.values()), 1) for name, d in self.last.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path, port: int, log: Path, max_runs: str | None = "2") -> subprocess.Popen:
    env = {**os.environ, "CVAE_RUNS_DIR": str(runs)}
    if max_runs is not None:
        env["CVAE_MAX_RUNS"] = max_runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
    )  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit("streamlit did not start: " + log.read_text()[-2000:])


def start_runs(runs: Path, epochs: int, train_subset: int) -> list:
    os.environ["CVAE_MAX_RUNS"] = "2"
    from cvae import jobs

    opts = dict(arch="mlp", latent_dim=2, epochs=epochs, batch_size=64, learning_rate=1e-3, train_subset=train_subset,
                test_subset=1000, latent_subset=1000, threads=1)  # fmt: skip
    return [jobs.start(runs, opts, run_id=f"load-{k}") for k in range(2)]


async def session(
    browser, url: str, run_id: str, rounds: int, times: dict[str, list[float]], first: list[float], errors: list
) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    loaded, start = False, None
    for _ in range(rounds):
        for name, (link, selector) in PAGES.items():
            t0 = time.perf_counter()
            start = t0 if start is None else start
            try:
                if not loaded:  # the first page: open the app's address
                    await page.goto(f"{url}/?run={run_id}")
                    loaded = True
                else:  # then move between pages with the sidebar, as a student does (no reload)
                    await page.get_by_role("link", name=link, exact=True).click(timeout=120_000)
                await page.locator(selector).first.wait_for(state="visible", timeout=120_000)
                times[name].append(time.perf_counter() - t0)
                if name == "train" and t0 == start:  # the session's first page, opened by its address
                    first.append(times[name][-1])
            except Exception as err:  # noqa: BLE001 - a timed-out page is a result, not a crash
                errors.append(f"{name}: {str(err).splitlines()[0][:120]}")
                if os.environ.get("LOADTEST_SHOTS"):  # what the page showed instead, to find out why
                    shot = Path(os.environ["LOADTEST_SHOTS"]) / f"{name}-{len(errors)}.png"
                    await page.screenshot(path=str(shot), full_page=True)
    await context.close()


async def drive(url: str, run_ids: list[str], sessions: int, rounds: int, chromium: str):
    from playwright.async_api import async_playwright

    times: dict[str, list[float]] = {name: [] for name in PAGES}
    errors: list[str] = []
    first: list[float] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        t0 = time.perf_counter()
        await asyncio.gather(*(session(browser, url, run_ids[k % len(run_ids)], rounds, times, first, errors)
                               for k in range(sessions)))  # fmt: skip
        wall = time.perf_counter() - t0
        await browser.close()
    return times, first, errors, wall


SETTLE_S = 3.0  # a page that keeps one run and its pictures this long after the click has found its own


def _queued_at(runs: Path, run_id: str) -> float:
    try:
        value = json.loads((runs / run_id / "status.json").read_text()).get("queued_at")
    except (OSError, ValueError):
        return 0.0
    return float(value) if isinstance(value, (int, float)) else 0.0


class BrowserPage:
    """A student's page in headless Chromium at 1280x720: what they see, drawn by a real browser."""

    def __init__(self, browser, url: str) -> None:
        self.browser, self.url = browser, url

    async def open(self) -> None:
        self.context = await self.browser.new_context(viewport={"width": 1280, "height": 720})
        self.page = await self.context.new_page()
        # Thirty pages loading the app's scripts at once on 2 cores take longer than Playwright's default 30 s
        # to fire "load": wait for the button instead, as a student does.
        await self.page.goto(self.url, wait_until="commit", timeout=300_000)

    async def wait_button(self, name: re.Pattern) -> None:
        self.button = self.page.get_by_role("button", name=name).first
        await self.button.wait_for(state="visible", timeout=600_000)

    async def click(self) -> None:
        await self.button.click(timeout=120_000)

    def shown(self) -> str:
        return parse_qs(urlparse(self.page.url).query).get("run", [""])[0]

    async def shows(self, *texts: str) -> bool:
        for text in texts:
            if not await self.page.get_by_text(text).first.is_visible():
                return False
        return True

    async def wait_text(self, text: str, timeout: float) -> None:
        await self.page.get_by_text(text).first.wait_for(state="visible", timeout=timeout * 1000)

    async def wait_train_page(self, timeout: float) -> None:
        await self.page.get_by_role("heading", name=re.compile("Train")).first.wait_for(state="visible",
                                                                                        timeout=timeout * 1000)  # fmt: skip
        await self.page.get_by_role("progressbar").or_(self.page.get_by_text("Queued")).first.wait_for(
            state="visible", timeout=timeout * 1000)  # fmt: skip

    async def close(self) -> None:
        await self.context.close()


class LightPage:
    """A student's page as a light client: Streamlit's own websocket protocol (its protobuf messages), as the
    browser speaks it, without drawing. It keeps the page's query string, reruns each self-refreshing fragment at
    the interval the server asks for, presses a button by sending its trigger, and fetches every picture the
    server sends, as a browser does. What it measures is the server's part of a student's wait: the pictures
    reach the student's machine, which then draws them (a fraction of a second on a laptop, the one-student
    Chromium figure shows how long). It leaves the server's two cores to the server, where thirty Chromium
    renderers would take them."""

    TEXT_KINDS = ("markdown", "heading", "alert", "caption", "text", "metric", "button")

    def __init__(self, url: str) -> None:
        self.url, self.query, self.page_hash = url, "", ""
        self.texts: dict[tuple, str] = {}  # what each place of the page holds now, as text
        self.kinds: dict[tuple, str] = {}
        self.buttons: dict[str, str] = {}  # label -> widget id
        self.timers: dict[str, asyncio.Task] = {}
        self.pictures = self.missing = 0  # pictures fetched from the server's media endpoint, and those gone
        self.ws = self.reader = None

    async def open(self) -> None:
        import websockets

        stream = self.url.replace("http://", "ws://", 1) + "/_stcore/stream"
        self.ws = await websockets.connect(stream, subprotocols=["streamlit"], max_size=None, open_timeout=300)
        self.reader = asyncio.create_task(self._read())
        await self._rerun()

    async def _rerun(self, widgets: tuple = (), fragment: str = "") -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        state = msg.rerun_script
        state.query_string, state.page_script_hash = self.query, self.page_hash
        state.widget_states.widgets.extend(widgets)
        if fragment:
            state.fragment_id, state.is_auto_rerun = fragment, True
        await self.ws.send(msg.SerializeToString())

    async def _every(self, fragment: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._rerun(fragment=fragment)

    def _stop(self, fragments) -> None:
        for fragment in list(fragments):
            task = self.timers.pop(fragment, None)
            if task is not None:
                task.cancel()

    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        async for data in self.ws:
            msg = ForwardMsg()
            msg.ParseFromString(data)
            await self._take(msg)

    async def _take(self, msg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.page_hash = msg.new_session.page_script_hash
            if not msg.metadata.run.fragment_ids:  # a whole run of the page registers its fragments anew
                self._stop(self.timers)
        elif kind == "page_info_changed":
            if msg.page_info_changed.query_string != self.query:
                self.texts.clear()  # another run on the page: what showed the last one is gone
                self.kinds.clear()
            self.query = msg.page_info_changed.query_string
        elif kind == "auto_rerun" and msg.auto_rerun.fragment_id not in self.timers:
            self.timers[msg.auto_rerun.fragment_id] = asyncio.create_task(
                self._every(msg.auto_rerun.fragment_id, msg.auto_rerun.interval))  # fmt: skip
        elif kind == "stop_auto_rerun":
            self._stop(msg.stop_auto_rerun.fragment_ids)
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            what = element.WhichOneof("type")
            body = getattr(element, what)
            text = getattr(body, "body", "") or getattr(body, "label", "") if what in self.TEXT_KINDS else ""
            if what == "imgs":  # the pictures themselves, fetched before they count as shown
                for image in body.imgs:
                    if image.url.startswith("/"):
                        try:
                            await asyncio.to_thread(_fetch, self.url + image.url)
                            self.pictures += 1
                        except OSError:  # gone by the time it was asked for (a newer refresh replaced it):
                            self.missing += 1  # a browser shows a broken picture until the next refresh
                text = " ".join(image.caption for image in body.imgs)
            if what == "button":
                self.buttons[body.label] = body.id
            path = tuple(msg.metadata.delta_path)
            self.texts[path], self.kinds[path] = text, what

    async def wait_button(self, name: re.Pattern) -> None:
        while not any(name.search(label) for label in self.buttons):
            await asyncio.sleep(0.1)
        self.button = next(self.buttons[label] for label in self.buttons if name.search(label))

    async def click(self) -> None:
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        await self._rerun((WidgetState(id=self.button, trigger_value=True),))

    def shown(self) -> str:
        return parse_qs(self.query).get("run", [""])[0]

    async def shows(self, *texts: str) -> bool:
        if self.reader.done():  # a page that no longer hears from the server would wait for ever
            raise ConnectionError(f"the page's connection ended: {self.reader.exception() or 'closed by the server'}")
        return all(any(t in v for v in list(self.texts.values())) for t in texts)

    async def wait_text(self, text: str, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not await self.shows(text):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no {text!r} within {timeout:g} s")
            await asyncio.sleep(0.2)

    async def wait_train_page(self, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not (await self.shows("Train") and ("progress" in self.kinds.values() or await self.shows("Queued"))):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the Train page was not drawn within {timeout:g} s")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        self._stop(self.timers)
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()


def _fetch(url: str) -> None:
    with urllib.request.urlopen(url, timeout=300) as response:
        response.read()


QUICK_DEMO = re.compile("quick demo", re.IGNORECASE)


async def student(page, runs: Path, delay: float, finish_timeout: float, result: dict) -> None:
    """One student: opens the Train page, presses Quick demo after `delay` s, waits for their own pictures."""
    try:
        await page.open()
        await page.wait_button(QUICK_DEMO)
        await asyncio.sleep(delay)
        t0, clicked = time.perf_counter(), time.time()
        await page.click()
        # Their own run: the one the page settles on among those queued after the click. Under load the server
        # handles a click late, and a page that showed no run yet may meanwhile show the newest one, a
        # classmate's queued after this click: a detour, counted, not taken for its own run.
        own, since = "", 0.0
        while True:
            run, now = page.shown(), time.perf_counter()
            if run and run != own and _queued_at(runs, run) >= clicked - 1.0:
                if own:
                    result["detours"] = result.get("detours", 0) + 1
                    result.pop("first_pictures_s", None)  # they were a classmate's pictures: the wait goes on
                own, since = run, now
            drawn = own and await page.shows("Their reconstructions", "Where the encoder puts")
            if drawn and page.shown() == own:
                result.setdefault("first_pictures_s", now - t0)
                if now - since >= SETTLE_S:  # pictures of one run, which the page keeps: its own
                    break
            if now - t0 > 1800:
                raise TimeoutError("the page never settled on a run of its own with its pictures")
            await asyncio.sleep(0.1)
        result["run"] = own
        result["first_reconstruction_s"] = result["first_latent_s"] = result["first_pictures_s"]
        await page.wait_text("Finished:", finish_timeout)
        result["finished_s"] = time.perf_counter() - t0
        if page.shown() != own:
            raise RuntimeError(f"the page went from its own run {own} to {page.shown()}")
    except Exception as err:  # noqa: BLE001 - a timed-out student is a result, not a crash
        result["error"] = (str(err).splitlines() or [type(err).__name__])[0][:160]
    finally:
        await page.close()


async def late_visitor(page) -> float | None:
    t0 = time.perf_counter()
    try:
        await page.open()
        await page.wait_train_page(300)
        return time.perf_counter() - t0
    except Exception:  # noqa: BLE001 - it did not draw: reported as None
        return None
    finally:
        await page.close()


async def drive_class(url: str, runs: Path, students: int, within: float, finish_timeout: float,
                      chromium: str, lecturer_first: float, clients: str) -> tuple:  # fmt: skip
    import random

    rng = random.Random(0)
    results: list[dict] = [{} for _ in range(students)]
    async with contextlib.AsyncExitStack() as stack:
        if clients == "chromium":
            from playwright.async_api import async_playwright

            p = await stack.enter_async_context(async_playwright())
            browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            stack.push_async_callback(browser.close)

        def page():
            return BrowserPage(browser, url) if clients == "chromium" else LightPage(url)

        if lecturer_first > 0:  # the projector's page, open before the class arrives (and kept open)
            lecturer = page()
            await lecturer.open()
            stack.push_async_callback(lecturer.close)
            await asyncio.sleep(lecturer_first)
        tasks = [asyncio.create_task(student(page(), runs, rng.uniform(0, within), finish_timeout, results[k]))
                 for k in range(students)]  # fmt: skip
        await asyncio.sleep(within + 5)
        late = await late_visitor(page())
        await asyncio.gather(*tasks)
    return results, late


def _spread(values: list[float]) -> dict | None:
    return {"median": round(statistics.median(values), 1), "worst": round(max(values), 1), "n": len(values)} if (
        values) else None  # fmt: skip


def class_main(args: argparse.Namespace) -> int:
    """The class measurement (--students): see the module's docstring."""
    tmp = Path(tempfile.mkdtemp(prefix="cvae-class-"))
    runs, port = tmp / "runs", free_port()
    server = start_server(runs, port, tmp / "server.log", max_runs=os.environ.get("CVAE_MAX_RUNS"))
    load_before = os.getloadavg()
    peak = {"all_kb": 0, "pss_kb": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            # the server and its trainers: its children, and the fork server's (which forks them)
            found = subprocess.run(["pgrep", "-f", f"cvae.forkserver {runs}"], capture_output=True, text=True)
            matches = {int(f) for f in found.stdout.split()}  # the fork server and its children (its command line)
            forks = [f for f in matches if parent(f) not in matches]  # the server alone: its tree holds the runs
            peak["all_kb"] = max(peak["all_kb"], rss_kb(server.pid) + sum(rss_kb(f) for f in forks))
            peak["pss_kb"] = max(peak["pss_kb"], pss_kb(server.pid) + sum(pss_kb(f) for f in forks))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    server_cpu0 = cpu_s(server.pid) or 0.0  # the streamlit process itself, not its trainers
    try:
        if args.clients == "chromium":  # light clients take little CPU, and at nice 19 the trainers would delay them
            os.nice(args.browser_nice)
        cpu0, t0 = os.times(), time.perf_counter()
        results, late = asyncio.run(drive_class(f"http://127.0.0.1:{port}", runs, args.students, args.within,
                                                args.finish_timeout, args.chromium, args.lecturer_first,
                                                args.clients))  # fmt: skip
        wall = time.perf_counter() - t0
        server_cpu = (cpu_s(server.pid) or 0.0) - server_cpu0
        cpu1 = os.times()
        client_cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # this script and the browsers it waited for
    finally:
        done.set()
        from cvae import forkserver, jobs
        from cvae.runs import RunDir, is_run_id

        started, server_side, epochs = {}, [], []
        for folder in runs.iterdir() if runs.is_dir() else []:
            if is_run_id(folder.name):
                status = RunDir(folder).read_status()
                started[folder.name] = status.get("state")
                epochs.append(status.get("epochs"))
                if isinstance(status.get("first_pictures_at"), float) and isinstance(status.get("queued_at"), float):
                    server_side.append(status["first_pictures_at"] - status["queued_at"])
                jobs.stop(RunDir(folder))
        os.killpg(server.pid, signal.SIGTERM)
        forkserver.stop(runs)
        server.wait(20)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())  # fmt: skip
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, {cpu}",
        "load_average_before": [round(x, 1) for x in load_before], "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "students": args.students, "clients": args.clients, "within_s": args.within, "max_runs": os.environ.get("CVAE_MAX_RUNS", "default"),
        "wall_s": round(wall, 1), "runs_started": started, "lecturer_first_s": args.lecturer_first,
        "epochs_per_run": sorted(e for e in epochs if isinstance(e, int)), "students_detail": results,
        "first_pictures_s": _spread([r["first_pictures_s"] for r in results if "first_pictures_s" in r]),
        "first_pictures_written_s": _spread(server_side),
        "finished_s": _spread([r["finished_s"] for r in results if "finished_s" in r]),
        "late_visitor_draw_s": None if late is None else round(late, 1),
        "errors": [r["error"] for r in results if "error" in r],
        "pages_with_detours": sum(1 for r in results if r.get("detours")),
        "peak_rss_mb_server_and_trainers": round(peak["all_kb"] / 1024),
        "peak_pss_mb_server_and_trainers": round(peak["pss_kb"] / 1024),
        "server_cpu_s": round(server_cpu, 1), "clients_cpu_s": round(client_cpu, 1), "server_cpu_share": round(server_cpu / (wall * (os.cpu_count() or 1)), 3),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"\n{args.students} students ({args.clients} pages) press Quick demo within {args.within:g} s; {summary['machine']}; "
          f"load average before {summary['load_average_before']}; {summary['date']}\n")  # fmt: skip
    print("| from the click to | median (s) | worst (s) | students |\n|---|---|---|---|")
    for key, label in (("first_pictures_written_s", "their run's first pictures written (server side)"),
                       ("first_pictures_s", "their first reconstructions and latent scatter on their page"),
                       ("finished_s", "their finished demo")):  # fmt: skip
        r = summary[key]
        print(f"| {label} | {r['median'] if r else '–'} | {r['worst'] if r else '–'} | {r['n'] if r else 0} |")
    print(f"\na visitor arriving after the class: Train page drawn in {summary['late_visitor_draw_s']} s; peak memory "
          f"of the server and its trainers {summary['peak_pss_mb_server_and_trainers']} MB PSS (shared pages counted once; "
          f"{summary['peak_rss_mb_server_and_trainers']} MB summed RSS); the streamlit process used "
          f"{summary['server_cpu_s']} CPU-s ({100 * summary['server_cpu_share']:.1f} % of the machine) in {summary['wall_s']} s")  # fmt: skip
    print(
        f"the {args.clients} pages used {summary['clients_cpu_s']} CPU-s "
        f"({100 * summary['clients_cpu_s'] / (wall * (os.cpu_count() or 1)):.1f} % of the machine)"
    )
    print(f"the quick demos were sized to {summary['epochs_per_run']} epochs (12 alone)")
    print(
        f"pages that showed another run started after their click before settling on one: "
        f"{summary['pages_with_detours']}"
    )
    print(f"errors: {len(summary['errors'])}" + "".join(f"\n  {e}" for e in summary["errors"][:10]))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if summary["errors"] else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=0, help="measure a class pressing Quick demo instead (see above)")
    ap.add_argument("--within", type=float, default=10.0, help="--students: the seconds over which they click")
    ap.add_argument("--finish-timeout", type=float, default=900.0, help="--students: how long to wait for a finish")
    ap.add_argument(
        "--lecturer-first",
        type=float,
        default=30.0,
        help="--students: the lecturer's page opens this long before the class arrives [30 s]",
    )
    ap.add_argument("--clients", choices=("chromium", "light"), default="chromium",
                    help="--students: each student's page in headless Chromium (drawn, as they see it; the browsers "
                         "share the server's cores) or as a light client of Streamlit's websocket protocol (the "
                         "server's part of the wait, with the cores left to the server) [chromium]")  # fmt: skip
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="times each session opens the four pages")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of each training run (they are stopped at the end)")
    ap.add_argument("--train-subset", type=int, default=4000)
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--browser-nice", type=int, default=19,
                    help="CPU priority of the browsers below the server's (0-19): on a real server the browsers run "
                         "on the students' machines, here they share its cores [19, the lowest]")  # fmt: skip
    ap.add_argument("--out", default="loadtest.json")
    args = ap.parse_args()
    if args.students:
        return class_main(args)

    tmp = Path(tempfile.mkdtemp(prefix="cvae-load-"))
    runs, port = tmp / "runs", free_port()
    server = start_server(runs, port, tmp / "server.log")
    samples: list[int] = []
    done, browsing = threading.Event(), threading.Event()
    meter = CpuMeter()
    trainer_pids: list[int] = []

    def groups() -> dict[str, list[int]]:
        """The server's processes, the trainers', and the rest under this script (the browsers and their driver)."""
        server_side = set(tree(server.pid))
        trainers = {p for t in trainer_pids for p in tree(t)}
        others = set(tree(os.getpid())) - server_side - trainers - {os.getpid()}
        return {"server": sorted(server_side), "trainers": sorted(trainers), "browsers": sorted(others)}

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_kb(server.pid))
            if browsing.is_set():
                meter.sample(groups())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = []
    try:
        started = start_runs(runs, args.epochs, args.train_subset)
        from cvae.runs import RunDir

        deadline = time.time() + 180
        while not all(RunDir(r.path).read_metrics() for r in started) and time.time() < deadline:
            time.sleep(1)
        states = [RunDir(r.path).read_status().get("state") for r in started]
        idle_kb = rss_kb(server.pid)
        os.nice(args.browser_nice)  # this script, and so the browsers it starts; the server and trainers keep theirs
        trainer_pids[:] = [RunDir(r.path).read_status().get("pid") or 0 for r in started]
        meter.start([p for group in groups().values() for p in group])
        browsing.set()
        times, first, errors, wall = asyncio.run(
            drive(f"http://127.0.0.1:{port}", [r.id for r in started], args.sessions, args.rounds, args.chromium)
        )
        browsing.clear()
        cpu_used = meter.totals()
        trainer_kb = [rss_kb(RunDir(r.path).read_status().get("pid") or 0) for r in started]
        still = [RunDir(r.path).read_status().get("state") for r in started]
    finally:
        done.set()
        from cvae import forkserver, jobs

        for run in started:
            jobs.stop(run)
        os.killpg(server.pid, signal.SIGTERM)
        forkserver.stop(runs)
        server.wait(20)
    all_times = [t for ts in times.values() for t in ts]
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())  # fmt: skip
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, {cpu}",
        "sessions": args.sessions, "rounds": args.rounds, "browser_nice": args.browser_nice, "page_loads": len(all_times), "errors": errors,
        "wall_s": round(wall, 1), "runs_state_at_start": states, "runs_state_at_end": still,
        "render_s": {name: {"median": round(statistics.median(ts), 2), "worst": round(max(ts), 2), "n": len(ts)}
                     for name, ts in times.items() if ts},
        "all_pages_s": {"median": round(statistics.median(all_times), 2), "worst": round(max(all_times), 2)}
        if all_times else None,
        "server_rss_mb": {"idle_with_runs": round(idle_kb / 1024), "peak": round(max(samples) / 1024),
                          "end": round(samples[-1] / 1024)},
        "trainer_rss_mb": [round(kb / 1024) for kb in trainer_kb],
        "cpu_s_while_browsing": cpu_used, "cpu_s_available": round(wall * (os.cpu_count() or 1), 1),
        "server_cpu_s_per_page_view": round(cpu_used.get("server", 0.0) / len(all_times), 3) if all_times else None,
        "train_first_draw_s": {"median": round(statistics.median(first), 2), "worst": round(max(first), 2),
                               "n": len(first)} if first else None,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{args.sessions} sessions × {args.rounds} rounds × 4 pages, 2 runs training; {result['machine']}; "
          f"{result['date']}\n")  # fmt: skip
    print("| page | median (s) | worst (s) | loads |\n|---|---|---|---|")
    for name, r in result["render_s"].items():
        print(f"| {name} | {r['median']} | {r['worst']} | {r['n']} |")
    if result["all_pages_s"]:
        print(
            f"| all pages | {result['all_pages_s']['median']} | {result['all_pages_s']['worst']} | {len(all_times)} |"
        )
    m = result["server_rss_mb"]
    print(f"\nstreamlit server RSS: {m['idle_with_runs']} MB before the sessions, peak {m['peak']} MB, "
          f"{m['end']} MB at the end; each training run {result['trainer_rss_mb']} MB")  # fmt: skip
    shares = ", ".join(f"{name} {sec:.0f} s" for name, sec in cpu_used.items())
    print(f"CPU while browsing ({result['wall_s']} s wall × {os.cpu_count()} cores = "
          f"{result['cpu_s_available']:.0f} CPU-s): {shares}")  # fmt: skip
    if result["server_cpu_s_per_page_view"] is not None:
        print(f"server CPU per page view: {cpu_used.get('server', 0.0):.1f} s / {len(all_times)} page loads = "
              f"{result['server_cpu_s_per_page_view']:.2f} s")  # fmt: skip
    if first:
        f = result["train_first_draw_s"]
        print(f"live Train page, first draw (each session's first page): median {f['median']} s, worst {f['worst']} s, "
              f"n={f['n']}")  # fmt: skip
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
