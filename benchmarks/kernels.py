"""What the benchmarks of hand-written AVX512-BF16 kernels share: the CPU check, the one-line error, the build."""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cvae import native


def fail(problem: str) -> int:
    print(f"error: {problem}", file=sys.stderr)
    return 2


def has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


I64, PTR, INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


def compiler() -> str | None:
    """The C compiler the kernels are built with: `$CC`, else cc, else gcc; None where there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(source: Path, functions: dict[str, list[Any]]) -> tuple[ctypes.CDLL | None, str]:
    """`source` (beside its headers in benchmarks/csrc) built with cvae.native's flags in a private temporary
    folder and loaded, with `functions`' argument types and bf16_pairs.h's packing declared; or None and why
    not."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc or $CC)"
    folder = tempfile.mkdtemp(prefix="cvae-kernels-")
    target = os.path.join(folder, source.with_suffix(".so").name)
    try:
        built = subprocess.run([cc, *native.FLAGS, str(source), "-o", target], capture_output=True,
                               text=True, timeout=native.BUILD_TIMEOUT_S)  # fmt: skip
        if built.returncode != 0:
            return None, f"{source.name} did not build: {(built.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        lib = ctypes.CDLL(target)
        for name, types in {"cvae_pack_pairs": [I64, I64, PTR, I64, PTR, INT], **functions}.items():
            getattr(lib, name).argtypes = types
        return lib, ""
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        return None, f"{source.name} could not be built or loaded: {e}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a loaded library stays mapped


def arguments(prog: str, doc: str, calls: int, argv: list[str] | None) -> argparse.Namespace | int:
    """A kernel benchmark's `--rounds` and `--calls`, checked with the CPU; or the exit status of its error."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=calls)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        return fail("--rounds and --calls must be positive")
    if not has_avx512_bf16():
        return fail("this CPU has no avx512_bf16, which the kernels are written for")
    return args
