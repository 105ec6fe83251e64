"""Our training step in two checkouts, alternating in fresh processes: does a change move its speed?

    python -m benchmarks.step_ab /path/to/old/checkout /path/to/new/checkout --rounds 3 [--profile 20]

Each run imports `cvae` from the checkout it is given and times 100 optimisation steps of the reference's
conv model (MNIST shapes, Bernoulli, z = 2, batch 64; `--model mlp`: the quick demo's MLP at its batch and
learning rate; the loop's own runtime settings: bf16 autocast where the CPU runs it natively, fused Adam,
channels_last) on random binary images after 10 warm-up steps. The
checkouts alternate, so the machine's load falls on both; the report is each round and the median ratio, with
the core-to-core latency before each run (`benchmarks.placement`: two CPUs on one die or on two).
A checkout whose loop keeps bf16 matrix weights during the step (`cvae.runtime.half_weights`) steps that way.
Either step API works (`model.objective`, or `model.elbo_terms` before the one model family).

Each round also gives the timed steps' median forward pass, backward pass and optimiser step (wall time
around each, no profiler): torch.profiler's own overhead falls unevenly and inflates some operators several
times over (docs/benchmark.md), so `--profile` says which operators run and these say where the time goes.

`--compile old|new|both` runs that side's forward pass through `torch.compile` (inductor: the elementwise work
fused into a few C++ kernels, and the backward pass compiled with it); the round's line gives each side's 10
warm-up steps, which hold the compilation (seconds with inductor's cache warm, many times that cold).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

# The step as the loop sets it up, and `run(n)`, which takes n steps and appends each one's phases (seconds).
SETUP = r"""
import contextlib, sys, time
sys.path.insert(0, sys.argv[1])
import torch
if int(sys.argv[2]):
    torch.set_num_threads(int(sys.argv[2]))
from cvae.config import ModelConfig, conv_preset
from cvae.model import CVAE
from cvae.runtime import autocast, flush_denormals, make_optimizer, prepare_for_cpu, prepare_model, select_amp_dtype
flush_denormals(); torch.manual_seed(0); prepare_for_cpu()
dev = torch.device("cpu")
if sys.argv[4] == "mlp":  # the quick demo's model, batch and learning rate
    from cvae.config import QUICK_DEMO
    layers, batch, lr = dict(arch="mlp", mlp_hidden=QUICK_DEMO["mlp_hidden"]), QUICK_DEMO["batch_size"], QUICK_DEMO["learning_rate"]
else:
    layers, batch, lr = conv_preset(28, 28), 64, 1e-4
config = ModelConfig(channels=1, height=28, width=28, num_classes=10, latent_dim=2, **layers)
model = prepare_model(CVAE(config), dev)
opt, amp = make_optimizer(model, lr, dev), select_amp_dtype("auto", dev)
try:  # the loop's bf16 matrix weights, in a checkout that has them
    from cvae.runtime import half_weights
    weights = half_weights(model, opt, dev, amp)
except ImportError:
    weights = None
x, y = (torch.rand(100 * batch, 1, 28, 28) > 0.5).float(), torch.randint(0, 10, (100 * batch,))
step = getattr(model, "objective", None) or model.elbo_terms
def loss_of(xb, yb):
    with autocast(dev, amp):
        return step(xb, yb).loss
if int(sys.argv[5]):  # torch.compile's: the forward pass and, through AOTAutograd, the backward as fused kernels
    import torch._inductor.config
    torch._inductor.config.fallback_random = True  # z's noise from eager's random stream
    loss_of = torch.compile(loss_of, dynamic=False)
