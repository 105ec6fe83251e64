"""Start, stop and resume training runs as separate processes.

The app never trains inside the Streamlit process: it spawns
`python -m cvae.queue --max-active N ... --run-dir <root>/<run>` in its own
session, which waits for one of N training slots and then trains in the same
process; its output goes to the run's train.log, and from then on the app only
reads the run folder. Stop is SIGTERM to the pid in status.json (a queued run
leaves the queue; a training one keeps the last epoch's checkpoint and writes
state "stopped"). No streamlit import here: this module is the one place that
launches processes.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from cvae.config import DataConfig, TrainConfig
from cvae.errors import ConfigError
from cvae.queue import default_max_active
from cvae.runs import ACTIVE_STATES, RunDir, new_run_id, pid_alive, process_identity, read_json, run_path, write_json
from cvae.train import QUICK_DEMO as PRESET

LAUNCH_FILE = "launch.json"  # the flags the app started a run with, to start it again from scratch
OWNER_FILE = "owner.json"  # who started the run, when sign-in is on

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Every option of `python -m cvae.train`, as the Train form fills it in."""

    dataset: str = "MNIST"  # MNIST, CIFAR10 or an image folder path
    decoder_type: str = "Bernoulli"
    model_sigma: bool = False
    latent_dim: int = 2
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-4
    lr_schedule: str = "exponential"  # exponential (constant here: no per-epoch decay) or cosine
    warmup_epochs: float = 0.0  # cosine only
    refine_steps: int = 0  # after the last epoch, the test ELBO with q refined per image too
    arch: str = "conv"
    seed: int = 0
    print_every: int = 1
    binarize: str = "static"  # Bernoulli only
    fixed_sigma: float = 1.0  # Gaussian with fixed sigma only
    image_size: int = 0  # image folders; 0 = the first image's size
    train_subset: int = 0  # 0 = all
    test_subset: int = 0  # 0 = all
    checkpoint_every: int = 20
    latent_subset: int = 2000
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # 0 = all cores
    data_dir: str = ""
    quick_demo: bool = False  # the library's --quick-demo preset (cvae.train.QUICK_DEMO)

    @property
    def gaussian(self) -> bool:
        return self.decoder_type.lower() == "gaussian"


QUICK_DEMO = TrainOptions(
    quick_demo=True, arch=PRESET["arch"], latent_dim=PRESET["latent_dim"], epochs=PRESET["epochs"],
    batch_size=PRESET["batch_size"], learning_rate=PRESET["learning_rate"], lr_schedule=PRESET["lr_schedule"],
    warmup_epochs=PRESET["warmup_epochs"], refine_steps=PRESET["refine_steps"],
)  # fmt: skip


def validate(opts: TrainOptions) -> list[str]:
    """Problems with `opts`, one sentence each; empty when the run can start."""
    problems: list[str] = []
    name = opts.dataset.strip()
    builtin = name.upper().replace("-", "") in ("MNIST", "CIFAR10")
    if not name:
        problems.append("Choose a dataset, or type the path of an image folder.")
    elif not builtin:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            problems.append(f"The image folder {name!r} does not exist on the server.")
        else:
            base = folder / "train" if (folder / "train").is_dir() else folder
            classes = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if len(classes) < 2:
                problems.append(f"The image folder {name!r} needs one sub-folder per class (at least two).")
    if not opts.gaussian and name.upper().replace("-", "") == "CIFAR10":
        problems.append("CIFAR-10 is in colour: the Bernoulli decoder models black-and-white images. Pick Gaussian.")
    if opts.model_sigma and not opts.gaussian:
        problems.append("A learned sigma needs the Gaussian decoder.")
    if not 1 <= opts.latent_dim <= 1024:
        problems.append("The latent size must be between 1 and 1024.")
    if opts.arch == "conv" and opts.image_size and opts.image_size % 4:
        problems.append("The conv architecture needs an image size divisible by 4 (e.g. 28 or 32), or use mlp.")
    try:
        DataConfig(
            dataset=name or "MNIST", image_size=opts.image_size or None,
            train_subset=opts.train_subset or None, test_subset=opts.test_subset or None,
        ).validate()  # fmt: skip
        TrainConfig(
            epochs=opts.epochs, batch_size=opts.batch_size, learning_rate=opts.learning_rate, seed=opts.seed,
            device=opts.device, precision=opts.precision, print_every=opts.print_every,
            checkpoint_every=opts.checkpoint_every, latent_subset=opts.latent_subset, threads=opts.threads,
            lr_schedule=opts.lr_schedule, warmup_epochs=opts.warmup_epochs, refine_steps=opts.refine_steps,
        ).validate()  # fmt: skip
    except ConfigError as err:
        problems.append(str(err)[:1].upper() + str(err)[1:] + ".")
    return problems


