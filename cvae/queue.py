"""A first-come, first-served limit on how many runs train at once.

A run started with `python -m cvae.train --queue` first waits, in its own
(sleeping) process, for one of `max_active` training slots under the runs
root. A slot is an exclusive `flock` on `<root>/.slots/slot-K.lock`, held
for the whole training: the kernel frees it when the process ends, however it
ends (kill -9 included), so a slot is never leaked. The queue order is each
waiting run's `queued_at` in its status.json, so it lives on disk and
survives a restart of the app; the waiting run's status shows its position.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from cvae.runs import RUN_ID_PATTERN, RunDir, process_identity, process_is

POLL_S = 1.0


def default_max_active() -> int:
    """$CVAE_MAX_RUNS, else one run per two cores (at least one)."""
    raw = os.environ.get("CVAE_MAX_RUNS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // 2)


def waiting_runs(root: Path) -> list[RunDir]:
    """Runs waiting for a slot, in queue order (live processes only)."""
    waiting = []
    runs = [RunDir(p) for p in Path(root).iterdir() if RUN_ID_PATTERN.match(p.name) and (p / "status.json").is_file()]
    for run in runs:  # queued runs have no config.json yet, so not list_runs
        status = run.read_status()
        if status.get("state") == "queued" and process_is(status.get("pid"), status.get("process")):
            waiting.append((float(status.get("queued_at") or 0), run.id, run))
    return [run for _, _, run in sorted(waiting, key=lambda t: (t[0], t[1]))]


def _try_slot(slots: Path, max_active: int) -> IO | None:
    slots.mkdir(parents=True, exist_ok=True)
    for k in range(max_active):
        handle = open(slots / f"slot-{k}.lock", "a")  # noqa: SIM115 - kept open while training
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return handle
    return None


def wait_for_slot(
    run: RunDir, root: Path, max_active: int, *, should_stop: Callable[[], bool] = lambda: False
) -> IO | None:
    """Block until this run holds a slot; return the lock (keep it open) or None if stopped."""
    status = run.read_status()
    queued_at = status.get("queued_at") or time.time()
    run.write_status(state="queued", pid=os.getpid(), process=process_identity(os.getpid()), queued_at=queued_at)
    shown = None
    while not should_stop():
        order = waiting_runs(root)
        ids = [r.id for r in order]
        position = ids.index(run.id) + 1 if run.id in ids else 1
        if position == 1:
            handle = _try_slot(Path(root) / ".slots", max_active)
            if handle is not None:
                return handle
        if position != shown:
            shown = position
            ahead = "a free training slot" if position == 1 else f"{position - 1} run(s) ahead"
            run.write_status(state="queued", position=position, message=f"waiting in the queue: {ahead}")
        time.sleep(POLL_S)
    return None


def cli(argv: list[str] | None = None) -> int:
    """python -m cvae.queue [--max-active N] --run-dir RUN [train options]: wait for a slot, then train."""
    import signal

    from cvae.train import OneLineParser
    from cvae.train import cli as train_cli

    parser = OneLineParser(prog="python -m cvae.queue", description="Queue a training run, then train it.")
    parser.add_argument(
        "--max-active", type=int, default=None, help="runs training at once [$CVAE_MAX_RUNS or cores/2]"
    )
    parser.add_argument("--run-dir", required=True, help="the run folder (its parent is the queue)")
    parser.add_argument(
        "--nice", type=int, default=0, help="lower this process's CPU priority by N (0-19), so pages stay quick [0]"
    )
    args, train_args = parser.parse_known_args(argv)
    max_active = args.max_active or default_max_active()
    if max_active < 1:
        parser.error("--max-active must be at least 1")
    if not 0 <= args.nice <= 19:
        parser.error("--nice must be between 0 and 19")
    if args.nice:
        os.nice(args.nice)  # before torch starts its threads: they inherit it
    run = RunDir(Path(args.run_dir).resolve())
    run.path.mkdir(parents=True, exist_ok=True)
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    handle = wait_for_slot(run, run.path.parent, max_active, should_stop=lambda: stop["requested"])
    signal.signal(signal.SIGTERM, previous)
    if handle is None:
        run.write_status(state="stopped", message="taken out of the queue before it started")
        return 0
    run.write_status(state="starting", position=None, message="")
    with handle:  # the slot is held until training ends, and freed by the kernel if we die
        return train_cli([*train_args, "--run-dir", str(run.path)])


if __name__ == "__main__":
    import sys

    sys.exit(cli())
