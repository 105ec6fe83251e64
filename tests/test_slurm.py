"""Runs on a real Slurm cluster, through the app's own path (cvae.jobs.start / stop / resume with
CVAE_BACKEND=slurm): submitted, pending, running, read from the run folder, cancelled, resumed, stopped at a
time limit, and a class's 30 runs at once.

The cluster is a real single-node one (scripts/slurm_cluster.sh start; .ci/run starts it before the suite).
Without one these tests are skipped and say why; with CVAE_REQUIRE_SLURM=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cvae import jobs, slurm
from cvae.errors import ConfigError
from cvae.runs import RunDir, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _cluster_up() -> str | None:
    """Why there is no cluster to test on, or None when one answers."""
    if shutil.which("sbatch") is None:
        return "Slurm's commands are not installed (bash scripts/slurm_cluster.sh start installs a test cluster)"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Slurm controller does not answer"
    if out.returncode != 0 or not any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.split()):
        return f"no Slurm node is up ({(out.stderr or out.stdout).strip()[:100]}): bash scripts/slurm_cluster.sh start"
    return None


WHY_NOT = _cluster_up()
if WHY_NOT and os.environ.get("CVAE_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"CVAE_REQUIRE_SLURM=1 but {WHY_NOT}")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# Small runs: the quick demo's model on 2,000 images (an epoch takes seconds), its refine and big pictures off.
SMALL = {"quick_demo": True, "train_subset": 2000, "test_subset": 1000, "latent_subset": 500, "refine_steps": 0}


@pytest.fixture()
def on_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The app's settings for a cluster: every run a job of one CPU; the runs folder (the shared file system)."""
    monkeypatch.setenv("CVAE_BACKEND", "slurm")
    monkeypatch.setenv("CVAE_SLURM_CPUS", "1")
    monkeypatch.setenv("CVAE_SLURM_MEM", "1500M")
    monkeypatch.setenv("CVAE_SLURM_TIME", "00:20:00")
    slurm.forget()
    root = tmp_path / "runs"
    yield root
    for folder in root.iterdir() if root.is_dir() else []:  # nothing of a failed test keeps a node busy
        status = RunDir(folder).read_status()
        if status.get("job_id"):
            subprocess.run(["scancel", str(status["job_id"])], capture_output=True, timeout=20)


