"""A quick demo started as the Train page starts it, beside other programs that keep cores busy.

    python -m benchmarks.queue_busy --busy 2 [--epochs 3] [--timeout 240]

The run goes through the app's run queue (`cvae.jobs.start`), so it trains at the trainers' priority
($CVAE_TRAIN_NICE, then nice 19 and SCHED_IDLE once its first pictures are out), beside the bench's busy
programs (`benchmarks.bench.busy_cores`, at this process's priority). Prints each epoch's time from the run's
metrics, its end state and the seconds from the start; a run still training at `--timeout` is stopped, waited
for once the busy programs are gone, and reported as such. With CVAE_TRAIN_NICE=0 the same run trains without
the trainers' low priority.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench import MAX_BUSY_CORES, busy_cores
from cvae import jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.queue_busy", description=__doc__.splitlines()[0])
    p.add_argument(
        "--busy", type=float, default=2.0, help="cores the other programs keep busy (0.5: one, half the time) [2]"
    )
    p.add_argument("--epochs", type=int, default=3, help="the quick demo's epochs [3]")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds before a run still training is stopped [240]")
    args = p.parse_args(argv)
    if not 0 <= args.busy <= MAX_BUSY_CORES or args.epochs < 1 or not args.timeout > 0:
        print(f"error: --busy from 0 to {MAX_BUSY_CORES}, --epochs at least 1, --timeout positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cvae-queue-busy-") as tmp:
        with busy_cores(args.busy):
            t0 = time.perf_counter()
            run = jobs.start(Path(tmp) / "runs", {**jobs.QUICK_DEMO_OPTIONS, "epochs": args.epochs})
            while jobs.is_active(run) and time.perf_counter() - t0 < args.timeout:
                time.sleep(0.25)
            seconds, active = time.perf_counter() - t0, jobs.is_active(run)
            if active:
                jobs.stop(run)
        deadline = time.perf_counter() + 60  # with the busy programs gone, a stopped trainer leaves in seconds
        while jobs.is_active(run) and time.perf_counter() < deadline:
            time.sleep(0.25)
        epochs = [f"{m['epoch']}: {m['seconds']:.1f} s" for m in run.read_metrics() if "seconds" in m]
        state = f"still training after {args.timeout:g} s, stopped" if active else run.read_status().get("state")
    print(f"beside {args.busy:g} busy core(s): {state} ({seconds:.0f} s from the start); epochs: "
          f"{', '.join(epochs) or 'none ended'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
