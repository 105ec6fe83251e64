"""How this machine runs a training step: device, precision, threads, memory, denormals, optimizer.

Nothing here knows about runs or data; the training loop and the evaluation
both ask this module, so they pick devices and precisions the same way.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch
from torch import nn

from cvae.errors import ConfigError
from cvae.runs import available_cores


def select_device(name: str) -> torch.device:
    """auto = cuda, then mps, then cpu; an explicit device that is missing is a one-line error."""
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


def use_device(device: torch.device) -> None:
    """Make a numbered GPU (cuda:N) this process's current CUDA device.

    Streams, CUDA graphs' capture streams, `torch.cuda.get_rng_state()` and
    bf16 checks default to the current device (cuda:0); a run the queue put on
    cuda:1 must capture, draw and save its RNG state there. Nothing on a CPU.
    """
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


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


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int, sharers: int = 1) -> None:
    """torch's CPU threads: `threads`, or for 0 the available cores shared out among `sharers` processes (the
    ranks of one run that torchrun started on this node: more threads than their share would make each
    rank's threads wait for the others' time slices)."""
    torch.set_num_threads(threads if threads > 0 else max(1, available_cores() // sharers))


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
    worker threads: `cvae.train.train_model` sets it first thing. Set later, the
    workers do half the arithmetic without it (tests/test_runtime.py checks this).
    """
    return bool(torch.set_flush_denormal(True))


def prepare_for_cpu() -> None:
    """Allocator and denormal settings that pay on a CPU (see the two functions above)."""
    keep_freed_memory()
    flush_denormals()


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam; the fused kernel on CPU and CUDA (one pass over the 15 M parameters, not a dozen)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
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


def machine_info() -> dict[str, object]:
    """What ran a measurement: CPU model, cores, torch version, GPU name (for benchmark reports)."""
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import datetime as dt

    info: dict[str, object] = {
        "cpu": cpu, "cores": available_cores(), "torch": torch.__version__, "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