def wait_for(run: RunDir, done: Callable[[dict], bool], timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        status = run.read_status()
        seen.append((status.get("state"), status.get("cluster")))
        if done(status):
            return status
        time.sleep(0.5)
    tail = run.log_path.read_text()[-1500:] if run.log_path.is_file() else ""
    raise AssertionError(f"{what} not within {timeout:.0f} s; states {sorted(set(map(str, seen)))}; log: {tail}")


def epochs_in_checkpoint(run: RunDir) -> int:
    return int(torch.load(run.latest_checkpoint, map_location="cpu", weights_only=True)["epoch"])


def test_a_run_is_pending_then_runs_then_is_cancelled_keeping_its_epoch_and_resumes(on_cluster: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    cpus = int(subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True).stdout.split()[0])
    # The first run asks for every CPU of the node, so the second waits for it: pending, with Slurm's reason.
    monkeypatch.setenv("CVAE_SLURM_CPUS", str(cpus))
    first = jobs.start(on_cluster, {**SMALL, "epochs": 40}, run_id="first")
    monkeypatch.setenv("CVAE_SLURM_CPUS", "1")
    second = jobs.start(on_cluster, {**SMALL, "epochs": 1}, run_id="second")
    assert first.read_status()["backend"] == "slurm" and slurm.is_job_id(first.read_status()["job_id"])

    # The first epoch's files: its metrics line lands from the trainer's writer thread while epoch 2 trains (the
    # status's epoch counter can be ahead of it for a moment).
    running = wait_for(first, lambda s: s.get("state") == "running" and (s.get("epoch") or 0) >= 1
                       and len(first.read_metrics()) >= 1, 120, "the first run's first epoch")  # fmt: skip
    assert running["cluster"].startswith("running on ")
    pending = second.read_status()
    assert pending["state"] == "queued" and pending["cluster"].startswith("pending on the cluster"), pending
    assert len(first.read_metrics()) >= 1  # progress is read from the run folder, as for a local run

    assert jobs.stop(first) is True  # scancel: SIGTERM first, so the trainer keeps its last epoch
    stopped = wait_for(first, lambda s: s.get("state") != "running" and s.get("state") != "stopping", 60, "the stop")
    assert stopped["state"] == "stopped", stopped
    kept = epochs_in_checkpoint(first)
    assert kept >= 1 and kept == len(first.read_metrics())

    wait_for(second, lambda s: s.get("state") == "finished", 180, "the second run (once the node was free)")

    jobs.resume(first, 1)
    resumed = wait_for(first, lambda s: s.get("state") in ("finished", "failed", "interrupted"), 180, "the resume")
    assert resumed["state"] == "finished", resumed
    assert [r["epoch"] for r in first.read_metrics()] == list(range(1, kept + 2))


def test_stopping_a_pending_run_takes_it_out_of_the_cluster_queue(
    on_cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVAE_SLURM_EXTRA", "--begin=now+600")  # held by Slurm for ten minutes: surely pending
    run = jobs.start(on_cluster, {**SMALL, "epochs": 1}, run_id="held")
    status = run.read_status()
    assert status["state"] == "queued" and "pending" in status["cluster"], status
    assert jobs.stop(run) is True
    slurm.forget()
    after = run.read_status()
    assert after["state"] == "stopped" and "before it started" in after["message"], after
    assert jobs.stop(run) is False  # nothing left to stop
    jobs.delete(run)
    assert not run.path.exists()


@pytest.mark.slow  # a real time limit is whole minutes: this one takes one and a half
def test_a_run_stopped_by_its_time_limit_says_so_and_resumes(on_cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A two-minute limit with 30 s of warning: Slurm sends the warning up to a minute early, so the SIGTERM
    # comes 30 to 90 s in, after the first epochs (a few seconds each) and before the limit's kill.
    monkeypatch.setenv("CVAE_SLURM_TIME", "2")
    monkeypatch.setenv("CVAE_SLURM_GRACE_S", "30")
    run = jobs.start(on_cluster, {**SMALL, "epochs": 20_000}, run_id="limited")  # far more than 2 minutes hold
    stopped = wait_for(run, lambda s: s.get("state") in ("stopped", "finished", "failed", "interrupted"), 170,
                       "the stop at the time limit")  # fmt: skip
    assert stopped["state"] == "stopped", stopped
    assert "time limit" in stopped["message"], stopped
    kept = epochs_in_checkpoint(run)
    assert kept >= 1 and [r["epoch"] for r in run.read_metrics()] == list(range(1, kept + 1))

    monkeypatch.setenv("CVAE_SLURM_TIME", "00:20:00")
    jobs.resume(run, 1)
    done = wait_for(run, lambda s: s.get("state") in ("finished", "failed", "interrupted"), 180, "the resume")
    assert done["state"] == "finished" and len(run.read_metrics()) == kept + 1


def test_thirty_runs_submitted_at_once_all_finish_none_lost_or_duplicated(on_cluster: Path) -> None:
    tiny = {**SMALL, "epochs": 1, "train_subset": 500, "test_subset": 500, "latent_subset": 200}
    runs = [jobs.start(on_cluster, tiny, run_id=f"class-{k:02d}") for k in range(30)]
    ids = [r.read_status()["job_id"] for r in runs]
    assert len(set(ids)) == 30  # one job per run
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        states = [r.read_status().get("state") for r in runs]
        if all(s not in ("queued", "starting", "running", "stopping") for s in states):
            break
        time.sleep(2)
    assert states == ["finished"] * 30, dict(zip([r.id for r in runs], states, strict=True))
    for run in runs:
        assert [row["epoch"] for row in read_jsonl(run.metrics_path)] == [1]  # trained once, not twice
        assert run.log_path.read_text().count("done: test negative ELBO") == 1
    assert sorted(p.name for p in on_cluster.iterdir() if not p.name.startswith(".")) == [r.id for r in runs]


def test_bad_cluster_settings_are_one_line_errors_and_leave_no_run(
    on_cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVAE_SLURM_PARTITION", "no-such-partition")
    with pytest.raises(ConfigError, match="sbatch failed: .*[Pp]artition"):
        jobs.start(on_cluster, {**SMALL, "epochs": 1}, run_id="refused")
    assert not (on_cluster / "refused").exists()
    monkeypatch.setenv("CVAE_SLURM_PARTITION", "")
    monkeypatch.setenv("CVAE_SLURM_TIME", "soon")
    with pytest.raises(ConfigError, match="CVAE_SLURM_TIME"):
        jobs.start(on_cluster, {**SMALL, "epochs": 1}, run_id="refused")
    monkeypatch.setenv("CVAE_SLURM_TIME", "00:20:00")
    monkeypatch.setenv("CVAE_SLURM_GPUS", "2")
    with pytest.raises(ConfigError, match="CVAE_SLURM_GPUS must be 0 or 1"):
        jobs.start(on_cluster, {**SMALL, "epochs": 1}, run_id="refused")
    monkeypatch.setenv("CVAE_SLURM_GPUS", "0")
    monkeypatch.setenv("CVAE_BACKEND", "kubernetes")
    with pytest.raises(ConfigError, match="CVAE_BACKEND must be one of local, slurm"):
        jobs.start(on_cluster, {**SMALL, "epochs": 1}, run_id="refused")


def test_a_crafted_job_id_never_cancels_another_job(on_cluster: Path) -> None:
    """A status.json that names someone else's job (hand-edited, or an id the cluster reused) is not
    that run's job: it is neither followed nor cancelled."""
    other = subprocess.run(["sbatch", "--parsable", "--job-name=not-ours", "--output=/dev/null",
                            "--wrap=sleep 60"], capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    try:
        run = RunDir(on_cluster / "crafted")
        run.path.mkdir(parents=True)
        run.write_status(state="running", backend="slurm", job_id=other, epoch=0, epochs=1)
        slurm.forget()
        assert run.read_status()["state"] == "interrupted"
        assert jobs.stop(run) is False
        slurm.forget()
        assert slurm.jobs()[other].live  # still there
    finally:
        subprocess.run(["scancel", other], capture_output=True, timeout=20)


def test_one_run_on_two_srun_tasks_trains_as_one_run_and_resumes_on_one_process(tmp_path: Path) -> None:
    """A batch job of two tasks (srun, as on nodes with a GPU each) trains one run: the tasks find each other
    by the MASTER_ADDR the script exports, rank 0 writes the one run folder."""
    run = tmp_path / "run"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    train = [sys.executable, "-m", "cvae.train", "--quick-demo", "--train-subset", "2000", "--test-subset", "1000",
             "--latent-subset", "500", "--refine-steps", "0", "-e", "2", "--run-dir", str(run)]  # fmt: skip
    script = "\n".join([
        "#!/bin/bash",
        f"#SBATCH --ntasks=2 --cpus-per-task=1 --mem-per-cpu=1500M --time=00:10:00 --output={tmp_path}/job.log",
        f"export MASTER_ADDR=$(hostname) MASTER_PORT={port} OMP_NUM_THREADS=1 PYTHONFAULTHANDLER=1",
        "srun " + " ".join(shlex.quote(a) for a in train),
    ]) + "\n"  # fmt: skip
    out = subprocess.run(["sbatch", "--parsable", "--wait", f"--chdir={ROOT}"], input=script, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").is_file() else ""
    # what either task said when it failed (a traceback, a fault handler's stacks, a C++ abort), wherever it is
    said = [line for line in log.splitlines() if not line.startswith(("epoch ", "run ", "done: "))]
    assert out.returncode == 0, (out.stderr, "\n".join(said)[-3000:])
    assert log.count("done: test negative ELBO") == 1, log[-2000:]  # rank 0 alone speaks
    status = RunDir(run).read_status()
    assert status["state"] == "finished" and status["processes"] == 2, status
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    resumed = subprocess.run([sys.executable, "-m", "cvae.train", "-rp", str(run), "-e", "1", "-q"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
