"""The run folder: the one interface between training and everything that reads it.

    checkpoints/<run_id>/
      config.json        RunConfig + DatasetInfo + when and how it was started
      status.json        state, epoch, batch, pid, message (rewritten atomically)
      metrics.jsonl      one JSON object per finished epoch (append-only)
      batches.jsonl      one JSON object per logged batch (append-only)
      train.log          the training process's output, when the app started it
      artifacts/         truth.png, epoch_NNNN_recon_mean.png, epoch_NNNN_recon_sample.png,
                         latent_index.npy, latent_labels.npy, epoch_NNNN_latent.npy,
                         epoch_NNNN_decoder.npz, live_* (the epoch in progress; live_info.json says which batch)
      checkpoints/       latest.pt (every epoch), epoch_NNNN.pt (every N epochs and the last)

Writers replace whole files atomically (temporary file, fsync, rename) or
append whole lines; readers skip a torn last line. See docs/run-folder.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run folder is then not protected
    fcntl = None  # type: ignore[assignment]
from cvae.errors import CVAEError
from cvae.legacy import upgrade_config

MAX_RUN_ID = 120  # characters of a run folder's name (and at most twice that in bytes: file systems allow 255)
ACTIVE_STATES = ("queued", "starting", "running", "stopping")
LAUNCH_FILE = "launch.json"  # the flags the app started a run with, to start it again from scratch
OWNER_FILE = "owner.json"  # {"owner": name, "created": time}: who started the run, when sign-in is on
TWIN_FILE = "twin.json"  # a twin's parent and its one changed setting (cvae.twins)
LOCK_FILE = ".lock"  # flock()ed by the one trainer writing the folder; holds its pid
MAX_JSON_BYTES = 4 << 20  # config, status, meta and launch files are kilobytes: anything past this is not ours
MAX_JSONL_LINE = 1 << 20  # a metrics or batch line is under a kilobyte
LOCK_RETRY_S = 0.5  # an `is_locked` probe holds the lock for microseconds: retry that long before refusing


def default_runs_root() -> Path:
    return Path(os.environ.get("CVAE_RUNS_DIR", "checkpoints"))


def is_run_id(name: object) -> bool:
    """A run id is one folder name: any printable text (spaces and accents too, as `--run-dir` may make),
    without a path separator, not hidden (no leading '.', so never '.' or '..'), at most MAX_RUN_ID long."""
    return isinstance(name, str) and 0 < len(name) <= MAX_RUN_ID and len(name.encode()) <= 2 * MAX_RUN_ID and \
        name.isprintable() and not name.startswith(".") and "/" not in name and "\\" not in name  # fmt: skip


def check_run_id(run_id: str) -> str:
    if not is_run_id(run_id):
        raise CVAEError(f"invalid run id {str(run_id)[:60]!r}: one folder name, without '/' or a leading '.'")
    return run_id


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def clean_json(value: Any) -> Any:
    """NaN and infinities are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def write_atomic(path: Path, data: bytes, *, parents: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the new, never half.

    parents=False for a trainer's files: its run folder (and the folders in it) must still be where it was
    locked, so a folder moved or deleted while it trains is not made again at the old path (FileNotFoundError)."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a full disk fails the write itself: say which file it was
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, *, parents: bool = True) -> None:
    write_atomic(path, json.dumps(clean_json(obj), indent=2, default=_json_default).encode(), parents=parents)


def parse_json(data: bytes | str) -> Any:
    """JSON from a file anyone could have written: None for invalid text, bad encodings and nesting too deep
    for the parser (RecursionError), so that one hostile file is only its run's problem."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict | None:
    """The object in `path`, or None if it is missing, unreadable, not an object or larger than `max_bytes`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError:
        return None
    if len(data) > max_bytes:
        return None
    value = parse_json(data)
    return value if isinstance(value, dict) else None


