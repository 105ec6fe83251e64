"""Adam fused into a linear layer's weight gradient, against the loop's two passes, on the reference model's two
large layers (8064 x 1024 and 1024 x 6272, 14.7 of its 15 M parameters) at batch 64, in one process.

    python -m benchmarks.fused_adam [--rounds 5] [--calls 20]

The step's products and Adam's pass alone leave the conv step short of 65 % of the bf16 ceiling
(docs/benchmark.md), unless Adam's memory traffic is done while the products compute. `csrc/fused_adam.c`
tries that: the weight gradient a tile at a time in AVX512-BF16 registers, then Adam on the tile at once.
Each layer's forms, timed in alternating rounds of `--calls` calls (the median ms a call):

- now, as the step does it: the gradient's transposing copy, oneDNN's product into a new tensor, then
  `cvae.native`'s one-pass Adam kernel;
- the same two passes at their best: the product into a kept tensor, then the kernel;
- fused, tile after tile; fused, the next tile's weights and moments prefetched; fused and software-pipelined.

Every fused form is first checked against the two passes on seeded data, weights, moments and bf16 copies, and
the report says whether they are equal bit for bit. Needs a CPU with avx512_bf16, a C compiler and the loop's
Adam kernel (`cvae.native.status()`); otherwise it says which is missing and exits with 2.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import kernels
from benchmarks.kernels import fail
from benchmarks.placement import core_to_core_ns
from cvae import native

SOURCE = Path(__file__).with_name("csrc") / "fused_adam.c"
BATCH = 64
LAYERS = [("encoder's linear layer", 1024, 8064), ("decoder's linear layer", 6272, 1024)]  # (out, in)
LR, BETAS, EPS, STEP = 1e-4, (0.9, 0.999), 1e-8, 5.0  # the reference model's rate, Adam's defaults


class Adam(ctypes.Structure):
    _fields_ = [(name, ctypes.c_float) for name in
                ("lerp_weight", "beta2", "sq_weight", "bias_correction2_sqrt", "eps", "neg_step_size")]  # fmt: skip


def build() -> tuple[ctypes.CDLL | None, str]:
    """The fused kernels, or None and why not."""
    i64, ptr, c_int = kernels.I64, kernels.PTR, kernels.INT
    return kernels.build(SOURCE, {"cvae_fused_adam": [i64, i64, i64, *[ptr] * 6, Adam, c_int, c_int],
                                  "cvae_fused_adam_pipelined": [i64, i64, i64, *[ptr] * 6, Adam, c_int]})  # fmt: skip


def median_ms(fn: Callable[[], None], calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def layer_forms(lib: ctypes.CDLL, kernel: native.Kernel, out: int, inp: int, state: list[torch.Tensor]
                ) -> dict[str, Callable[[], None]]:  # fmt: skip
    """Each form as a call that takes one Adam step of the weight in `state` (fp32 weight, moments, bf16 copy),
    by address: the caller keeps `state` alive while it uses them."""
    gen = torch.Generator().manual_seed(0)
    grad = (torch.randn(BATCH, out, generator=gen) * 1e-3).bfloat16()  # the layer's output gradient
    x = torch.randn(BATCH, inp, generator=gen).bfloat16()  # its input
    kept = torch.empty(out, inp, dtype=torch.bfloat16)
    pairs = torch.empty(BATCH // 2, inp, 2, dtype=torch.bfloat16)
    consts = native.constants(STEP, LR, *BETAS, EPS)
    adam = Adam(*consts)
    threads = torch.get_num_threads()
    p, m, v, h = (t.data_ptr() for t in state)

    def two_passes(product: torch.Tensor) -> None:
        kernel(out * inp, p, m, v, product.data_ptr(), h, *consts, threads)

    def fused(ahead: int) -> Callable[[], None]:
        def call() -> None:
            gt = grad.t().contiguous()
            lib.cvae_pack_pairs(BATCH, inp, x.data_ptr(), inp, pairs.data_ptr(), threads)
            lib.cvae_fused_adam(out, inp, BATCH, gt.data_ptr(), pairs.data_ptr(), p, m, v, h, adam, threads, ahead)

        return call

    def pipelined() -> None:
        gt = grad.t().contiguous()
        lib.cvae_pack_pairs(BATCH, inp, x.data_ptr(), inp, pairs.data_ptr(), threads)
        lib.cvae_fused_adam_pipelined(out, inp, BATCH, gt.data_ptr(), pairs.data_ptr(), p, m, v, h, adam, threads)

    return {
        "now, as the step does it": lambda: two_passes(grad.t().contiguous() @ x),
        "the two passes at their best": lambda: two_passes(torch.mm(grad.t().contiguous(), x, out=kept)),
        "fused, tile after tile": fused(0),
        "fused, the next tile prefetched": fused(1),
        "fused, software-pipelined": pipelined,
    }


def fresh_state(out: int, inp: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(out, inp, generator=gen) * 0.02, torch.randn(out, inp, generator=gen) * 1e-4,
            torch.rand(out, inp, generator=gen) * 1e-6, torch.empty(out, inp, dtype=torch.bfloat16)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = kernels.arguments("benchmarks.fused_adam", __doc__, 20, argv)
    if isinstance(args, int):
        return args
    kernel = native.adam_bf16()
    if kernel is None:
        return fail(f"the loop's Adam kernel is not used here: {native.status()}")
    lib, why = build()
    if lib is None:
        return fail(why)
    print(f"{torch.get_num_threads()} threads, batch {BATCH}, {args.rounds} rounds of {args.calls} calls a form")
    latency = core_to_core_ns()
    print("core-to-core latency, first two CPUs: " + (f"{latency:.0f} ns one way" if latency else "not measured"))
    for name, out, inp in LAYERS:
        reference = fresh_state(out, inp)
        layer_forms(lib, kernel, out, inp, reference)["now, as the step does it"]()
        same, trial = {}, fresh_state(out, inp)
        for form, call in layer_forms(lib, kernel, out, inp, trial).items():
            for t, fresh in zip(trial, fresh_state(out, inp), strict=True):
                t.copy_(fresh)
            call()
            same[form] = all(torch.equal(a, b) for a, b in zip(trial, reference, strict=True))
        state = fresh_state(out, inp)  # kept alive: the forms hold its tensors' addresses only
        forms = layer_forms(lib, kernel, out, inp, state)
        times: dict[str, list[float]] = {form: [] for form in forms}
        for _ in range(args.rounds):
            for form, call in forms.items():
                times[form].append(median_ms(call, args.calls))
        now = statistics.median(times["now, as the step does it"])
        print(f"\n{name} ({out} x {inp}): ms a call, median of the rounds (range); now / form; the same numbers")
        for form, ts in times.items():
            t = statistics.median(ts)
            print(f"  {form:32s} {t:6.2f} ({min(ts):.2f}-{max(ts):.2f})  {now / t:5.2f}x  "
                  f"{'bit for bit' if same[form] else 'DIFFERENT'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
