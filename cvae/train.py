"""The training loop, `main(**kwargs)` for notebooks, and `python -m cvae.train`.

    python -m cvae.train -d MNIST -t Bernoulli -s False -e 10 -b 64 -lr 3e-4 -z 10 -p 1

The loop writes everything to a run folder (cvae.runs) and reports progress
through callbacks; it knows nothing of any UI. SIGTERM or Ctrl-C stops it
cleanly: the last finished epoch's checkpoint stays, and the status says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from cvae.checkpoints import load_checkpoint, save_checkpoint, validate_checkpoint
from cvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig, conv_preset
from cvae.data import DatasetInfo, ImageData, load_data, peek_info
from cvae.errors import ConfigError, CVAEError
from cvae.evaluate import autocast, evaluate_elbo, refined_nelbo
from cvae.model import CVAE, count_parameters
from cvae.runs import (
    RunDir,
    default_runs_root,
    fresh_run_path,
    new_run_id,
    process_identity,
    read_jsonl,
    write_atomic,
    write_json,
)

STATUS_EVERY_S = 1.0  # rewrite status.json at most this often while training


# ------------------------------------------------------------------ devices


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for, but MPS is not available")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively; None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def set_threads(threads: int) -> None:
    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed big blocks for reuse instead of giving them back to the kernel.

    PyTorch's CPU allocator has no cache: every training step allocates and
    frees the activations, the bf16 copies of the weights and the gradients
    (about 150 MB at the reference architecture). glibc serves blocks over
    32 MB with mmap and trims the heap's free top, so each step page-faults
    all that memory in again: 21,000 faults and about a quarter of the step
    time on 2 cores (docs/benchmark.md). Raising both thresholds makes each
    step reuse the previous step's memory; the peak stays the same. Returns
    False where this is not glibc (macOS, Windows, musl): nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, limit_bytes)) and bool(libc.mallopt(m_trim_threshold, limit_bytes))
    except (OSError, AttributeError):
        return False


def flush_denormals() -> bool:
    """Treat float32 values below 1.2e-38 as 0 on the CPU (flush-to-zero).

    A Bernoulli decoder drives the logits of pixels that are always 0 (the
    image borders) far negative, so their gradients and Adam's squared-gradient
    averages fall into the denormal range, where CPU arithmetic is slow; the
    quick demo's epochs got slower as it trained. Values that small change
    nothing measurable: the quick demo's test -ELBO is the same to 3 decimals
    (docs/benchmark.md). Returns False where the CPU has no such mode.

    The mode belongs to a thread, and a thread starts with its creator's. So it
    must be set before torch's first parallel operation starts the intra-op
    worker threads: `main()` sets it first thing. Set later, the workers do half
    the arithmetic without it (tests/test_speed.py checks this).
    """
    return bool(torch.set_flush_denormal(True))


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam; the fused kernel on CPU and CUDA (one pass over the 15 M parameters, not a dozen)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


def cosine_lr(base: float, position: float, warmup: float, end: int, batches_per_epoch: int) -> float:
    """The cosine schedule's rate for the step that starts `position` epochs into the run.

    A linear warm-up to `base` over the first `warmup` epochs, then half a
    cosine from `base` down to 0 at epoch `end`. A function of the position
    alone, so a resumed run continues on the same curve; resuming with more
    epochs stretches the rest of the curve to the new end.
    """
    if position < warmup:
        return base * min(1.0, (position + 1 / batches_per_epoch) / warmup)
    t = min(1.0, (position - warmup) / max(end - warmup, 1e-9))
    return base * 0.5 * (1 + math.cos(math.pi * t))


def prepare_model(model: CVAE, device: torch.device) -> CVAE:
    """The conv architecture in channels_last on CPU, which oneDNN's convolutions run without reorders."""
    if device.type == "cpu" and model.config.arch == "conv":
        model = model.to(memory_format=torch.channels_last)
    return model


def match_optimizer_state(optimizer: torch.optim.Optimizer, fused: bool | None) -> None:
    """After loading a checkpoint: Adam moments in their parameter's layout, and our kernel choice.

    A checkpoint's moments are saved contiguous (or come from an older,
    unfused run); the fused kernel walks parameter and moments as one flat
    array, so they must share the parameter's memory format.
    """
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = fused, None
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


