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

from cvae.runs import RunDir, list_runs, process_identity, process_is

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
    for run in list_runs(root):
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
