"""An opt-in profiler for finding where the server's CPU goes per page view.

    CVAE_PROFILE=/tmp/prof streamlit run streamlit_app.py

With CVAE_PROFILE set to a folder, every page run (and every refresh of the live
Train panel) is run under cProfile (counting the CPU time of its thread) and its statistics are written there as
`<what>-<pid>-<n>.prof`; sum them with `python -m scripts.profile_summary FOLDER`.
With CVAE_CPU_LOG set to a file, each of them only appends a line "<what> <CPU seconds of its thread>" to it
(no profiler, so the figures are not inflated by it). Unset (the default), `profiled` costs nothing.
"""

from __future__ import annotations

import cProfile
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_count = itertools.count()
_lock = threading.Lock()


@contextmanager
def profiled(what: str) -> Iterator[None]:
    folder, log = os.environ.get("CVAE_PROFILE"), os.environ.get("CVAE_CPU_LOG")
    if log:
        start = time.thread_time()
        try:
            yield
        finally:
            with _lock, open(log, "a") as f:
                f.write(f"{what} {time.thread_time() - start:.4f}\n")
        return
    if not folder:
        yield
        return
    profile = cProfile.Profile(time.thread_time)  # CPU time of this thread: waiting on locks or the GIL is not counted
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        with _lock:
            n = next(_count)
        Path(folder).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(Path(folder) / f"{what}-{os.getpid()}-{n}.prof"))