# ---------------------------------------------------------------- callbacks


class Callback(Protocol):
    def on_batch(self, record: dict[str, Any]) -> None: ...
    def on_epoch(self, record: dict[str, Any]) -> None: ...


class ConsoleProgress:
    """A progress bar on a terminal; one summary line per epoch otherwise."""

    def __init__(self, batches_per_epoch: int, *, quiet: bool = False) -> None:
        self.batches = batches_per_epoch
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.bar = None

    def on_batch(self, record: dict[str, Any]) -> None:
        if not self.tty:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.batches, desc=f"epoch {record['epoch']}", leave=False, unit="batch")
        self.bar.n = record["batch"]
        self.bar.set_postfix(loss=f"{record['loss']:.2f}", refresh=True)

    def on_epoch(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            print(format_epoch(record), flush=True)


def format_epoch(r: dict[str, Any]) -> str:
    return (
        f"epoch {r['epoch']:>3}  train -ELBO {r['train_nelbo']:.2f} nats  "
        f"test -ELBO {r['test_nelbo']:.2f} nats (recon {r['test_recon']:.2f} + KL {r['test_kl']:.2f})  "
        f"lr {r['lr']:.1e}  {r['seconds']:.1f}s"
        + (f"\n  test -ELBO {r['test_nelbo_refined']:.2f} nats with q refined per image by {r['refine_steps']} steps"
           if "test_nelbo_refined" in r else "")
    )  # fmt: skip


# -------------------------------------------------------------------- loop


class StopRequested:
    """Set by SIGTERM / SIGINT; the loop stops after the batch in progress."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # which signal asked: the exit code says it (130 or 143)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict] = field(default_factory=list)
    state: str = "finished"
    stop_signal: int | None = None  # the signal that stopped it, when state is "stopped"


def _save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    array = grid.mul(255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def _save_npy(array: np.ndarray, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, buffer.getvalue())


@torch.no_grad()
def write_epoch_artifacts(
    model: CVAE, run: RunDir, epoch: int, grid_x: torch.Tensor, grid_y: torch.Tensor,
    lat_x: torch.Tensor, lat_y: torch.Tensor, amp_dtype: torch.dtype | None,
) -> None:  # fmt: skip
    """Reconstruction grids of the fixed test batch and latent means of the fixed subset."""
    device = next(model.parameters()).device
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(epoch)
        with autocast(device, amp_dtype):
            post = model.encode(grid_x, grid_y)
            mean_out = model.decode(post.mu, grid_y)  # z = posterior mean
            z = post.mu + post.std * torch.randn_like(post.std)
            sample_out = model.decode(z, grid_y)  # z ~ q, then x ~ p(x | z, y)
        _save_grid(model.likelihood.mean(mean_out.float()), run.artifact(epoch, "recon_mean.png"))
        _save_grid(model.likelihood.sample(sample_out.float()), run.artifact(epoch, "recon_sample.png"))
        mus = []
        for start in range(0, len(lat_x), 1000):
            with autocast(device, amp_dtype):
                mus.append(model.encode(lat_x[start : start + 1000], lat_y[start : start + 1000]).mu.float().cpu())
    latents = torch.cat(mus).numpy().astype(np.float32) if mus else np.zeros((0, model.config.latent_dim), np.float32)
    _save_npy(latents, run.artifact(epoch, "latent.npy"))
    model.train()


def fit(
    config: RunConfig,
    run: RunDir,
    *,
    data: ImageData,
    resume: dict | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | None = None,
) -> TrainResult:
    """Train `config.train.epochs` epochs (after the resumed ones) into `run`."""
    cfg = config.train
    set_threads(cfg.threads)
    device = device or select_device(cfg.device)
    amp_dtype = select_amp_dtype(cfg.precision, device)
    torch.manual_seed(cfg.seed)

    if device.type == "cpu":
        keep_freed_memory()
        flush_denormals()
    model = prepare_model(CVAE(config.model).to(device), device)
    optimizer = make_optimizer(model, cfg.learning_rate, device)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=cfg.plateau_patience)
    start_epoch = 0
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            match_optimizer_state(optimizer, optimizer.defaults.get("fused"))
        except (RuntimeError, KeyError, ValueError) as err:
            raise CVAEError(f"checkpoint does not fit this model: {str(err).splitlines()[0][:200]}") from None
        for group in optimizer.param_groups:
            group["lr"] = resume.get("lr_override", group["lr"])
        start_epoch = int(resume["epoch"])
        if "rng_cpu" in resume:
            torch.set_rng_state(resume["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in resume:
            torch.cuda.set_rng_state(resume["rng_cuda"])

    # Data lives on the device once; batches are gathered by index.
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    dynamic = config.data.binarize == "dynamic"
    grid_x, grid_y = test_x[: cfg.grid_size], test_y[: cfg.grid_size]
    lat_x, lat_y = test_x[: cfg.latent_subset], test_y[: cfg.latent_subset]
    n = len(train_x)
    batch = min(cfg.batch_size, n)
    batches_per_epoch = math.ceil(n / batch)
    if n % batch == 1:  # a batch of one breaks batch norm: drop that image
        batches_per_epoch -= 1
    if batches_per_epoch < 1:
        raise CVAEError("the training set is empty")

    run.artifacts.mkdir(parents=True, exist_ok=True)
    if grid_x.numel():
        _save_grid(grid_x, run.artifacts / "truth.png")
    _save_npy(lat_y.cpu().numpy().astype(np.int64), run.artifacts / "latent_labels.npy")
    _save_npy(np.arange(len(lat_y), dtype=np.int64), run.artifacts / "latent_index.npy")

    end_epoch = start_epoch + cfg.epochs
    cosine = cfg.lr_schedule == "cosine"
    result = TrainResult(run.path, [r for r in run.read_metrics() if r.get("epoch", 0) <= start_epoch])
    run.write_status(
        state="running", pid=os.getpid(), process=process_identity(os.getpid()), epoch=start_epoch,
        epochs=end_epoch, batch=0,
        batches=batches_per_epoch, message="", started=time.time(), device=str(device),
        precision=str(amp_dtype or torch.float32).replace("torch.", ""), parameters=count_parameters(model),
    )  # fmt: skip
    batch_log = open(run.batches_path, "a", buffering=1)  # noqa: SIM115 - closed in finally
    t_run = time.time()
    last_status = 0.0
    try:
        with StopRequested() as stop:
            for epoch in range(start_epoch + 1, end_epoch + 1):
                t_epoch = time.time()
                model.train()
                gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
                order = torch.randperm(n, generator=gen, device=device)
                sums = torch.zeros(3, dtype=torch.float64, device=device)
                seen = 0
                for b in range(batches_per_epoch):
                    if cosine:
                        lr = cosine_lr(cfg.learning_rate, epoch - 1 + b / batches_per_epoch, cfg.warmup_epochs,
                                       end_epoch, batches_per_epoch)  # fmt: skip
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    idx = order[b * batch : (b + 1) * batch]
                    xb, yb = train_x[idx], train_y[idx]
                    if dynamic:
                        xb = torch.bernoulli(xb, generator=gen)
                    with autocast(device, amp_dtype):
                        terms = model.elbo_terms(xb, yb)
                    loss = terms.loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():  # running sums, outside the graph
                        sums += torch.stack([terms.nelbo.sum(), terms.recon.sum(), terms.kl.sum()])
                    seen += len(idx)
                    if (b + 1) % cfg.print_every == 0 or b + 1 == batches_per_epoch:
                        values = loss.detach(), terms.recon.detach().mean(), terms.kl.detach().mean()
                        lv, rv, kv = (float(v) for v in values)
                        if not math.isfinite(lv):
                            raise CVAEError(
                                f"the loss became {lv} at epoch {epoch}, batch {b + 1}: lower the learning rate (-lr)"
                            )
                        record = dict(epoch=epoch, batch=b + 1, step=(epoch - 1) * batches_per_epoch + b + 1,
                                      loss=lv, recon=rv, kl=kv, time=time.time() - t_run)  # fmt: skip
                        batch_log.write(json.dumps(record) + "\n")
                        for cb in callbacks:
                            cb.on_batch(record)
                        now = time.time()
                        if now - last_status >= STATUS_EVERY_S:
                            last_status = now
                            run.write_status(epoch=epoch - 1, batch=b + 1, epoch_started=t_epoch)
                    if stop.requested:
                        break
                if stop.requested:
                    result.state, result.stop_signal = "stopped", stop.signum
                    run.write_status(
                        state="stopped", epoch=epoch - 1, batch=0,
                        signal=signal.Signals(stop.signum).name if stop.signum else None,
                        message=f"stopped during epoch {epoch}; the checkpoint of epoch {epoch - 1} is kept",
                    )  # fmt: skip
                    return result

                train_nelbo, train_recon, train_kl = (sums / seen).tolist()
                if not cosine:
                    scheduler.step(train_nelbo)
                    for group in optimizer.param_groups:  # saved with the optimizer: resume stays exact
                        group["lr"] *= cfg.lr_decay
                test = evaluate_elbo(model, test_x, test_y, amp_dtype=amp_dtype)
                write_epoch_artifacts(model, run, epoch, grid_x, grid_y, lat_x, lat_y, amp_dtype)
                t_epoch_done = time.time()
                refined = {}
                if cfg.refine_steps and epoch == end_epoch:  # the run's final model only: it costs epochs
                    refined = dict(test_nelbo_refined=refined_nelbo(model, test_x, test_y, steps=cfg.refine_steps),
                                   refine_steps=cfg.refine_steps, refine_seconds=time.time() - t_epoch_done)  # fmt: skip
                record = dict(
                    epoch=epoch, train_nelbo=train_nelbo, train_recon=train_recon, train_kl=train_kl,
                    test_nelbo=test["nelbo"], test_recon=test["recon"], test_kl=test["kl"],
                    lr=optimizer.param_groups[0]["lr"], seconds=time.time() - t_epoch,
                    images_per_s=seen / max(t_epoch_done - t_epoch, 1e-9), **refined, time=time.time() - t_run,
                )  # fmt: skip
                payload = dict(
                    config=config.to_dict(), dataset_info=data.info.to_dict(), epoch=epoch,
                    model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    metrics=record, rng_cpu=torch.get_rng_state(),
                )  # fmt: skip
                if device.type == "cuda":
                    payload["rng_cuda"] = torch.cuda.get_rng_state()
                # Checkpoint first, then the metrics line: a kill in between is repaired on resume.
                save_checkpoint(run.latest_checkpoint, payload)
                if epoch % cfg.checkpoint_every == 0 or epoch == end_epoch:
                    save_checkpoint(run.epoch_checkpoint(epoch), payload)
                with open(run.metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                result.metrics.append(record)
                for cb in callbacks:
                    cb.on_epoch(record)
                run.write_status(epoch=epoch, batch=0, last=record)
    except BaseException as err:
        message = str(err) if isinstance(err, CVAEError) else f"{type(err).__name__}: {err}"
        with contextlib.suppress(OSError):  # the disk is full or read-only: the original error says more
            run.write_status(state="failed", message=message.splitlines()[0][:500] if message else "failed")
        raise
    finally:
        batch_log.close()
    run.write_status(state="finished", epoch=end_epoch, batch=0, message="")
    return result


# ------------------------------------------------------------ config building

REFERENCE_DEFAULTS: dict[str, Any] = dict(
    dataset="MNIST", decoder_type="Bernoulli", model_sigma=False, epochs=10, batch_size=64,
    learning_rate=3e-4, latent_dim=10, print_every=1, resume_path=None, resume_epoch=None,
)  # fmt: skip
EXTRA_DEFAULTS: dict[str, Any] = dict(
    run_dir=None, runs_root=None, data_dir="", seed=0, device="auto", arch="conv", binarize=None,
    precision="auto", fixed_sigma=1.0, sigma_min=1e-3, image_size=None, train_subset=None,
    test_subset=None, checkpoint_every=20, latent_subset=2000, threads=0, mlp_hidden=None, quiet=False,
    mlp_activation="relu", mlp_norm="none", lr_decay=1.0, lr_schedule="exponential", warmup_epochs=0.0,
    refine_steps=0, overwrite=False,
)  # fmt: skip
MODEL_KEYS = ("dataset", "decoder_type", "model_sigma", "latent_dim", "arch", "fixed_sigma", "binarize", "image_size")
# The quick demo: a small MLP that trains in about a minute on 2 CPU cores (docs/benchmark.md has
# what it reaches). `--quick-demo -z 10` keeps the preset and changes the latent size only; options
# given on the command line win over the preset's.
QUICK_DEMO: dict[str, Any] = dict(
    arch="mlp", latent_dim=2, mlp_hidden=(512, 512), batch_size=128, learning_rate=5e-3, lr_schedule="cosine",
    warmup_epochs=1.0, epochs=12, refine_steps=10,
)  # fmt: skip


def _likelihood(decoder_type: Any) -> str:
    name = str(decoder_type).strip().lower()
    if name not in ("bernoulli", "gaussian"):
        raise ConfigError(f"decoder_type must be Bernoulli or Gaussian, got {decoder_type!r}")
    return name


def build_config(options: dict[str, Any], info: DatasetInfo) -> RunConfig:
    """A validated RunConfig from main()'s keyword options and the data's shapes."""
    likelihood = _likelihood(options["decoder_type"])
    arch = options["arch"]
    model_kwargs: dict[str, Any] = {}
    if arch == "conv":
        model_kwargs = conv_preset(info.height, info.width)
    if options.get("mlp_hidden"):
        model_kwargs["mlp_hidden"] = tuple(options["mlp_hidden"])
    for key in ("mlp_activation", "mlp_norm"):
        if options.get(key):
            model_kwargs[key] = options[key]
    model = ModelConfig(
        channels=info.channels, height=info.height, width=info.width, num_classes=info.num_classes,
        latent_dim=options["latent_dim"], arch=arch, likelihood=likelihood, learn_sigma=options["model_sigma"],
        fixed_sigma=options["fixed_sigma"], sigma_min=options["sigma_min"], **model_kwargs,
    )  # fmt: skip
    return RunConfig(data=_data_config(options), model=model, train=_train_config(options)).validate()


def _data_config(options: dict[str, Any]) -> DataConfig:
    likelihood = _likelihood(options["decoder_type"])
    binarize = options["binarize"] or ("static" if likelihood == "bernoulli" else "none")
    return DataConfig(
        dataset=str(options["dataset"]), data_dir=str(options["data_dir"] or ""), binarize=binarize,
        image_size=options["image_size"], train_subset=options["train_subset"], test_subset=options["test_subset"],
    )  # fmt: skip


def _train_config(options: dict[str, Any]) -> TrainConfig:
    return TrainConfig(
        epochs=options["epochs"], batch_size=options["batch_size"], learning_rate=options["learning_rate"],
        seed=options["seed"], device=options["device"], precision=options["precision"],
        print_every=options["print_every"], checkpoint_every=options["checkpoint_every"],
        latent_subset=options["latent_subset"], threads=options["threads"], lr_decay=options["lr_decay"],
        lr_schedule=options["lr_schedule"], warmup_epochs=options["warmup_epochs"],
        refine_steps=options["refine_steps"],
    )  # fmt: skip


def _resume_target(resume_path: Path) -> tuple[Path, RunDir | None]:
    """(checkpoint file, run folder it belongs to or None)."""
    if resume_path.is_dir():
        run = RunDir(resume_path)
        if not run.latest_checkpoint.is_file():
            raise CVAEError(f"no checkpoint in run folder {resume_path} (expected checkpoints/latest.pt)")
        return run.latest_checkpoint, run
    if resume_path.parent.name == "checkpoints" and (resume_path.parent.parent / "config.json").is_file():
        return resume_path, RunDir(resume_path.parent.parent)
    return resume_path, None


def main(**kwargs: Any) -> TrainResult:
    """Train a CVAE. Keyword names follow the reference:

    main(dataset='MNIST', decoder_type='Bernoulli', model_sigma=False, epochs=10,
         batch_size=64, learning_rate=3e-4, latent_dim=10, print_every=1,
         resume_path=None, resume_epoch=None, run_dir=None, data_dir='', seed=0,
         device='auto', arch='conv', ...)

    Returns a TrainResult with the run folder and the per-epoch metrics.
    """
    flush_denormals()  # before any parallel op, so torch's worker threads inherit it
    defaults = {**REFERENCE_DEFAULTS, **EXTRA_DEFAULTS}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    options = {**defaults, **given}
    if options.get("mlp_hidden") is not None:
        options["mlp_hidden"] = tuple(options["mlp_hidden"])
    quiet = bool(options.pop("quiet"))
    overwrite = bool(options.pop("overwrite"))
    roots = Path(options["runs_root"]) if options["runs_root"] else default_runs_root()

    resume: dict | None = None
    run: RunDir | None = None
    if options["resume_path"]:
        checkpoint_path, run = _resume_target(Path(options["resume_path"]))
        # Every field is checked before use; resuming into a folder that holds a run must be that run.
        target = RunDir(Path(options["run_dir"])) if options["run_dir"] else run
        resume = validate_checkpoint(load_checkpoint(checkpoint_path),
                                     expect_config=target.read_config() if target else None)  # fmt: skip
        saved = RunConfig.from_dict(resume["config"])
        epoch = int(resume.get("epoch", -1))
        if options["resume_epoch"] is not None and options["resume_epoch"] != epoch:
            raise ConfigError(f"--resume_epoch {options['resume_epoch']} does not match the checkpoint's epoch {epoch}")
        _check_same_model(given, saved)
        train = replace(
            saved.train,
            **{k: options[k] for k in ("epochs", "batch_size", "learning_rate", "print_every", "device",
                                        "precision", "checkpoint_every", "threads", "refine_steps")
               if k in given or k == "epochs"},
        )  # fmt: skip
        config = replace(saved, train=train).validate()
        if "learning_rate" in given:
            resume["lr_override"] = options["learning_rate"]
        data = load_data(config.data)
        if data.info.to_dict() != resume.get("dataset_info", data.info.to_dict()):
            raise CVAEError("the checkpoint was trained on data of another shape or classes")
    else:
        if options["resume_epoch"] not in (None, 0):
            raise ConfigError("--resume_epoch needs --resume_path")
        if (
            _likelihood(options["decoder_type"]) == "bernoulli"
            and str(options["dataset"]).upper().replace("-", "") == "CIFAR10"
        ):
            raise ConfigError("the Bernoulli decoder models binary images and CIFAR-10 is colour: use -t Gaussian")
        _data_config(options).validate()
        build_config(options, peek_info(_data_config(options)))  # refuse a bad model before decoding and caching
        data = load_data(_data_config(options))
        config = build_config(options, data.info)

    if options["run_dir"]:
        run = RunDir(Path(options["run_dir"]))
    elif run is None:
        run = fresh_run_path(roots, new_run_id(config.data.dataset, config.model.likelihood, config.model.latent_dim))
    # One writer per run folder, for the trainer's whole life: the lock comes before any write.
    with run.lock():
        if resume is None and run.holds_run():
            if not overwrite:
                raise CVAEError(
                    f"{run.path} already holds a run: continue it with python -m cvae.train -rp {run.path} -e N, "
                    "or pass --overwrite to replace it"
                )
            run.clear_run()
        start_epoch = int(resume["epoch"]) if resume else 0
        _prepare_run_folder(run, config, data.info, resume, start_epoch)
        if not quiet:
            model_desc = (
                f"{config.model.arch} {config.model.likelihood}{' (learned sigma)' if config.model.learn_sigma else ''}"
            )
            print(
                f"run {run.path}  |  {data.info.name} {data.info.channels}x{data.info.height}x{data.info.width}, "
                f"{len(data.train_x)} train / {len(data.test_x)} test  |  {model_desc}, z={config.model.latent_dim}"
                + (f"  |  resuming after epoch {start_epoch}" if resume else ""),
                flush=True,
            )
        batches = max(1, math.ceil(len(data.train_x) / min(config.train.batch_size, len(data.train_x))))
        return fit(config, run, data=data, resume=resume, callbacks=[ConsoleProgress(batches, quiet=quiet)])


def _check_same_model(given: dict[str, Any], saved: RunConfig) -> None:
    """Options that change the model cannot differ from the checkpoint's."""
    saved_values = {
        "dataset": saved.data.dataset, "decoder_type": saved.model.likelihood, "model_sigma": saved.model.learn_sigma,
        "latent_dim": saved.model.latent_dim, "arch": saved.model.arch, "fixed_sigma": saved.model.fixed_sigma,
        "binarize": saved.data.binarize, "image_size": saved.data.image_size,
    }  # fmt: skip
    for key in MODEL_KEYS:
        if key not in given:
            continue
        value, old = given[key], saved_values[key]
        same = str(value).lower() == str(old).lower() if isinstance(old, str) else value == old
        if not same:
            raise ConfigError(f"the checkpoint was trained with {key}={old}; drop that option or start a new run")


def _prepare_run_folder(run: RunDir, config: RunConfig, info: DatasetInfo, resume: dict | None, start: int) -> None:
    """Write config.json; on resume, drop records of epochs the checkpoint does not have."""
    previous = run.read_config() or {}
    history = previous.get("history", [])
    history.append({"time": time.time(), "argv": sys.argv[1:], "start_epoch": start})
    write_json(run.config_path, {**config.to_dict(), "dataset_info": info.to_dict(),
                                 "created": previous.get("created", time.time()), "history": history})  # fmt: skip
    if resume is None:
        for path in (run.metrics_path, run.batches_path):
            path.unlink(missing_ok=True)
        return
    metrics = [r for r in read_jsonl(run.metrics_path) if 0 < r.get("epoch", 0) <= start]
    if not any(r["epoch"] == start for r in metrics) and isinstance(resume.get("metrics"), dict):
        metrics.append(resume["metrics"])  # killed between the checkpoint and the metrics line
    write_atomic(run.metrics_path, "".join(json.dumps(r) + "\n" for r in metrics).encode())
    batches = [r for r in read_jsonl(run.batches_path) if 0 < r.get("epoch", 0) <= start]
    write_atomic(run.batches_path, "".join(json.dumps(r) + "\n" for r in batches).encode())


# -------------------------------------------------------------- command line


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m cvae.train", description="Train a conditional VAE.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    ref = p.add_argument_group("the reference's options")
    ref.add_argument("--dataset", "-d", default=None, metavar="NAME",
                     help="MNIST, CIFAR10, or the path of an image folder (one sub-folder per class) [MNIST]")  # fmt: skip
    ref.add_argument("--decoder_type", "--decoder-type", "-t", type=str, default=None,
                     help="Bernoulli or Gaussian [Bernoulli]")  # fmt: skip
    ref.add_argument("--model_sigma", "--model-sigma", "-s", type=_bool, default=None, metavar="BOOL",
                     help="Gaussian decoder: learn a per-pixel std too [False]")  # fmt: skip
    ref.add_argument(
        "--epochs", "-e", type=_positive(int), default=None, help="epochs to train (more, when resuming) [10]"
    )
    ref.add_argument("--batch_size", "--batch-size", "-b", type=_positive(int), default=None, help="batch size [64]")
    ref.add_argument(
        "--learning_rate", "--learning-rate", "-lr", type=_positive(float), default=None, help="learning rate [3e-4]"
    )
    ref.add_argument(
        "--latent_dim", "--latent-dim", "-z", type=_positive(int), default=None, help="latent dimension [10]"
    )
    ref.add_argument("--print_every", "--print-every", "-p", type=_positive(int), default=None,
                     help="log the batch loss every N batches [1]")  # fmt: skip
    ref.add_argument("--resume_path", "--resume-path", "-rp", default=None, metavar="PATH",
                     help="resume from a run folder or a checkpoint file")  # fmt: skip
    ref.add_argument("--resume_epoch", "--resume-epoch", "-re", type=_non_negative_int, default=None,
                     help="epochs already trained (checked against the checkpoint)")  # fmt: skip
    more = p.add_argument_group("more options")
    more.add_argument(
        "--run-dir", default=None, help="run folder to write (default: checkpoints/<time>-<data>-<decoder>-z<z>)"
    )
    more.add_argument("--runs-root", default=None, help="folder that holds run folders [checkpoints or $CVAE_RUNS_DIR]")
    more.add_argument("--data-dir", default=None, help="folder with MNIST/raw and cifar-10-batches-py [data/]")
    more.add_argument("--seed", type=_non_negative_int, default=None, help="random seed [0]")
    more.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [auto]")
    more.add_argument(
        "--arch", choices=("conv", "mlp"), default=None, help="the reference's conv layers, or a fast MLP [conv]"
    )
    more.add_argument(
        "--quick-demo",
        action="store_true",
        help="fast MLP preset for class demos (MNIST, z=2, 12 epochs and a refined test ELBO, under a minute on 2 cores)",
    )
    more.add_argument("--lr-schedule", choices=("exponential", "cosine"), default=None,
                      help="exponential: x --lr-decay after every epoch; cosine: warm-up, then down to 0 at the "
                           "last epoch (kept on resume) [exponential]")  # fmt: skip
    more.add_argument("--lr-decay", type=_positive(float), default=None,
                      help="exponential schedule: multiply the learning rate by this after every epoch [1]")  # fmt: skip
    more.add_argument("--warmup-epochs", type=_non_negative_float, default=None,
                      help="cosine schedule: epochs of linear warm-up [0]")  # fmt: skip
    more.add_argument("--refine-steps", type=_non_negative_int, default=None,
                      help="after the last epoch, also report the test ELBO with q refined per image by N "
                           "gradient steps (0 = off) [0]")  # fmt: skip
    more.add_argument("--binarize", choices=("static", "dynamic"), default=None,
                      help="Bernoulli decoder: pixel >= 0.5 (static, the reference) or resampled each batch [static]")  # fmt: skip
    more.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                      help="auto = bf16 autocast where the hardware has it [auto]")  # fmt: skip
    more.add_argument("--fixed-sigma", type=_positive(float), default=None, help="Gaussian decoder's fixed std [1.0]")
    more.add_argument(
        "--image-size", type=_positive(int), default=None, help="image folders: resize to this many pixels square"
    )
    more.add_argument("--train-subset", type=_positive(int), default=None, help="train on the first N images only")
    more.add_argument("--test-subset", type=_positive(int), default=None, help="test on the first N images only")
    more.add_argument(
        "--checkpoint-every", type=_positive(int), default=None, help="keep a checkpoint every N epochs [20]"
    )
    more.add_argument(
        "--latent-subset", type=_non_negative_int, default=None, help="test images whose latents are saved [2000]"
    )
    more.add_argument("--threads", type=_non_negative_int, default=None, help="CPU threads, 0 = all cores [0]")
    more.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    more.add_argument("--overwrite", action="store_true", default=None,
                      help="start a new run in a --run-dir that already holds one, deleting its checkpoints, "
                           "metrics and pictures (without it, that is refused)")  # fmt: skip
    return p


@contextlib.contextmanager
def _sigterm_exits() -> Any:
    """SIGTERM before or after the loop (loading data, say) exits 143; the loop itself stops cleanly."""

    def exit_143(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, exit_143)
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if v is not None and k not in ("quick_demo",)}
    if args.quick_demo:
        kwargs = {**QUICK_DEMO, **kwargs}
    try:
        with _sigterm_exits():
            result = main(**kwargs)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only or vanished run folder
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result.state == "stopped":
        print(f"stopped; resume with: python -m cvae.train -rp {result.run_dir}", file=sys.stderr)
        return 128 + int(result.stop_signal or signal.SIGINT)  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
    elif not kwargs.get("quiet") and result.metrics:
        last = result.metrics[-1]
        refined = (f" ({last['test_nelbo_refined']:.2f} with q refined per image by {last['refine_steps']} steps)"
                   if "test_nelbo_refined" in last else "")  # fmt: skip
        print(
            f"done: test negative ELBO {last['test_nelbo']:.2f} nats{refined} after epoch {last['epoch']}; "
            f"run folder {result.run_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
