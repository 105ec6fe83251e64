"""Adam's update of a bf16-gradient weight in one pass: a small C kernel, built for this machine at first use.

`cvae.runtime.HalfWeights` updates each matrix weight from its bf16 gradient and writes the weight's bf16
copy for the next step. In torch calls that is three passes over every piece of the weight (widen the
gradient, Adam's fused kernel, the bf16 copy) and a dozen dispatcher calls a piece, on a step whose time on
a few cores is mostly memory traffic. `csrc/adam_bf16.c` does the same arithmetic in one loop over the
weight, on torch's own OpenMP threads.

It is compiled with the machine's C compiler (`$CC`, else `cc`) into a per-user cache (`$CVAE_CACHE_DIR`, else
`$XDG_CACHE_HOME/cvae`, else `~/.cache/cvae`), keyed by the source, the flags, the compiler and the CPU, so a
home folder shared by a cluster's nodes holds one build a kind of CPU. It is used only after it reproduced
torch's `_fused_adam_` bit for bit in the running process: a run's numbers never depend on whether it is
used. Anywhere it is not (no compiler, a failed build, a cache folder or library that another user could
write, another torch whose kernel rounds otherwise, a second OpenMP runtime, `CVAE_NATIVE=0`), the loop keeps
torch's calls; `status()` says which and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "adam_bf16.c"
SYMBOL = "cvae_adam_bf16"
# -ffp-contract=off: the source's own fmaf calls are the only fused roundings (see the source). -march=native:
# the build runs on the machine that uses it, and the cache key holds the CPU.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
VECTOR = 16  # torch's fused Adam walks lengths that are a multiple of this with its vector loop alone
BUILD_TIMEOUT_S = 120

Kernel = Callable[..., None]


def cache_dir() -> Path:
    """Where built kernels are kept: `$CVAE_CACHE_DIR`, else `$XDG_CACHE_HOME/cvae`, else `~/.cache/cvae`."""
    if os.environ.get("CVAE_CACHE_DIR"):
        return Path(os.environ["CVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cvae"


def _cpu_key() -> str:
    """The CPU's model and instruction sets: a -march=native build runs on this kind of CPU only."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    wanted = ("model name", "flags", "vendor_id", "cpu family", "model\t")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


def _compiler_id(compiler: str) -> str | None:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (torch's wheels bring libgomp; the kernel must share it)."""
    names = ("libgomp", "libiomp", "libomp")
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    paths = {line.split()[-1] for line in maps if "/" in line}
    return {p for p in paths if Path(p).name.startswith(names)}


def _ours(path: Path) -> bool:
    """Owned by this user and writable by no one else: a library loaded from here runs as this process."""
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open(path: str) -> Kernel | None:
    """The kernel from the shared library at `path`, or None where that is not a loadable library with it."""
    try:
        fn = getattr(ctypes.CDLL(path), SYMBOL)
    except (OSError, AttributeError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 5, *[ctypes.c_float] * 6, ctypes.c_int]
    return fn


def build(directory: Path, compiler: str) -> tuple[Kernel | None, str]:
    """The kernel built (or found built) in `directory` with `compiler`, or None; and what happened, in words."""
    if not sys.platform.startswith("linux"):
        return None, "not on Linux"
    try:
        source = SOURCE.read_bytes()
    except OSError:
        return None, f"its source {SOURCE} is missing"
    version = _compiler_id(compiler)
    if version is None:
        return None, f"no working C compiler ({compiler!r})"
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(), _cpu_key().encode()]))
    target = directory / f"adam_bf16-{key.hexdigest()[:20]}.so"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _ours(directory):
            return None, f"{directory} is not this user's alone (others could put a library there)"
    except OSError as e:
        return None, f"could not build or load it in {directory}: {e}"
    before = _openmp_runtimes()
    kernel = _open(str(target)) if target.is_file() and _ours(target) else None
    if kernel is None:  # not built yet, a damaged file, or one someone else could have written: build it again
        try:
            # A private name, loaded from there, then one rename: runs that build at once never load a
            # half-written file, and the loader never hands back a damaged library it opened under the name.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
            os.close(fd)
            try:
                out = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                                     timeout=BUILD_TIMEOUT_S)  # fmt: skip
                if out.returncode != 0:
                    last = (out.stderr.strip().splitlines() or ["?"])[-1]
                    return None, f"the build failed: {last[:200]}"
                os.chmod(tmp, 0o700)  # the linker's mode follows the umask, which may let a group write it
                kernel = _open(tmp)
                if kernel is None:
                    return None, f"could not build or load it in {directory}: the build left no loadable library"
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"could not build or load it in {directory}: {e}"
    if len(_openmp_runtimes() | before) > 1:
        return None, "it would bring a second OpenMP runtime into this process"
    if not reproduces_torch(kernel):
        return None, "it does not reproduce torch's fused Adam bit for bit here"
    return kernel, f"built with {version.splitlines()[0]}, in {target}"


