"""The bounds on -log p(x | c) of one run, loosest to tightest, and the two gaps between them.

    cvae evaluate RUN --bounds                      # the first BOUNDS_IMAGES test images, K up to 1000
    cvae evaluate RUN --bounds --test-subset 1000   # more images: tighter error bars, longer

On one set of test images, nats per image (for a digit-completion run, -log p(y | x) of the hidden pixels),
each a mean over the images with its standard error, every figure from `cvae.estimators`' per-image
estimators (the ones `cvae evaluate` reports) under one seed:

- `nelbo_encoder`: -ELBO with the encoder's q (GAP_SAMPLES draws of z per image, the KL analytic);
  `nelbo` the same with one z per image, the training metric's estimator;
- `nelbo_refined`: -ELBO with a Gaussian q fitted to each image by `gap_steps` Adam steps, model fixed;
- `iwae`: the importance-weighted bound (Burda et al. 2016) with the encoder's q, K = 1, 10, 100, ... up to K;
- `iwae_refined`: the same bound at the largest K with the fitted q as the importance sampler.

The gaps, as Cremer, Li & Duvenaud (2018, "Inference suboptimality in VAEs", table 1) define them, each a
mean over the images of the per-image difference (so its standard error is that of a paired difference):

- amortization gap = -ELBO(encoder's q) - -ELBO(q*), what a better encoder could gain with this decoder;
- approximation gap = -ELBO(q*) - (-log p(x)), what a Gaussian q cannot capture of the true posterior.
  -log p(x) is unknown: the tightest measured bound stands in for it (the lower of the two IWAE figures at
  the largest K), and every IWAE figure is above -log p(x) in expectation, so the gap shown is a lower
  bound on the true one.

The encoder's q is a poor importance sampler where the encoder is off (the amortization gap): its IWAE at
K = 1000 can stay above the fitted q's ELBO, which would make the approximation gap look negative; the
fitted q as the sampler is what makes the tightest bound tight.

A run folder keeps the figures in `bounds.json`, keyed by the checkpoint's epoch (docs/run-folder.md); the
measuring process says how far it is in `bounds-status.json`. The app starts the measurement in a process
of its own (`start`), where its owner or a lecturer may, one at a time per run, and at most
`measuring_slots()` at once on the server.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvae.errors import ConfigError, CVAEError
from cvae.estimators import (
    DEFAULT_GAP_STEPS,
    EVAL_SEED,
    MAX_IW_SAMPLES,
    MAX_ROWS,
    counts_of,
    elbo_per_image,
    inference_gap_per_image,
    iwae_per_image,
)
from cvae.likelihoods import mean_se
from cvae.runs import (
    RunDir,
    available_cores,
    process_identity,
    process_is,
    read_json,
    waiting_lock,
    write_json,
)

BOUNDS_FILE = "bounds.json"
STATUS_FILE = "bounds-status.json"
LOCK_FILE = ".bounds.lock"  # flock()ed while bounds.json or the status is checked and changed
BOUNDS_K = 1000  # the largest K: the bound's gain from 100 to 1000 samples is still visible, beyond it a fraction
# Test images measured by default: 2-core Intel Xeon, the quick demo's MLP, about a minute (README, "Evaluation").
BOUNDS_IMAGES = 200
GAP_SAMPLES = 256  # inference_gap_per_image's draws of z per image for both ELBOs
MEASURING = ("starting", "waiting", "measuring")
STATES = (*MEASURING, "finished", "failed")
SCORED = ("whole image", "hidden pixels")
TIGHTEST = ("encoder", "refined")
POLL_S = 1.0  # while waiting for a free measuring slot


def ks_up_to(k: int) -> tuple[int, ...]:
    """The ladder's sample counts: 1, 10, 100, ... below `k`, then `k`."""
    ks = [10**e for e in range(7) if 10**e < k]
    return (*ks, k)


# ------------------------------------------------------------------ the figures


@dataclass(frozen=True)
class Figure:
    """A mean over test images in nats and its standard error (None below two images)."""

    nats: float
    se: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"nats": self.nats, "se": self.se}

    @staticmethod
    def from_dict(value: Any) -> Figure | None:
        if not isinstance(value, dict) or not _finite(value.get("nats")):
            return None
        se = value.get("se")
        if se is not None and not (_finite(se) and se >= 0):
            return None
        return Figure(float(value["nats"]), None if se is None else float(se))


