"""Shared fixtures: real MNIST (shipped in data/), tiny configs, seeded runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from cvae.train import main

torch.set_num_threads(2)
# Every test's runs folder would get a warm fork server of its own (0.5 GB, kept for minutes): off, except in
# tests/test_forkserver.py, which turns it on for the runs it starts.
os.environ["CVAE_FORK_SERVER"] = "0"
# Every AppTest of the Train page would measure the form's settings in a process of its own (seconds of CPU
# each): off, except in the tests of the estimate itself.
os.environ["CVAE_ESTIMATE"] = "0"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch MLP run on 512 real MNIST images (about 3 s): a run folder to read."""
    root = tmp_path_factory.mktemp("runs")
    result = main(
        dataset="MNIST", decoder_type="Bernoulli", latent_dim=2, epochs=2, batch_size=64,
        learning_rate=1e-3, arch="mlp", mlp_hidden=(64,), train_subset=512, test_subset=256,
        latent_subset=200, run_dir=str(root / "tiny"), quiet=True,
    )  # fmt: skip
    return result.run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(folder: Path, args: tuple[str, ...] = (), port: int | None = None):
    """`streamlit run streamlit_app.py` on a free port (or `port`), with its runs in folder/runs; yields its URL.
    On the way out it stops every run the test started, then the server."""
    port = port or _free_port()
    env = {**os.environ, "CVAE_RUNS_DIR": str(folder / "runs")}
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", *args],
        cwd=Path(__file__).resolve().parent.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
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
        pytest.fail("streamlit did not start: " + (folder / "server.log").read_text()[-2000:])
    try:
        yield url
    finally:
        from cvae.jobs import stop
        from cvae.runs import RunDir

        for status in (folder / "runs").glob("*/status.json"):
            stop(RunDir(status.parent))
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture()
def app_server():
    """A factory: `with app_server(tmp_path, args) as url:` runs the real app server for a browser test."""
    return _serve


@pytest.fixture()
def even_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs this test starts train at the app's own CPU priority (CVAE_TRAIN_NICE=0). The app's default
    trainers run niced, then in SCHED_IDLE once their first pictures are out: on a server that keeps the pages
    quick, but beside the other pytest worker (-n 2) a trainer would get only what that worker leaves, and a
    test that waits for its epochs to end could time out. Only such tests use this: elsewhere the runs a test
    merely keeps busy stay niced, so that they do not slow the other worker's tests."""
    monkeypatch.setenv("CVAE_TRAIN_NICE", "0")


@pytest.fixture()
def free_port():
    return _free_port


@pytest.fixture()
def watch_outside():
    """A function: `outside = watch_outside(page)` collects the requests that page sends off this machine."""
    return watch_outside_requests


def watch_outside_requests(page) -> list[str]:
    """The requests a Playwright page sends off this machine, collected as they go: a classroom may be offline,
    so the app must fetch nothing from elsewhere."""
    import urllib.parse

    outside: list[str] = []

    def note(request) -> None:
        host = urllib.parse.urlparse(request.url).hostname
        if request.url.split(":", 1)[0] in ("http", "https", "ws", "wss") and host not in ("127.0.0.1", "localhost"):
            outside.append(request.url)

    page.on("request", note)
    return outside
