"""Training runs as processes: start, queue, stop, resume and delete them.

The app never trains inside the Streamlit process: `start` spawns
`python -m cvae.jobs --max-active N ... --run-dir <root>/<run>` in its own
session, which waits for one of N training slots and then trains in the same
process; its output goes to the run's train.log, and from then on the app only
reads the run folder. Stop is SIGTERM to the pid in status.json (a queued run
leaves the queue; a training one keeps the last epoch's checkpoint and writes
state "stopped").

The queue: a slot is an exclusive `flock` on `<root>/.slots/slot-K.lock`, held
for the whole training: the kernel frees it when the process ends, however it
ends (kill -9 included), so a slot is never leaked. The queue order is each
waiting run's `queued_at` in its status.json, so it lives on disk and survives
a restart of the app; the waiting run's status shows its position.

GPUs: a run that may train on a GPU (device auto or cuda, with CUDA
present) waits for a GPU slot instead, `<root>/.slots/gpu<N>-<K>.lock`: K
runs share GPU N (`runs_per_gpu`: $CVAE_RUNS_PER_GPU, else what its memory and
the host's cores allow), and the run trains with `--device cuda:N`. Slots are
tried K by K across the GPUs, so runs spread over a multi-GPU server before
they share one. `--device cuda:N` waits for GPU N's slots only; CPU (and MPS)
runs keep the CPU slots. status.json says which device a run got.

A waiting run's process imports no torch (about 30 MB instead of 0.7 GB resident, so a long queue fits in
memory): the app, which has torch loaded, tells it the GPUs (`--gpus`), and the training modules are imported
once the run has its slot.

A run's options are the same dictionary `cvae.train_model` takes (option name
-> value, see cvae.config.OPTIONS); `check_options` validates them with the
config's own checks, so the app shows the sentence the command line prints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from cvae.classroom import User, by_lecturer, check_manage, check_may_start, locked, record_owner
from cvae.cli import OneLineParser, add_options, exit_with, format_argv, given
from cvae.config import BY_NAME, DEFAULTS, QUICK_DEMO, DataConfig
from cvae.errors import ConfigError
from cvae.runs import (
    ACTIVE_STATES,
    LAUNCH_FILE,
    TWIN_FILE,
    RunDir,
    active_runs,
    available_cores,
    fresh_run_path,
    is_run_id,
    new_run_id,
    pid_alive,
    process_args,
    process_identity,
    process_is,
    read_json,
    write_json,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What the app's quick-demo button starts: the library's preset (cvae.config.QUICK_DEMO), by name.
QUICK_DEMO_OPTIONS: dict[str, Any] = {"quick_demo": True}


def data_roots() -> list[Path]:
    """Folders whose image folders the app may train on: the project's data folder (or $CVAE_DATA_DIR)
    and the ones in $CVAE_DATA_ROOTS (separated by the path separator), resolved."""
    from cvae.data import resolve_data_dir

    extra = [p for p in os.environ.get("CVAE_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    return [Path(p).expanduser().resolve() for p in (str(resolve_data_dir("")), *extra)]


def inside(path: Path, roots: list[Path]) -> bool:
    """True if `path`, resolved (symbolic links too), is one of `roots` or below one."""
    real = Path(path).expanduser().resolve()
    return any(real == root or root in real.parents for root in roots)


def _class_count(folder: Path) -> int:
    base = folder / "train" if (folder / "train").is_dir() else folder
    try:
        return sum(1 for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return 0


def image_folders(roots: list[Path], depth: int = 2) -> list[str]:
    """Image folders (at least two class sub-folders) under `roots`, `depth` levels down, as paths."""
    found: list[str] = []

    def walk(folder: Path, level: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        except OSError:
            return
        for child in children:
            if child.name in ("MNIST", "cache", "cifar-10-batches-py"):
                continue
            if _class_count(child) >= 2 and inside(child, roots):
                found.append(str(child))
            elif level < depth:
                walk(child, level + 1)

    for root in roots:
        walk(root, 1)
    return found


def check_options(options: dict[str, Any], *, data_roots: list[Path] | None = None) -> None:
    """Refuse options that would not train, with the trainer's own one-line message (a ConfigError).

    Everything the config checks is checked here, before a process starts; an
    image folder's own shapes are known only once it is read, so the trainer
    checks those (and says so in the run's status). With `data_roots` (the
    app), an image folder must lie under one of them, symbolic links resolved.
    """
    from cvae.data import builtin_info
    from cvae.training import build_config, resolve_options, section_config

    opts = resolve_options(options)
    dataset = str(opts["dataset"]).strip()
    info = builtin_info(dataset)
    if opts["data_dir"] and data_roots is not None:
        raise ConfigError("the app trains on the server's data folders only: leave data_dir empty")
    if info is None:
        folder = Path(dataset).expanduser()
        if data_roots is not None and not inside(folder, data_roots):
            roots = ", ".join(str(r) for r in data_roots)
            raise ConfigError(f"the image folder {dataset!r} is outside the server's data folders ({roots})")
        if not folder.is_dir():
            raise ConfigError(f"the image folder {dataset!r} does not exist on the server")
        if _class_count(folder) < 2:
            raise ConfigError(f"the image folder {dataset!r} needs one sub-folder per class (at least two)")
        section_config(DataConfig, opts).validate()
    else:
        build_config(opts, info)


def build_argv(options: dict[str, Any]) -> list[str]:
    """The command-line flags for `options`, leaving out values equal to the defaults (train.log reads short)."""
    base = {**DEFAULTS, **(QUICK_DEMO if options.get("quick_demo") else {})}
    return format_argv({k: v for k, v in options.items() if v != base.get(k)})


# Memory a CPU run is taken to need, to size the default number of runs that train at once, by architecture:
# an MLP run holds 0.6-0.7 GB resident, but most of that is torch's libraries, shared among the trainers
# (35 quick demos forked by the fork server held 5.0 GB in all, PSS); the reference's conv net 1.6 GB.
RUN_MEMORY_BYTES = {"mlp": 1 << 29, "conv": 3 << 29}
APP_MEMORY_BYTES = 2 << 30  # kept for the app (one Streamlit server with a class connected holds 1.5 GB)
RUNS_PER_CORE = 16  # at most this many runs time-share one core by default: a class of 30 on 2 cores at once


def memory_bytes() -> int | None:
    """This machine's memory (MemTotal of /proc/meminfo), or None where it cannot be read."""
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def max_active(arch: str = "conv") -> int:
    """How many runs of `arch` may train at once: $CVAE_MAX_RUNS, else as many as the memory holds
    (RUN_MEMORY_BYTES each, APP_MEMORY_BYTES left for the app), at most RUNS_PER_CORE per core, at least one.
    The slots are shared: a conv run takes only one of the first ones, so however the runs mix, their memory
    stays within bounds.

    Time-sharing the cores among a class's runs (each at one thread) gives every student their first pictures
    within seconds, where a queue would make the last one wait for every run ahead; the kernel shares the CPU
    out fairly among trainers of the same priority, and the memory bound keeps them all resident.
    """
    raw = os.environ.get("CVAE_MAX_RUNS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    memory = memory_bytes()
    per_run = RUN_MEMORY_BYTES.get(arch, RUN_MEMORY_BYTES["conv"])
    by_memory = (memory - APP_MEMORY_BYTES) // per_run if memory else available_cores() // 2
    return max(1, min(RUNS_PER_CORE * available_cores(), by_memory))


def train_nice() -> int:
    """How much lower than the app's the trainers' CPU priority is: $CVAE_TRAIN_NICE (0-19), else 10.

    Training takes every core it is given; at a lower priority it still does
    when the server is idle, but a page that needs the CPU gets it first.
    """
    raw = os.environ.get("CVAE_TRAIN_NICE", "")
    return min(int(raw), 19) if raw.isdigit() else 10


STEP_BACK_NICE = 19  # a trainer's priority once its first pictures are out: the newer runs' first pictures first


def lower_session(nice: int) -> None:
    """This process's session at CPU priority `nice` (or lower, never higher) where Linux groups the scheduling
    by session ("autogroup", on by default in Debian's and Ubuntu's kernels): the cores are then shared out
    between sessions first and by thread priority only within one. Every run the app starts leads a session of
    its own, so without this each run would weigh as much as the whole web server, whatever its threads' nice,
    and thirty runs would starve the pages. Only a session this process leads is changed: a `cvae train` typed
    in a terminal leaves the terminal's session as it is."""
    if os.getsid(0) != os.getpid():
        return
    with contextlib.suppress(OSError, ValueError, IndexError):  # no autogroups (macOS, switched off): nothing to do
        with open("/proc/self/autogroup") as fh:  # "/autogroup-17 nice 0"
            current = int(fh.read().split()[-1])
        if current < nice:
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(str(nice))


def lower_priority(nice: int, idle: bool = False) -> None:
    """Every thread of this process at CPU priority `nice` (or lower, never higher), and with `idle` in Linux's
    SCHED_IDLE class: it runs only when nothing else on the machine wants the core. Linux keeps both per
    thread, and torch's worker threads are already running: each is changed, and threads started later inherit
    the main thread's. Neither can be undone without privileges. The session's own priority goes with them
    (`lower_session`)."""
    lower_session(nice)
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc (macOS): the priority is the process's own
        threads = [0]
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that has just ended
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            if idle and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def step_back_after_first_pictures(run: RunDir, nice: int = STEP_BACK_NICE, poll_s: float = 0.25) -> threading.Thread:
    """Watch this process's run: once its first live pictures are written (status.json's first_pictures_at),
    lower the whole process to `nice`, in the SCHED_IDLE class. A class clicks Quick demo within seconds, so
    the runs time-share the cores; a run that has shown its student a model steps back, and the cores go first
    to the runs whose students still see nothing, and to anything interactive on the machine (the app's pages,
    a browser where the server is a laptop). Then the runs share alike among themselves what is left."""

    def watch() -> None:
        while True:
            status = read_json(run.status_path) or {}  # as written: this very process is the trainer
            if status.get("first_pictures_at") is not None:
                lower_priority(nice, idle=True)
                return
            if status.get("state") not in ("starting", "running", None):
                return
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="cvae-step-back", daemon=True)
    thread.start()
    return thread