def build_argv(opts: TrainOptions) -> list[str]:
    """The command-line flags for `opts` (defaults left out, so train.log reads short)."""
    if opts.quick_demo:  # the preset lives in the library; only what the user may change is passed
        return ["--quick-demo", "--latent_dim", str(opts.latent_dim), "--seed", str(opts.seed),
                "--threads", str(opts.threads)]  # fmt: skip
    argv = [
        "--dataset", opts.dataset.strip(), "--decoder_type", opts.decoder_type,
        "--model_sigma", str(bool(opts.model_sigma and opts.gaussian)),
        "--latent_dim", str(opts.latent_dim), "--epochs", str(opts.epochs), "--batch_size", str(opts.batch_size),
        "--learning_rate", repr(float(opts.learning_rate)), "--arch", opts.arch, "--seed", str(opts.seed),
        "--print_every", str(opts.print_every), "--checkpoint-every", str(opts.checkpoint_every),
        "--latent-subset", str(opts.latent_subset), "--precision", opts.precision, "--device", opts.device,
        "--threads", str(opts.threads),
    ]  # fmt: skip
    if opts.lr_schedule != "exponential":
        argv += ["--lr-schedule", opts.lr_schedule, "--warmup-epochs", repr(float(opts.warmup_epochs))]
    if opts.refine_steps:
        argv += ["--refine-steps", str(opts.refine_steps)]
    if opts.gaussian:
        if not opts.model_sigma:
            argv += ["--fixed-sigma", repr(float(opts.fixed_sigma))]
    else:
        argv += ["--binarize", opts.binarize]
    for flag, value in (("--image-size", opts.image_size), ("--train-subset", opts.train_subset),
                        ("--test-subset", opts.test_subset)):  # fmt: skip
        if value:
            argv += [flag, str(value)]
    if opts.data_dir:
        argv += ["--data-dir", opts.data_dir]
    return argv


def max_active() -> int:
    """How many runs may train at once: $CVAE_MAX_RUNS, else half the cores (at least one)."""
    return default_max_active()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_nice() -> int:
    """How much lower than the app's the trainers' CPU priority is: $CVAE_TRAIN_NICE (0-19), else 10.

    Training takes every core it is given; at a lower priority it still does
    when the server is idle, but a page that needs the CPU gets it first.
    """
    raw = os.environ.get("CVAE_TRAIN_NICE", "")
    return min(int(raw), 19) if raw.isdigit() else 10


