"""Each epoch's step time in a run that has trained: `python -m benchmarks.epoch_steps RUN_DIR`.

A run's `batches.jsonl` holds every logged batch's time since the run started. The gap between two logged
batches of one epoch, over the steps between them, is a step; this prints each epoch's median step and the
slowest tenth's bound, beside the epoch's training and whole seconds from `metrics.jsonl`. A step that sits
at the two-dies pace for some epochs, or a machine that slows between epochs, shows here
(docs/benchmark.md reads quick-demo runs this way).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

from cvae.runs import RunDir


def epoch_steps(batches: list[dict]) -> dict[int, list[float]]:
    """Seconds a step, per epoch, from consecutive logged batches of the same epoch."""
    steps: dict[int, list[float]] = {}
    for before, after in itertools.pairwise(batches):
        if before.get("epoch") == after.get("epoch") and after["step"] > before["step"]:
            steps.setdefault(after["epoch"], []).append(
                (after["time"] - before["time"]) / (after["step"] - before["step"])
            )
    return steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.epoch_steps", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    run = RunDir(args.run_dir)
    if not run.batches_path.is_file():
        print(f"error: {args.run_dir} is not a run folder that has trained (no batches.jsonl)", file=sys.stderr)
        return 2
    try:
        batches, metrics = run.read_batches(), {m.get("epoch"): m for m in run.read_metrics()}
        steps = epoch_steps(batches)
    except (OSError, KeyError, TypeError) as err:
        print(f"error: {args.run_dir} has no readable batches.jsonl ({err})", file=sys.stderr)
        return 2
    if not steps:
        print(f"error: {args.run_dir} has no two logged batches of one epoch", file=sys.stderr)
        return 2
    print("epoch  median step  90th percentile  logged  training s  epoch s")
    for epoch, times in sorted(steps.items()):
        m = metrics.get(epoch, {})
        tenth = sorted(times)[int(0.9 * len(times))]
        train, whole = m.get("train_seconds"), m.get("seconds")
        print(f"{epoch:5d}  {1e3 * statistics.median(times):8.2f} ms  {1e3 * tenth:12.2f} ms  {len(times) + 1:6d}  "
              f"{'' if train is None else f'{train:10.2f}'}  {'' if whole is None else f'{whole:7.2f}'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
