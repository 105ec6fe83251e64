"""The fork server: a class's CPU runs start warm from one process with torch and MNIST loaded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvae import forkserver, jobs
from cvae.runs import RunDir, process_args

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(latent_dim=2, arch="mlp", mlp_hidden=(64,), train_subset=1024, test_subset=256, latent_subset=64,
             epochs=2, threads=1, seed=5)  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fork server for a fresh runs folder, ready to fork (and turned on for this test); stopped afterwards."""
    monkeypatch.setenv("CVAE_FORK_SERVER", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cvae.forkserver", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    assert b"ready" in proc.stdout.readline(), "the fork server did not start"
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _wait(runs: list[RunDir], state: str = "finished", limit: float = 180.0) -> None:
    deadline = time.time() + limit
    while any(r.read_status().get("state") != state for r in runs) and time.time() < deadline:
        time.sleep(0.2)


def _cmdline(pid: int) -> bytes:
    return b" ".join(process_args(pid) or ())


def test_a_class_of_runs_starts_from_the_fork_server_and_learns_what_a_spawned_run_does(
    tmp_path: Path, server: subprocess.Popen
) -> None:  # fmt: skip
    """Runs are forked from the warm server, train to the last bit what a spawned one does (same seed and
    flags), and stop cleanly with the Stop button's SIGTERM, which never reaches the server."""
    runs = [jobs.start(tmp_path, SMALL) for _ in range(2)]
    assert all(b"cvae.forkserver" in _cmdline(r.read_status()["pid"]) for r in runs)  # forked, warm
    with pytest.MonkeyPatch.context() as off:
        off.setenv("CVAE_FORK_SERVER", "0")
        runs.append(jobs.start(tmp_path, SMALL))
    assert b"cvae.jobs" in _cmdline(runs[2].read_status()["pid"])  # its own process, as without a server
    _wait(runs)
    assert [r.read_status()["state"] for r in runs] == ["finished"] * 3, [r.log_path.read_text()[-300:] for r in runs]
    drop = ("seconds", "train_seconds", "images_per_s", "time", "refine_seconds")
    learnt = [[{k: v for k, v in m.items() if k not in drop} for m in r.read_metrics()] for r in runs]
    assert learnt[0] == learnt[2] and learnt[1] == learnt[2]  # forked or spawned: the same numbers, bit for bit
    assert "Traceback" not in "".join(r.log_path.read_text() for r in runs)

    long = [jobs.start(tmp_path, {**SMALL, "epochs": 500}) for _ in range(2)]
    _wait(long, "running", 60)
    deadline = time.time() + 60
    while not long[1].read_metrics() and time.time() < deadline:
        time.sleep(0.2)
    assert b"cvae.forkserver" in _cmdline(long[1].read_status()["pid"])
    assert jobs.stop(long[1]) and jobs.stop(long[0])
    _wait(long, "stopped", 60)
    assert long[1].read_status()["state"] == "stopped" and long[1].latest_checkpoint.is_file()
    assert server.poll() is None  # the runs' stops never reach the server


def test_the_server_refuses_what_is_not_a_request_and_older_code(tmp_path: Path, server: subprocess.Popen) -> None:
    path = forkserver.socket_path(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    for junk in (b"not json\n", b"[" * 100_000 + b"\n", json.dumps({"argv": [1], "log": 2}).encode() + b"\n"):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(junk)
            assert b"error" in conn.recv(1000)
    assert server.poll() is None
    with socket.socket(socket.AF_UNIX) as conn:  # a request from a newer checkout: refused, and the server leaves
        conn.connect(str(path))
        conn.sendall(json.dumps({"argv": [], "log": str(tmp_path / "x.log"), "version": "another"}).encode() + b"\n")
        assert b"older code" in conn.recv(1000)
    assert server.wait(timeout=30) == 0
    assert forkserver.request(tmp_path, [], tmp_path / "x.log") is None  # no server: the caller spawns


def test_stop_sends_the_server_away_and_never_signals_a_pid_that_is_not_one(
    tmp_path: Path, server: subprocess.Popen
) -> None:  # fmt: skip
    assert forkserver.warming(tmp_path)
    forkserver.stop(tmp_path)
    assert server.wait(timeout=30) == 0 and not forkserver.warming(tmp_path)
    # A fork.pid left by a server that died, naming another process by now: that process is left alone.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / ".slots").mkdir(exist_ok=True)
        (tmp_path / ".slots" / "fork.pid").write_text(str(other.pid))
        forkserver.stop(tmp_path)
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=2)
    finally:
        other.kill()
        other.wait()


def test_a_second_server_for_the_same_runs_folder_leaves_at_once(tmp_path: Path, server: subprocess.Popen) -> None:
    second = subprocess.run([sys.executable, "-m", "cvae.forkserver", str(tmp_path)], cwd=ROOT, timeout=120,
                            capture_output=True, text=True)  # fmt: skip
    assert second.returncode == 0 and "ready" not in second.stdout
    assert server.poll() is None


def test_a_forked_quick_demo_shares_the_servers_mnist(tmp_path: Path, server: subprocess.Popen) -> None:
    """The server holds the quick demo's data (MNIST, binarized): a forked quick demo reads those pages, so its
    own memory is its model and activations, not another 0.4 GB copy of the data."""
    run = jobs.start(tmp_path, {"quick_demo": True, "epochs": 500, "mlp_hidden": (64,), "threads": 1})
    _wait([run], "running", 60)
    deadline = time.time() + 60
    while run.read_status().get("batch", 0) < 20 and time.time() < deadline:
        time.sleep(0.2)
    pid = run.read_status()["pid"]
    assert b"cvae.forkserver" in _cmdline(pid)
    rollup = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    private_mb = (int(rollup["Private_Clean"].split()[0]) + int(rollup["Private_Dirty"].split()[0])) / 1024
    jobs.stop(run)
    _wait([run], "stopped", 60)
    # Its model, activations, thread pools and the heap pages it touched stay under this; a copy of the data
    # would add 0.4 GB on top (MNIST binarized, train and test, as float32).
    assert private_mb < 450, private_mb


def test_a_run_started_while_the_server_loads_waits_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A class's first clicks come while the server still imports torch: those runs are forked once it is
    ready, not started cold beside it."""
    monkeypatch.setenv("CVAE_FORK_SERVER", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cvae.forkserver", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 30
        while not forkserver.warming(tmp_path) and time.time() < deadline:
            time.sleep(0.02)
        assert forkserver.warming(tmp_path) and forkserver.request(tmp_path, [], tmp_path / "x.log") is None  # loading
        run = jobs.start(tmp_path, {**SMALL, "epochs": 1})
        assert b"cvae.forkserver" in _cmdline(run.read_status()["pid"])
        _wait([run])
        assert run.read_status()["state"] == "finished"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
