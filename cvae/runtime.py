"""How this machine runs a training step: device, precision, threads, memory, denormals, optimizer.

Nothing here knows about runs or data; the training loop and the evaluation
both ask this module, so they pick devices and precisions the same way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvae import native
from cvae.errors import ConfigError
from cvae.layers import cpu_has_fast_bf16
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
    import_dynamo_when_needed()
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


@functools.cache
def import_dynamo_when_needed() -> int:
    """torch.optim's methods without importing torch._dynamo while nothing can be compiling; how many changed.

    `Optimizer.add_param_group`, `state_dict`, `load_state_dict` and `zero_grad` are wrapped so that
    torch.compile never traces into them, and the wrapper imports torch._dynamo at its first call to say so:
    1 to 1.4 s on 2 cores, at every training process's start, for a compiler that a run never uses. Each
    wrapper keeps what it would call in an attribute of the function it wraps; here that is a function that
    calls the method plainly while torch._dynamo is not imported (then nothing is being compiled, so there is
    nothing to keep out of a trace) and hands over to torch._dynamo.disable from the first call after it is.
    So what runs is unchanged where anything compiles. A torch whose wrapper differs is left as it is.
    """
    probe = torch._disable_dynamo(lambda: None)  # a wrapper of theirs: every one runs this same code
    changed = 0
    for method in vars(torch.optim.Optimizer).values():
        fn = getattr(method, "__wrapped__", None)
        if getattr(method, "__code__", None) is not probe.__code__ or fn is None or hasattr(fn, DYNAMO_CACHE):
            continue
        setattr(fn, DYNAMO_CACHE, _plain_until_dynamo(fn))
        changed += 1
    return changed


DYNAMO_CACHE = "__dynamo_disable"  # where torch._compile._disable_dynamo's wrapper keeps what it calls


def _plain_until_dynamo(fn: Callable[..., Any]) -> Callable[..., Any]:
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not disabled:
            if "torch._dynamo" not in sys.modules:
                return fn(*args, **kwargs)
            disabled.append(torch._dynamo.disable(fn, wrapping=False))
        return disabled[0](*args, **kwargs)

    return call


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
        "vector_instructions": torch.backends.cpu.get_cpu_capability(), "bf16_matrix_instructions": cpu_has_fast_bf16(),
    }  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# Modules whose weights CPU autocast hands to bf16 kernels (linear layers and convolutions).
HALF_WEIGHT_MODULES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
ADAM_CHUNK = 1 << 17  # elements per piece of the optimiser's pass: the piece's five arrays stay in a core's L2


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements in memory order, as a 1-D view (contiguous or channels_last alike)."""
    return t.as_strided((t.numel(),), (1,))


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


