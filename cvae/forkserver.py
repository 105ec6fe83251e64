"""A warm start for a class's runs: one process with torch and MNIST loaded forks each CPU run's process.

Every run the app starts is a process of its own (`python -m cvae.jobs`), and each one imports torch (about
1.2 CPU-seconds) and reads its data (0.35 s for MNIST) before its first batch. Thirty students pressing Quick
demo at once on a 2-core server pay that thirty times over, all at once: most of a minute before anyone sees
a picture, and each process holds its own 0.5 GB of torch's and the data's memory.

The fork server pays it once. It imports the training modules, loads MNIST, and then forks, on request, the
very process `python -m cvae.jobs` would have been: same flags, own session, output to the run's train.log.
A forked run is an ordinary run from then on (its own pid in status.json, stopped with SIGTERM, its own
locks); it starts in milliseconds, and shares torch's pages and the data's with the server copy-on-write.

`cvae.jobs` asks it for every CPU run and spawns the process itself when no server answers; the app's Train
page starts the server (`ensure`), so it is warm before a class clicks. One server per runs folder (a flock), reached
on a Unix socket in a folder only this user may open; it leaves when it has had nothing to do for IDLE_S
seconds, or when the code it loaded is no longer the code on disk. The server never initialises CUDA (a
forked process could not use it): GPU runs are spawned as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent
IDLE_S = float(os.environ.get("CVAE_FORK_IDLE_S", "1800"))  # nothing forked, no child alive this long: leave
WARMING_S = 20.0  # how long a run waits for a server that is still loading, rather than start cold beside it
MAX_REQUEST = 1 << 20  # bytes: a request is a few flags


def code_version() -> str:
    """The library's code as loaded (its files' sizes and times): a server whose code changed on disk leaves."""
    digest = hashlib.sha256()
    for path in sorted(PROJECT.glob("*.py")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def socket_path(root: Path) -> Path:
    """Where the server of runs folder `root` listens: a short path (a Unix socket's is at most 107 bytes) in a
    folder of this user's alone, so no other account on the server can ask it to fork."""
    folder = Path(tempfile.gettempdir()) / f"cvae-fork-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise OSError(f"{folder} is not this user's private folder")
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:20]
    return folder / f"{key}.sock"