def jsonl_lines(fh: Any, max_line: int = MAX_JSONL_LINE) -> Iterator[bytes]:
    """The complete lines of a binary file from where it stands, each at most `max_line` bytes. A longer line
    is read past in pieces, never held whole, and yields b"" (so a caller's offset can move past it); a last
    line without its newline (a writer mid-line, or killed there) is left unread for next time."""
    while True:
        line = fh.readline(max_line + 1)
        if not line.endswith(b"\n"):
            if len(line) <= max_line:
                return  # the end, or a torn last line
            while not line.endswith(b"\n"):  # an overlong line: skipped
                line = fh.readline(1 << 20)
                if not line:
                    return  # still being written
            yield b""
            continue
        yield line


def read_jsonl(path: Path) -> list[dict]:
    """Every complete, valid line of an append-only JSON-lines file (lines over MAX_JSONL_LINE skipped)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return []
    rows = []
    with fh:
        try:
            for line in jsonl_lines(fh):
                row = parse_json(line.decode("utf-8", errors="replace")) if line else None  # a garbled byte
                if isinstance(row, dict):  # spoils its line only
                    rows.append(row)
        except OSError:
            pass
    return rows


def available_cores() -> int:
    """CPU cores this process may use (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def others_cpu_seconds() -> float | None:
    """CPU seconds the cores this process may use have spent since boot on anything else (time a virtual
    machine's host took from them included), or None where there is no /proc/stat (macOS)."""
    try:
        cores = {f"cpu{c}" for c in os.sched_getaffinity(0)}
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *ticks = line.split()
                if name in cores:  # user, nice, system, (idle, iowait,) irq, softirq, steal
                    busy += sum(int(ticks[i]) for i in (0, 1, 2, 5, 6, 7))
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return busy / os.sysconf("SC_CLK_TCK") - time.process_time()


def process_identity(pid: int) -> str | None:
    """'<boot id>:<start time>' of a live process, so a reused pid is not mistaken for it."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None  # no /proc (macOS): fall back to the pid alone
    return f"{boot}:{start}"


def process_args(pid: int, wait_s: float = 1.0) -> list[bytes] | None:
    """A process's command line, split at its NULs; None where there is no /proc (macOS) or no such process.
    A process just started shows an empty command line for a moment: exec lets its parent go on (a spawner
    back from Popen) before the new program's arguments are in place. That moment is waited out, up to
    `wait_s`; a zombie's is empty for good and returned at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        if raw or state == "Z" or time.monotonic() >= deadline:
            return raw.split(b"\0")
        time.sleep(0.005)


def process_is(pid: Any, identity: Any) -> bool:
    """True if `pid` is alive and, where known, is the very process that wrote `identity`."""
    if not pid_alive(pid):
        return False
    return not identity or process_identity(pid) in (None, identity)


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def live_status(status: dict, run_id: str = "") -> dict:
    """A copy of a status.json object as it stands now: a dead process's active state reads 'interrupted'.

    Kept apart from reading the file so that a reader may cache the file's content
    (keyed by its mtime) and still see a process that died without a word.
    """
    status = dict(status)
    state = status.get("state")
    if state not in ("queued", "starting", "running", "stopping", "finished", "failed", "stopped"):
        status["state"] = "interrupted" if state else "unknown"
    elif state in ACTIVE_STATES and status.get("backend") == "slurm":
        _cluster_status(status, run_id)
    elif state in ACTIVE_STATES and not process_is(status.get("pid"), status.get("process")):
        status["state"] = "interrupted"
        status["message"] = "the training process is gone; resume from the last checkpoint"
    return status


SUBMITTING_S = 60.0  # a run queued for the cluster may go this long without a job id (sbatch is answering)


def _cluster_status(status: dict, run_id: str) -> None:
    """An active run on the cluster, as Slurm sees it: its job's state and reason (`cluster`), or
    "interrupted" once the job is gone; unchanged when the cluster does not answer (it may be busy: a run
    must not look resumable while it still trains)."""
    from cvae import slurm
    from cvae.errors import ConfigError

    job_id = status.get("job_id")
    if job_id is None:
        queued = status.get("queued_at")
        if isinstance(queued, (int, float)) and 0 <= time.time() - queued < SUBMITTING_S:
            status["cluster"] = "being submitted to the cluster"
            return
    try:
        job = slurm.job_of(job_id, run_id)
    except ConfigError as err:
        status["cluster"] = f"the cluster does not answer ({err})"
        return
    if job is not None and job.live:
        status["cluster"] = slurm.describe(job)
        status["node"] = job.node
        return
    status["state"] = "interrupted"
    ended = f" ({job.state.lower()})" if job is not None else ""
    status["message"] = (
        f"the cluster's job ended{ended} without a word from the trainer; resume from the last checkpoint"
    )


_STATUS_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunDir:
    """Paths and readers for one run folder."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def batches_path(self) -> Path:
        return self.path / "batches.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def artifact(self, epoch: int, name: str) -> Path:
        """Per-epoch artifact: recon_mean.png, recon_sample.png or latent.npy."""
        return self.artifacts / f"epoch_{epoch:04d}_{name}"

    def live_artifact(self, name: str) -> Path:
        """The epoch in progress's newest picture: live_recon_mean.png, live_recon_sample.png or live_latent.npy
        (and live_info.json, written last, which says the epoch and batch they show)."""
        return self.artifacts / f"live_{name}"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> dict | None:
        """config.json as today's format (an earlier version's completion run converted in memory)."""
        return upgrade_config(read_json(self.config_path))

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def read_batches(self) -> list[dict]:
        return read_jsonl(self.batches_path)

    def read_status(self) -> dict:
        """The status file, with a dead process's 'running' turned into 'interrupted'."""
        return live_status(read_json(self.status_path) or {}, self.id)

    def write_status(self, **fields: Any) -> None:
        """Merge `fields` into status.json, atomically (one merge at a time in this process: the trainer's
        epoch writer thread and its loop both write it)."""
        with _STATUS_LOCK:
            status = read_json(self.status_path) or {}
            status.update(fields, updated=time.time())
            write_json(self.status_path, status, parents=False)  # never re-make a moved or deleted run folder

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def holds_run(self) -> bool:
        """True if a run here has finished an epoch: a checkpoint or a metrics line.

        A folder with only a config.json (a run killed during its first epoch)
        or only the app's queue files has nothing to lose, so a new run may start there.
        """
        if any(self.checkpoints.glob("*.pt")):
            return True
        try:
            return self.metrics_path.stat().st_size > 0
        except OSError:
            return False

    def lock(self) -> RunLock:
        """Take the folder's writer lock (a context manager); `CVAEError` if another process holds it."""
        return RunLock(self).acquire()

    def is_locked(self) -> bool:
        """True while a trainer holds this folder's lock (so the app neither resumes nor deletes it)."""
        if fcntl is None:
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with the trainer's LOCK_EX only
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # closing drops our shared lock at once
        return False

    def clear_run(self) -> None:
        """Remove a previous run's files (for --overwrite); the app's queue files and train.log stay.

        Only a folder that is one run is cleared: never the runs root, nor a folder whose checkpoints/,
        artifacts/ or generated/ holds folders (a runs root called checkpoints/ beside it, say), nor one
        that holds other run folders. `CVAEError` before anything is deleted."""
        import shutil

        why = self.not_one_run()
        if why:
            raise CVAEError(f"refusing to overwrite {self.path}: {why}; pick a --run-dir of its own")
        for path in (self.config_path, self.metrics_path, self.batches_path):
            path.unlink(missing_ok=True)
        for folder in (self.artifacts, self.checkpoints, self.path / "generated"):
            shutil.rmtree(folder, ignore_errors=True)

    def not_one_run(self) -> str | None:
        """Why this folder is not a single run's, or None."""
        here = self.path.resolve()
        if here == default_runs_root().resolve():
            return "it is the runs root"
        for folder in (self.artifacts, self.checkpoints, self.path / "generated"):
            if folder.is_dir() and any(child.is_dir() for child in folder.iterdir()):
                return f"{folder.name}/ holds folders, not a run's files"
        for child in self.path.iterdir():
            if child.is_dir() and child.name not in ("artifacts", "checkpoints", "generated") and \
                    any((child / name).exists() for name in ("config.json", "status.json", LOCK_FILE)):  # fmt: skip
                return f"it holds another run folder ({child.name})"
        return None

    def epochs_with(self, name: str) -> list[int]:
        """Epochs that have an artifact called `name` (e.g. 'recon_mean.png')."""
        found = []
        for p in self.artifacts.glob(f"epoch_*_{name}"):
            try:
                found.append(int(p.name[6:10]))
            except ValueError:
                continue
        return sorted(found)


