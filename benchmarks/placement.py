"""Where the machine puts its two CPUs, and what that does to our step: `python -m benchmarks.placement`.

    python -m benchmarks.placement [--model mlp|conv] [--seconds 60]

A virtual machine's CPUs are the host's to place. Two of them may sit on one die and share its last-level
cache, or on two dies, where every cache line one thread writes and the other reads crosses between them;
the host may move them from one moment to the next. Each second this takes the round trip of one cache line
between the first two CPUs this process may use (`csrc/c2c.c`, built with the machine's C compiler, `$CC`
else `cc`) and then times our training step for the rest of the second, in one process, as
`benchmarks.step_ab` sets it up (the loop's own precision, bf16 weights, optimiser kernel; random binary
images; `--model mlp` is the quick demo's model at its batch). It prints one line a second and, at the end,
the step's median in the seconds of each placement the latency shows (a jump in it by GAP or more).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.step_ab import SETUP

SOURCE = Path(__file__).with_name("csrc") / "c2c.c"
ROUNDS = 100_000  # round trips a probe: 5 to 40 ms where both CPUs are free
LIMIT_S = 0.1  # a probe's longest: beside a busy CPU a round trip can wait for a time slice
WINDOW_S = 1.0  # each line: one probe, then steps for the rest of this long
GAP = 1.8  # seconds apart in latency by this factor or more, with none between them, are two placements


@functools.cache
def _probe() -> ctypes.CDLL | None:
    """The round-trip probe, built once a process in a private temporary folder; None without a compiler."""
    from benchmarks.kernels import compiler as find_compiler

    compiler = find_compiler()
    if compiler is None or not sys.platform.startswith("linux"):
        return None
    folder = tempfile.mkdtemp(prefix="cvae-c2c-")
    target = os.path.join(folder, "c2c.so")
    try:
        built = subprocess.run([compiler, "-O2", "-pthread", "-fPIC", "-shared", str(SOURCE), "-o", target],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        if built.returncode != 0:
            return None
        lib = ctypes.CDLL(target)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the loaded library stays mapped
    lib.cvae_c2c_ns.restype = ctypes.c_double
    lib.cvae_c2c_ns.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_double]
    return lib


def core_to_core_ns(rounds: int = ROUNDS) -> float | None:
    """The one-way time, ns, of a cache line passed between the first two CPUs this process may use; None with
    fewer than two, or where the probe cannot be built or pinned."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    lib = _probe() if len(cpus) >= 2 else None
    if lib is None:
        return None
    ns = lib.cvae_c2c_ns(cpus[0], cpus[1], rounds, LIMIT_S * 1e9)
    return ns if ns > 0 else None


# After the step's set-up (step_ab's): each second one probe, then steps for the rest of it; a line each
# second with the latency (nan: not measured) and the median step's forward, backward and optimiser ms.
SERIES = (
    SETUP
    + r"""
import statistics
from benchmarks.placement import WINDOW_S, core_to_core_ns
run(10)
end, i = time.perf_counter() + float(sys.argv[6]), 0
while time.perf_counter() < end:
    ns = core_to_core_ns()
    phases.clear(); t = time.perf_counter()
    while time.perf_counter() - t < WINDOW_S:
        run(1, i); i += 1
    total = statistics.median(sum(p) for p in phases)
    print("nan" if ns is None else ns, 1e3 * total, *(1e3 * statistics.median(p) for p in zip(*phases)), flush=True)
"""
)


def summary(lines: list[tuple[float, ...]]) -> list[str]:
    """The seconds grouped by placement: where the sorted latencies jump by GAP or more, the seconds below the
    jump are the near placement and those above it the far one (no such jump: one placement throughout);
    each group's latency range and median step, the far group's step also as a ratio to the near one's."""
    timed = [line for line in lines if line[0] == line[0]]  # nan: no latency
    if not timed:
        return ["core-to-core latency not measured (fewer than two CPUs, or no C compiler): no grouping"]
    ns = sorted(line[0] for line in timed)
    jump = max(range(1, len(ns)), key=lambda k: ns[k] / ns[k - 1], default=None)
    split = ns[jump] if jump is not None and ns[jump] >= GAP * ns[jump - 1] else float("inf")
    groups = {"near": [x for x in timed if x[0] < split], "far": [x for x in timed if x[0] >= split]}
    out, near_step = [], None
    for name, group in groups.items():
        if not group:
            out.append(f"{name}: no second" + (" (one placement throughout)" if name == "far" else ""))
            continue
        step, *phases = (statistics.median(x[k] for x in group) for k in range(1, 5))
        ratio = f"; {step / near_step:.2f}x the near seconds' step" if near_step else ""
        near_step = near_step or step
        out.append(f"{name} ({min(x[0] for x in group):.0f}-{max(x[0] for x in group):.0f} ns): {len(group)} of "
                   f"{len(lines)} seconds, step {step:.2f} ms (forward {phases[0]:.2f}, backward {phases[1]:.2f}, "
                   f"optimiser {phases[2]:.2f}){ratio}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.placement", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("conv", "mlp"), default="mlp",
                   help="mlp: the quick demo's model at its batch; conv: the reference's, at batch 64 [mlp]")  # fmt: skip
    p.add_argument("--seconds", type=float, default=60.0, help="how long to watch [60]")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default [0]")
    args = p.parse_args(argv)
    if not args.seconds > 0 or args.threads < 0:
        print("error: --seconds must be positive and --threads at least 0", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-c", SERIES, str(root), str(args.threads), "0", args.model, "0", str(args.seconds)]
    print("latency ns | step ms: forward, backward, optimiser")
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root) as worker:
        assert worker.stdout is not None
        for raw in worker.stdout:
            values = tuple(float(v) for v in raw.split())
            lines.append(values)
            print(f"{values[0]:.0f} | {values[1]:.2f}: {values[2]:.2f}, {values[3]:.2f}, {values[4]:.2f}", flush=True)
    if worker.returncode != 0 or not lines:
        print(f"error: the step's worker failed (exit {worker.returncode})", file=sys.stderr)
        return 1
    print(*summary(lines), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