def request(root: Path, argv: list[str], log: Path, timeout: float = 5.0) -> int | None:
    """Ask the fork server of `root` for a `python -m cvae.jobs ARGV` process writing to `log`: its pid, or
    None when there is no server (or it could not do it): then the caller spawns the process itself."""
    try:
        path = socket_path(root)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(json.dumps({"argv": argv, "log": str(log), "version": code_version()}).encode() + b"\n")
            reply = json.loads(_read_line(conn) or b"{}")
    except (OSError, ValueError):
        return None
    pid = reply.get("pid") if isinstance(reply, dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def _server_pid(root: Path) -> int | None:
    """The pid a server for `root` wrote once it took its lock, if that pid is still a fork server's (a pid
    left by a server that died may name another process by now). Only read, never locked here: a starting
    server must find its lock free."""
    from cvae.runs import process_args

    try:
        pid = int((Path(root) / ".slots" / "fork.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if b"cvae.forkserver" in (process_args(pid) or ()) else None


def warming(root: Path) -> bool:
    """True while a server for `root` is alive (loading, or serving)."""
    return _server_pid(root) is not None


def stop(root: Path) -> None:
    """Ask the server for `root`, if one is alive, to leave (SIGTERM); the runs it forked go on. The server
    outlives the app on purpose (runs go on through a restart of the app): what starts one for a folder of
    its own (a load test, the screenshots) stops it with this."""
    pid = _server_pid(root)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def request_warm(root: Path, argv: list[str], log: Path) -> int | None:
    """`request`, waiting up to WARMING_S for a server that is still loading (a class's first clicks come
    while it imports torch: a cold start of each beside it would cost them all more)."""
    deadline = time.monotonic() + WARMING_S
    while True:
        pid = request(root, argv, log)
        if pid is not None or time.monotonic() > deadline or not warming(root):
            return pid
        time.sleep(0.2)


def ensure(root: Path) -> None:
    """Have a warm server for `root`: start one unless one answers (the app calls this when a Train page is
    opened, so that a class's clicks, which come within seconds, all find it ready)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(socket_path(root)))
            conn.sendall(b"{}\n")  # a ping: the server counts it as use and answers "not a request"
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        start(root)


def start(root: Path) -> None:
    """Start the fork server of `root` in the background (it leaves at once if one is running already)."""
    import subprocess

    root = Path(root).resolve()
    (root / ".slots").mkdir(parents=True, exist_ok=True)
    with open(root / ".slots" / "fork.log", "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - a fixed module, no shell
            [sys.executable, "-m", "cvae.forkserver", str(root)], cwd=PROJECT.parent, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the runs' train.log lines as they come
        )  # fmt: skip
    import threading

    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it leaves: no zombie


def _read_line(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_REQUEST:
            return None
    return data.split(b"\n", 1)[0]


def _parse(line: bytes | None) -> tuple[list[str], Path, str] | None:
    """A request's flags, log file and code version, or None for anything that is not one."""
    try:
        req = json.loads(line or b"")
    except (ValueError, RecursionError):
        return None
    if not isinstance(req, dict):
        return None
    argv, log, version = req.get("argv"), req.get("log"), req.get("version")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and isinstance(log, str)
            and isinstance(version, str)):  # fmt: skip
        return None
    return argv, Path(log), version


def _child(argv: list[str], log: Path, held: list[Any]) -> None:
    """In the forked process: become what `python -m cvae.jobs ARGV` would be, then exit with its code. `held`:
    the server's socket, connection and lock file, which the run must not keep."""
    code = 1
    try:
        for thing in held:
            thing.close()  # the server's lock stays the server's: this drops only the child's reference
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.argv = ["cvae.jobs", *argv]
        from cvae import jobs

        try:
            code = jobs.cli(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - the log gets it; the server is never disturbed
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(root: Path) -> int:
    """The server's loop (`python -m cvae.forkserver ROOT`); 0 when it leaves, whether idle or not needed."""
    root = Path(root).resolve()
    (root / ".slots").mkdir(parents=True, exist_ok=True)
    lock = open(root / ".slots" / "fork.lock", "a")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another one serves this runs folder
    (root / ".slots" / "fork.pid").write_text(str(os.getpid()))
    version = code_version()
    # What every run would import and read first, done once: the children get it for free. One thread, so that
    # no OpenMP team exists to be forked (each child sets its own thread count).
    import torch

    torch.set_num_threads(1)
    import PIL.Image  # noqa: F401 - loaded for the children: the pictures of every epoch
    import torchvision  # noqa: F401 - CIFAR-10's reader (a second to import, torch's compiler with it)

    import cvae.jobs  # noqa: F401
    import cvae.train  # noqa: F401
    from cvae.config import DataConfig
    from cvae.data import keep_loaded
    from cvae.jobs import QUICK_DEMO_OPTIONS
    from cvae.training import resolve_options, section_config

    # The quick demo's data as its runs ask for it (binarized), shared copy-on-write by every child.
    keep_loaded(section_config(DataConfig, resolve_options(QUICK_DEMO_OPTIONS)))

    path = socket_path(root)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a server that was killed (the lock says none runs now)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.settimeout(1.0)
    leave = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: leave.update(now=True))
    children: set[int] = set()
    last_used = time.monotonic()
    print(f"fork server for {root} ready (pid {os.getpid()})", flush=True)
    try:
        while not leave["now"]:
            while children:  # reap whatever has exited
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    children.clear()
                    break
                if pid == 0:
                    break
                children.discard(pid)
            if children:
                last_used = time.monotonic()
            elif time.monotonic() - last_used > IDLE_S:
                break
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            last_used = time.monotonic()  # a request or a ping
            with conn:
                conn.settimeout(5.0)
                try:
                    parsed = _parse(_read_line(conn))
                except OSError:
                    continue
                if parsed is None:
                    with contextlib.suppress(OSError):
                        conn.sendall(b'{"error": "not a request"}\n')
                    continue
                argv, log, wanted = parsed
                if wanted != version or code_version() != version:
                    with contextlib.suppress(OSError):
                        conn.sendall(b'{"error": "this server runs older code"}\n')
                    break  # the caller spawns the run itself, and a fresh server for the next one
                pid = os.fork()
                if pid == 0:
                    _child(argv, log, [listener, conn, lock])
                children.add(pid)
                last_used = time.monotonic()
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()
        lock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cvae.forkserver RUNS_ROOT", file=sys.stderr)
        return 2
    try:
        return serve(Path(args[0]))
    except OSError as err:
        print(f"error: the fork server cannot serve {args[0]}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