def constants(step: float, lr: float, beta1: float, beta2: float, eps: float) -> tuple[float, ...]:
    """The kernel's scalar arguments for Adam's step number `step`, derived in double as torch's kernel does."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    return 1 - beta1, beta2, 1 - beta2, math.sqrt(bias_correction2), eps, -(lr / bias_correction1)


def run(kernel: Kernel, param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
        grad: torch.Tensor, half: torch.Tensor, n: int, step: float, lr: float, beta1: float, beta2: float,
        eps: float) -> None:  # fmt: skip
    """One Adam step on the first `n` elements (a multiple of 16) of flat, dense tensors: fp32 `param`,
    `exp_avg`, `exp_avg_sq`, bf16 `grad`; `half` gets the new weight in bf16."""
    kernel(n, param.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), grad.data_ptr(), half.data_ptr(),
           *constants(step, lr, beta1, beta2, eps), torch.get_num_threads())  # fmt: skip


def applies(beta1: float, weight_decay: float, maximize: bool) -> bool:
    """The kernel is Adam without weight decay or maximize, with torch's lerp form for 1 - beta1 < 0.5."""
    return weight_decay == 0 and not maximize and abs(1 - beta1) < 0.5


def reproduces_torch(kernel: Kernel) -> bool:
    """Three steps on seeded data (gradients over nine decades) give torch's `_fused_adam_` numbers exactly."""
    gen = torch.Generator().manual_seed(0)  # its own generator: a run's random stream stays untouched
    n, lr, beta1, beta2, eps = 4096, 1e-3, 0.9, 0.999, 1e-8
    param = torch.randn(n, generator=gen) * 0.05
    ours = [param.clone(), torch.zeros(n), torch.zeros(n)]
    theirs = [param.clone(), torch.zeros(n), torch.zeros(n)]
    half = torch.empty(n, dtype=torch.bfloat16)
    step = torch.zeros(())
    for s in range(1, 4):
        scale = 10 ** (torch.rand(n, generator=gen) * 9 - 8)
        grad = (torch.randn(n, generator=gen) * scale).bfloat16()
        step += 1
        torch._fused_adam_([theirs[0]], [grad.float()], [theirs[1]], [theirs[2]], [], [step], lr=lr, beta1=beta1,
                           beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)  # fmt: skip
        run(kernel, *ours, grad, half, n, float(s), lr, beta1, beta2, eps)
        if not (all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
                and torch.equal(half, theirs[0].bfloat16())):  # fmt: skip
            return False
    return True


def wanted() -> bool:
    """False where `CVAE_NATIVE=0` asks for torch's path (to compare the two)."""
    return os.environ.get("CVAE_NATIVE", "1") != "0"


@functools.cache
def _loaded() -> tuple[Kernel | None, str]:
    if not wanted():
        return None, "switched off (CVAE_NATIVE=0)"
    try:
        directory = cache_dir() / "kernels"
    except RuntimeError as e:  # no home folder to put a cache in
        return None, f"no cache folder: {e}"
    return build(directory, os.environ.get("CC") or shutil.which("cc") or "gcc")


def adam_bf16() -> Kernel | None:
    """The one-pass kernel, built or loaded once a process; None where it is not used (see `status`)."""
    return _loaded()[0]


def status() -> str:
    """What the optimiser's pass over bf16-gradient weights runs here, and why, in one line."""
    kernel, why = _loaded()
    return f"one-pass C kernel ({why})" if kernel else f"torch's fused Adam in pieces (C kernel not used: {why})"