@dataclass(frozen=True)
class Bounds:
    """One measurement (see the module's docstring): nats per image over `test_images` images."""

    test_images: int
    seed: int
    gap_steps: int
    scored: str  # "whole image", or "hidden pixels" (a digit-completion run's -log p(y | x))
    density: bool  # a Gaussian decoder: nats of a density on [0, 1]^D, which can be negative
    nelbo: Figure
    nelbo_encoder: Figure
    nelbo_refined: Figure
    iwae: tuple[tuple[int, Figure], ...]  # (K, figure), K ascending
    iwae_refined: Figure  # at the largest K
    tightest: str  # whose IWAE at the largest K is lower: "encoder" or "refined"
    amortization_gap: Figure
    approximation_gap: Figure  # a lower bound on the true one
    measured: float  # unix time
    seconds: float

    @property
    def k(self) -> int:
        return self.iwae[-1][0]

    @property
    def tightest_bound(self) -> Figure:
        return self.iwae_refined if self.tightest == "refined" else self.iwae[-1][1]

    def to_dict(self) -> dict[str, Any]:
        figures = ("nelbo", "nelbo_encoder", "nelbo_refined", "iwae_refined", "amortization_gap", "approximation_gap")
        return {
            "measured": self.measured, "seconds": self.seconds, "test_images": self.test_images, "seed": self.seed,
            "gap_steps": self.gap_steps, "scored": self.scored, "density": self.density, "tightest": self.tightest,
            **{name: getattr(self, name).to_dict() for name in figures},
            "iwae": [{"k": k, **f.to_dict()} for k, f in self.iwae],
        }  # fmt: skip

    @staticmethod
    def from_dict(value: Any) -> Bounds | None:
        """A measurement read from a file anyone could have written: None unless every field is as written."""
        if not isinstance(value, dict):
            return None
        counts = [value.get(name) for name in ("test_images", "seed", "gap_steps")]
        if not all(_whole(c) for c in counts) or counts[0] < 1 or counts[2] < 1:
            return None
        if value.get("scored") not in SCORED or value.get("tightest") not in TIGHTEST:
            return None
        times = [value.get(name) for name in ("measured", "seconds")]
        if not isinstance(value.get("density"), bool) or not all(_finite(t) for t in times):
            return None
        names = ("nelbo", "nelbo_encoder", "nelbo_refined", "iwae_refined", "amortization_gap", "approximation_gap")
        figures = {name: Figure.from_dict(value.get(name)) for name in names}
        rows = value.get("iwae")
        if not isinstance(rows, list) or not 0 < len(rows) <= 8:
            return None
        iwae = tuple((row.get("k"), Figure.from_dict(row)) for row in rows if isinstance(row, dict))
        ks = [k for k, _ in iwae]
        if len(iwae) != len(rows) or not all(_whole(k) and 0 < k <= 10**6 for k in ks) or ks != sorted(set(ks)):
            return None
        if any(f is None for f in figures.values()) or any(f is None for _, f in iwae):
            return None
        return Bounds(
            test_images=counts[0], seed=counts[1], gap_steps=counts[2], scored=value["scored"],
            density=value["density"], iwae=iwae, tightest=value["tightest"], measured=float(value["measured"]),
            seconds=float(value["seconds"]), **figures,  # type: ignore[arg-type]
        )  # fmt: skip


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        abs(value) < 1e12  # fmt: skip


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12