phases = []
def run(n, off=0):
    for b in range(n):
        i = (b + off) % 100
        with weights.for_step() if weights else contextlib.nullcontext():
            t0 = time.perf_counter()
            loss = loss_of(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
            t1 = time.perf_counter()
            if not weights or any(p.grad is not None for p in model.parameters()):  # as the loop: HalfWeights.step
                opt.zero_grad(set_to_none=True)  # takes its gradients (an older checkout's left some behind)
            loss.backward()
            t2 = time.perf_counter()
            (weights.step if weights else opt.step)()
            phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
"""
# The timed part of a round: warm-up, the optional profile, then 100 steps' speed and phases.
WORKER = (
    SETUP
    + r"""
t0 = time.perf_counter(); run(10); warm_up = time.perf_counter() - t0  # a compiled step's compilation included
if int(sys.argv[3]):  # where the step's time goes: its operators by input shape, as shares of the profiled steps
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run(20, 10)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=int(sys.argv[3]),
                                                             max_name_column_width=30, max_shapes_column_width=60))
phases.clear(); t0 = time.perf_counter(); run(100, 10); speed = 100 * batch / (time.perf_counter() - t0)
import statistics
print(speed, warm_up, *(1e3 * statistics.median(p) for p in zip(*phases)))  # images/s; s; forward, backward, optimiser ms
"""
)


def images_per_s(
    checkout: Path, threads: int = 0, profile_rows: int = 0, model: str = "conv", compiled: bool = False
) -> tuple[float, float, list[float]]:
    """The checkout's step speed, its 10 warm-up steps' seconds (`compiled`: torch.compile's compilation is in
    them) and its phases' median ms (forward, backward, optimiser); with `profile_rows`, its profile's top
    operators printed first."""
    out = subprocess.run([sys.executable, "-c", WORKER, str(checkout), str(threads), str(profile_rows), model,
                          str(int(compiled))], capture_output=True, text=True, cwd=checkout)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: {out.stderr.strip()[-300:]}")
    *table, last = out.stdout.strip().splitlines()
    if profile_rows:
        print(f"{checkout}: 20 steps profiled (torch.profiler, self CPU time)", *table, sep="\n")
    speed, warm_up, *phases = (float(v) for v in last.split())
    return speed, warm_up, phases


def _ns(latency: float | None) -> str:
    return "?" if latency is None else f"{latency:.0f}"


def _ms(phases: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in phases)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run; 0 = torch's default [0]")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="first profile each checkout's step and print its ROWS costliest operators [0: none]")  # fmt: skip
    p.add_argument("--model", choices=("conv", "mlp"), default="conv",
                   help="conv: the reference's model at batch 64; mlp: the quick demo's, at its batch [conv]")  # fmt: skip
    p.add_argument("--compile", choices=("old", "new", "both"),
                   help="that side's step compiled by torch.compile (its inductor cache as it is) [neither]")  # fmt: skip
    args = p.parse_args()
    compiled = {side: args.compile in (side, "both") for side in ("old", "new")}
    if args.profile:
        for side, checkout in (("old", args.old), ("new", args.new)):
            images_per_s(checkout, args.threads, args.profile, args.model, compiled[side])
    from benchmarks.placement import core_to_core_ns  # it builds on this module's SETUP

    ratios = []
    for r in range(args.rounds):
        # the CPUs on one die or two can move the step by half (docs/benchmark.md): each run's latency before it
        (old_ns, (old, old_warm, old_ms)), (new_ns, (new, new_warm, new_ms)) = (
            (core_to_core_ns(), images_per_s(args.old, args.threads, model=args.model, compiled=compiled["old"])),
            (core_to_core_ns(), images_per_s(args.new, args.threads, model=args.model, compiled=compiled["new"])),
        )
        ratios.append(new / old)
        print(f"round {r + 1}: old {old:.0f}, new {new:.0f} images/s, new / old {new / old:.3f}; "
              f"forward / backward / optimiser ms a step: old {_ms(old_ms)}, new {_ms(new_ms)}; "
              f"core-to-core ns before: old {_ns(old_ns)}, new {_ns(new_ns)}; "
              f"10 warm-up steps: old {old_warm:.1f} s, new {new_warm:.1f} s", flush=True)  # fmt: skip
    print(f"median new / old: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
