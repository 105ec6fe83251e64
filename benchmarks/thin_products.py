"""The large linear layers' thin bf16 products: oneDNN's, as the step calls them, against plain AVX512-BF16
kernels on operands already in vdpbf16ps's layout, at batch 64 on the reference model's two large layers.

    python -m benchmarks.thin_products [--rounds 5] [--calls 10]

A step's matrix products run at 70-80 % of the bf16 ceiling on an AVX-512 CPU without AMX
(docs/benchmark.md). Before every call oneDNN reorders the weight into the layout its kernel reads; an
optimiser's pass could write the weight's bf16 copy in that layout for free. `csrc/thin_products.c` has
such kernels, and this measures what they would save: each layer's forward product, its input's gradient
and its weight's gradient (which packs the layer's input, counted), each timed with the caches warm from the
call before and cold (a pass over 64 MB first, as the other layers' work leaves them in a step), in
alternating rounds of `--calls` calls (the median ms a call).

The numbers are checked first, on seeded operands: the weight's gradient must equal oneDNN's bit for bit (an
inner size of the batch: one fp32 sum per output, rounded once); the two long products differ from oneDNN's in
the order of their sums, and must be within one bf16 rounding of the fp32 product of the same operands, as
oneDNN's are. Needs a CPU with avx512_bf16 and a C compiler; otherwise it says which is missing and exits 2.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import kernels
from benchmarks.fused_adam import BATCH, LAYERS
from benchmarks.kernels import fail

SOURCE = Path(__file__).with_name("csrc") / "thin_products.c"
CHUNK = 1024  # the long products' inner size a pass: a 4 x 64 tile's operands then stay in L1 and L2
FLUSH_BYTES = 64 << 20  # twice the L3 these machines share: the cold calls find no operand in the caches


def build() -> tuple[ctypes.CDLL | None, str]:
    """The kernels, or None and why not."""
    i64, ptr, c_int = kernels.I64, kernels.PTR, kernels.INT
    return kernels.build(SOURCE, {"cvae_thin_long": [i64, i64, i64, ptr, ptr, ptr, ptr, i64, c_int],
                                  "cvae_thin_short": [i64, i64, i64, ptr, ptr, ptr, c_int]})  # fmt: skip


def pairs(lib: ctypes.CDLL, b: torch.Tensor) -> torch.Tensor:
    """b (k, n) bf16, rows contiguous, as (k / 2, n, 2): the layout the kernels read."""
    k, n = b.shape
    out = torch.empty(k // 2, n, 2, dtype=torch.bfloat16)
    lib.cvae_pack_pairs(k, n, b.data_ptr(), b.stride(0), out.data_ptr(), torch.get_num_threads())
    return out


class Product:
    """One product, a (m, k) @ b (k, n), both ways: oneDNN's call as the step makes it, and the kernel's."""

    def __init__(self, lib: ctypes.CDLL, name: str, a: torch.Tensor, b: torch.Tensor, onednn: Callable[[], torch.Tensor],
                 short: bool) -> None:  # fmt: skip
        self.name, self.a, self.b, self.onednn, self.short = name, a, b, onednn, short
        (self.m, self.k), self.n = a.shape, b.shape[1]
        self.out = torch.empty(self.m, self.n, dtype=torch.bfloat16)
        threads = torch.get_num_threads()
        if short:  # the weight's gradient: b is the layer's input, packed at every call
            self.packed = torch.empty(self.k // 2, self.n, 2, dtype=torch.bfloat16)

            def ours() -> torch.Tensor:
                lib.cvae_pack_pairs(self.k, self.n, b.data_ptr(), b.stride(0), self.packed.data_ptr(), threads)
                lib.cvae_thin_short(self.m, self.n, self.k, a.data_ptr(), self.packed.data_ptr(),
                                    self.out.data_ptr(), threads)  # fmt: skip
                return self.out
        else:  # a weight operand, packed once, as an optimiser's pass would leave it
            self.packed = pairs(lib, b.contiguous())
            self.scratch = torch.empty(self.m, self.n)

            def ours() -> torch.Tensor:
                lib.cvae_thin_long(self.m, self.n, self.k, a.data_ptr(), self.packed.data_ptr(),
                                   self.scratch.data_ptr(), self.out.data_ptr(), CHUNK, threads)  # fmt: skip
                return self.out

        self.ours = ours

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    def check(self) -> str:
        """'bit for bit' (short), 'within a bf16 rounding' (long), or what is wrong."""
        theirs, mine = self.onednn().float(), self.ours().float()
        if self.short:
            return "bit for bit" if torch.equal(theirs, mine) else "DIFFERENT from oneDNN's"
        exact = self.a.float() @ self.b.float()
        bound = exact.abs() * 2.0**-8 + 1e-6  # one rounding to bf16, and the fp32 sums' own error
        worst = ((mine - exact).abs() / bound).max().item()
        return "within a bf16 rounding" if worst <= 1.0 else f"DIFFERENT: {worst:.2f} bf16 roundings off"


def timed(fn: Callable[[], object], calls: int, flush: Callable[[], None] | None) -> float:
    fn()
    times = []
    for _ in range(calls):
        if flush is not None:
            flush()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def layer_products(lib: ctypes.CDLL, out: int, inp: int) -> list[Product]:
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(out, inp, generator=gen) * inp**-0.5).bfloat16()  # the weight's bf16 copy
    x = torch.randn(BATCH, inp, generator=gen).bfloat16()  # the layer's input
    g = (torch.randn(BATCH, out, generator=gen) * 1e-3).bfloat16()  # its output's gradient
    gt = g.t().contiguous()  # as cvae.layers.Linear hands it to the weight's gradient
    return [
        Product(lib, "forward", x, w.t(), lambda: torch.nn.functional.linear(x, w), short=False),
        Product(lib, "input's gradient", g, w, lambda: g @ w, short=False),
        Product(lib, "weight's gradient", gt, x, lambda: gt @ x, short=True),
    ]


def main(argv: list[str] | None = None) -> int:
    args = kernels.arguments("benchmarks.thin_products", __doc__, 10, argv)
    if isinstance(args, int):
        return args
    lib, why = build()
    if lib is None:
        return fail(why)
    junk, sink = torch.ones(FLUSH_BYTES // 4), torch.empty(FLUSH_BYTES // 4)

    def flush() -> None:
        torch.add(junk, 1.0, out=sink)

    print(f"{torch.get_num_threads()} threads, batch {BATCH}, {args.rounds} rounds of {args.calls} calls a form")
    print("ms a call, median of the rounds (range), GFLOP/s; oneDNN / ours")
    totals = {(who, state): 0.0 for who in ("oneDNN", "ours") for state in ("warm", "cold")}
    for name, out, inp in LAYERS:
        print(f"\n{name} ({out} x {inp})")
        for product in layer_products(lib, out, inp):
            verdict = product.check()
            print(f"  {product.name} ({product.m} x {product.k}) @ ({product.k} x {product.n}): ours {verdict}")
            for state, flusher in (("warm", None), ("cold", flush)):
                times: dict[str, list[float]] = {"oneDNN": [], "ours": []}
                for _ in range(args.rounds):
                    times["oneDNN"].append(timed(product.onednn, args.calls, flusher))
                    times["ours"].append(timed(product.ours, args.calls, flusher))
                cells = []
                for who, ts in times.items():
                    t = statistics.median(ts)
                    totals[who, state] += t
                    cells.append(f"{who} {t:5.2f} ({min(ts):.2f}-{max(ts):.2f}) {product.flops / t / 1e6:4.0f}")
                ratio = statistics.median(times["oneDNN"]) / statistics.median(times["ours"])
                print(f"    {state}: {'; '.join(cells)}; {ratio:.2f}x")
    print()
    for state in ("warm", "cold"):
        theirs, mine = totals["oneDNN", state], totals["ours", state]
        print(f"all six, {state}: oneDNN {theirs:.2f} ms, ours {mine:.2f} ms: {theirs - mine:+.2f} ms a step "
              f"({theirs / mine:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
