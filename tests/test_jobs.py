"""The run queue: at most N runs train at once; the rest wait in order, on disk."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvae.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
TINY = ["-z", "2", "--arch", "mlp", "--train-subset", "512", "--test-subset", "128", "--latent-subset", "64",
        "-e", "3", "-q", "--threads", "1"]  # fmt: skip


def test_one_slot_runs_in_order_and_shows_positions(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [RunDir(tmp_path / f"run{i}") for i in range(3)]
    # The test holds the only slot until all three have queued, so the order is not left to timing.
    (tmp_path / ".slots").mkdir()
    slot = open(tmp_path / ".slots" / "slot-0.lock", "a")  # noqa: SIM115 - released below
    fcntl.flock(slot, fcntl.LOCK_EX)
    procs = []
    for run in runs:
        procs.append(subprocess.Popen([sys.executable, "-m", "cvae.jobs", "--max-active", "1", "--run-dir",
                                       str(run.path), *TINY], cwd=ROOT, env=env, stderr=subprocess.PIPE))  # fmt: skip
        deadline = time.time() + 60
        while run.read_status().get("state") != "queued" and time.time() < deadline:
            time.sleep(0.05)
    deadline = time.time() + 30
    while time.time() < deadline:
        positions = [r.read_status().get("position") for r in runs]
        if positions == [1, 2, 3]:
            break
        time.sleep(0.1)
    assert positions == [1, 2, 3]
    assert all(r.read_status()["state"] == "queued" for r in runs)
    slot.close()  # frees the slot
    max_running = 0
    deadline = time.time() + 240
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        states = [r.read_status().get("state") for r in runs]
        max_running = max(max_running, sum(s in ("starting", "running") for s in states))
        time.sleep(0.05)
    assert all(p.wait(timeout=10) == 0 for p in procs), [p.stderr.read().decode()[-300:] for p in procs]
    assert max_running == 1
    starts = [r.read_status()["started"] for r in runs]
    assert starts == sorted(starts)  # first come, first served
    assert all(r.read_status()["state"] == "finished" for r in runs)


def test_sigterm_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    blocker = subprocess.Popen([sys.executable, "-m", "cvae.jobs", "--max-active", "1", "--run-dir",
                                str(tmp_path / "a"), *TINY[:-5], "-e", "50", "-q"], cwd=ROOT, env=env)  # fmt: skip
    time.sleep(2)
    waiter = subprocess.Popen([sys.executable, "-m", "cvae.jobs", "--max-active", "1", "--run-dir",
                               str(tmp_path / "b"), *TINY], cwd=ROOT, env=env)  # fmt: skip
    run = RunDir(tmp_path / "b")
    deadline = time.time() + 60
    while run.read_status().get("state") != "queued" and time.time() < deadline:
        time.sleep(0.1)
    assert run.read_status()["state"] == "queued"
    waiter.terminate()
    assert waiter.wait(timeout=30) == 0
    assert run.read_status()["state"] == "stopped"
    blocker.kill()
    blocker.wait()


@pytest.mark.parametrize("nice", ["25", "-1", "x"])
def test_bad_nice_is_one_line_exit_2(tmp_path: Path, nice: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cvae.jobs", "--nice", nice, "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--nice" in lines[0], proc.stderr