class HalfWeights:
    """The matrix weights in bf16 during a CPU training step under bf16 autocast, with Adam's update fused.

    Under autocast each step casts every fp32 weight to bf16 for the forward pass and each bf16 weight
    gradient back to fp32 in the backward pass (for a linear layer, a transposing copy): two passes over the
    reference model's 15 M weights on top of Adam's own, on a step whose time on two cores is mostly memory
    traffic. Here the weights are bf16 tensors during the step (`for_step`), so autocast finds nothing to cast
    and the gradients arrive in bf16; `step` then updates the fp32 weights, which stay the parameters' own
    tensors between steps (checkpoints, evaluation and pictures read them), piece by piece: each piece's
    gradient is widened, Adam's fused kernel updates it, and its bf16 copy for the next step is written while
    the piece is in cache; where this machine builds it, `cvae.native`'s C kernel does all three in one pass
    over the weight instead. The arithmetic is autocast's and Adam's, value for value: the same bf16 roundings
    of the same fp32 weights, the same widened gradients, the same kernel (tests/test_runtime.py compares the
    two bit for bit). The optimiser keeps every state it would keep, so checkpoints do not change.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Adam) -> None:
        self.optimizer = optimizer
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.params: list[nn.Parameter] = [
            m.weight for m in model.modules() if isinstance(m, HALF_WEIGHT_MODULES)
            and m.weight.dtype == torch.float32 and _dense(m.weight) and id(m.weight) in groups
        ]  # fmt: skip
        self.groups = [groups[id(p)] for p in self.params]
        mine = {id(p) for p in self.params}
        self.rest = [[p for p in g["params"] if id(p) not in mine] for g in optimizer.param_groups]
        self.full = [p.data for p in self.params]  # the fp32 weights themselves
        self.half = [torch.empty_like(p, dtype=torch.bfloat16) for p in self.params]  # the same strides
        self._scratch = torch.empty(ADAM_CHUNK)
        self.kernel = native.adam_bf16()  # the one-pass kernel where this machine builds it (cvae.native)
        self.refresh()

    def refresh(self) -> None:
        """The bf16 copies anew from the fp32 weights (after a checkpoint was loaded into them)."""
        with torch.no_grad():
            for full, half in zip(self.full, self.half, strict=True):
                half.copy_(full)

    @contextlib.contextmanager
    def for_step(self) -> Iterator[None]:
        """The forward and backward passes and `step` see bf16 weights; everything else the fp32 ones."""
        for p, half in zip(self.params, self.half, strict=True):
            p.data = half
        try:
            yield
        finally:
            for p, full in zip(self.params, self.full, strict=True):
                p.grad = None  # a bf16 gradient does not belong to the fp32 weight
                p.data = full

    def step(self) -> None:
        """Adam on every parameter: the rest (biases, norms' scales) in one call of Adam's fused kernel a group,
        the call `torch.optim.Adam.step` makes for them, without its bookkeeping around it (on a small model,
        a twentieth of the step); then the matrix weights. It takes every gradient it used (`.grad` is None
        after it), so a loop that steps with it needs no `zero_grad`, whose profiler bookkeeping costs a
        small model's step about as much as the gather of its batch."""
        with torch.no_grad():
            for group, rest in zip(self.optimizer.param_groups, self.rest, strict=True):
                live = [p for p in rest if p.grad is not None]
                if live:
                    states = [self._state(p, p) for p in live]
                    steps = [state["step"] for state in states]
                    torch._foreach_add_(steps, 1)
                    torch._fused_adam_(live, [p.grad for p in live], [state["exp_avg"] for state in states],
                                       [state["exp_avg_sq"] for state in states], [], steps, **self._options(group))  # fmt: skip
                    for p in live:  # used: the next backward starts them anew, as zero_grad(set_to_none) would
                        p.grad = None
            for p, group, full, half in zip(self.params, self.groups, self.full, self.half, strict=True):
                if p.grad is not None:
                    grad, p.grad = p.grad, None  # a bf16 gradient does not belong to the fp32 weight
                    self._update(p, grad, group, full, half)

    def _state(self, p: nn.Parameter, like: torch.Tensor) -> dict:
        """The parameter's Adam state, started as torch.optim.Adam's fused step starts it, shaped as `like`
        (a matrix weight's fp32 tensor: during the step `p` holds its bf16 copy)."""
        state = self.optimizer.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(like, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(like, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _options(group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                    eps=group["eps"], amsgrad=False, maximize=group["maximize"])  # fmt: skip

    def _update(self, p: nn.Parameter, grad: torch.Tensor, group: dict, full: torch.Tensor,
                half: torch.Tensor) -> None:  # fmt: skip
        state = self._state(p, full)
        m, v, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
        step += 1
        kw = self._options(group)
        beta1, beta2 = kw["beta1"], kw["beta2"]
        if not all(t.stride() == full.stride() for t in (grad, m, v)):  # layouts that cannot be walked together
            torch._fused_adam_([full], [grad.float()], [m], [v], [], [step], **kw)
            half.copy_(full)
            return
        fp, gp, mp, vp, hp = (_flat(t) for t in (full, grad, m, v, half))
        start = 0
        if (self.kernel is not None and grad.dtype == torch.bfloat16 and m.dtype == v.dtype == torch.float32
                and native.applies(beta1, kw["weight_decay"], kw["maximize"])):  # fmt: skip
            # One pass over all but the last len % 16 elements, which torch's kernel walks with its scalar
            # loop: those take the pieces' path below, so every element gets torch's own rounding.
            start = fp.numel() - fp.numel() % native.VECTOR
            native.run(self.kernel, fp, mp, vp, gp, hp, start, float(step), kw["lr"], beta1, beta2, kw["eps"])
        for s in range(start, fp.numel(), ADAM_CHUNK):
            e = min(fp.numel(), s + ADAM_CHUNK)
            g = self._scratch[: e - s]
            g.copy_(gp[s:e])
            torch._fused_adam_([fp[s:e]], [g], [mp[s:e]], [vp[s:e]], [], [step], **kw)
            hp[s:e].copy_(fp[s:e])


def half_weights(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp_dtype: torch.dtype | None) -> HalfWeights | None:  # fmt: skip
    """HalfWeights where they apply: a CPU step under bf16 autocast with Adam's fused kernel (no amsgrad)."""
    fused = isinstance(optimizer, torch.optim.Adam) and all(
        g.get("fused") and not g["amsgrad"] and not g.get("differentiable") for g in optimizer.param_groups
    )
    if device.type != "cpu" or amp_dtype != torch.bfloat16 or not fused:
        return None
    return HalfWeights(model, optimizer)
