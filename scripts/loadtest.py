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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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


def start_server(runs: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "CVAE_RUNS_DIR": str(runs), "CVAE_MAX_RUNS": "2"}
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        from cvae import jobs

        for run in started:
            jobs.stop(run)
        os.killpg(server.pid, signal.SIGTERM)
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