class RunLock:
    """An exclusive advisory lock (flock) on `<run>/.lock`, held by one trainer for its whole life.

    The kernel drops it when the process exits, however it dies (kill -9, a
    segfault, out of memory), so a crash never leaves a stale lock. Closing
    the file releases it; the file itself stays (deleting it would let a
    second trainer lock a new file while the first still holds the old one).
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        self.run.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                who = f"pid {holder}" if holder.isdigit() else "pid unknown"
                raise CVAEError(f"run {self.run.id} is training in another process ({who})") from None
            except OSError:  # a file system without flock (some network mounts): train unprotected
                os.close(fd)
                return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def still_here(self) -> bool:
        """True while the locked .lock file is still at the run folder's path (the folder was not moved,
        renamed or deleted under the trainer); True where there is no lock to compare."""
        if self.fd is None:
            return True
        try:
            return os.stat(self.run.lock_path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_path(root: Path, run_id: str) -> RunDir:
    """The folder of `run_id` under `root`, refusing ids that would leave it."""
    check_run_id(run_id)
    root = Path(root).resolve()
    path = (root / run_id).resolve()
    if path.parent != root:
        raise CVAEError(f"invalid run id {run_id!r}")
    return RunDir(path)


def _stamp_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def list_runs(root: Path, *, started: bool = False) -> list[RunDir]:
    """Run folders under `root`, newest first: those with a config.json, or with `started`
    also the ones that have only a status.json yet (queued, or starting)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if not (p.is_dir() and is_run_id(p.name)):
            continue
        run = RunDir(p)
        if run.exists() or started and run.status_path.exists():
            found.append((max(_stamp_ns(run.config_path), _stamp_ns(run.status_path), _stamp_ns(p)), p.name, run))
    return [run for *_, run in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def active_runs(root: Path, besides: RunDir | None = None, states: tuple[str, ...] = ACTIVE_STATES) -> int:
    """How many runs of `root` (other than `besides`) are in one of `states` now, by their live status files."""
    count = 0
    with contextlib.suppress(OSError):
        for folder in Path(root).iterdir():
            if (besides is None or folder != besides.path) and is_run_id(folder.name) and \
                    RunDir(folder).read_status().get("state") in states:  # fmt: skip
                count += 1
    return count


def fresh_run_path(root: Path, run_id: str) -> RunDir:
    """A newly made, empty run folder: `run_id`, or `run_id-2`, `-3`, ... when two runs start in one second."""
    for n in range(1, 1000):
        run = run_path(root, run_id if n == 1 else f"{run_id}-{n}")
        try:
            run.path.mkdir(parents=True)  # fails if it exists: two trainers never share a new folder
        except FileExistsError:
            continue
        return run
    raise CVAEError(f"cannot find a free run folder name for {run_id} under {root}")


def new_run_id(dataset: str, likelihood: str, latent_dim: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(dataset).name or dataset).strip("-")[:30] or "data"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}-{likelihood}-z{latent_dim}"


