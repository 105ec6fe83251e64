"""Where runs train, and the shell's front end to it: the settings of the Slurm backend (read here without a
cluster; tests/test_slurm.py drives a real one) and `cvae runs` on this machine's own queue."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvae import jobs, slurm
from cvae.errors import ConfigError
from cvae.runs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--quick-demo",
    "--train-subset",
    "500",
    "--test-subset",
    "500",
    "--latent-subset",
    "200",
    "--refine-steps",
    "0",
]


def test_the_cluster_settings_become_sbatch_flags_and_bad_ones_name_their_variable() -> None:
    settings = slurm.SlurmSettings.from_env({"CVAE_SLURM_PARTITION": "teaching", "CVAE_SLURM_CPUS": "4",
                                             "CVAE_SLURM_GPUS": "1", "CVAE_SLURM_TIME": "1-02",
                                             "CVAE_SLURM_EXTRA": "--qos=class --reservation 'lab 1'"})  # fmt: skip
    flags = settings.sbatch_flags()
    assert {"--partition=teaching", "--cpus-per-task=4", "--gres=gpu:1", "--time=1-02", "--signal=B:TERM@120"} <= \
        set(flags) and flags[-3:] == ["--qos=class", "--reservation", "lab 1"]  # fmt: skip
    assert not any(f.startswith("--account") for f in flags)  # unset: the cluster's default
    for name, value in (("CVAE_SLURM_CPUS", "two"), ("CVAE_SLURM_CPUS", "0"), ("CVAE_SLURM_GPUS", "2"),
                        ("CVAE_SLURM_TIME", "soon"), ("CVAE_SLURM_MEM", "lots"), ("CVAE_SLURM_PARTITION", "a;rm -rf"),
                        ("CVAE_SLURM_EXTRA", "--comment='open")):  # fmt: skip
        with pytest.raises(ConfigError, match=name) as err:
            slurm.SlurmSettings.from_env({name: value})
        assert "\n" not in str(err.value)
    assert [slurm.seconds(t) for t in ("30", "05:00", "01:02:03", "2-00", "1-00:30", "x", "1:2:3:4")] == \
        [1800.0, 300.0, 3723.0, 172800.0, 88200.0, None, None]  # fmt: skip


def test_a_pending_jobs_reason_is_said_in_words() -> None:
    def job(state: str, reason: str = "None", node: str = "") -> slurm.Job:
        return slurm.Job(id="7", name="cvae-x", state=state, reason=reason, node=node)

    assert slurm.describe(job("PENDING", "Resources")) == "pending on the cluster (waiting for free resources)"
    assert slurm.describe(job("PENDING")) == "pending on the cluster"
    assert "limit of the class's share" in slurm.describe(job("PENDING", "QOSMaxJobsPerUserLimit"))
    assert slurm.describe(job("PENDING", "SomethingNew")) == "pending on the cluster (SomethingNew)"
    assert slurm.describe(job("RUNNING", node="node17")) == "running on node17"


def test_the_backend_is_local_by_default_and_an_unknown_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVAE_BACKEND", raising=False)
    assert jobs.backend() == "local"
    monkeypatch.setenv("CVAE_BACKEND", " Slurm ")
    assert jobs.backend() == "slurm"
    monkeypatch.setenv("CVAE_BACKEND", "kubernetes")
    with pytest.raises(ConfigError, match="CVAE_BACKEND must be one of local, slurm, got 'kubernetes'"):
        jobs.backend()


def cvae_runs(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVAE_BACKEND": "local", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cvae.manage", "--runs-root", str(root), *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def test_cvae_runs_starts_lists_waits_reads_resumes_and_stops_through_the_queue(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    assert cvae_runs(root, "list").stdout.strip() == f"no runs under {root}"
    out = cvae_runs(root, "start", "--id", "demo", *TINY, "-e", "1")
    assert out.returncode == 0 and out.stdout.startswith("started demo: queued"), out.stderr
    listed = cvae_runs(root, "list").stdout.splitlines()
    assert listed[0].split()[:3] == ["run", "state", "epoch"] and listed[1].split()[0] == "demo"
    assert cvae_runs(root, "wait", "demo", "--timeout", "240").stdout.strip() == "demo: finished"
    assert "done: test negative ELBO" in cvae_runs(root, "log", "demo", "-n", "5").stdout
    assert cvae_runs(root, "resume", "demo", "-e", "1").returncode == 0
    assert cvae_runs(root, "wait", str(root / "demo")).returncode == 0  # a folder's path names it too
    assert [r["epoch"] for r in read_jsonl(root / "demo" / "metrics.jsonl")] == [1, 2]
    stop = cvae_runs(root, "stop", "demo")
    assert stop.returncode == 1 and stop.stderr.strip() == "demo is not training (state: finished)"


@pytest.mark.parametrize(("args", "says"), [
    (["stop", "nobody"], "error: no run 'nobody' under"),
    (["stop", "../etc"], "error: no run '../etc': give a run's id"),
    (["start", "--run-dir", "/tmp/x"], "error: cvae runs start sets the run's folder itself: leave out --run-dir"),
    (["start", "-rp", "/tmp/x"], "leave out --resume_path (use cvae runs resume RUN)"),
    (["start", "-e", "zero"], "cvae runs start: error: argument --epochs/-e"),
    (["start", "-d", "NOPE"], "error: "),
    (["list", "--bogus"], "cvae runs: error: unrecognized arguments: --bogus"),
    (["resume", "x"], "the following arguments are required: -e/--epochs"),
])  # fmt: skip
def test_cvae_runs_bad_input_is_one_line_and_starts_nothing(tmp_path: Path, args: list[str], says: str) -> None:
    out = cvae_runs(tmp_path / "runs", *args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and says in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
