"""Faults: kill -9 at random moments never corrupts a run; resume loses at most one epoch."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvae.checkpoints import load_checkpoint
from cvae.runs import RunDir, read_json

ROOT = Path(__file__).resolve().parent.parent
TINY = ["-z", "2", "--arch", "mlp", "--train-subset", "256", "--test-subset", "128", "--latent-subset", "64",
        "-b", "64", "-lr", "1e-3", "-q", "--threads", "1", "--device", "cpu"]  # fmt: skip
# --device cpu: the test is about files surviving kill -9, the same on a machine with a GPU.


def check_consistent(run: RunDir) -> int:
    """Every file parses; metrics are whole epochs 1..k; the checkpoint is at least epoch k. Returns k."""
    assert read_json(run.config_path) is not None, "config.json unreadable"
    assert not run.status_path.exists() or read_json(run.status_path) is not None, "status.json unreadable"
    lines = run.metrics_path.read_text().splitlines() if run.metrics_path.exists() else []
    epochs = []
    for i, line in enumerate(lines):
        try:
            epochs.append(json.loads(line)["epoch"])
        except ValueError:
            assert i == len(lines) - 1, "only the last metrics line may be torn"
    assert epochs == list(range(1, len(epochs) + 1)), epochs
    if run.latest_checkpoint.exists():
        assert load_checkpoint(run.path)["epoch"] >= len(epochs)
    else:
        assert not epochs
    return len(epochs)


def _wait_for_first_epoch(run: RunDir, proc: subprocess.Popen, limit_s: float = 300.0) -> float:
    """Seconds from start until the run has a finished epoch (its metrics line and checkpoint)."""
    t = time.monotonic()
    while time.monotonic() - t < limit_s:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
        if run.metrics_path.exists() and run.metrics_path.read_text().strip() and run.latest_checkpoint.exists():
            return time.monotonic() - t
        time.sleep(0.05)
    raise AssertionError(f"no epoch finished within {limit_s:.0f} s")


# condition: the extra flags, and how many kills (the label run takes the most; the others the same loop)
CONDITIONS = {"label": ([], 20), "none": (["--condition", "none"], 6),
              "quadrants": (["--condition", "quadrants", "--quadrants", "0", "--mlp-hidden", "64"], 6)}  # fmt: skip
# The default suite kills the label run 6 times; the twenty kills and the other conditions run with -m slow.
KILLS = [pytest.param("label", 6, id="label-6"),
         *(pytest.param(c, n, id=f"{c}-{n}", marks=pytest.mark.slow) for c, (_, n) in CONDITIONS.items())]  # fmt: skip


@pytest.mark.parametrize(("condition", "total"), KILLS)
def test_kill_9_twenty_times_then_resume(tmp_path: Path, condition: str, total: int) -> None:
    """The kill moments scale with this machine's time to a first epoch (start-up included), measured by
    the first trainer: so the kills land before, during and after epochs on a fast or a slow machine alike."""
    extra = CONDITIONS[condition][0]
    rng = random.Random(0)
    run = RunDir(tmp_path / "r")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills = 0
    best = 0
    first_epoch_s = 0.0
    while kills < total:
        if run.latest_checkpoint.exists():
            args = ["-rp", str(run.path), "-e", "500", "-q", "--threads", "1", "--device", "cpu"]
        else:
            args = [*TINY, *extra, "-e", "500", "--run-dir", str(run.path)]
        proc = subprocess.Popen([sys.executable, "-m", "cvae.train", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        if kills == 0:
            first_epoch_s = _wait_for_first_epoch(run, proc)
        else:
            time.sleep(rng.uniform(0.1, 1.5) * first_epoch_s)
        if proc.poll() is not None:  # it must not have failed on its own
            raise AssertionError(f"trainer exited {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
        proc.kill()
        proc.wait()
        kills += 1
        if not run.config_path.exists():
            continue  # killed before it wrote anything
        done = check_consistent(run)
        assert done >= best, "a kill lost more than the epoch in progress"
        best = done
        assert run.read_status()["state"] in ("interrupted", "unknown")  # never "running" once dead
    assert best > 0, f"no epoch finished in {total} tries"
    # A kill between an epoch's checkpoint and its metrics line leaves the checkpoint one epoch ahead of
    # the metrics; the resume writes that line back from the checkpoint, then trains one epoch more.
    saved = load_checkpoint(run.path)["epoch"]
    proc = subprocess.run([sys.executable, "-m", "cvae.train", "-rp", str(run.path), "-e", "1", "-q", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert check_consistent(run) == saved + 1
    assert run.read_status()["state"] == "finished"


def test_a_kill_between_the_checkpoint_and_its_metrics_line_is_repaired_on_resume(tmp_path: Path) -> None:
    """The moment the long kill test hits only now and then, made on purpose: the checkpoint holds epoch 2,
    metrics.jsonl ends at epoch 1. The resume writes epoch 2's line back from the checkpoint, then trains 3."""
    run = RunDir(tmp_path / "r")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "cvae.train", *TINY, "-e", "2", "--run-dir", str(run.path)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    lines = run.metrics_path.read_text().splitlines()
    assert len(lines) == 2
    run.metrics_path.write_text(lines[0] + "\n")
    assert load_checkpoint(run.path)["epoch"] == 2
    again = subprocess.run([sys.executable, "-m", "cvae.train", "-rp", str(run.path), "-e", "1", "-q", "--device", "cpu"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert check_consistent(run) == 3
    assert run.metrics_path.read_text().splitlines()[1] == lines[1]
    assert run.read_status()["state"] == "finished"