def _queue_argv(argv: list[str], run: RunDir) -> list[str]:
    """`python -m cvae.queue` flags: N slots, a lower priority, and with N > 1 an equal share of the cores per run."""
    n = max_active()
    extra = ["--max-active", str(n), "--nice", str(train_nice()), "--run-dir", str(run.path)]
    if n > 1 and "--threads" in argv and argv[argv.index("--threads") + 1] == "0":
        argv = [*argv]
        argv[argv.index("--threads") + 1] = str(max(1, _cores() // n))
    elif n > 1 and "--threads" not in argv:
        argv = [*argv, "--threads", str(max(1, _cores() // n))]
    return [*extra, *argv]


def _spawn(run: RunDir, argv: list[str], epochs: int) -> int:
    """Queue the run: `python -m cvae.queue` in its own session, output to train.log; return its pid.

    The queue process waits (sleeping) for a training slot, then trains in the
    same process. status.json says "queued" from before the process exists, with
    a fresh queued_at, so a resumed run joins the end of the queue.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_status(state="queued", pid=None, process=None, position=None, epochs=epochs, batch=0,
                     message="joining the queue", queued_at=time.time())  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cvae.queue", *_queue_argv(argv, run)]
    with open(run.log_path, "ab") as log:
        log.write(f"\n$ python -m cvae.queue {' '.join(command[3:])}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 - a fixed module and validated flags, no shell
            command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip
    # Reap the child when it exits (no zombie); this thread only waits, it never trains.
    threading.Thread(target=proc.wait, daemon=True).start()
    # The same pid and identity the queue process writes itself: whichever write lands last, they agree.
    run.write_status(pid=proc.pid, process=process_identity(proc.pid), started=time.time())
    return proc.pid


def start(root: Path, opts: TrainOptions, run_id: str | None = None, owner: str | None = None) -> RunDir:
    """Validate `opts`, create the run folder under `root` and queue it for training."""
    problems = validate(opts)
    if problems:
        raise ConfigError(" ".join(problems))
    likelihood = "gaussian" if opts.gaussian else "bernoulli"
    run_id = run_id or new_run_id(opts.dataset.strip(), likelihood, opts.latent_dim)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    run = run_path(root, run_id)
    suffix = 2
    while run.path.exists():  # two starts in the same second
        run = run_path(root, f"{run_id}-{suffix}")
        suffix += 1
    run.path.mkdir(parents=True)
    argv = build_argv(opts)
    try:
        write_json(run.path / LAUNCH_FILE, {"argv": argv, "epochs": opts.epochs})
        if owner:
            write_json(run.path / OWNER_FILE, {"owner": owner, "created": time.time()})
        _spawn(run, argv, opts.epochs)
    except OSError:
        shutil.rmtree(run.path, ignore_errors=True)  # no half-made run left behind (disk full, read-only)
        raise
    return run


def is_active(run: RunDir) -> bool:
    return run.read_status().get("state") in ACTIVE_STATES


def resume(run: RunDir, more_epochs: int) -> None:
    """Train `more_epochs` more epochs from the run's last checkpoint, in the same folder."""
    if is_active(run):
        raise ConfigError("this run is still training")
    if not run.latest_checkpoint.is_file():
        raise ConfigError("this run has no checkpoint yet (it stopped before its first epoch ended)")
    if not 1 <= more_epochs <= 100_000:
        raise ConfigError("more epochs must be between 1 and 100000")
    done = int(run.read_status().get("epoch") or 0)
    _spawn(run, ["--resume_path", str(run.path), "--epochs", str(more_epochs)], done + more_epochs)


def can_start_again(run: RunDir) -> bool:
    """A run with no checkpoint that the app started: its flags are in launch.json."""
    launch = read_json(run.path / LAUNCH_FILE) or {}
    return isinstance(launch.get("argv"), list) and all(isinstance(a, str) for a in launch["argv"])


def start_again(run: RunDir) -> None:
    """Start a run that ended before its first checkpoint from scratch, with the same flags, in its folder."""
    if is_active(run):
        raise ConfigError("this run is still training")
    launch = read_json(run.path / LAUNCH_FILE) or {}
    if not can_start_again(run):
        raise ConfigError("this run was not started from the app: start a new run instead")
    _spawn(run, [str(a) for a in launch["argv"]], int(launch.get("epochs") or 0))


def delete(run: RunDir) -> None:
    """Remove a run folder that is not training (finished, failed, stopped or interrupted)."""
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
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the status file
    return b"cvae.train" in cmdline or b"cvae.queue" in cmdline


def stop(run: RunDir) -> bool:
    """Ask the run's process to stop (SIGTERM): a queued run leaves the queue, a training one
    keeps its last checkpoint. False when nothing was running."""
    status = run.read_status()
    pid = status.get("pid")
    if status.get("state") not in ACTIVE_STATES or not isinstance(pid, int) or not _is_trainer(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


OPTION_NAMES = tuple(f.name for f in fields(TrainOptions))