def _queue_argv(argv: list[str], run: RunDir) -> list[str]:
    """`python -m cvae.jobs` flags: N slots, a lower priority, the GPUs. The threads stay the run's own option:
    with 0 (auto) the trainer shares the cores with the runs training beside it as they come and go."""
    gpus = json.dumps([asdict(g) for g in list_gpus()])  # this process has torch loaded; the queue has not
    slots = max_active(requested_arch(argv, run))
    flags = ["--max-active", str(slots), "--nice", str(train_nice()), "--gpus", gpus, "--run-dir", str(run.path)]
    return [*flags, *argv]


BACKENDS = ("local", "slurm")


def backend() -> str:
    """Where the app's runs execute: $CVAE_BACKEND, "local" (this server's queue, the default) or "slurm"
    (one batch job per run on the cluster, cvae.slurm). A run's own status.json says where it went, so runs
    already started keep being followed if the setting changes."""
    name = os.environ.get("CVAE_BACKEND", "").strip().lower() or "local"
    if name not in BACKENDS:
        raise ConfigError(f"CVAE_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def _spawn(run: RunDir, argv: list[str], epochs: int) -> int | str:
    """Queue the run where the server's backend says; the local queue's pid, or the cluster's job id."""
    if backend() == "slurm":
        return _submit(run, argv, epochs)
    return _spawn_here(run, argv, epochs)


def _submit(run: RunDir, argv: list[str], epochs: int) -> str:
    """Submit the run as a Slurm batch job (cvae.slurm) that trains as soon as the cluster starts it.

    status.json says "queued" on the cluster before sbatch is asked, so that the job, however soon it
    starts, finds its run waiting; if the cluster refuses it, the status is put back as it was (a resume
    that cannot be submitted leaves the run as it stood).
    """
    from cvae import slurm

    settings = slurm.SlurmSettings.from_env()
    run.path.mkdir(parents=True, exist_ok=True)
    before = read_json(run.status_path)
    run.write_status(state="queued", backend="slurm", job_id=None, node=None, pid=None, process=None,
                     position=None, pool=None, epochs=epochs, batch=0, message="", queued_at=time.time())  # fmt: skip
    # The trainer uses exactly the CPUs the job was given (the last --threads wins over the run's own).
    job_argv = ["--slurm", "--run-dir", str(run.path), *argv, "--threads", str(settings.cpus)]
    with open(run.log_path, "ab") as log:
        log.write(f"\n$ sbatch {' '.join(settings.sbatch_flags())} python -m cvae.jobs {' '.join(job_argv)}\n".encode())
    try:
        job_id = slurm.submit(run.path, run.id, job_argv, settings, PROJECT_ROOT)
    except ConfigError:
        if before is None:
            run.status_path.unlink(missing_ok=True)
        else:
            write_json(run.status_path, before, parents=False)
        raise
    run.write_status(job_id=job_id)
    return job_id


def _spawn_here(run: RunDir, argv: list[str], epochs: int) -> int:
    """Queue the run: `python -m cvae.jobs` in its own session, output to train.log; return its pid.

    The queue process waits (sleeping) for a training slot, then trains in the
    same process. status.json says "queued" from before the process exists, with
    a fresh queued_at, so a resumed run joins the end of the queue.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_status(state="queued", pid=None, process=None, position=None, epochs=epochs, batch=0,
                     message="joining the queue", queued_at=time.time())  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    flags = _queue_argv(argv, run)
    with open(run.log_path, "ab") as log:
        log.write(f"\n$ python -m cvae.jobs {' '.join(flags)}\n".encode())
    pid = _forked(run, flags)
    if pid is None:
        with open(run.log_path, "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - a fixed module and validated flags, no shell
                [sys.executable, "-m", "cvae.jobs", *flags], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            )  # fmt: skip
        # Reap the child when it exits (no zombie); this thread only waits, it never trains.
        threading.Thread(target=proc.wait, daemon=True).start()
        pid = proc.pid
    # The same pid and identity the queue process writes itself: whichever write lands last, they agree.
    run.write_status(pid=pid, process=process_identity(pid), started=time.time())
    return pid


def fork_server_on() -> bool:
    """Whether runs start from a fork server (cvae.forkserver): on Linux, unless $CVAE_FORK_SERVER is 0."""
    return sys.platform.startswith("linux") and os.environ.get("CVAE_FORK_SERVER", "1") != "0"


def fork_server_wanted(run: RunDir, flags: list[str]) -> bool:
    """Whether a run asks the runs folder's fork server for its process: a CPU run, where the server is on."""
    if not fork_server_on():
        return False
    try:
        gpus = parse_gpus(flags[flags.index("--gpus") + 1])
    except (ValueError, IndexError, ConfigError):
        return False
    # A forked process cannot use CUDA: with GPUs on the server, runs are spawned as before.
    return not gpus and requested_device(flags, run) in ("cpu", "auto")


def _forked(run: RunDir, flags: list[str]) -> int | None:
    """The run's process from the fork server, or None (then it is spawned): the server is started on the
    first need, so that the runs after this one start warm."""
    if not fork_server_wanted(run, flags):
        return None
    from cvae import forkserver

    pid = forkserver.request_warm(run.path.parent, flags, run.log_path)
    if pid is None and active_runs(run.path.parent, besides=run):  # a class is starting runs: warm up for the next
        with contextlib.suppress(OSError):
            forkserver.start(run.path.parent)
    return pid


def start(
    root: Path,
    options: dict[str, Any],
    run_id: str | None = None,
    user: User | None = None,
    data_roots: list[Path] | None = None,
    twin: dict[str, Any] | None = None,
) -> RunDir:
    """Validate `options`, create the run folder under `root` and queue it for training.

    `user`: who starts it, where sign-in is on (recorded as the run's owner; a student is held to the
    class's limit of active runs). `data_roots`: where image folders may be (the app passes
    `data_roots()`); None allows any. `twin`: the record of a twin's parent and change (cvae.twins.fork),
    written as twin.json before the run is queued.
    """
    from cvae.training import resolve_options

    check_options(options, data_roots=data_roots)
    opts = resolve_options(options)
    run_id = run_id or new_run_id(str(opts["dataset"]).strip(), opts["decoder_type"], opts["latent_dim"])
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    argv = build_argv(options)
    # The limit is checked and the run queued under one lock: two clicks at once cannot both pass it.
    with locked(root) if user is not None else contextlib.nullcontext():
        check_may_start(root, user)
        run = fresh_run_path(root, run_id)  # two starts in the same second get their own folders
        try:
            write_json(run.path / LAUNCH_FILE, {"argv": argv, "epochs": opts["epochs"]})
            if twin is not None:
                write_json(run.path / TWIN_FILE, twin)
            if user is not None:
                record_owner(run, user)
            _spawn(run, argv, opts["epochs"])
        except (OSError, ConfigError):
            # No half-made run left behind (disk full, read-only, the cluster refused the job).
            shutil.rmtree(run.path, ignore_errors=True)
            raise
    return run


def is_active(run: RunDir) -> bool:
    """Queued or training: by its status, or because a trainer holds the folder's lock (one started
    from a command line, say), so the app neither resumes nor deletes it."""
    return run.read_status().get("state") in ACTIVE_STATES or run.is_locked()


def resume(run: RunDir, more_epochs: int, user: User | None = None) -> None:
    """Train `more_epochs` more epochs from the run's last checkpoint, in the same folder."""
    check_manage(user, run, "resume")
    if not 1 <= more_epochs <= 100_000:
        raise ConfigError("more epochs must be between 1 and 100000")
    with locked(run.path.parent) if user is not None else contextlib.nullcontext():
        check_may_start(run.path.parent, user)
        if is_active(run):
            raise ConfigError("this run is still training")
        if not run.latest_checkpoint.is_file():
            raise ConfigError("this run has no checkpoint yet (it stopped before its first epoch ended)")
        done = int(run.read_status().get("epoch") or 0)
        _spawn(run, ["--resume_path", str(run.path), "--epochs", str(more_epochs)], done + more_epochs)


def can_start_again(run: RunDir) -> bool:
    """A run with no checkpoint that the app started: its flags are in launch.json."""
    launch = read_json(run.path / LAUNCH_FILE) or {}
    return isinstance(launch.get("argv"), list) and all(isinstance(a, str) for a in launch["argv"])


def launch_options(run: RunDir) -> dict[str, Any]:
    """The options the app started a run with (launch.json's flags, read by the training parser), before the
    run has written its config.json; {} when there are none or they do not parse."""
    launch = read_json(run.path / LAUNCH_FILE) or {}
    argv = launch.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return {}
    parser = OneLineParser(prog="launch.json", add_help=False)
    add_options(parser)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return given(parser.parse_args(argv))
    except SystemExit:
        return {}


def start_again(run: RunDir, user: User | None = None) -> None:
    """Start a run that ended before its first checkpoint from scratch, with the same flags, in its folder."""
    check_manage(user, run, "start again")
    with locked(run.path.parent) if user is not None else contextlib.nullcontext():
        check_may_start(run.path.parent, user)
        if is_active(run):
            raise ConfigError("this run is still training")
        launch = read_json(run.path / LAUNCH_FILE) or {}
        if not can_start_again(run):
            raise ConfigError("this run was not started from the app: start a new run instead")
        _spawn(run, [str(a) for a in launch["argv"]], int(launch.get("epochs") or 0))


def delete(run: RunDir, user: User | None = None) -> None:
    """Remove a run folder that is not training (finished, failed, stopped or interrupted)."""
    check_manage(user, run, "delete")
    if is_active(run):
        raise ConfigError("stop this run before deleting it")
    shutil.rmtree(run.path)


def explain(err: OSError) -> str:
    """One sentence for a file-system error when writing a run folder."""
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return "the disk that holds the runs folder is full. Delete old runs or ask the server's admin for space."
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the runs folder is read-only for the app. Ask the server's admin to check CVAE_RUNS_DIR."
    return f"{err.strerror or err} ({type(err).__name__})"


def _is_trainer(pid: int) -> bool:
    """Only ever signal a process that is really a cvae trainer or queued run (pids get reused)."""
    cmdline = process_args(pid)
    if cmdline is None:
        return pid_alive(pid)  # no /proc (macOS): trust the status file
    return b"cvae.train" in cmdline or b"cvae.jobs" in cmdline or b"cvae.forkserver" in cmdline


def stop(run: RunDir, user: User | None = None) -> bool:
    """Ask the run's process to stop (SIGTERM): a queued run leaves the queue, a training one
    keeps its last checkpoint. False when nothing was running."""
    check_manage(user, run, "stop")
    status = run.read_status()
    if status.get("backend") == "slurm":
        return _cancel(run, status)
    pid = status.get("pid")
    if status.get("state") not in ACTIVE_STATES or not isinstance(pid, int) or not _is_trainer(pid):
        return False
    if status.get("process") and not process_is(pid, status.get("process")):
        return False  # the pid now names another process (a fork server's, or a reused one)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def _cancel(run: RunDir, status: dict) -> bool:
    """Stop a run on the cluster: scancel its job (SIGTERM, then SIGKILL after the cluster's KillWait). A
    pending job never ran, so its status is written here; a running trainer writes its own."""
    from cvae import slurm

    if status.get("state") not in ACTIVE_STATES or not slurm.cancel(str(status.get("job_id")), run.id):
        return False
    if status.get("state") == "queued":
        run.write_status(state="stopped", message="taken out of the cluster's queue before it started")
    return True


# ---------------------------------------------------------------- the queue

POLL_S = 1.0
# What one run is taken to need on a GPU, to share a GPU out by memory: a quick demo's process holds well under
# this, CUDA context included (docs/benchmark.md, `python -m benchmarks.bench --device cuda --only queue`). A conv
# run holds more: the reference's 15 M parameters with gradients and Adam's moments (0.24 GB), CIFAR-10 on the
# device (0.61 GB) and larger activations; 2 GiB leaves it room. $CVAE_RUNS_PER_GPU overrides it.
GPU_RUN_BYTES = 2 << 30


@dataclass(frozen=True)
class Gpu:
    """A CUDA GPU this process can use: `index` as torch numbers it (cuda:<index>), its name and memory."""

    index: int
    name: str
    memory: int  # bytes


def list_gpus() -> list[Gpu]:
    """The CUDA GPUs this process sees (after CUDA_VISIBLE_DEVICES), with their memory; [] without CUDA.

    Reads the devices' properties only: nothing is allocated on a GPU. Tests replace this function with a
    fake list (tests/test_jobs.py), which is how the GPU accounting is tested on machines without one.
    """
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(Gpu(index, props.name, int(props.total_memory)))
    return found


def parse_gpus(text: str) -> list[Gpu]:
    """`--gpus`: the JSON list `list_gpus` gives, as Gpu values; a ConfigError for anything else."""
    try:
        items = json.loads(text)
        gpus = [Gpu(int(g["index"]), str(g["name"]), int(g["memory"])) for g in items]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise ConfigError("--gpus must be a JSON list of {index, name, memory}") from None
    if any(g.index < 0 or g.memory < 0 for g in gpus):
        raise ConfigError("--gpus must be a JSON list of {index, name, memory}")
    return gpus


def runs_per_gpu(gpu: Gpu, gpus: int, cores: int | None = None) -> int:
    """How many runs share `gpu` (one of `gpus`): $CVAE_RUNS_PER_GPU, else as many as its memory holds
    (GPU_RUN_BYTES each) and the host's cores drive (each run's process needs a core to launch its GPU
    work: the cores are shared out among the GPUs); at least 1."""
    raw = os.environ.get("CVAE_RUNS_PER_GPU", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    cores = available_cores() if cores is None else cores
    return max(1, min(gpu.memory // GPU_RUN_BYTES, cores // max(1, gpus)))


@dataclass(frozen=True)
class Slot:
    """One place to train: its lock file under `<root>/.slots`, and the device it gives the run
    ("cuda:N" for a GPU slot; None for a CPU slot, where the run keeps its own device option)."""

    lock: str
    device: str | None = None


def plan_slots(device: str, cpu_slots: int, gpus: list[Gpu]) -> tuple[str, list[Slot]]:
    """The queue a run with option `device` waits in ("cpu", "gpu" or "cuda:N") and its slots, in the order
    tried: GPU slots K by K across the GPUs (each GPU's first run before any GPU's second)."""
    if device in ("cpu", "mps") or not gpus:
        return "cpu", [Slot(f"slot-{k}.lock") for k in range(cpu_slots)]
    pool = "gpu"
    chosen = gpus
    if device.startswith("cuda:"):
        pool, chosen = device, [g for g in gpus if g.index == int(device[5:])]
        if not chosen:
            names = ", ".join(f"cuda:{g.index}" for g in gpus)
            raise ConfigError(f"--device {device} was asked for, but this server's GPUs are {names}")
    per = {g.index: runs_per_gpu(g, len(gpus)) for g in chosen}
    slots = [Slot(f"gpu{g.index}-{k}.lock", f"cuda:{g.index}")
             for k in range(max(per.values())) for g in chosen if k < per[g.index]]  # fmt: skip
    return pool, slots


def requested_device(train_args: list[str], run: RunDir) -> str:
    """The device option a queued run asks for: its --device flag, else (resuming) the one its run was
    trained with (any GPU if that was a GPU the queue chose for an app's run), else the default (auto)."""
    parser = OneLineParser(add_help=False, allow_abbrev=False)
    parser.add_argument(*BY_NAME["device"].flags, dest="device", default=None)
    parser.add_argument(*BY_NAME["resume_path"].flags, dest="resume_path", default=None)
    args, _ = parser.parse_known_args(train_args)
    if args.device:
        return str(args.device)
    if args.resume_path:
        folder = Path(args.resume_path)
        folder = folder if folder.is_dir() else folder.parent.parent
        saved = RunDir(folder).read_config() or {}
        device = (saved.get("train") or {}).get("device") if isinstance(saved, dict) else None
        launch = (read_json(folder / LAUNCH_FILE) or {}).get("argv")
        if isinstance(device, str) and device.startswith("cuda:") and isinstance(launch, list) and device not in launch:
            return "cuda"  # the queue picked that GPU, the person did not: any GPU will do
        if isinstance(device, str):
            return device
    return str(DEFAULTS["device"])


def requested_arch(train_args: list[str], run: RunDir) -> str:
    """The architecture a queued run trains: its --arch flag, else the quick demo's where it asks for that, else
    (resuming) its run's, else the default."""
    parser = OneLineParser(add_help=False, allow_abbrev=False)
    parser.add_argument(*BY_NAME["arch"].flags, dest="arch", default=None)
    parser.add_argument(*BY_NAME["quick_demo"].flags, dest="quick_demo", action="store_true")
    parser.add_argument(*BY_NAME["resume_path"].flags, dest="resume_path", default=None)
    args, _ = parser.parse_known_args(train_args)
    if args.arch:
        return str(args.arch)
    if args.quick_demo:
        return str(QUICK_DEMO["arch"])
    if args.resume_path:
        folder = Path(args.resume_path)
        saved = RunDir(folder if folder.is_dir() else folder.parent.parent).read_config() or {}
        arch = (saved.get("model") or {}).get("arch") if isinstance(saved, dict) else None
        if isinstance(arch, str):
            return arch
    return str(DEFAULTS["arch"])


def waiting_runs(root: Path, pool: str | None = None) -> list[RunDir]:
    """Runs waiting for a slot, in queue order (live processes only); with `pool`, only those waiting in it.
    A lecturer's runs come first (what the whole class will look at), then each in the order it joined."""
    waiting = []
    runs = [RunDir(p) for p in Path(root).iterdir() if is_run_id(p.name) and (p / "status.json").is_file()]
    for run in runs:  # queued runs have no config.json yet, so not list_runs
        status = run.read_status()
        if status.get("state") != "queued" or status.get("backend") == "slurm" or \
                not process_is(status.get("pid"), status.get("process")):  # fmt: skip
            continue
        if pool is None or status.get("pool", "cpu") == pool:
            waiting.append((not by_lecturer(run), float(status.get("queued_at") or 0), run.id, run))
    return [run for *_, run in sorted(waiting, key=lambda t: t[:3])]


STARTUP_S = 5.0  # a trainer's start before its first batch (imports, data): added to a queued run's duration
# A run's pace in its first epoch is trusted once it has trained this share of the epoch's batches: the first
# batches carry the start-up (allocations, caches), so from one batch a 2-minute quick demo read as an hour.
FIRST_EPOCH_SHARE = 0.05


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def remaining_seconds(run: RunDir) -> float | None:
    """How long a training run still takes, from its own measured speed: its finished epochs' mean duration
    (or, in its first epoch, the time the batches so far took, once they are FIRST_EPOCH_SHARE of it), times
    what is left; None before it is known."""
    status = run.read_status()
    epoch, epochs = _number(status.get("epoch")) or 0.0, _number(status.get("epochs"))
    batch, batches = _number(status.get("batch")) or 0.0, _number(status.get("batches"))
    if not epochs:
        return None
    seconds = [s for r in run.read_metrics()[-5:] if (s := _number(r.get("seconds"))) is not None]
    started = _number(status.get("epoch_started"))
    if seconds:
        per_epoch = sum(seconds) / len(seconds)
    elif started and batches and batch >= max(1.0, FIRST_EPOCH_SHARE * batches):
        per_epoch = (time.time() - started) / (batch / batches)
    else:
        return None
    done = epoch + (batch / batches if batches else 0.0)
    return max(0.0, (epochs - done) * per_epoch)


def expected_seconds(root: Path, run: RunDir) -> float | None:
    """How long a queued run will train: the median training time of the runs on this server that finished
    with the same flags (a class's quick demos), per epoch times its epochs; None when none has."""
    launch = read_json(run.path / LAUNCH_FILE) or {}
    argv, epochs = launch.get("argv"), _number(launch.get("epochs"))
    if not isinstance(argv, list) or not epochs:
        return None
    per_epoch = []
    for other in Path(root).iterdir():
        if other == run.path or not is_run_id(other.name):
            continue
        done = RunDir(other)
        if (read_json(other / LAUNCH_FILE) or {}).get("argv") != argv or done.read_status().get("state") != "finished":
            continue
        rows = done.read_metrics()
        total, count = _number(rows[-1].get("time")) if rows else None, len(rows)
        if total and count:
            per_epoch.append(total / count)
    if not per_epoch:
        return None
    per_epoch.sort()
    return STARTUP_S + per_epoch[len(per_epoch) // 2] * epochs


def estimated_start(root: Path, run: RunDir, slots: int) -> float | None:
    """Seconds until a queued run starts: the runs training in its pool end at their measured pace, then the
    runs ahead of it in the queue take the freed slots in order, each for its expected time (see
    `expected_seconds`). None when a duration is not known yet."""
    pool = run.read_status().get("pool") or "cpu"
    free = []
    for other in Path(root).iterdir():
        if not is_run_id(other.name) or other == run.path:
            continue
        status = RunDir(other).read_status()
        if status.get("backend") == "slurm":  # trains on the cluster: it holds none of this server's slots
            continue
        if status.get("state") in ("starting", "running") and (status.get("pool") or "cpu") == pool and \
                process_is(status.get("pid"), status.get("process")):  # fmt: skip
            left = remaining_seconds(RunDir(other))
            if left is None:
                return None
            free.append(left + (STARTUP_S if status.get("state") == "starting" else 0.0))
    free = sorted(free)[:slots] + [0.0] * max(0, slots - len(free))
    free.sort()
    for ahead in waiting_runs(root, pool):
        if ahead.id == run.id:
            return free[0]
        took = expected_seconds(root, ahead)
        if took is None:
            return None
        free[0] += took
        free.sort()
    return free[0]


def try_slot(folder: Path, slots: list[Slot]) -> tuple[IO, Slot] | None:
    """Take the first free slot of `slots` (an exclusive flock on its file in `folder`); None if all are held."""
    folder.mkdir(parents=True, exist_ok=True)
    for slot in slots:
        handle = open(folder / slot.lock, "a")  # noqa: SIM115 - kept open while training
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return handle, slot
    return None


def wait_for_slot(
    run: RunDir, root: Path, slots: list[Slot], *, pool: str = "cpu", should_stop: Callable[[], bool] = lambda: False
) -> tuple[IO, Slot] | None:
    """Block until this run holds one of `slots` (the first in queue order in `pool` takes the next free one);
    return the lock (keep it open) and the slot, or None if stopped."""
    status = run.read_status()
    queued_at = status.get("queued_at") or time.time()
    run.write_status(state="queued", pid=os.getpid(), process=process_identity(os.getpid()), queued_at=queued_at,
                     pool=pool, slots=len(slots))  # fmt: skip
    shown = None
    while not should_stop():
        ids = [r.id for r in waiting_runs(root, pool)]
        position = ids.index(run.id) + 1 if run.id in ids else 1
        if position == 1:
            taken = try_slot(Path(root) / ".slots", slots)
            if taken is not None:
                return taken
        if position != shown:
            shown = position
            ahead = ("a free GPU slot" if pool != "cpu" else "a free training slot") if position == 1 else (
                f"{position - 1} run(s) ahead")  # fmt: skip
            run.write_status(state="queued", position=position, message=f"waiting in the queue: {ahead}")
        time.sleep(POLL_S)
    return None


def cli(argv: list[str] | None = None) -> int:
    """python -m cvae.jobs [--max-active N] --run-dir RUN [train options]: wait for a slot, then train."""

    parser = OneLineParser(prog="python -m cvae.jobs", description="Queue a training run, then train it.")
    parser.add_argument(
        "--max-active",
        type=int,
        default=None,
        help="CPU runs training at once [$CVAE_MAX_RUNS, else what the memory holds]",
    )
    parser.add_argument("--run-dir", required=True, help="the run folder (its parent is the queue)")
    parser.add_argument("--gpus", default=None, help="the server's GPUs as JSON (what `list_gpus` gives), so "
                        "that waiting needs no torch [found with torch]")  # fmt: skip
    parser.add_argument(
        "--nice", type=int, default=0, help="lower this process's CPU priority by N (0-19), so pages stay quick [0]"
    )
    parser.add_argument("--slurm", action="store_true", help="inside a Slurm batch job: the cluster was the "
                        "queue, so train at once")  # fmt: skip
    args, train_args = parser.parse_known_args(argv)
    if args.slurm:
        return _train_in_job(RunDir(Path(args.run_dir).resolve()), train_args)
    cpu_slots = args.max_active or max_active()
    if cpu_slots < 1:
        parser.error("--max-active must be at least 1")
    if not 0 <= args.nice <= 19:
        parser.error("--nice must be between 0 and 19")
    if args.nice:
        lower_session(os.nice(args.nice))  # before torch starts its threads: they inherit it
    run = RunDir(Path(args.run_dir).resolve())
    run.path.mkdir(parents=True, exist_ok=True)
    device = requested_device(train_args, run)
    try:
        gpus = [] if device in ("cpu", "mps") else parse_gpus(args.gpus) if args.gpus is not None else list_gpus()
    except ConfigError as err:
        parser.error(str(err))
    try:
        pool, slots = plan_slots(device, cpu_slots, gpus)
    except ConfigError as err:
        run.write_status(state="failed", pid=None, message=str(err))
        print(f"error: {err}", file=sys.stderr)
        return 2
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    taken = wait_for_slot(run, run.path.parent, slots, pool=pool, should_stop=lambda: stop["requested"])
    signal.signal(signal.SIGTERM, previous)
    if taken is None:
        run.write_status(state="stopped", message="taken out of the queue before it started")
        return 0
    handle, slot = taken
    if slot.device is not None:  # a GPU slot: this run trains on that GPU (the last --device flag wins)
        train_args = [*train_args, "--device", slot.device]
        gpu = next((g for g in gpus if f"cuda:{g.index}" == slot.device), None)
        run.write_status(device=slot.device, device_name=gpu.name if gpu else "")
    run.write_status(state="starting", position=None, message="")
    if args.nice and slot.device is None:  # a CPU run the app queued: first pictures first (see the function)
        step_back_after_first_pictures(run)
    with handle:  # the slot is held until training ends, and freed by the kernel if we die
        from cvae.train import cli as train_cli  # torch, only now: a waiting run holds little memory

        return train_cli([*train_args, "--run-dir", str(run.path)])


def _train_in_job(run: RunDir, train_args: list[str]) -> int:
    """Train a run inside its Slurm job. The cluster's SIGTERM (scancel, or the time limit's warning, sent
    the grace period early) stops it like the app's Stop: the last epoch's checkpoint stays, and Resume
    submits it again. A stop at the time limit says so."""
    from cvae import slurm

    job_id = os.environ.get("SLURM_JOB_ID", "")
    run.write_status(state="starting", backend="slurm", job_id=job_id if slurm.is_job_id(job_id) else None,
                     node=os.environ.get("SLURMD_NODENAME", ""), position=None, message="")  # fmt: skip
    left = slurm.time_left(job_id) if slurm.is_job_id(job_id) else None
    limit_at = time.time() + left if left is not None else None
    from cvae.train import cli as train_cli

    code = train_cli([*train_args, "--run-dir", str(run.path)])
    try:
        grace = slurm.SlurmSettings.from_env().grace_s
    except ConfigError:
        grace = slurm.SlurmSettings.grace_s
    # Slurm sends the warning up to a minute before the grace period asks; a scancel would have ended the job.
    near_limit = limit_at is not None and time.time() >= limit_at - grace - 90
    if code == 128 + signal.SIGTERM and near_limit and _still_running(job_id, run.id):
        run.write_status(message="stopped at the cluster's time limit for one job: resume it to train on")
    return code


def _still_running(job_id: str, run_id: str) -> bool:
    """Whether the cluster still counts the job as running (a SIGTERM from scancel would have cancelled it)."""
    from cvae import slurm

    slurm.forget()
    try:
        job = slurm.job_of(job_id, run_id)
    except ConfigError:
        return False
    return job is not None and job.state == "RUNNING"


if __name__ == "__main__":
    exit_with(cli())
