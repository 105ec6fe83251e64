"""How long a run will take on this machine, before it starts: measured on the run's own model, not guessed.

    python -m cvae.estimate [train options]      # cvae estimate --quick-demo; --json for the app

The run's model is built from its options and trained by the real loop (`cvae.loop.fit`) for one short
epoch: MEASURED_BATCHES batches of the run's batch size on images of its data's shape, then the epoch's
evaluation on a test set of the data's size, its pictures, its checkpoint and (where the run has one) the
refined test ELBO, in a scratch folder. It runs with the threads the run would get now (the cores shared
among the runs training in the runs folder, as `cvae.loop.CoreShare` shares them) and at the trainers'
priority, so a busy server measures itself busy. From that one epoch:

    seconds = start-up + epochs x (batches x seconds per batch x (1 + the live pictures' share)
                                   + the epoch's other work) + the refined ELBO at the end

Random images train at the speed real ones do (the arithmetic does not look at the pixels); what the
measurement leaves out is a run's wait in the queue, which the app shows apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvae.cli import OneLineParser, add_options, exit_with, format_argv, given, run_main
from cvae.progress import format_seconds
from cvae.runs import active_runs, available_cores

MEASURED_BATCHES = 16  # trained per measurement; the first WARM_BATCHES set up oneDNN's kernels and are not timed
WARM_BATCHES = 3
REFINE_IMAGES = 1000


@dataclasses.dataclass(frozen=True)
class Estimate:
    seconds: float  # the whole run, start to finish
    epochs: int
    per_epoch: float
    batches: int  # per epoch
    per_batch: float
    other: float  # per epoch: evaluation, pictures, checkpoint
    startup: float
    final: float  # once, after the last epoch: the refined test ELBO
    threads: int
    images_per_s: float

    def describe(self) -> str:
        return (f"about {format_seconds(self.seconds)}: {self.epochs} epoch(s) of {format_seconds(self.per_epoch)} "
                f"({self.batches} batches at {self.per_batch * 1000:.1f} ms, {self.images_per_s:,.0f} images/s, "
                f"then {self.other:.1f} s of evaluation, pictures and checkpoint), measured just now with "
                f"{self.threads} thread(s)")  # fmt: skip

    def epochs_within(self, seconds: float) -> int:
        """How many of this run's epochs fit in `seconds` with its start-up and final work (0 if none)."""
        return max(0, int((seconds - self.startup - self.final) // max(self.per_epoch, 1e-9)))


def enabled() -> bool:
    """$CVAE_ESTIMATE: 0 turns the app's measured estimates off (the form starts from the command line's
    defaults); the command line measures whenever asked. Off where runs train on a cluster
    ($CVAE_BACKEND=slurm): this server's speed says nothing of the nodes'."""
    from cvae.errors import ConfigError
    from cvae.jobs import backend

    try:
        on_cluster = backend() == "slurm"
    except ConfigError:  # a misspelt backend: Start says so, in its own words
        on_cluster = False
    return os.environ.get("CVAE_ESTIMATE", "1") != "0" and not on_cluster


def _process_age() -> float:
    """Seconds since this process started (0 where /proc is missing)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def threads_now(root: Path) -> int:
    """The threads a run with threads 0 would train with now: its share of the cores (see CoreShare)."""
    return max(1, available_cores() // (1 + active_runs(root, states=("starting", "running"))))


def measure(options: dict[str, Any], *, threads: int) -> Estimate:
    """Train the run `options` describes for one short epoch (see the module's docstring) and scale it up."""
    started = _process_age()  # the interpreter and the imports so far: what a trainer spawned cold pays too
    import torch

    from cvae.config import DataConfig
    from cvae.data import ImageData, peek_info, peek_sizes
    from cvae.estimators import refined_nelbo
    from cvae.loop import PREVIEW_SHARE, fit
    from cvae.runs import RunDir
    from cvae.training import build_config, resolve_options, section_config

    opts = resolve_options(options)
    data_config = section_config(DataConfig, opts)
    info = peek_info(data_config)
    config = build_config(opts, info)
    train_n, test_n = peek_sizes(data_config)
    batch = min(config.train.batch_size, train_n)
    batches, epochs = max(1, math.ceil(train_n / batch)), config.train.epochs
    measured = min(batches, MEASURED_BATCHES)
    shape = (config.model.channels, config.model.height, config.model.width)
    gen = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        x = torch.rand((n, *shape), generator=gen)
        return (x > 0.5).float() if config.data.binarize == "static" else x

    data = ImageData(images(measured * batch), torch.randint(0, info.num_classes, (measured * batch,), generator=gen),
                     images(test_n), torch.randint(0, info.num_classes, (test_n,), generator=gen), info)  # fmt: skip
    # The refined ELBO is timed apart, on REFINE_IMAGES of the test set: its cost is the same per image.
    train = dataclasses.replace(config.train, epochs=1, threads=threads, print_every=1, preview_every=0, refine_steps=0)
    config = dataclasses.replace(config, train=train)
    clock: list[float] = []
    ended: list[float] = []

    class Clock:
        def on_batch(self, record: dict[str, Any]) -> None:
            clock.append(time.perf_counter())

        def on_epoch(self, record: dict[str, Any]) -> None:
            ended.append(time.perf_counter())

    previous = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="cvae-estimate-") as scratch:
            t0 = time.perf_counter()
            # quiet: the scratch run's notes are the real run's to give, and --json's output is the estimate alone
            result = fit(config, RunDir(Path(scratch) / "run"), data=data, callbacks=[Clock()], quiet=True)
            total = time.perf_counter() - t0
            final = 0.0
            if opts["refine_steps"]:
                few = min(test_n, REFINE_IMAGES)
                t_refine = time.perf_counter()
                refined_nelbo(result.model, data.test_x[:few], data.test_y[:few], steps=opts["refine_steps"])
                final = (time.perf_counter() - t_refine) * test_n / few
    finally:
        torch.set_num_threads(previous)
    record = result.metrics[-1]
    timed = clock[WARM_BATCHES - 1 :] if len(clock) > WARM_BATCHES else clock
    per_batch = (timed[-1] - timed[0]) / (len(timed) - 1) if len(timed) > 1 else record["train_seconds"] / measured
    setup = ended[-1] - t0 - record["time"]  # fit's own start: the model, the data on the device, the first files
    saved = t0 + total - ended[-1]  # the checkpoint and pictures, written beside the next epoch's training
    other = max(0.0, record["seconds"] - record["train_seconds"]) + saved  # evaluation, pictures, checkpoint
    live = 1 + PREVIEW_SHARE if opts["preview_every"] > 0 else 1.0  # the live pictures' most
    per_epoch = batches * per_batch * live + other
    startup = started + setup
    return Estimate(seconds=startup + epochs * per_epoch + final, epochs=epochs, per_epoch=per_epoch, batches=batches,
                    per_batch=per_batch, other=other, startup=startup, final=final, threads=threads,
                    images_per_s=batch / per_batch)  # fmt: skip


QUICK_DEMO_BUDGET_S = 180.0  # a class's quick demos finish within about this long, however many click at once


def sized_quick_demo(alone: Estimate | None, sharing: int) -> dict[str, Any]:
    """The quick demo's options for a click now: the preset's epochs where they fit QUICK_DEMO_BUDGET_S,
    else fewer (at least one), so that a class of thirty clicking at once each have a finished model within
    minutes, not after half an hour. `alone`: the demo measured with every core; `sharing`: the runs that will
    share the cores with this one (queued or training), each slowing it as much as it takes (time-sharing).
    Without a measurement, the preset as it is."""
    from cvae.config import QUICK_DEMO
    from cvae.jobs import QUICK_DEMO_OPTIONS

    options = dict(QUICK_DEMO_OPTIONS)
    if alone is None:
        return options
    fit = alone.epochs_within(QUICK_DEMO_BUDGET_S / (1 + max(0, sharing)))
    if fit < QUICK_DEMO["epochs"]:
        options["epochs"] = max(1, fit)
    return options


SUBPROCESS_TIMEOUT_S = 300.0


def in_subprocess(options: dict[str, Any], root: Path, *, nice: int = 0) -> Estimate:
    """`measure` in a process of its own (`python -m cvae.estimate --json`), as a trainer would run: the app's
    process keeps its threads, its memory and its responsiveness. Raises CVAEError with the one-line reason."""
    import subprocess

    from cvae.errors import CVAEError
    from cvae.jobs import build_argv

    argv = [sys.executable, "-m", "cvae.estimate", "--json", "--nice", str(nice), *format_argv({"runs_root": str(root)}),
            *build_argv(options)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                              cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise CVAEError(f"measuring these settings took over {SUBPROCESS_TIMEOUT_S:.0f} s") from None
    lines = (done.stderr or "").strip().splitlines()
    if done.returncode != 0:
        raise CVAEError(
            (lines[-1] if lines else f"the estimate exited with code {done.returncode}").removeprefix("error: ")
        )
    try:
        return Estimate(**json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, TypeError, IndexError):
        raise CVAEError("the estimate printed no result") from None


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m cvae.estimate",
                           description="How long `python -m cvae.train` with these options takes here, measured.")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the estimate as one JSON object")
    parser.add_argument("--nice", type=int, default=0, help="measure at the trainers' lower CPU priority (0-19) [0]")
    add_options(parser)
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json, nice = args.json, args.nice
    if not 0 <= nice <= 19:
        build_parser().error("--nice must be between 0 and 19")
    options = {k: v for k, v in given(args).items() if k not in ("json", "nice")}
    for launch_only in ("run_dir", "overwrite", "quiet", "resume_path", "resume_epoch"):
        if launch_only in options:
            build_parser().error(f"--{launch_only} does not change how long a run takes: leave it out")

    def body() -> int:
        from cvae.jobs import check_options
        from cvae.runs import default_runs_root

        check_options(options)  # the trainer's own one-line refusals, before anything is built
        if nice:
            os.nice(nice)
        root = Path(options.get("runs_root") or default_runs_root())
        threads = int(options.get("threads") or 0) or threads_now(root)
        estimate = measure({k: v for k, v in options.items() if k != "runs_root"}, threads=threads)
        print(json.dumps(dataclasses.asdict(estimate)) if as_json else estimate.describe())
        return 0

    return run_main(body)


if __name__ == "__main__":
    exit_with(cli())