# ------------------------------------------------------------------ readers that every page can trust


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sane_status(status: dict) -> dict:
    """Drop fields of the wrong type (a hand-edited or hostile status.json must not crash a page)."""
    for key in ("epoch", "epochs", "batch", "batches", "position", "pid"):
        if key in status and not (isinstance(status[key], int) and not isinstance(status[key], bool)
                                  and 0 <= status[key] < 10**12):  # fmt: skip
            status.pop(key)
    for key in ("epoch_started", "started", "updated", "queued_at"):
        if key in status and not _number(status[key]):
            status.pop(key)
    for key in ("device", "device_name", "pool", "cluster", "node", "backend"):  # text: of sane length, or nothing
        if key in status and not (isinstance(status[key], str) and len(status[key]) <= 100):
            status.pop(key)
    job_id = status.get("job_id")
    if "job_id" in status and not (isinstance(job_id, str) and re.fullmatch(r"[0-9_]{1,24}", job_id)):
        status.pop("job_id")
    if "slots" in status and not (isinstance(status["slots"], int) and 0 < status["slots"] < 10**6):
        status.pop("slots")
    if not isinstance(status.get("message", ""), str):
        status["message"] = ""
    if not isinstance(status.get("last", {}), dict):
        status.pop("last")
    return status


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (made if missing), waited for: one writer at a time of the files it guards,
    across threads and processes. Nothing where the platform has no flock."""
    with open(path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


MAX_NUMBER_LIST = 1024  # a per-dimension figure (cvae.ledger): one number per latent dimension, at most


def number_list(value: object) -> list[float] | None:
    """`value` if it is a list of 1 to MAX_NUMBER_LIST finite plain numbers (as floats); None otherwise."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_NUMBER_LIST:
        return None
    if not all(_number(v) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def numeric_row(row: object, key: str) -> dict | None:
    """A row with a whole-number `key` (epoch or step), keeping numeric (or null) fields and lists of finite
    numbers (`number_list`) only; None if unusable."""
    if not isinstance(row, dict) or not isinstance(row.get(key), int) or isinstance(row.get(key), bool):
        return None
    kept = {k: v for k, v in row.items() if v is None or _number(v)}
    kept.update({k: v for k, v in row.items() if isinstance(v, list) and number_list(v) is not None})
    return kept


def read_numeric_jsonl(path: Path, key: str) -> list[dict]:
    """A JSON-lines file's usable rows (`numeric_row`): what a chart may draw."""
    return [r for r in (numeric_row(row, key) for row in read_jsonl(Path(path))) if r is not None]


class JsonlTail:
    """An append-only JSON-lines file, read incrementally: each call parses only the bytes added since the last.

    The trainer appends a line per logged batch while every open tab polls the
    file, so re-reading it whole would cost each poll the whole run's history.
    A rewritten file (a resume replaces it atomically: a new inode) or a shorter
    one is read again from the start. A last line without its newline is left
    for the next call (the writer is mid-line, or was killed there: then it is
    never used, like `read_jsonl`'s torn line). Shared by every session of the
    server, so it is guarded by a lock.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read so far
        self._offset, self._rows, self._generation = 0, [], 0

    def read(self) -> tuple[list[dict], tuple[int, int]]:
        """(the rows so far, a version that changes whenever they do)."""
        with self._lock:
            try:
                info = self.path.stat()
            except OSError:
                info = None
            ident = (info.st_dev, info.st_ino) if info else None
            if ident != self._file or (info and info.st_size < self._offset):
                self._file, self._offset, self._rows = ident, 0, []
                self._generation += 1
            if info and info.st_size > self._offset:
                try:
                    with open(self.path, "rb") as f:
                        f.seek(self._offset)
                        for line in jsonl_lines(f):
                            self._offset = f.tell()  # past this whole line, whatever it holds
                            row = numeric_row(parse_json(line.decode("utf-8", errors="replace")), self.key)
                            if row is not None:  # a garbled or overlong line spoils only itself
                                self._rows.append(row)
                except OSError:
                    pass
            return list(self._rows), (self._generation, len(self._rows))


def log_tail(run: RunDir, lines: int = 15, max_bytes: int = 64 << 10) -> str:
    """The last `lines` lines of the run's train.log, from its last `max_bytes` bytes only."""
    try:
        with open(run.log_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - max_bytes))
            text = fh.read(max_bytes).decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
