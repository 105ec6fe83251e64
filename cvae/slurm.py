"""Runs on a Slurm cluster: submitted with `sbatch`, their state from `squeue`, stopped with `scancel`.

The backend that `cvae.jobs` uses where the server's setting says `CVAE_BACKEND=slurm`. A run is one batch
job named `cvae-<run id>` whose script is `python -m cvae.jobs --slurm --run-dir RUN [train options]`, run
from this checkout with this Python, so the app host and every node must see the checkout, the Python
environment and the runs folder at the same paths (a shared file system: docs/hosting.md). The run folder
stays the one source of progress; Slurm says only whether the job is pending (and why), running (and
where), or gone.

Why the command-line tools and not a client library: `sbatch`, `squeue` and `scancel` are on every login
node of every Slurm version, need no accounting database and return in milliseconds. submitit learns job
states from `sacct` only (without accounting every state reads UNKNOWN and a cancelled job never ends), and
pyslurm must be built against the cluster's exact Slurm release. Without accounting, `squeue -t all` keeps
a finished job visible for the cluster's MinJobAge; a job it no longer lists is simply gone, and a run
whose status still says it trains then reads as interrupted.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from cvae.errors import ConfigError

# Slurm's states of a job that may still run (or is finishing): the run keeps its active state meanwhile.
LIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})  # fmt: skip
JOB_PREFIX = "cvae-"
CALL_TIMEOUT_S = 20.0  # a slurmctld under load answers in well under a second; a dead one is given up on
STATE_TTL_S = 2.0  # one squeue call serves every page and run for this long
DOWN_TTL_S = 10.0  # after a failed call, ask again only this much later (a page must not wait on each run)
_JOB_ID = re.compile(r"^[0-9]{1,12}(_[0-9]{1,9})?$")
_TIME = re.compile(r"^(?:(\d{1,3})-)?(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?$")


@dataclass(frozen=True)
class SlurmSettings:
    """What each run asks the cluster for, from the server's environment (`from_env`)."""

    partition: str = ""  # $CVAE_SLURM_PARTITION: empty for the cluster's default partition
    account: str = ""  # $CVAE_SLURM_ACCOUNT
    time: str = "02:00:00"  # $CVAE_SLURM_TIME: each job's time limit (Slurm's [D-]HH:MM:SS)
    cpus: int = 2  # $CVAE_SLURM_CPUS: CPUs per run; the trainer uses exactly this many threads
    gpus: int = 0  # $CVAE_SLURM_GPUS: 1 trains each run on a GPU of its own (--gres=gpu:1); 0 on the CPUs
    mem: str = "4G"  # $CVAE_SLURM_MEM: memory per run (sbatch --mem)
    grace_s: int = 120  # $CVAE_SLURM_GRACE_S: SIGTERM this long before the time limit, to stop cleanly
    extra: str = ""  # $CVAE_SLURM_EXTRA: more sbatch flags, as a shell would split them (--qos=class, ...)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SlurmSettings:
        """The settings from $CVAE_SLURM_*; a ConfigError naming the variable for a value Slurm would refuse."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f"CVAE_SLURM_{f.name.upper()}"
            raw = env.get(name, "").strip()
            if not raw:
                continue
            if f.type == "int":
                if not raw.isdigit():
                    raise ConfigError(f"{name} must be a whole number, got {raw!r}")
                values[f.name] = int(raw)
            else:
                values[f.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 1 <= self.cpus <= 1024:
            raise ConfigError(f"CVAE_SLURM_CPUS must be between 1 and 1024, got {self.cpus}")
        if self.gpus not in (0, 1):  # the app's trainer is one process: a second GPU would sit idle, held
            raise ConfigError(f"CVAE_SLURM_GPUS must be 0 or 1 (an app's run trains on one GPU; one run on several "
                              f"is a torchrun or srun job of its own: docs/hosting.md), got {self.gpus}")  # fmt: skip
        if seconds(self.time) is None:
            raise ConfigError(f"CVAE_SLURM_TIME must be Slurm's [D-]HH:MM:SS (or minutes), got {self.time!r}")
        if not re.fullmatch(r"[0-9]+[KMGT]?", self.mem):
            raise ConfigError(f"CVAE_SLURM_MEM must be a size such as 4G, got {self.mem!r}")
        for name, value in (("PARTITION", self.partition), ("ACCOUNT", self.account)):
            if value and not re.fullmatch(r"[A-Za-z0-9_.,-]{1,100}", value):
                raise ConfigError(f"CVAE_SLURM_{name} must be a Slurm name, got {value!r}")
        try:
            shlex.split(self.extra)
        except ValueError as err:
            raise ConfigError(f"CVAE_SLURM_EXTRA does not split into flags: {err}") from None

    def sbatch_flags(self) -> list[str]:
        flags = [f"--time={self.time}", f"--cpus-per-task={self.cpus}", f"--mem={self.mem}", "--ntasks=1"]
        flags += [f"--partition={self.partition}"] * bool(self.partition)
        flags += [f"--account={self.account}"] * bool(self.account)
        flags += [f"--gres=gpu:{self.gpus}"] * bool(self.gpus)
        # B: the batch shell itself, which is the trainer (the script execs it); plain TERM@ reaches srun steps only.
        flags.append(f"--signal=B:TERM@{self.grace_s}")
        return [*flags, *shlex.split(self.extra)]


def seconds(text: str) -> float | None:
    """Seconds in a Slurm duration ("MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]"); None if it is not one."""
    text = text.strip()
    if text.isdigit():
        return float(int(text) * 60)  # Slurm reads a bare number as minutes
    match = _TIME.match(text)
    if not match:
        return None
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is None:  # noqa: SIM108 - MM:SS or HH:MM:SS, read apart from the day forms
        hms = (0, a, b) if c is None else (a, b, c)
    else:  # D-HH, D-HH:MM, D-HH:MM:SS
        hms = (a, b or 0, c or 0)
    return float((days or 0) * 86400 + hms[0] * 3600 + (hms[1] or 0) * 60 + (hms[2] or 0))


def job_name(run_id: str) -> str:
    return f"{JOB_PREFIX}{run_id}"


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(_JOB_ID.match(value))


def _call(argv: list[str], stdin: str | None = None) -> str:
    """Run a Slurm command; its output, or a ConfigError with its first line of complaint."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed Slurm commands, no shell
            argv, input=stdin, capture_output=True, text=True, timeout=CALL_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} is not installed on this server: the Slurm backend needs Slurm's "
                          "commands (CVAE_BACKEND=slurm)") from None  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the cluster did not answer {argv[0]} within {CALL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        why = next((line for line in (done.stderr or done.stdout).splitlines() if line.strip()), "no message")
        raise ConfigError(f"{argv[0]} failed: {why.strip()[:300]}")
    return done.stdout


def submit(run_path: Path, run_id: str, job_argv: list[str], settings: SlurmSettings, cwd: Path) -> str:
    """Submit the run's batch job; its job id. The script execs the trainer, so that Slurm's signals reach
    it directly; its output is appended to the run's train.log."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "cvae.jobs", *job_argv])
    script = f"#!/bin/sh\ncd {shlex.quote(str(cwd))} || exit 1\nexec {command}\n"
    flags = ["--parsable", f"--job-name={job_name(run_id)}", f"--output={run_path / 'train.log'}",
             "--open-mode=append", f"--chdir={cwd}", *settings.sbatch_flags()]  # fmt: skip
    out = _call(["sbatch", *flags], stdin=script).strip()
    job_id = out.split(";", 1)[0]  # --parsable: "id" or "id;cluster"
    if not is_job_id(job_id):
        raise ConfigError(f"sbatch answered {out[:100]!r}, not a job id")
    forget()
    return job_id


@dataclass(frozen=True)
class Job:
    """One job as squeue lists it."""

    id: str
    name: str
    state: str  # Slurm's: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, ...
    reason: str  # why it is pending ("Resources", "Priority", ...), "None" otherwise
    node: str  # where it runs ("" while pending)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


_cache: dict[str, object] = {"at": -1e9, "jobs": None, "error": None}
_cache_lock = threading.Lock()


def forget() -> None:
    """Drop the cached job list (after a submit or a cancel, the next look asks the cluster)."""
    with _cache_lock:
        _cache["at"] = -1e9


def jobs() -> dict[str, Job]:
    """This user's jobs that squeue still lists (pending, running and recently ended), by id; one call serves
    every caller for STATE_TTL_S. A ConfigError when the cluster does not answer (cached for DOWN_TTL_S)."""
    with _cache_lock:
        age = time.monotonic() - float(_cache["at"])  # type: ignore[arg-type]
        if _cache["error"] is not None and age < DOWN_TTL_S:
            raise ConfigError(str(_cache["error"]))
        if _cache["jobs"] is not None and age < STATE_TTL_S:
            return _cache["jobs"]  # type: ignore[return-value]
        try:
            out = _call(["squeue", "--noheader", "--states=all", f"--user={os.getuid()}",
                         "--format=%i|%j|%T|%r|%N"])  # fmt: skip
        except ConfigError as err:
            _cache.update(at=time.monotonic(), jobs=None, error=str(err))
            raise
        found = {}
        for line in out.splitlines()[:100_000]:
            parts = line.strip().split("|")
            if len(parts) == 5 and is_job_id(parts[0]):
                found[parts[0]] = Job(parts[0], parts[1], parts[2].upper(), parts[3], parts[4])
        _cache.update(at=time.monotonic(), jobs=found, error=None)
        return found


def job_of(job_id: object, run_id: str) -> Job | None:
    """The run's job, if squeue lists it under the run's name (a job id from a crafted status.json, or one
    reused by the cluster, never names another job); None when it is gone. ConfigError: no answer."""
    if not is_job_id(job_id):
        return None
    job = jobs().get(str(job_id))
    return job if job is not None and job.name == job_name(run_id) else None


def cancel(job_id: str, run_id: str) -> bool:
    """scancel the run's job: Slurm sends SIGTERM (the trainer keeps its last epoch and says "stopped"), then
    SIGKILL after the cluster's KillWait. False when that job is not the run's or is over."""
    job = job_of(job_id, run_id)
    if job is None or not job.live:
        return False
    _call(["scancel", job.id])
    forget()
    return True


def time_left(job_id: str) -> float | None:
    """Seconds left before the job's time limit, from inside the job; None when unlimited or unknown."""
    try:
        out = _call(["squeue", "--noheader", f"--jobs={job_id}", "--format=%L"]).strip()
    except ConfigError:
        return None
    return seconds(out) if out and out.upper() not in ("UNLIMITED", "INVALID", "NOT_SET") else None


# Slurm's commonest reasons for a pending job, in words; others are shown as Slurm names them.
REASONS = {
    "None": "", "Resources": "waiting for free resources", "Priority": "jobs with a higher priority go first",
    "BeginTime": "waiting for its start time", "Dependency": "waiting for another job",
    "JobHeldUser": "held", "JobHeldAdmin": "held by the cluster's administrators",
    "ReqNodeNotAvail": "the nodes it needs are unavailable", "PartitionDown": "its partition is down",
    "Reservation": "waiting for its reservation",
}  # fmt: skip


def describe(job: Job) -> str:
    """The job's state for people: "pending on the cluster (waiting for resources)", "running on node-3"."""
    if job.state == "PENDING":
        reason = REASONS.get(job.reason)
        if reason is None and job.reason.startswith(("QOS", "Assoc")):  # QOSMaxJobsPerUserLimit, AssocGrpCpuLimit...
            reason = f"a limit of the class's share of the cluster: {job.reason}"
        reason = job.reason if reason is None else reason
        return "pending on the cluster" + (f" ({reason})" if reason else "")
    if job.state == "RUNNING":
        return f"running on {job.node}" if job.node else "running on the cluster"
    return f"{job.state.lower()} on the cluster"