def measure_bounds(
    model: Any,
    x: Any,
    y: Any,
    *,
    k: int = BOUNDS_K,
    gap_steps: int | None = None,
    seed: int | None = None,
    max_rows: int | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Bounds:
    """The bounds and gaps of `model` on the images (x, y) (see the module's docstring).

    Each figure is computed by the estimator and with the arguments `cvae.evaluate.evaluate_checkpoint`
    uses, so it equals that report's figure for the same seed and images: `nelbo`, `iwae_nll` at -k K,
    and with --gap-images N on N images, `gap_nelbo_amortized`, `gap_nelbo_optimized` and
    `amortization_gap`. A random-count completion model is measured with 1, 2 and 3 quadrants given, each
    image's figures averaged over the three. `progress(stage, share done)` is told as the work goes.
    """
    gap_steps = DEFAULT_GAP_STEPS if gap_steps is None else gap_steps
    seed, max_rows = EVAL_SEED if seed is None else seed, MAX_ROWS if max_rows is None else max_rows
    if not 1 <= k <= MAX_IW_SAMPLES:
        raise CVAEError(f"the largest K must be 1 to {MAX_IW_SAMPLES}, got {k}")
    if gap_steps < 1:
        raise CVAEError(f"the steps fitting q must be positive, got {gap_steps}")
    if len(x) == 0:
        raise CVAEError("no test images to measure")
    t0 = time.time()
    ks = ks_up_to(k)
    counts = counts_of(model)
    # The share of the work each part is, in decoder passes per image: the fit's steps (16 draws, forward
    # and backward) and its two ELBOs, then each IWAE's K.
    fit_cost = gap_steps * 16 * 3 + 2 * GAP_SAMPLES
    total = len(counts) * (fit_cost + sum(ks) + k)
    at = {"done": 0.0, "cost": 0.0, "stage": ""}  # the work before the current part, and that part

    def begin(stage: str, cost: float) -> None:
        at.update(done=at["done"] + at["cost"], cost=cost, stage=stage)
        tell(0.0)

    def tell(share: float) -> None:
        if progress is not None:
            progress(at["stage"], min((at["done"] + share * at["cost"]) / total, 1.0))

    parts: dict[str, list[torch.Tensor]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        parts.setdefault(name, []).append(values)

    for q in counts:
        given = f" ({q} quadrant{'s' * (q != 1)} given)" if len(counts) > 1 else ""
        add("nelbo", elbo_per_image(model, x, y, seed=seed, quadrants=q).nelbo)
        begin(f"fitting q to each of {len(x)} images by {gap_steps} steps{given}", fit_cost)
        gap = inference_gap_per_image(model, x, y, steps=gap_steps, seed=seed, quadrants=q, on_step=tell)
        add("nelbo_encoder", gap.amortized)
        add("nelbo_refined", gap.optimized)
        for kk in ks:
            begin(f"the importance-weighted bound, K = {kk}{given}", kk)
            add(f"iwae_{kk}", -iwae_per_image(model, x, y, k=kk, max_rows=max_rows, seed=seed, quadrants=q).log_px)
        begin(f"the importance-weighted bound with the fitted q, K = {k}{given}", k)
        add("iwae_refined", -iwae_per_image(model, x, y, k=k, max_rows=max_rows, seed=seed, quadrants=q,
                                            posterior=gap.fitted).log_px)  # fmt: skip
    begin("done", 0.0)
    per_image = {name: torch.stack(values).mean(0) for name, values in parts.items()}  # over the counts: (N,)

    def figure(values: torch.Tensor) -> Figure:
        mean, se = mean_se(values)
        return Figure(mean, se if math.isfinite(se) else None)

    encoder_k, refined_k = per_image[f"iwae_{k}"], per_image["iwae_refined"]
    tightest = "refined" if float(refined_k.mean()) <= float(encoder_k.mean()) else "encoder"
    best = refined_k if tightest == "refined" else encoder_k
    return Bounds(
        test_images=len(x), seed=seed, gap_steps=gap_steps, scored="hidden pixels" if counts != [None] else
        "whole image", density=model.config.likelihood == "gaussian",
        nelbo=figure(per_image["nelbo"]), nelbo_encoder=figure(per_image["nelbo_encoder"]),
        nelbo_refined=figure(per_image["nelbo_refined"]),
        iwae=tuple((kk, figure(per_image[f"iwae_{kk}"])) for kk in ks), iwae_refined=figure(refined_k),
        tightest=tightest, amortization_gap=figure(per_image["nelbo_encoder"] - per_image["nelbo_refined"]),
        approximation_gap=figure(per_image["nelbo_refined"] - best), measured=time.time(),
        seconds=time.time() - t0,
    )  # fmt: skip


# ------------------------------------------------------------------ the run folder's files


@contextlib.contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """One process at a time checks and changes a run's bounds files (the app's threads, command lines)."""
    with waiting_lock(run.path / LOCK_FILE):
        yield


def read_bounds(run: RunDir) -> dict[int, Bounds]:
    """bounds.json's measurements by epoch, each checked field by field; a malformed one is left out."""
    found = {}
    for key, value in (read_json(run.path / BOUNDS_FILE) or {}).items():
        if isinstance(key, str) and key.isdigit() and len(key) <= 7 and (bounds := Bounds.from_dict(value)):
            found[int(key)] = bounds
    return found


def bounds_of(run: RunDir, epoch: int) -> Bounds | None:
    """The measurement of the model of `epoch`, unless that model has changed since: a resume from an earlier
    epoch, or an --overwrite, started after it was measured retrains that epoch (config.json's history)."""
    bounds = read_bounds(run).get(epoch)
    if bounds is None:
        return None
    history = (run.read_config() or {}).get("history")
    for start in history if isinstance(history, list) else []:
        when, first = (start.get("time"), start.get("start_epoch")) if isinstance(start, dict) else (None, None)
        if _finite(when) and _finite(first) and when > bounds.measured and first < epoch:
            return None
    return bounds


def save_bounds(run: RunDir, epoch: int, bounds: Bounds) -> None:
    """Add (or replace) the measurement of `epoch` in bounds.json, written whole and atomically."""
    with _locked(run):
        kept = {str(e): b.to_dict() for e, b in read_bounds(run).items() if e != epoch}
        write_json(run.path / BOUNDS_FILE, {**kept, str(epoch): bounds.to_dict()}, parents=False)


def read_status(run: RunDir) -> dict[str, Any]:
    """bounds-status.json, its fields checked (a crafted file reads as no measurement), with `alive`: whether
    its process still runs. {} when there is none."""
    raw = read_json(run.path / STATUS_FILE) or {}
    if raw.get("state") not in STATES:
        return {}
    status: dict[str, Any] = {"state": raw["state"]}
    for name in ("pid", "epoch", "test_images"):
        if _whole(raw.get(name)):
            status[name] = raw[name]
    for name in ("started", "updated", "seconds"):
        if _finite(raw.get(name)):
            status[name] = float(raw[name])
    done = raw.get("done")
    status["done"] = float(done) if _finite(done) and 0 <= done <= 1 else 0.0
    for name in ("stage", "message", "process"):
        value = raw.get(name)
        status[name] = value if isinstance(value, str) and len(value) <= 300 else ""
    status["alive"] = process_is(status.get("pid"), status["process"])
    return status


def measuring(run: RunDir) -> bool:
    """Whether a process measures this run's bounds now."""
    status = read_status(run)
    return status.get("state") in MEASURING and status["alive"]


def _write_status(run: RunDir, **fields: Any) -> None:
    status = read_json(run.path / STATUS_FILE) or {}
    write_json(run.path / STATUS_FILE, {**status, **fields, "updated": time.time()}, parents=False)


# ------------------------------------------------------------------ measuring a run, in the background


def measuring_slots() -> int:
    """How many measurements run at once on a server: one per two cores (each uses two threads)."""
    return max(1, available_cores() // 2)


def start(run: RunDir, user: Any = None, *, test_images: int = BOUNDS_IMAGES, nice: int = 0) -> int:
    """Measure a run's bounds in a process of its own (`cvae evaluate RUN --bounds`); its pid.

    Refused in one line (CVAEError) where `user` may not manage the run (cvae.classroom), while it trains,
    before its first checkpoint, and while its bounds are being measured already: the check and the start
    happen under the run's lock, so two clicks start one process."""
    from cvae.classroom import check_manage
    from cvae.jobs import PROJECT_ROOT, is_active

    check_manage(user, run, "measure the bounds of")
    if is_active(run):
        raise ConfigError("this run is still training: measure its bounds once it has ended")
    if not run.latest_checkpoint.is_file():
        raise ConfigError("this run has no checkpoint yet")
    argv = [sys.executable, "-m", "cvae.evaluate", str(run.path), "--bounds", "--test-subset", str(test_images),
            "--nice", str(nice), "--json"]  # fmt: skip
    with _locked(run):
        if measuring(run):
            raise ConfigError("the bounds of this run are being measured already")
        with open(run.path / "bounds.log", "ab") as log:
            log.write(f"\n$ {' '.join(argv[1:])}\n".encode())
            log.flush()
            proc = subprocess.Popen(  # noqa: S603 - this interpreter, a fixed module and checked flags
                argv, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends: no zombie
        write_json(run.path / STATUS_FILE, {
            "state": "starting", "pid": proc.pid, "process": process_identity(proc.pid), "started": time.time(),
            "updated": time.time(), "stage": "starting", "done": 0.0, "test_images": test_images,
        }, parents=False)  # fmt: skip
    return proc.pid


def _claim(run: RunDir, test_images: int) -> None:
    """This process measures the run: refused while another one does."""
    with _locked(run):
        status = read_status(run)
        if status.get("state") in MEASURING and status["alive"] and status.get("pid") != os.getpid():
            raise ConfigError(f"the bounds of this run are being measured by another process (pid {status['pid']})")
        write_json(run.path / STATUS_FILE, {
            "state": "waiting", "pid": os.getpid(), "process": process_identity(os.getpid()) or "",
            "started": time.time(), "updated": time.time(), "stage": "waiting for a free measuring slot",
            "done": 0.0, "test_images": test_images,
        }, parents=False)  # fmt: skip


def _slot(run: RunDir) -> Any:
    """Wait for one of the server's measuring slots (cvae.jobs' slot locks, in the runs folder); the open lock."""
    from cvae.jobs import Slot, try_slot

    slots = [Slot(f"bounds-{k}.lock") for k in range(measuring_slots())]
    while (taken := try_slot(run.path.parent / ".slots", slots)) is None:
        time.sleep(POLL_S)
    return taken[0]


def run_folder_of(path: Path) -> RunDir | None:
    """The run folder a run folder or one of its checkpoint files belongs to; None for a loose checkpoint."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    return RunDir(folder) if folder is not None and RunDir(folder).exists() else None


def measure_checkpoint(
    path: Path | str,
    *,
    k: int = BOUNDS_K,
    test_images: int = BOUNDS_IMAGES,
    gap_steps: int | None = None,
    seed: int | None = None,
    max_rows: int | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    save: bool = True,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[int, Bounds]:
    """Load a run folder or checkpoint and its first `test_images` test images, measure the bounds and, for
    a run folder (or a checkpoint in one) with `save`, keep them in its bounds.json. (epoch, bounds)."""
    from dataclasses import replace

    from cvae.data import load_data
    from cvae.generate import load_run
    from cvae.runtime import select_device

    # Bad values are refused before anything in the run folder changes.
    if test_images < 1 or not 1 <= k <= MAX_IW_SAMPLES or (gap_steps is not None and gap_steps < 1):
        raise CVAEError(f"--test-subset and --gap-steps must be positive and -k 1 to {MAX_IW_SAMPLES}, got "
                        f"{test_images}, {gap_steps} and {k}")  # fmt: skip
    run = run_folder_of(Path(path)) if save else None
    if run is not None:
        _claim(run, test_images)
    try:
        with _slot(run) if run is not None else contextlib.nullcontext():
            written = {"stage": "", "time": 0.0}

            def told(stage: str, share: float) -> None:
                # A file write a second at most (the fit reports every step), and one for each new stage.
                if run is not None and (stage != written["stage"] or time.time() - written["time"] >= 1.0):
                    _write_status(run, state="measuring", stage=stage, done=share)
                    written.update(stage=stage, time=time.time())
                if progress is not None:
                    progress(stage, share)

            if run is not None:
                _write_status(run, state="measuring", stage="loading the model and the test images", done=0.0)
            loaded = load_run(path, select_device(device))
            config = loaded.config.data if data_dir is None else replace(loaded.config.data, data_dir=data_dir)
            data = load_data(config)
            if data.info.to_dict() != loaded.info.to_dict():
                raise CVAEError("the test data differ in shape or classes from the data the checkpoint was trained on")
            epoch = loaded.checkpoint.get("epoch")
            epoch = epoch if _whole(epoch) else 0
            x, y = data.test_x[:test_images].clone(), data.test_y[:test_images].clone()
            del data  # the training images are not needed: their memory back while it measures
            if run is not None:
                _write_status(run, epoch=epoch)
            bounds = measure_bounds(loaded.model, x, y, k=k, gap_steps=gap_steps, seed=seed, max_rows=max_rows,
                                    progress=told)  # fmt: skip
        if run is not None:
            save_bounds(run, epoch, bounds)
            _write_status(run, state="finished", stage="", done=1.0, seconds=bounds.seconds, message="")
    except BaseException as err:
        if run is not None:
            message = str(err) if isinstance(err, (CVAEError, OSError)) else "stopped before it finished" if \
                isinstance(err, (KeyboardInterrupt, SystemExit)) else f"{type(err).__name__}: {err}"  # fmt: skip
            with contextlib.suppress(OSError):
                _write_status(run, state="failed", stage="", message=message.splitlines()[0][:300] if message else "")
        raise
    return epoch, bounds


# ------------------------------------------------------------------ command line (cvae evaluate --bounds)


def format_bounds(epoch: int, b: Bounds) -> str:
    """The measurement as a plain-text table, loosest to tightest."""

    def num(f: Figure) -> str:
        return f"{f.nats:.2f}" + (f" ± {f.se:.2f}" if f.se is not None else "")

    unit = "nats, hidden pixels" if b.scored == "hidden pixels" else "nats (density on [0,1]^D)" if b.density \
        else "nats"  # fmt: skip
    rows = [
        ("measured", f"epoch {epoch}, the first {b.test_images} test images, seed {b.seed}, {b.seconds:.0f} s"),
        (f"-ELBO, encoder's q [{unit}]", f"{num(b.nelbo_encoder)}  ({GAP_SAMPLES} z per image; one z: {num(b.nelbo)})"),
        (f"-ELBO, q refined per image [{unit}]", f"{num(b.nelbo_refined)}  ({b.gap_steps} Adam steps per image)"),
        *[(f"IWAE, K = {k}, encoder's q", num(f)) for k, f in b.iwae],
        (f"IWAE, K = {b.k}, refined q", num(b.iwae_refined)),
        ("amortization gap", f"{num(b.amortization_gap)} nats  (-ELBO encoder's q - -ELBO refined q)"),
        ("approximation gap", f"≥ {num(b.approximation_gap)} nats  (-ELBO refined q - the tightest bound, IWAE "
                              f"K = {b.k} with the {b.tightest} q, itself above -log p(x))"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cli_bounds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`cvae evaluate CHECKPOINT --bounds ...`: the measurement, printed; saved when CHECKPOINT is a run's."""
    import json

    from cvae.cli import run_main

    k = BOUNDS_K if args.iw_samples is None else args.iw_samples
    for flag, ok in (("--gap-images", args.gap_images == 0), ("--precision", args.precision == "fp32"),
                     ("--protocol", args.protocol == "ours")):  # fmt: skip
        if not ok:
            parser.error(f"{flag} does not go with --bounds (it fits q to every image of --test-subset, in fp32)")
    if k < 1:
        parser.error("--bounds needs -k of at least 1 (the largest K of the ladder)")

    shown = {"stage": "", "share": 0.0}

    def stage(text: str, share: float) -> None:
        # For a person watching: each part, and every tenth of the work; a script or the app reads the status file.
        if sys.stderr.isatty() and (text != shown["stage"] or share >= shown["share"] + 0.1):
            print(f"{share:4.0%}  {text}", file=sys.stderr, flush=True)
            shown.update(stage=text, share=share)

    def body() -> int:
        # A kill (SIGTERM) ends it as Ctrl-C does: the status file then says it stopped, rather than going stale.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        if not 0 <= args.nice <= 19:
            raise CVAEError(f"--nice must be 0 to 19, got {args.nice}")
        if args.nice:
            from cvae.jobs import lower_session

            lower_session(os.nice(args.nice))  # the app starts it in a session of its own
        epoch, bounds = measure_checkpoint(
            args.checkpoint, k=k, test_images=args.test_subset or BOUNDS_IMAGES, gap_steps=args.gap_steps,
            seed=args.seed, max_rows=args.max_rows, data_dir=args.data_dir, device=args.device, progress=stage,
        )  # fmt: skip
        print(json.dumps({"epoch": epoch, **bounds.to_dict()}, indent=2) if args.json else format_bounds(epoch, bounds))
        return 0

    return run_main(body)
