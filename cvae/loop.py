"""The training loop: `fit(config, run, data=...)` trains into a run folder.

It reports through callbacks (cvae.progress) and the run folder (cvae.runs),
and knows nothing of any UI. SIGTERM or Ctrl-C stops it after the batch in
progress: the last finished epoch's checkpoint stays, and the status says so.

Under torchrun every rank runs this same loop on its share of each batch
(cvae.distributed): rank 0 alone writes the run folder and calls the
callbacks, and whatever ends the loop is decided by all ranks together.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import queue
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cvae import distributed, native
from cvae.artifacts import EpochArtifacts, epoch_artifacts, save_fixed_inputs
from cvae.checkpoints import save_checkpoint
from cvae.config import RunConfig
from cvae.cuda_graph import GraphStep, portable_optimizer_state, prepare_graph_step, use_cuda_graph
from cvae.data import ImageData
from cvae.errors import CVAEError
from cvae.estimators import evaluate_elbo, refined_nelbo
from cvae.model import CVAE, Objective, count_parameters, term_names
from cvae.progress import Callback
from cvae.ranks import ONE, Ranks
from cvae.runs import RunDir, active_runs, available_cores, others_cpu_seconds, process_identity
from cvae.runtime import (
    HalfWeights,
    autocast,
    cpu_has_fast_bf16,
    half_weights,
    make_optimizer,
    match_optimizer_state,
    prepare_for_cpu,
    prepare_model,
    select_amp_dtype,
    select_device,
    set_threads,
    use_device,
)
from cvae.schedule import LearningRate, kl_weight_at

STATUS_EVERY_S = 1.0  # rewrite status.json at most this often while training
FIRST_PREVIEW_S = 0.5  # the first live pictures, this long after the first batch: a class sees a model at once
PREVIEW_SHARE = 0.05  # live pictures take at most this share of the training time (they run on its thread)
PREVIEW_LATENTS = 1000  # test images in a live latent scatter (the epoch's own has the whole latent subset)


@dataclass
class TrainResult:
    """What a training call leaves: its run folder, the per-epoch metrics, and how it ended."""

    run_dir: Path
    metrics: list[dict] = field(default_factory=list)
    state: str = "finished"  # finished or stopped
    stop_signal: int | None = None  # the signal that stopped it, when state is "stopped"
    model: CVAE | None = None  # the trained model in eval mode (as cvae.load_model returns it)


class StopRequested:
    """Set by SIGTERM / SIGINT; the loop stops after the batch in progress.

    With several ranks (`shared`) a signal is only this rank's wish (`asked`): the loop stops once the ranks
    have agreed on it (`decide`), all after the same batch, whichever rank the signal reached.
    """

    def __init__(self, *, shared: bool = False) -> None:
        self.requested = False
        self.signum: int | None = None  # which signal asked: the exit code says it (130 or 143)
        self.shared = shared
        self.asked: int | None = None  # the signal this process got
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._previous and hasattr(signal, "pthread_sigmask"):
            # The command line holds them back (blocked) from torch's import on (cvae.train): one that came
            # during the set-up is delivered now, to this handler, and the loop stops after its first batch.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(self._previous))
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.asked = signum
        if not self.shared:
            self.requested, self.signum = True, signum

    def decide(self, signum: int | None) -> None:
        """The ranks' verdict: stop (after this batch) for `signum`, or go on for None."""
        if signum is not None:
            self.requested, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class DeviceData:
    """The data on the training device, and how an epoch cuts it into batches."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    batch: int
    batches: int  # per epoch


def say(text: str) -> None:
    """A note for the person at the console (what the loop chose and why); `quiet` runs pass `silent`."""
    print(text, flush=True)


def silent(text: str) -> None:
    """What a run started with `quiet` does with a note: it prints nothing but errors."""


def place_data(data: ImageData, batch_size: int, device: torch.device, world: int = 1) -> DeviceData:
    """Data lives on the device once; batches are gathered by index. `batch_size` is the global batch, which
    `world` ranks share."""
    n = len(data.train_x)
    batch = min(batch_size, n)
    batches = math.ceil(n / batch) if n else 0
    if 0 < n % batch < max(2, world):  # a batch of one breaks batch norm, and every rank needs an image: drop it
        batches -= 1
    if batches < 1:
        raise CVAEError("the training set is empty")
    if batch < world:
        raise CVAEError(f"{n} training images cannot be shared among {world} processes")
    return DeviceData(data.train_x.to(device), data.train_y.to(device), data.test_x.to(device),
                      data.test_y.to(device), batch, batches)  # fmt: skip


def restore(model: CVAE, optimizer: torch.optim.Optimizer, schedule: LearningRate, resume: dict,
            device: torch.device) -> int:  # fmt: skip
    """Load a checkpoint's states into the fresh model, optimizer and schedule; return its epoch."""
    try:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        match_optimizer_state(optimizer, optimizer.defaults.get("fused"))
    except (RuntimeError, KeyError, ValueError) as err:
        raise CVAEError(f"checkpoint does not fit this model: {str(err).splitlines()[0][:200]}") from None
    if "lr_override" in resume:
        schedule.override(resume["lr_override"])
    if "rng_cpu" in resume:
        torch.set_rng_state(resume["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in resume:
        torch.cuda.set_rng_state(resume["rng_cuda"])
    return int(resume["epoch"])


def fit(
    config: RunConfig,
    run: RunDir,
    *,
    data: ImageData,
    resume: dict | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Train `config.train.epochs` epochs (after the resumed ones) into `run`; `quiet`: no notes on the console.

    Launched by torchrun (or srun), every rank calls it and they train the one run together; rank 0 alone writes
    `run` and calls `callbacks` (cvae.distributed)."""
    cfg = config.train
    note = silent if quiet else say
    ranks = distributed.current()
    distributed.check_batch(cfg.batch_size, ranks)
    set_threads(cfg.threads, ranks.local_world)
    device = device or (distributed.rank_device(cfg.device, ranks) if ranks.active else select_device(cfg.device))
    use_device(device)
    amp_dtype = select_amp_dtype(cfg.precision, device)
    if device.type == "cpu" and amp_dtype is not None and not cpu_has_fast_bf16() and ranks.main:
        note("note: this CPU has no bf16 matrix instructions: bf16 runs in torch's plain loops, many times slower "
             "than fp32 (--precision auto trains in fp32 here)")  # fmt: skip
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        prepare_for_cpu()
    model = prepare_model(CVAE(config.model).to(device), device)
    if ranks.active:  # batch norm over the global batch, not each rank's share of it
        model = distributed.sync_batchnorm(model, device)
    optimizer = make_optimizer(model, cfg.learning_rate, device)
    start_epoch = int(resume["epoch"]) if resume is not None else 0
    end_epoch = start_epoch + cfg.epochs
    d = place_data(data, cfg.batch_size, device, ranks.world)
    schedule = LearningRate(optimizer, cfg, end_epoch=end_epoch, batches=d.batches)
    if resume is not None:
        restore(model, optimizer, schedule, resume, device)
    # Several ranks: each step's gradients averaged over them (DDP starts every rank from rank 0's weights).
    objective = distributed.data_parallel(model, device) if ranks.active else model.objective
    dynamic = config.data.binarize == "dynamic"
    # On CUDA, the whole step as one CUDA graph (cvae/cuda_graph.py); None = the eager step. Not with several
    # ranks: DDP's all-reduce inside a captured graph needs a side stream, eager warm-up steps and every rank's
    # capture to agree, which this check (one process's eager against graph steps) does not give.
    graph_option = "off" if ranks.active and use_cuda_graph(cfg.cuda_graph, device) else cfg.cuda_graph
    graph, warning = prepare_graph_step(model, optimizer, option=graph_option, train_x=d.train_x,
                                        train_y=d.train_y, batch=d.batch, amp_dtype=amp_dtype, dynamic=dynamic)  # fmt: skip
    if ranks.active and cfg.cuda_graph == "on" and device.type == "cuda":
        warning = f"CUDA graph off: {ranks.world} processes train this run (DistributedDataParallel): training eagerly"
    if warning and ranks.main:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    # One process's eager CPU step under bf16 autocast keeps its matrix weights in bf16 (the same numbers,
    # fewer passes over memory); DDP's hooks and the CUDA graph hold on to the fp32 tensors.
    weights = half_weights(model, optimizer, device, amp_dtype) if graph is None and not ranks.active else None
    if weights is not None and weights.kernel is None and native.wanted():
        note(f"note: the optimiser runs {native.status()}")  # a slower step: say why, once

    grid_x, grid_y = d.test_x[: cfg.grid_size], d.test_y[: cfg.grid_size]
    lat_x, lat_y = d.test_x[: cfg.latent_subset], d.test_y[: cfg.latent_subset]
    result = TrainResult(run.path, model=model)
    model.run_config, model.info = config, data.info
    batch_log = None
    with rank_zero_writes(ranks, device) as writes:
        if writes:
            save_fixed_inputs(run, grid_x, lat_y)
            result.metrics = [r for r in run.read_metrics() if r.get("epoch", 0) <= start_epoch]
            run.write_status(
                state="running", pid=os.getpid(), process=process_identity(os.getpid()), epoch=start_epoch,
                epochs=end_epoch, batch=0, batches=d.batches, message="", started=time.time(), device=str(device),
                precision=str(amp_dtype or torch.float32).replace("torch.", ""), parameters=count_parameters(model),
                cuda_graph=graph is not None, warning=warning or "",
                cuda_graph_setup_s=graph.setup_seconds if graph else None,
                **({"processes": ranks.world} if ranks.active else {}),
            )  # fmt: skip
            batch_log = open(run.batches_path, "a", buffering=1)  # noqa: SIM115 - closed in finally
    kept = {"epoch": start_epoch}  # the last epoch whose checkpoint is on disk (the writer thread moves it)
    writer = EpochWriter()
    share = CoreShare(run, cfg.threads, say=note) if device.type == "cpu" and not ranks.active else None
    preview = None
    # A CUDA graph runs a whole epoch without coming back per batch; rank 0 alone writes the pictures.
    if cfg.preview_every > 0 and graph is None and ranks.main:
        preview = LivePreview(cfg.preview_every, run, writer, d.batches, functools.partial(
            epoch_artifacts, model, grid_x=grid_x, grid_y=grid_y, lat_x=lat_x[:PREVIEW_LATENTS],
            lat_y=lat_y[:PREVIEW_LATENTS], amp_dtype=amp_dtype, decoder=False))  # fmt: skip
    t_run = time.time()
    try:
        with StopRequested(shared=ranks.active) as stop:
            for epoch in range(start_epoch + 1, end_epoch + 1):
                t_epoch = time.time()
                step = Step(model, optimizer, schedule, d, amp_dtype, dynamic=dynamic, graph=graph, share=share,
                            objective=objective, ranks=ranks, weights=weights)  # fmt: skip
                train = step.epoch(epoch, cfg, run, batch_log, callbacks, stop, t_run, preview)
                t_trained = time.time()
                if stop.requested:
                    writer.wait()  # the last finished epoch's checkpoint is on disk before the status says so
                    result.state, result.stop_signal = "stopped", stop.signum
                    model.eval()
                    if ranks.main:
                        run.write_status(
                            state="stopped", epoch=epoch - 1, batch=0,
                            signal=signal.Signals(stop.signum).name if stop.signum else None,
                            message=f"stopped in epoch {epoch}: the checkpoint of epoch {epoch - 1} is kept",
                        )  # fmt: skip
                    return result
                schedule.after_epoch(train["nelbo"])

                # The test -ELBO on rank 0 alone: the very number one process computes for these weights (its z
                # noise is drawn in order through the test set), for one forward pass over it; the others wait.
                with rank_zero_writes(ranks, device, pending=step.failure) as writes:
                    if writes:
                        test = evaluate_elbo(model, d.test_x, d.test_y, amp_dtype=amp_dtype)
                        pictures = epoch_artifacts(model, epoch, grid_x, grid_y, lat_x, lat_y, amp_dtype)
                        t_done = time.time()
                        refined = {}
                        if cfg.refine_steps and epoch == end_epoch:  # the run's final model only: it costs epochs
                            refined = dict(test_nelbo_refined=refined_nelbo(model, d.test_x, d.test_y,
                                                                            steps=cfg.refine_steps),
                                           refine_steps=cfg.refine_steps, refine_seconds=time.time() - t_done)  # fmt: skip
                        record = dict(
                            epoch=epoch, **{f"train_{k}": v for k, v in train.items()},
                            **{f"test_{k}": v for k, v in test.items()}, lr=schedule.current,
                            seconds=time.time() - t_epoch, train_seconds=t_trained - t_epoch,
                            images_per_s=step.seen / max(t_done - t_epoch, 1e-9), **refined, time=time.time() - t_run,
                            **({"kl_weight": float(model.kl_weight)} if model.config.shaped_kl else {}),
                        )  # fmt: skip
                        payload = checkpoint_payload(config, data, model, optimizer, schedule, record, device)
                        writer.submit(functools.partial(save_epoch, run, config, payload, pictures, record, end_epoch,
                                                        kept))  # fmt: skip
                        result.metrics.append(record)
                        for cb in callbacks:
                            cb.on_epoch(record)
            writer.wait()
    except BaseException as err:
        with contextlib.suppress(BaseException):  # what was handed to the writer still lands (or fails alone)
            writer.wait()
        message = str(err) if isinstance(err, CVAEError) else f"{type(err).__name__}: {err}"
        message = (message.splitlines()[0][:500] if message else "failed") + \
            f" (the checkpoint of epoch {kept['epoch']} is kept)"  # fmt: skip
        if ranks.main:
            with contextlib.suppress(OSError):  # the disk is full or read-only: the original error says more
                run.write_status(state="failed", epoch=kept["epoch"], batch=0, message=message)
        raise
    finally:
        writer.close()
        if batch_log is not None:
            batch_log.close()
    memory = {"gpu_memory_mb": torch.cuda.max_memory_reserved(device) / 2**20} if device.type == "cuda" else {}
    if ranks.main:
        run.write_status(state="finished", epoch=end_epoch, batch=0, message="", **memory)
    model.eval()
    return result


@contextlib.contextmanager
def rank_zero_writes(ranks: Ranks, device: torch.device, *, pending: BaseException | None = None) -> Iterator[bool]:
    """A block of work for rank 0, the run folder's one writer: it yields whether this rank does it.

    With several ranks its failure (or a `pending` one) is agreed on at the block's end, so that every rank
    ends with it instead of waiting for rank 0 in the next step's all-reduce. With one process, nothing more.
    """
    if not ranks.active:
        yield True
        return
    failure = pending
    try:
        yield ranks.main and failure is None
    except Exception as err:  # noqa: BLE001 - raised below, on every rank
        failure = err
    if distributed.agree(device, signum=None, failed=failure is not None).failed:
        raise failure if failure is not None else distributed.Elsewhere("rank 0 failed (it says why)")


class EpochWriter:
    """Writes each finished epoch's files on one background thread, in order, while training goes on.

    An epoch's checkpoint (a few MB written with fsync), its pictures and its
    metrics line are CPU work that the next epoch need not wait for. The loop
    hands over CPU copies (`checkpoint_payload`), so training may change the
    weights at once. An error in the writer (a full disk) is raised in the loop
    at its next `submit` or `wait`; `wait` returns once everything handed over
    is on disk.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="cvae-epoch-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:  # after a failure, later epochs are not written: resume needs order
                    job()
            except BaseException as err:  # noqa: BLE001 - handed to the loop
                self._error = err
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:  # sticky: every later submit or wait raises it again
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._jobs.put(job)

    def wait(self) -> None:
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


SHARE_EVERY_S = 5.0  # how often a trainer with threads 0 looks at how many runs share its cores
TRIAL_STEPS = 6  # steps compared at the other thread count in a trial (after one that is not)
FIRST_TRIAL_S = 1.0  # the first trial after this much training at a new share (its first steps are slower)
TRIAL_EVERY_S = (5.0, 60.0)  # the wait between trials: the first, doubled after each that lost, up to the last
TRIAL_MARGIN = 0.9  # the other count is kept when its steps take at most this share of the held count's
SLOWED = 1.5  # steps this many times slower than at the last verdict: another trial at once
QUIET_CORES = 0.25  # other programs used less than this many of the run's cores since the last look: no trial
LONG_STEPS_S = 1.0  # two steps that take this long in all are enough to judge by: waiting for six costs seconds
BUSY_CORE = 0.75  # other programs leave the share this much of a core short: no trial back up at the share
TRIAL_COST = 0.05  # a lost trial waits long enough for its steps' extra time to be at most this share of the time


class CoreShare:
    """Threads 0 (auto): the cores shared out among the runs training in this run's runs folder, looked at anew
    every SHARE_EVERY_S, so a class's runs use one core each while they overlap and a run alone gets them all.
    More threads than cores' share would make each run's threads wait for one another's time slices.

    Within its share, a run keeps the thread count whose steps it measures to be faster. A program outside the
    runs folder that keeps a core busy (another user's job on a shared server, a test suite) takes time slices
    from one of the run's OpenMP threads, and the others spin at the end of every operator until it comes back:
    on two cores, steps several times slower than on the one free core. So now and then, and at once when the
    steps slow down, a trial times a few steps at half the threads (or, after such a trial won, back at the
    share), and the faster count stays; a trial that loses waits twice as long before the next one, or longer
    where its steps cost much more than the held count's would have (TRIAL_COST). Steps of a second or more
    start a trial after two, not six: beside a busy core, two threads' steps can take seconds each, so a run
    that moved down tries its share again only once the other programs (this folder's other runs among them)
    leave it more than its share less BUSY_CORE of free cores. Where nothing else has used the run's cores
    since the last look (/proc/stat), no trial is needed: the run keeps its share, or goes back to it.
    A change of thread count is told through `say`. `clock` and `others` are for tests."""

    def __init__(self, run: RunDir, threads: int, clock: Callable[[], float] = time.monotonic,
                 others: Callable[[], float | None] = others_cpu_seconds, say: Callable[[str], None] = say) -> None:  # fmt: skip
        self.run, self.auto, self.clock, self.others, self.say = run, threads == 0, clock, others, say
        self.looked: tuple[float, float | None] = (0.0, None)  # the clock and others' CPU seconds at the last look
        self.share = self.current = 0  # the cores' share of this run; the threads it uses now
        self.next_at = 0.0  # when the share is looked at next
        self.last: float | None = None  # the clock at the previous step's end
        self.held: list[float] = []  # the latest step times at `current`, outside trials
        self.trial: list[float] | None = None  # step times at `current` while a trial runs
        self.before = 0  # the count a trial would go back to
        self.wait_s = TRIAL_EVERY_S[0]
        self.trial_at = math.inf
        self.settled: float | None = None  # the median step time at the last verdict

    def __call__(self) -> None:
        """After each step: the share looked at when due, the step timed, a trial begun or judged."""
        if not self.auto:
            return
        now = self.clock()
        step_s, self.last = (None if self.last is None else now - self.last), now
        if now >= self.next_at:
            self.next_at = now + SHARE_EVERY_S
            others = active_runs(self.run.path.parent, besides=self.run, states=("starting", "running"))
            share = max(1, available_cores() // (1 + others))
            if share != self.share:  # runs came or went: start over at the new share
                self.share, self.trial, self.settled, self.wait_s = share, None, None, TRIAL_EVERY_S[0]
                self._use(share, now)
                self.trial_at, self.looked = now + FIRST_TRIAL_S, (now, self.others())
                return
        if step_s is None:
            return
        if self.trial is not None:
            self.trial.append(step_s)
            if len(self.trial) > TRIAL_STEPS or sum(self.trial) > (TRIAL_STEPS + 1) * statistics.median(self.held):
                self._judge(now)
            return
        self.held = [*self.held[1 - TRIAL_STEPS :], step_s]
        if self.share < 2:
            return
        last = self.held[-2:]
        if len(last) == 2 and sum(last) >= LONG_STEPS_S and (self.settled is None or min(last) > SLOWED * self.settled):
            self.held = last  # beside a busy core a step on two threads can take seconds: two say enough
        elif len(self.held) < TRIAL_STEPS:
            return
        typical = statistics.median(self.held)
        if now < self.trial_at and (self.settled is None or typical <= SLOWED * self.settled):
            return
        others = self._others(now)
        quiet = others is not None and others < QUIET_CORES
        # the other work (this folder's other runs included) leaves the share a core short: its threads would
        # wait for time slices again, and a step of theirs can cost seconds, so no trial back up until it lessens
        crowded = others is not None and others >= available_cores() - self.share + BUSY_CORE
        if quiet and self.current == self.share:  # nothing else wants these cores: no thread waits for one
            self.settled, self.held, self.trial_at = typical, [], now + self.wait_s
        elif quiet:  # whatever kept a core busy is gone: back to the share
            self.say(f"CPU threads: {self.share} again (nothing else busy on these cores)")
            self.settled, self.wait_s = None, TRIAL_EVERY_S[0]
            self._use(self.share, now)
        elif self.current < self.share and crowded:
            self.settled, self.held, self.trial_at = typical, [], now + self.wait_s
        else:
            self.before, self.trial = self.current, []
            self._use(max(1, self.share // 2) if self.current == self.share else self.share, now, trial=True)

    def _judge(self, now: float) -> None:
        """The trial's steps against the held count's: the faster count stays. Its first step, which may pay for
        starting threads, is not compared; a trial that took longer than the held count would have for all its
        steps ends there, lost (beside a busy core, a step on two threads can take many times as long)."""
        held, timed = statistics.median(self.held), self.trial[1:]
        tried = statistics.median(timed) if len(timed) == TRIAL_STEPS else math.inf
        lost_s, self.trial = sum(self.trial) - len(self.trial) * held, None
        if tried <= TRIAL_MARGIN * held:
            self.say(f"CPU threads: {self.current} from now on ({1e3 * tried:.0f} ms a step against {1e3 * held:.0f} "
                     f"ms on {self.before})")  # fmt: skip
            self.settled, self.wait_s, self.held, self.trial_at = tried, TRIAL_EVERY_S[0], [], now + TRIAL_EVERY_S[0]
        else:
            # the wait doubles, and grows with what the trial cost: one step of seconds on two threads
            self.settled, self.wait_s = held, min(max(2 * self.wait_s, lost_s / TRIAL_COST), TRIAL_EVERY_S[1])
            self._use(self.before, now)

    def _others(self, now: float) -> float | None:
        """How many of the run's cores other programs used since the last look; None where it cannot be known."""
        (then, before), others = self.looked, self.others()
        self.looked = (now, others)
        if others is None or before is None or now <= then:
            return None
        return (others - before) / (now - then)

    def _use(self, threads: int, now: float, trial: bool = False) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.current = threads
        if not trial:  # the step after a change, which may pay for starting threads, is not timed
            self.held, self.trial_at, self.last = [], now + self.wait_s, None


class LivePreview:
    """Pictures of the epoch in progress (reconstructions and latent means), so a class sees its models learn
    long before an epoch ends: the first FIRST_PREVIEW_S after the first batch, then every `every` seconds, but
    spaced so that making them (on the training thread) takes at most PREVIEW_SHARE of the time. The writer
    thread saves them as `live_*` artifacts."""

    def __init__(self, every: float, run: RunDir, writer: EpochWriter, batches: int,
                 make: Callable[..., EpochArtifacts]) -> None:  # fmt: skip
        self.every, self.run, self.writer, self.batches, self.make = every, run, writer, batches, make
        self.next_at: float | None = None
        self.saved = False

    def __call__(self, epoch: int, batch: int, t_run: float) -> None:
        now = time.time()
        if self.next_at is None:
            self.next_at = now + min(self.every, FIRST_PREVIEW_S)
        if now < self.next_at or batch >= self.batches:  # the epoch's end makes its own pictures
            return
        pictures = self.make(epoch=epoch)
        cost = time.time() - now
        where = dict(epoch=epoch, batch=batch, batches=self.batches, time=time.time() - t_run, seconds=cost)
        self.writer.submit(functools.partial(self._save, pictures, where))
        self.next_at = time.time() + max(self.every, cost / PREVIEW_SHARE)

    def _save(self, pictures: EpochArtifacts, where: dict) -> None:
        pictures.save_live(self.run, where)
        if not self.saved:  # when a run's first pictures were there to see: the class's figure (scripts.loadtest)
            self.saved = True
            self.run.write_status(first_pictures_at=time.time())


class Step:
    """One epoch of optimisation steps, with running sums kept on the device.

    With several ranks each trains on its share of every batch, and after each step the ranks agree (one
    all-reduce) on whether to go on: a stop signal on any of them, rank 0's failure to write the run folder,
    and at logged batches the global batch's losses, from which all judge a non-finite loss alike.
    """

    def __init__(self, model: CVAE, optimizer: torch.optim.Optimizer, schedule: LearningRate, d: DeviceData,
                 amp_dtype: torch.dtype | None, *, dynamic: bool, graph: GraphStep | None = None,
                 share: CoreShare | None = None, objective: Callable[..., Objective] | None = None,
                 ranks: Ranks = ONE, weights: HalfWeights | None = None) -> None:  # fmt: skip
        self.model, self.optimizer, self.schedule, self.d, self.share = model, optimizer, schedule, d, share
        self.weights = weights  # bf16 matrix weights during each step (cvae.runtime.HalfWeights), or None
        self.amp_dtype, self.dynamic, self.graph = amp_dtype, dynamic, graph
        self.objective = objective or model.objective  # DDP's wrapper of it with several ranks
        self.ranks = ranks
        self.device = d.train_x.device
        self.names = term_names(model.config)  # what the model's objective returns, summed over the epoch
        self.seen = 0  # images trained this epoch, on every rank together
        self.failure: Exception | None = None  # rank 0's failure to write, ending every rank at the next agreement

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Rank 0's writes during the epoch: with several ranks a failure waits for the next agreement, which
        ends every rank with it; with one process it is raised at once."""
        try:
            yield
        except Exception as err:
            if not self.ranks.active:
                raise
            self.failure = self.failure or err

    def before_batch(self, epoch: int, b: int) -> None:
        """What changes per batch: the learning rate (a per-batch schedule) and the KL's weight (a warm-up)."""
        self.schedule.before_batch(epoch, b)
        if self.model.config.kl_warmup_epochs > 0:
            self.model.kl_weight.fill_(kl_weight_at(self.model.config, epoch, b, self.d.batches))

    def agree(self, stop: StopRequested, values: torch.Tensor | None = None) -> list[float]:
        """Several ranks: the step's verdict, taken together (see the class); `values` summed over the ranks."""
        verdict = distributed.agree(self.device, signum=stop.asked, failed=self.failure is not None, values=values)
        if verdict.failed:
            raise self.failure if self.failure is not None else distributed.Elsewhere("rank 0 failed (it says why)")
        stop.decide(verdict.signum)
        return verdict.values

    def epoch(self, epoch: int, cfg: Any, run: RunDir, batch_log: Any, callbacks: Sequence[Callback],
              stop: StopRequested, t_run: float, preview: LivePreview | None = None) -> dict[str, float]:  # fmt: skip
        """Train one epoch; returns the mean train terms (nelbo, recon, kl, ...). Stops early if asked."""
        model, d, ranks = self.model, self.d, self.ranks
        model.train()
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 100_003 + epoch)  # the same on every rank
        order = torch.randperm(len(d.train_x), generator=gen, device=self.device)
        if ranks.active:  # each rank's z noise from a seed of its own (one process goes on with its one stream)
            torch.manual_seed(distributed.noise_seed(cfg.seed, epoch, ranks.rank))
        sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        last_status, t_epoch = 0.0, time.time()
        if self.graph is not None:  # the same epoch, one graph replay per full batch, no host sync per step
            sums, self.seen = self.graph.run_epoch(
                epoch=epoch, seed=cfg.seed, order=order, batches=d.batches, print_every=cfg.print_every,
                before_batch=functools.partial(self.before_batch, epoch),
                run=run, batch_log=batch_log, callbacks=callbacks, t_run=t_run, t_epoch=t_epoch, stop=stop,
            )  # fmt: skip
        for b in range(d.batches if self.graph is None else 0):
            self.before_batch(epoch, b)
            idx = order[b * d.batch : (b + 1) * d.batch]  # the global batch
            part = ranks.share(len(idx))  # this rank's images of it (all of them on one process)
            # dynamic binarization draws for the global batch: each image gets the pixels one process would draw
            # index_select: the same rows as indexing with a tensor, without its general machinery
            xb = (torch.bernoulli(d.train_x.index_select(0, idx), generator=gen)[part] if self.dynamic
                  else d.train_x.index_select(0, idx[part]))  # fmt: skip
            yb = d.train_y.index_select(0, idx[part])
            with self.weights.for_step() if self.weights is not None else contextlib.nullcontext():
                with autocast(self.device, self.amp_dtype):
                    terms = self.objective(xb, yb)
                loss = terms.loss
                if len(xb) * ranks.world != len(idx):  # an uneven last batch: DDP averages the ranks' means equally
                    loss = loss * (len(xb) * ranks.world / len(idx))
                if self.weights is None:  # HalfWeights.step leaves no gradient behind
                    self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step() if self.weights is None else self.weights.step()
            with torch.no_grad():  # running sums, outside the graph
                sums += torch.stack([t.sum() for t in terms.terms().values()])
            self.seen += len(xb)
            logged = (b + 1) % cfg.print_every == 0 or b + 1 == d.batches
            if ranks.active:
                parts = (terms.nelbo, terms.recon, terms.kl)
                shared = self.agree(stop, torch.stack([t.detach().sum() for t in parts]) if logged else None)
            if logged:
                # the batch's negative ELBO and its parts (the objective also holds a baseline or GSNN term where
                # the model trains one: those are in the epoch's sums); with several ranks, the global batch's
                if ranks.active:
                    lv, rv, kv = (v / len(idx) for v in shared)
                else:
                    lv, rv, kv = (float(v.detach().mean()) for v in (terms.nelbo, terms.recon, terms.kl))
                if not math.isfinite(lv):
                    raise CVAEError(
                        f"the loss became {lv} at epoch {epoch}, batch {b + 1}: lower the learning rate (-lr)"
                    )
                if ranks.main:
                    with self.writing():
                        record = dict(epoch=epoch, batch=b + 1, step=(epoch - 1) * d.batches + b + 1, loss=lv,
                                      recon=rv, kl=kv, time=time.time() - t_run)  # fmt: skip
                        batch_log.write(json.dumps(record) + "\n")
                        for cb in callbacks:
                            cb.on_batch(record)
                        now = time.time()
                        if now - last_status >= STATUS_EVERY_S:
                            last_status = now
                            run.write_status(epoch=epoch - 1, batch=b + 1, epoch_started=t_epoch)
            if stop.requested:
                break
            if preview is not None:
                with self.writing():
                    preview(epoch, b + 1, t_run)
            if self.share is not None:
                self.share()
        if ranks.active:  # the epoch's sums and images over every rank: the same global means on each
            shared = self.agree(stop, torch.cat([sums, sums.new_tensor([self.seen])]))
            sums, self.seen = torch.tensor(shared[:-1], dtype=torch.float64), int(shared[-1])
        return dict(zip(self.names, (sums / max(self.seen, 1)).tolist(), strict=True))


def _cpu_copy(value: Any) -> Any:
    """`value` with every tensor copied to the CPU (a snapshot: training goes on changing the originals)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def checkpoint_payload(config: RunConfig, data: ImageData, model: CVAE, optimizer: torch.optim.Optimizer,
                       schedule: LearningRate, record: dict, device: torch.device) -> dict:  # fmt: skip
    """The checkpoint of the epoch just finished, on the CPU."""
    payload = dict(
        config=config.to_dict(), dataset_info=data.info.to_dict(), epoch=record["epoch"],
        model=_cpu_copy(model.state_dict()), optimizer=_cpu_copy(portable_optimizer_state(optimizer.state_dict())),
        scheduler=_cpu_copy(schedule.state_dict()), metrics=dict(record), rng_cpu=torch.get_rng_state(),
    )  # fmt: skip
    if device.type == "cuda":
        payload["rng_cuda"] = torch.cuda.get_rng_state()
    return payload


def save_epoch(run: RunDir, config: RunConfig, payload: dict, pictures: EpochArtifacts, record: dict,
               end_epoch: int, kept: dict | None = None) -> None:  # fmt: skip
    """An epoch's files, in the order a kill can interrupt safely: its pictures, the checkpoint, then the
    metrics line (a kill between those two is repaired on resume), then the status. `kept["epoch"]` is set
    once the checkpoint is on disk."""
    epoch = record["epoch"]
    pictures.save(run, epoch)
    save_checkpoint(run.latest_checkpoint, payload, parents=False)
    if kept is not None:
        kept["epoch"] = epoch
    if epoch % config.train.checkpoint_every == 0 or epoch == end_epoch:
        save_checkpoint(run.epoch_checkpoint(epoch), payload, parents=False)
    with open(run.metrics_path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    run.write_status(epoch=epoch, batch=0, last=record)
