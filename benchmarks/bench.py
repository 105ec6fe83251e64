"""How fast training is on this machine, measured honestly: `python -m benchmarks.bench`.

    python -m benchmarks.bench                          # ceiling, baseline vs ours, quick demo
    python -m benchmarks.bench --only ceiling,speed     # pick parts
    python -m benchmarks.bench --epoch --json out.json  # add one full epoch each, with test -ELBO

Parts (all at MNIST, Bernoulli decoder, static binarization, z = 2, batch 64,
the reference's conv architecture, seed 0):

- ceiling: fp32 and bf16 2048 x 2048 matmul throughput, GFLOP/s (best of a few); the memory's bandwidth
  over arrays the size of the model; our step's own matrix products replayed back to back (one step of
  ours recorded, its products timed alone): what the kernels allow on the step's thin shapes, so that a
  speed's share of it says how much of the gap to the ceiling is the loop's; and the core-to-core latency
  between the first two CPUs (`benchmarks.placement`): on one die or two, which moves the quick demo's step.
  Measured at the start and, when speed, epoch or demo ran, again at the end: each figure is the better of
  the two, so that no share is taken of a ceiling caught in a slow minute.
- speed: the baseline (the reference's own loop, as REFERENCE.md describes
  it: torchvision's MNIST dataset, per-image ToTensor and thresholding, a
  DataLoader at batch 64, fp32, Adam defaults, the reference's loss, sigmoid
  then binary cross-entropy, read every batch) against our training loop
  (`cvae.train.fit` itself), images per second. Each contender runs in a fresh process (so no allocator
  or thread setting of one leaks into the other), alternating baseline, ours,
  baseline, ours...; the speed-up is the median of the per-round ratios.
- epoch (with --epoch): one full epoch each, then the test negative ELBO; about
  5 minutes on 2 cores, most of it the baseline.
- processes (not among the defaults): one run on one process (every core's threads) against the same run
  on 2 processes (`torchrun --nproc_per_node=2`, gloo, one thread each), alternating, for the reference's
  conv model and the quick-demo model: 2 epochs of 4,096 images, the second epoch's training images per
  second (the first holds the warm-up); the speed-up is the median of the per-round ratios.
- demo: the quick-demo preset (`cvae.config.QUICK_DEMO`) through `cvae.train.main`,
  at z = 2 and z = 10: the test negative ELBO and the time it took; also the
  final model's test ELBO with q refined per image (`--refine-steps`), which
  the preset measures after its last epoch, on the same clock; and the core-to-core latency just before
  and just after it. Then its steps' speed (the epochs' training images over their training seconds) as a
  share of the ceiling, beside the reference's loop training the same model at the demo's batch size and
  learning rate (`--batches` timed batches after `--warmup`).

With `--device cuda` (a GPU machine), one run measures instead, each in a
fresh process: the reference-style baseline on the GPU (the same DataLoader and
per-image transforms, fp32 eager, the loss read every batch as the reference's
`-p 1` prints it), our loop eager (fp32 and bf16 autocast) and with the whole
step as one CUDA graph (fp32 and bf16), two epochs each with the test -ELBO
after the first; the quick demo eager and graphed, with where its time goes;
10 quick demos started at once through the run queue (`cvae.jobs.start`, as the
app's button does) on the one GPU: time until the last finishes and the GPU
memory they hold; and torch.compile (mode="reduce-overhead") on the same step,
to compare with the plain graph. `--only` picks parts: baseline, eager, graph,
demo, queue, compile.

`--busy N` measures everything after the ceiling beside other programs that keep N cores busy (a Python
loop that never waits, as another user's job on a shared server would; a fraction, as in 0.5 or 1.5, is
one more program busy for that share of every 20 ms and asleep for the rest, as a server answering
requests is): how the reference's loop and ours hold up when the machine is not theirs alone. The ceiling
is measured before they start.

Peak resident memory (ru_maxrss) is reported for each process; our loop's
includes the whole of MNIST. Timings on a shared machine are noisy: compare the
ratios measured in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.placement import core_to_core_ns

PARTS = ("ceiling", "speed", "epoch", "demo", "processes")
DEFAULT_PARTS = ("ceiling", "speed", "demo")
BATCH = 64
LATENT = 2
LEARNING_RATE = 1e-4  # the reference's published runs
SEED = 0
DEMO_BUDGET_S = 60.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CUDA_PARTS = ("baseline", "eager", "graph", "demo", "queue", "compile")
PARALLEL_DEMOS = 10
# One run on 1 process against the same run on 2 (torchrun, gloo): images a short run trains, in whole batches
# of both models' batch sizes, so that no image is dropped and both runs train the very same steps.
PROCESS_IMAGES = 4096
PROCESS_MODELS = {
    "conv": ["--arch", "conv", "-b", str(BATCH), "-z", str(LATENT), "-lr", str(LEARNING_RATE)],
    "quick_demo": ["--quick-demo"],
}


# ----------------------------------------------------------------- helpers


def child_env() -> dict[str, str]:
    """The environment for a child process that imports `cvae` (and `benchmarks`) from this checkout."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """This process's peak resident memory, MB, or its largest finished child's with RUSAGE_CHILDREN (ru_maxrss
    is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict[str, Any]:
    from cvae.runtime import machine_info as info

    return info()


def reference_model_config(latent_dim: int = LATENT):
    from cvae.config import ModelConfig, conv_preset

    return ModelConfig(
        channels=1, height=28, width=28, num_classes=10, latent_dim=latent_dim, arch="conv",
        likelihood="bernoulli", **conv_preset(28, 28),
    )  # fmt: skip


def demo_config(latent_dim: int):
    """The quick demo's run config at this latent size, resolved as `cvae train --quick-demo -z N` resolves it."""
    from cvae.data import builtin_info
    from cvae.training import build_config, resolve_options

    return build_config(resolve_options({"quick_demo": True, "latent_dim": latent_dim}), builtin_info("MNIST"))


def flops_per_image(batch: int = BATCH, model_config: Any = None) -> float:
    """Forward + backward FLOPs of one image, counted by torch: the reference architecture's, or
    `model_config`'s (an MNIST model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cvae.model import CVAE

    torch.manual_seed(SEED)
    model = CVAE(model_config or reference_model_config())
    x = (torch.rand(batch, 1, 28, 28) >= 0.5).float()
    y = torch.arange(batch) % 10
    with FlopCounterMode(display=False) as counter:
        model.objective(x, y).loss.backward()
    return counter.get_total_flops() / batch


def _meta_model(model_config: Any):
    """The model without memory: its parameters' shapes alone."""
    import torch

    from cvae.model import CVAE

    with torch.device("meta"):
        return CVAE(model_config)


def reference_parameters() -> int:
    return sum(p.numel() for p in _meta_model(reference_model_config()).parameters())


# ----------------------------------------------------------------- ceiling


# Bytes a training step must move per parameter, at the least, for the way our loop trains on a CPU, by the
# precision its matrix products run in. bf16 (cvae.runtime.HalfWeights): Adam reads the fp32 weight, both
# moments and the bf16 gradient and writes the weight, the moments and its bf16 copy (4 + 4 + 4 + 2 + 4 + 4 +
# 4 + 2 = 28), the forward and backward passes read the bf16 weight twice (4) and the backward writes its
# gradient (2). fp32: Adam reads the weight, its gradient and both moments and writes all but the gradient
# (16 + 12), the passes read the weight twice (8) and write its gradient (4). A model of 15 M parameters moves
# 0.5 GB a step whatever its batch: at the speed a pass over its state runs, a bound on the step as firm as
# the matrix units' (the roofline).
STEP_BYTES_PER_PARAMETER = {"bf16": 34, "fp32": 40}
# Where the CPU has no bf16 matrix instructions, torch multiplies bf16 matrices with a plain loop at a few
# GFLOP/s or less: the ceiling's 16 products of 2048 x 2048 ran for over 12 minutes on such a machine without
# finishing. The bf16 figure is then taken on a product of this size, as what such a machine offers a bf16
# step, not its best.
EMULATED_BF16_SIZE = 512


def loop_precision() -> str:
    """The precision our loop's matrix products run in on this CPU: what `--precision auto` picks."""
    import torch

    from cvae.runtime import select_amp_dtype

    return "bf16" if select_amp_dtype("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"


def measure_ceiling(n: int = 2048, repeats: int = 5, elements: int | None = None) -> dict[str, Any]:
    """Best-of-`repeats` matmul throughput, GFLOP/s, fp32 and bf16 (what the cores can do at best), and the
    memory's bandwidth, GB/s: a + b into c, fp32 arrays of `elements` (the model's parameter count, so the three
    are the size of the weights and Adam's moments: what a pass over the model's state can do at best on this
    machine, from whichever of its caches and memory holds that much). `precision` says which of the two
    matmul figures bounds our loop here: the one it trains in."""
    import torch

    from cvae.runtime import cpu_has_fast_bf16, set_threads

    set_threads(0)
    out: dict[str, Any] = {"precision": loop_precision(), "bf16_native": cpu_has_fast_bf16()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        size = n if name == "fp32" or out["bf16_native"] else min(n, EMULATED_BF16_SIZE)
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: oneDNN / MKL pick their kernels
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(3):
                a @ b
            best = min(best, (time.perf_counter() - t) / 3)
        out[f"{name}_gflops"] = 2 * size**3 / best / 1e9
        out[f"{name}_size"] = size
    a, b, c = (torch.ones(elements or reference_parameters()) for _ in range(3))  # pages mapped before timing
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.add(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    out["memory_gbps"] = 3 * c.numel() * c.element_size() / best / 1e9
    out["core_to_core_ns"] = core_to_core_ns()
    out.update(measure_products(repeats))
    return out


# The operators that do a step's matrix arithmetic: the ones FlopCounterMode counts in this model.
PRODUCT_OPS = ("mm", "addmm", "bmm", "convolution", "convolution_backward")


def measure_products(repeats: int = 5) -> dict[str, Any]:
    """The speed of our step's own matrix products, and nothing else: one step of the reference model, set up
    as our loop sets it up on this CPU (its precision, layouts and bf16 weights), is recorded operator by
    operator; its products are then replayed back to back, with the very operands the step gave them, and
    the best of `repeats` passes is timed. The matmul ceiling is a large square product; a step's products
    are thin (batch 64) and its convolutions small, and the kernels run those slower: this is the bound they
    set on any loop with these kernels, measured in the same run. `products_flops` counts what was replayed
    (it must be the model's FLOPs a step: a product missed would flatter the bound)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from cvae.model import CVAE
    from cvae.runtime import autocast, half_weights, make_optimizer, prepare_model, select_amp_dtype

    wanted = {getattr(torch.ops.aten, name) for name in PRODUCT_OPS}
    calls: list[tuple[Any, tuple, dict]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func.overloadpacket in wanted:
                calls.append((func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    device = torch.device("cpu")
    torch.manual_seed(SEED)
    model = prepare_model(CVAE(reference_model_config()), device)
    optimizer = make_optimizer(model, LEARNING_RATE, device)
    amp = select_amp_dtype("auto", device)
    weights = half_weights(model, optimizer, device, amp)
    x, y = (torch.rand(BATCH, 1, 28, 28) >= 0.5).float(), torch.arange(BATCH) % 10

    def step(record: bool) -> None:
        with weights.for_step() if weights else contextlib.nullcontext():
            with Record() if record else contextlib.nullcontext():
                with autocast(device, amp):
                    loss = model.objective(x, y).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            (weights.step if weights else optimizer.step)()

    for _ in range(2):  # the kernels chosen and the bf16 weights made, as after a loop's first steps
        step(False)
    step(True)

    def replay() -> None:
        with weights.for_step() if weights else contextlib.nullcontext():  # the weights' bf16 copies in place
            for func, args, kwargs in calls:
                func(*args, **kwargs)

    with FlopCounterMode(display=False) as counter:
        replay()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        replay()
        best = min(best, time.perf_counter() - t)
    return {"products_seconds": best, "products_flops": counter.get_total_flops(), "products_calls": len(calls),
            "products_precision": "bf16" if amp == torch.bfloat16 else "fp32"}  # fmt: skip


# ---------------------------------------------------------------- baseline


def reference_mnist(train: bool = True):
    """torchvision's own MNIST dataset, as the reference reads it: (PIL image, label) per item, with the
    reference's per-image transforms, ToTensor then a >= 0.5 threshold.

    The project ships MNIST as the original .gz IDX files; torchvision's class reads the decompressed files
    from `<root>/MNIST/raw`, which is what its download leaves there. So they are decompressed into a
    temporary folder first; the class reads them into memory when built, and the folder goes.
    """
    import gzip
    import shutil

    from torchvision import datasets, transforms

    from cvae.data import PACKAGED_MNIST as shipped

    with tempfile.TemporaryDirectory(prefix="cvae-bench-mnist-") as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):  # fmt: skip
            with gzip.open(shipped / f"{name}.gz") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Lambda(_threshold)])
        return datasets.MNIST(tmp, train=train, download=False, transform=transform)


def _threshold(x):
    return (x >= 0.5).float()  # the reference binarizes each image in its transform


def baseline_loader(train: bool = True, batch: int = BATCH):
    """The reference's input pipeline: a shuffled DataLoader (batch 64 unless given, no workers) over
    `reference_mnist`."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    return torch.utils.data.DataLoader(reference_mnist(train), batch_size=batch, shuffle=train, generator=gen)


def reference_step(model, optimizer, x, y):
    """One training step the reference's way (REFERENCE.md, "Loss"): the decoder's sigmoid probabilities, the
    binary cross-entropy and the KL summed over the batch and divided by its size; zero_grad, backward, step.
    Returns the batch loss (a tensor; the reference reads it every batch to print it)."""
    import torch
    import torch.nn.functional as F

    optimizer.zero_grad()
    out = model(x, y)
    recon = F.binary_cross_entropy(torch.sigmoid(out.out), x, reduction="sum")
    kl = 0.5 * (out.mu.pow(2) + out.std.pow(2) - 2 * out.std.log() - 1).sum()
    loss = (recon + kl) / len(x)
    loss.backward()
    optimizer.step()
    return loss


def run_baseline_cuda() -> dict[str, Any]:
    """The reference's way on a GPU: DataLoader, per-image transforms, each batch copied over, fp32 eager,
    Adam defaults, and the batch loss read back every batch (the reference prints it at `-p 1`)."""
    import torch

    from cvae.config import DataConfig
    from cvae.data import load_data
    from cvae.estimators import evaluate_elbo
    from cvae.model import CVAE

    device = torch.device("cuda")
    torch.manual_seed(SEED)
    model = CVAE(reference_model_config()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    loader = baseline_loader()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        reference_step(model, optimizer, x, y).item()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    test = load_data(DataConfig(dataset="MNIST", binarize="static"))
    return {"epoch_seconds": seconds, "images_per_s": len(loader.dataset) / seconds,
            "test": evaluate_elbo(model, test.test_x.to(device), test.test_y.to(device))}  # fmt: skip


class _EpochClock:
    """A fit() callback: the time of each logged batch and of each finished epoch (after its checkpoint)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float]] = []
        self.epochs: list[tuple[dict, float]] = []
        self.t0 = time.time()

    def on_batch(self, record: dict[str, Any]) -> None:
        self.batches.append((record["epoch"], time.time()))

    def on_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append((record, time.time()))


def run_ours_cuda(cuda_graph: str, precision: str, epochs: int = 2) -> dict[str, Any]:
    """`cvae.train.fit` on the GPU, full MNIST: each epoch's training seconds (to its last batch read back)."""
    import torch

    from cvae.config import DataConfig, RunConfig, TrainConfig
    from cvae.data import load_data
    from cvae.loop import fit
    from cvae.runs import RunDir

    data_config = DataConfig(dataset="MNIST", binarize="static")
    data = load_data(data_config)
    train = TrainConfig(epochs=epochs, batch_size=BATCH, learning_rate=LEARNING_RATE, seed=SEED, device="cuda",
                        precision=precision, cuda_graph=cuda_graph)  # fmt: skip
    config = RunConfig(data=data_config, model=reference_model_config(), train=train).validate()
    clock = _EpochClock()
    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        fit(config, RunDir(Path(tmp) / "run"), data=data, callbacks=[clock], device=torch.device("cuda"))
        status = json.loads((Path(tmp) / "run" / "status.json").read_text())
    starts = [clock.t0] + [t for _, t in clock.epochs[:-1]]
    ends = [max(t for e, t in clock.batches if e == i + 1) for i in range(epochs)]
    return {
        "cuda_graph": status.get("cuda_graph"), "warning": status.get("warning", ""),
        "precision": status.get("precision"), "graph_setup_seconds": status.get("cuda_graph_setup_s"),
        "epoch_train_seconds": [end - start for start, end in zip(starts, ends, strict=True)],
        "epoch_seconds_with_eval": [r["seconds"] for r, _ in clock.epochs],
        "test_nelbo": [r["test_nelbo"] for r, _ in clock.epochs],
    }  # fmt: skip


def run_demo_cuda(cuda_graph: str) -> dict[str, Any]:
    """The quick demo on the GPU, as `python -m cvae.train --quick-demo --device cuda` runs it."""
    from cvae.config import QUICK_DEMO
    from cvae.train import main

    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        t = time.perf_counter()
        result = main(**QUICK_DEMO, device="cuda", cuda_graph=cuda_graph, run_dir=str(Path(tmp) / "run"), quiet=True)
        total = time.perf_counter() - t
        status = json.loads((result.run_dir / "status.json").read_text())
    last = result.metrics[-1]
    steps = sum(m["train_seconds"] for m in result.metrics)
    return {"cuda_graph": status.get("cuda_graph"), "graph_setup_seconds": status.get("cuda_graph_setup_s"),
            "warning": status.get("warning", ""), "epochs": len(result.metrics), "train_seconds": last["time"],
            "optimisation_seconds": steps, "refine_seconds": last.get("refine_seconds", 0.0),
            "per_epoch_rest_seconds": (last["time"] - steps - last.get("refine_seconds", 0.0)) / len(result.metrics),
            "seconds_with_loading": total, "test_nelbo": last["test_nelbo"],
            "test_nelbo_refined": last.get("test_nelbo_refined"), "gpu_memory_mb": status.get("gpu_memory_mb")}  # fmt: skip


def run_queued_demos(count: int = PARALLEL_DEMOS) -> dict[str, Any]:
    """`count` quick demos started at once through the run queue, as `count` students pressing the app's
    quick-demo button do (`cvae.jobs.start`, which spawns `python -m cvae.jobs`): time until the last
    finishes, the device each got, and the GPU memory they held together (free memory sampled every 0.1 s)."""
    import torch

    from cvae import jobs
    from cvae.runs import ACTIVE_STATES

    torch.cuda.init()
    free_before, total_memory = torch.cuda.mem_get_info()
    low = free_before
    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        root = Path(tmp) / "runs"
        t = time.perf_counter()
        runs = [jobs.start(root, dict(jobs.QUICK_DEMO_OPTIONS), run_id=f"demo{i}") for i in range(count)]
        finished: dict[str, float] = {}
        while len(finished) < count and time.perf_counter() - t < 600:
            low = min(low, torch.cuda.mem_get_info()[0])
            for run in runs:
                if run.id not in finished and run.read_status().get("state") not in ACTIVE_STATES:
                    finished[run.id] = time.perf_counter() - t
            time.sleep(0.1)
        statuses = [run.read_status() for run in runs]
        metrics = [(run.read_metrics() or [{}])[-1] for run in runs]
        failed = [f"{run.id}: {s.get('state')} {s.get('message', '')}" for run, s in zip(runs, statuses, strict=True)
                  if s.get("state") != "finished"]  # fmt: skip
        if failed:
            log = runs[0].log_path.read_text()[-2000:] if runs[0].log_path.exists() else ""
            raise RuntimeError(f"queued quick demos did not finish: {failed}\n{log}")
    used = free_before - low
    return {"count": count, "seconds_until_last": max(finished.values()), "devices": [s.get("device") for s in statuses],
            "cuda_graph": [s.get("cuda_graph") for s in statuses], "train_seconds": [m["time"] for m in metrics],
            "test_nelbo": [m["test_nelbo"] for m in metrics], "gpu_memory_used_mb": used / 2**20,
            "gpu_memory_per_run_mb": used / count / 2**20, "gpu_memory_total_mb": total_memory / 2**20,
            "gpu_memory_peak_mb_per_process": [s.get("gpu_memory_mb") for s in statuses]}  # fmt: skip


def run_compiled_cuda(epochs: int = 2, device_name: str = "cuda") -> dict[str, Any]:
    """torch.compile against the plain CUDA graph, on the same step: the reference's conv model at batch 64,
    MNIST on the GPU, each batch gathered by index, fused Adam, the losses summed on the device and read once
    an epoch. Forward and backward are compiled with mode="reduce-overhead" (Inductor's kernels, replayed as
    CUDA graphs); Adam's fused update runs as it is. Epoch 1 includes the compilation.

    Inductor's defaults are tried first, then with its layout optimisation off (torch 2.11's Inductor once
    failed a stride check in the conv backward here); each failure is reported, not hidden."""
    import torch

    from cvae.config import DataConfig
    from cvae.data import load_data
    from cvae.estimators import evaluate_elbo
    from cvae.model import CVAE

    device = torch.device(device_name)
    data = load_data(DataConfig(dataset="MNIST", binarize="static"))
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    failures: dict[str, str] = {}
    for variant, settings in (("inductor defaults", {}), ("layout_optimization=False", {"layout_optimization": False})):
        torch._dynamo.reset()
        torch.manual_seed(SEED)
        model = CVAE(reference_model_config()).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, fused=True)

        def loss_of(x: torch.Tensor, y: torch.Tensor, model: CVAE = model) -> torch.Tensor:
            return model.objective(x, y).loss

        compiled = torch.compile(loss_of, mode="reduce-overhead")
        model.train()
        n, seconds, t0 = len(train_x), [], time.perf_counter()
        try:
            with torch._inductor.config.patch(settings):
                for epoch in range(epochs):
                    _sync(device)
                    t = time.perf_counter()
                    order = torch.randperm(n, device=device)
                    total = torch.zeros((), device=device)
                    for b in range(n // BATCH):  # full batches only: one shape, one graph
                        idx = order[b * BATCH : (b + 1) * BATCH]
                        loss = compiled(train_x.index_select(0, idx), train_y.index_select(0, idx))
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        total += loss.detach()
                    float(total)
                    seconds.append(time.perf_counter() - t)
                    if epoch == 0:
                        test = evaluate_elbo(model, data.test_x.to(device), data.test_y.to(device))
        except Exception as err:  # noqa: BLE001 - reported: which variant failed and why
            lines = [line for line in str(err).splitlines() if line.strip()]
            failures[variant] = f"{type(err).__name__}: {(lines or [''])[0][:300]}"
            continue
        return {"variant": variant, "failures": failures, "epoch_train_seconds": seconds,
                "test_nelbo": [test["nelbo"]], "total_seconds": time.perf_counter() - t0,
                "torch": torch.__version__}  # fmt: skip
    raise RuntimeError(f"torch.compile failed in every variant: {failures}")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(batches: int, warmup: int, full_epoch: bool = False, demo_latent: int | None = None) -> dict[str, Any]:
    """The reference's loop: `baseline_loader`, fp32, Adam defaults, `reference_step`, the loss read every batch
    (the reference prints it at `-p 1`). With `demo_latent`, the same loop trains the quick demo's model at that
    latent size, at the demo's batch size and learning rate: what the demo's training costs in that loop."""
    import torch

    from cvae.config import DataConfig
    from cvae.data import load_data
    from cvae.estimators import evaluate_elbo
    from cvae.model import CVAE

    torch.manual_seed(SEED)
    demo = demo_config(demo_latent) if demo_latent is not None else None
    model = CVAE(demo.model if demo else reference_model_config())
    optimizer = torch.optim.Adam(model.parameters(), lr=demo.train.learning_rate if demo else LEARNING_RATE)
    model.train()
    batch = demo.train.batch_size if demo else BATCH
    loader = baseline_loader(batch=batch)
    times = [time.perf_counter()]
    for b, (x, y) in enumerate(loader):
        if not full_epoch and b == warmup + batches:
            break
        reference_step(model, optimizer, x, y).item()
        times.append(time.perf_counter())
    result: dict[str, Any] = {}
    if full_epoch:
        result["epoch_seconds"] = times[-1] - times[0]
        result["images_per_s"] = len(loader.dataset) / result["epoch_seconds"]
        test = load_data(DataConfig(dataset="MNIST", binarize="static"))  # the same test set as ours
        result["test"] = evaluate_elbo(model, test.test_x, test.test_y)  # fp32
    else:
        result["images_per_s"] = batches * batch / (times[warmup + batches] - times[warmup])
    result.update(batch_size=batch, parameters=sum(p.numel() for p in model.parameters()))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# --------------------------------------------------------------------- ours


class _BatchClock:
    """A fit() callback that keeps each logged batch's time since the run started."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.epochs: list[dict] = []

    def on_batch(self, record: dict[str, Any]) -> None:
        self.times.append(record["time"])

    def on_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)


def run_ours(batches: int, warmup: int, full_epoch: bool = False) -> dict[str, Any]:
    """`cvae.train.fit` itself, as the command line runs it, on the full MNIST in memory."""
    import torch

    from cvae.config import DataConfig, RunConfig, TrainConfig
    from cvae.data import ImageData, load_data
    from cvae.loop import fit
    from cvae.runs import RunDir
    from cvae.runtime import flush_denormals, select_amp_dtype

    flush_denormals()  # as main() does: before the data's parallel ops start torch's worker threads
    data_config = DataConfig(dataset="MNIST", binarize="static")
    data = load_data(data_config)
    if not full_epoch:  # views into the full set: the whole of MNIST stays resident, as in a real run
        n = (warmup + batches) * BATCH
        data = ImageData(data.train_x[:n], data.train_y[:n], data.test_x[:1000], data.test_y[:1000], data.info)
    train = TrainConfig(epochs=1, batch_size=BATCH, learning_rate=LEARNING_RATE, seed=SEED, device="cpu",
                        latent_subset=0 if not full_epoch else 2000)  # fmt: skip
    config = RunConfig(data=data_config, model=reference_model_config(), train=train).validate()
    clock = _BatchClock()
    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        fit(config, RunDir(Path(tmp) / "run"), data=data, callbacks=[clock], device=torch.device("cpu"))
    times = clock.times
    amp = select_amp_dtype(train.precision, torch.device("cpu"))
    result: dict[str, Any] = {"precision": str(amp or torch.float32).replace("torch.", "")}
    if full_epoch:
        record = clock.epochs[-1]
        result["epoch_seconds"] = times[-1]  # run start to the last batch: training only
        result["epoch_seconds_with_eval"] = record["seconds"]
        result["images_per_s"] = len(data.train_x) / times[-1]
        result["test"] = {"nelbo": record["test_nelbo"], "recon": record["test_recon"], "kl": record["test_kl"]}
    else:
        result["images_per_s"] = batches * BATCH / (times[warmup + batches - 1] - times[warmup - 1])
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# --------------------------------------------------------------------- demo


def run_demo(latent_dim: int) -> dict[str, Any]:
    """The quick-demo preset as a user runs it: `python -m cvae.train --quick-demo -z N`, its own process, timed
    from the command to its exit (Python's start, torch's import and the process's end included)."""
    from cvae.config import RunConfig
    from cvae.data import peek_sizes
    from cvae.runs import RunDir

    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        run = Path(tmp) / "run"
        env = child_env()
        cmd = [sys.executable, "-m", "cvae.train", "--quick-demo", "-z", str(latent_dim), "-q", "--run-dir", str(run)]
        placement = [core_to_core_ns()]
        t, started = time.perf_counter(), time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
        total = time.perf_counter() - t
        placement.append(core_to_core_ns())
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:5])} failed:\n{proc.stderr[-3000:]}")
        first_pictures = RunDir(run).read_status().get("first_pictures_at")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        config = RunConfig.from_dict(RunDir(run).read_config())
    within = [m for m in metrics if m["time"] <= DEMO_BUDGET_S]
    last = metrics[-1]
    training = sum(m["train_seconds"] for m in metrics)  # the epochs' training alone: no test pass, no refinement
    images = peek_sizes(config.data)[0]  # a training epoch's
    return {
        "latent_dim": latent_dim,
        "epochs": len(metrics),
        "train_seconds": last["time"],  # fit's clock: training and per-epoch evaluation, no data loading
        # the epochs' steps (their live pictures and first-step warm-up included), as the model's FLOPs: the
        # demo's share of the ceiling, beside the reference's loop training the same model
        "training_images_per_s": len(metrics) * images / training,
        "train_images": images,
        "flops_per_image": flops_per_image(config.train.batch_size, config.model),
        "parameters": sum(p.numel() for p in _meta_model(config.model).parameters()),
        "batch_size": config.train.batch_size,
        "seconds_with_loading": total,  # the command's wall time, to its exit
        # from the command (torch's import and data loading included) to the first live pictures on disk
        "first_pictures_s": first_pictures - started if isinstance(first_pictures, float) else None,
        "test_nelbo": last["test_nelbo"],
        "test_nelbo_within_budget": within[-1]["test_nelbo"] if within else None,
        # the final model's test ELBO with q refined per image (QUICK_DEMO's refine_steps), on fit's clock too
        "refine_steps": last.get("refine_steps", 0),
        "test_nelbo_refined": last.get("test_nelbo_refined"),
        "refined_within_budget": last["time"] <= DEMO_BUDGET_S,
        "curve": [(round(m["time"], 1), round(m["test_nelbo"], 2)) for m in metrics],
        "peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),  # the largest child: the command (not the probe's cc)
        "core_to_core_ns": placement,  # before and after: its small step is slower across dies
    }


def run_processes(model: str, processes: int) -> dict[str, Any]:
    """One short run of `model` on `processes` processes (torchrun for more than one), in a fresh run folder:
    its second epoch's training speed and its test -ELBO."""
    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        run = Path(tmp) / "run"
        flags = [*PROCESS_MODELS[model], "--train-subset", str(PROCESS_IMAGES), "--test-subset", "1000",
                 "--latent-subset", "500", "--refine-steps", "0", "--seed", str(SEED), "-e", "2", "-q",
                 "--run-dir", str(run)]  # fmt: skip
        env = child_env()
        if processes == 1:
            cmd = [sys.executable, "-m", "cvae.train", *flags]
        else:
            import socket

            with socket.socket() as sock:  # torchrun's rendezvous on a port free now
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={port}", "-m", "cvae.train", *flags]  # fmt: skip
            env["OMP_NUM_THREADS"] = "1"  # what torchrun sets anyway, said here to keep its warning out
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} failed:\n{proc.stderr[-3000:]}")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    return {"processes": processes, "images_per_s": PROCESS_IMAGES / last["train_seconds"],
            "test_nelbo": last["test_nelbo"], "wall_seconds": wall}  # fmt: skip


# ------------------------------------------------------------------ workers


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["kind"]
    if kind == "baseline":
        return run_baseline(spec["batches"], spec["warmup"], spec.get("full_epoch", False), spec.get("demo_latent"))
    if kind == "ours":
        return run_ours(spec["batches"], spec["warmup"], spec.get("full_epoch", False))
    if kind == "demo":
        return run_demo(spec["latent_dim"])
    if kind == "ceiling":
        return measure_ceiling(elements=spec.get("elements"))
    if kind == "baseline_cuda":
        return run_baseline_cuda()
    if kind == "ours_cuda":
        return run_ours_cuda(spec["cuda_graph"], spec["precision"])
    if kind == "demo_cuda":
        return run_demo_cuda(spec["cuda_graph"])
    if kind == "queue":
        return run_queued_demos(spec["count"])
    if kind == "compile":
        return run_compiled_cuda()
    raise ValueError(f"unknown worker kind {kind!r}")


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one part in a fresh Python process; its last stdout line is the JSON result."""
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


MAX_BUSY_CORES = 64  # --busy above this is a typo, not a machine: it would start that many programs
BUSY_PERIOD_S = 0.02  # a partly busy program's cycle: busy, then asleep, a few scheduler time slices in all
PARTLY_BUSY = """import time
while True:
    until = time.perf_counter() + {busy}
    while time.perf_counter() < until:
        pass
    time.sleep({idle})
"""


@contextlib.contextmanager
def busy_cores(cores: float) -> Iterator[None]:
    """Other programs keeping `cores` cores busy for as long as the block runs: one a whole core each, and
    one more busy for the fraction's share of each BUSY_PERIOD_S."""
    whole, part = int(cores), cores - int(cores)
    programs = ["while True: pass"] * whole
    if part > 1e-3:
        programs.append(PARTLY_BUSY.format(busy=part * BUSY_PERIOD_S, idle=(1 - part) * BUSY_PERIOD_S))
    hogs = [subprocess.Popen([sys.executable, "-c", program]) for program in programs]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def bench(parts: tuple[str, ...], *, batches: int, warmup: int, rounds: int, busy: float = 0) -> dict[str, Any]:
    from cvae import native

    # What ours runs for the optimiser's pass over the bf16-gradient weights: the workers build or load the same
    # kernel from the same cache on this machine. Where the loop trains in fp32 there are no such weights.
    optimiser = (
        native.status()
        if loop_precision() == "bf16"
        else "torch's fused Adam over fp32 weights (no bf16 matrix instructions here: the loop trains in fp32)"
    )
    report: dict[str, Any] = {"machine": {**machine_info(), "optimiser": optimiser}, "settings": {
        "dataset": "MNIST", "likelihood": "bernoulli", "binarize": "static", "latent_dim": LATENT,
        "batch_size": BATCH, "learning_rate": LEARNING_RATE, "seed": SEED, "arch": "conv (the reference's)",
        "batches_timed": batches, "warmup_batches": warmup, "rounds": rounds, "busy_cores": busy,
    }}  # fmt: skip
    report["parameters"] = reference_parameters()
    ceiling = {"kind": "ceiling", "elements": report["parameters"]}
    if "ceiling" in parts:
        _log("ceiling: matmul GFLOP/s and the memory's GB/s ...")
        report["ceiling"] = spawn(ceiling)
    if busy:
        _log(f"the rest beside other programs keeping {busy:g} core(s) busy ...")
    with busy_cores(busy):
        _measure(report, parts, batches=batches, warmup=warmup, rounds=rounds)
    if "ceiling" in parts and set(parts) & set(MEASURED_PARTS):
        # Measured again once the rest has run, as quiet as at the start: the machine's speed moves from one
        # minute to the next, and a ceiling caught in a slow minute would flatter every share taken of it.
        _log("ceiling again, at the end ...")
        report["ceiling"] = best_ceiling(report["ceiling"], spawn(ceiling))
    _add_fractions(report)
    return report


# The parts whose speeds the bench gives as shares of the ceiling.
MEASURED_PARTS = ("speed", "epoch", "demo")


def best_ceiling(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The ceiling of two measurements, one at each end of the bench: each figure the better of the two (the
    higher rate, the shorter products' replay), so that no share is taken of a slow minute's ceiling. Both
    measurements are kept under `measured`; the core-to-core latency stays the start's (the placement the
    bench began on), the end's beside it."""
    best = dict(start)
    for key in ("fp32_gflops", "bf16_gflops", "memory_gbps"):
        if key in start and key in end:
            best[key] = max(start[key], end[key])
    if start.get("products_seconds") and end.get("products_seconds"):
        best["products_seconds"] = min(start["products_seconds"], end["products_seconds"])
    best["core_to_core_ns_end"] = end.get("core_to_core_ns")
    best["measured"] = {"start": start, "end": end}
    return best


def _measure(report: dict[str, Any], parts: tuple[str, ...], *, batches: int, warmup: int, rounds: int) -> None:
    """Every part after the ceiling, into `report`."""
    if "speed" in parts or "epoch" in parts:
        report["flops_per_image"] = flops_per_image()
    if "speed" in parts:
        base, ours = [], []
        for r in range(rounds):
            _log(f"speed round {r + 1}/{rounds}: baseline ...")
            base.append(spawn({"kind": "baseline", "batches": batches, "warmup": warmup}))
            _log(f"speed round {r + 1}/{rounds}: ours ...")
            ours.append(spawn({"kind": "ours", "batches": batches, "warmup": warmup}))
        ratios = [o["images_per_s"] / b["images_per_s"] for b, o in zip(base, ours, strict=True)]
        ours_ips = statistics.median(o["images_per_s"] for o in ours)
        report["speed"] = {
            "baseline_images_per_s": statistics.median(b["images_per_s"] for b in base),
            "ours_images_per_s": ours_ips,
            "speedup": statistics.median(ratios),
            "speedup_per_round": ratios,
            "ours_seconds_per_epoch": 60_000 / ours_ips,
            "baseline_peak_rss_mb": max(b["peak_rss_mb"] for b in base),
            "ours_peak_rss_mb": max(o["peak_rss_mb"] for o in ours),
            "rounds": {"baseline": base, "ours": ours},
        }
        report["speed"]["baseline"] = {"images_per_s": report["speed"]["baseline_images_per_s"]}
    if "epoch" in parts:
        _log("epoch: baseline, one full epoch (fp32; about 3 minutes on 2 cores) ...")
        base = spawn({"kind": "baseline", "batches": 0, "warmup": 0, "full_epoch": True})
        _log("epoch: ours, one full epoch ...")
        ours = spawn({"kind": "ours", "batches": 0, "warmup": 0, "full_epoch": True})
        report["epoch"] = {
            "baseline": base, "ours": ours,
            "speedup": ours["images_per_s"] / base["images_per_s"],
            "nelbo_difference": ours["test"]["nelbo"] - base["test"]["nelbo"],
        }  # fmt: skip
    if "processes" in parts:
        report["processes"] = {}
        for model in PROCESS_MODELS:
            one, two = [], []
            for r in range(rounds):
                _log(f"processes round {r + 1}/{rounds}: {model} on 1 process, then on 2 ...")
                one.append(run_processes(model, 1))
                two.append(run_processes(model, 2))
            ratios = [b["images_per_s"] / a["images_per_s"] for a, b in zip(one, two, strict=True)]
            report["processes"][model] = {
                "one_images_per_s": statistics.median(a["images_per_s"] for a in one),
                "two_images_per_s": statistics.median(b["images_per_s"] for b in two),
                "speedup": statistics.median(ratios), "speedup_per_round": ratios,
                "one_test_nelbo": [a["test_nelbo"] for a in one], "two_test_nelbo": [b["test_nelbo"] for b in two],
                "rounds": {"one": one, "two": two},
            }  # fmt: skip
    if "demo" in parts:
        report["demo"] = {}
        for z in (2, 10):
            _log(f"demo: quick-demo preset, z={z} ...")
            demo = report["demo"][f"z{z}"] = spawn({"kind": "demo", "latent_dim": z})
            _log(f"demo: the reference's loop on the quick demo's model, z={z} ...")
            base = spawn({"kind": "baseline", "batches": batches, "warmup": warmup, "demo_latent": z})
            demo["baseline"] = {"images_per_s": base["images_per_s"]}
            demo["speedup"] = demo["training_images_per_s"] / base["images_per_s"]


def bench_cuda(parts: tuple[str, ...]) -> dict[str, Any]:
    """The GPU measurements (module docstring); each result is also logged to stderr as it arrives."""
    import torch

    report: dict[str, Any] = {"machine": {**machine_info(), "gpu": torch.cuda.get_device_name(0)}, "settings": {
        "dataset": "MNIST", "likelihood": "bernoulli", "binarize": "static", "latent_dim": LATENT,
        "batch_size": BATCH, "learning_rate": LEARNING_RATE, "seed": SEED, "arch": "conv (the reference's)",
    }}  # fmt: skip

    def part(key: str, spec: dict[str, Any]) -> None:
        _log(f"cuda: {key} ...")
        try:
            report[key] = spawn(spec)
        except RuntimeError as err:  # one part failing (torch.compile on an odd set-up) leaves the others
            report.setdefault("errors", {})[key] = str(err)[-2000:]
            _log(f"cuda: {key} FAILED: {err}")
            return
        _log(f"cuda: {key} = {json.dumps(report[key])}")

    if "baseline" in parts:
        part("baseline", {"kind": "baseline_cuda"})
    for mode, flag in (("eager", "off"), ("graph", "on")):
        if mode in parts:
            for precision in ("fp32", "auto"):
                part(f"{mode}_{precision}", {"kind": "ours_cuda", "cuda_graph": flag, "precision": precision})
    if "demo" in parts:
        for mode, flag in (("eager", "off"), ("graph", "auto")):
            part(f"demo_{mode}", {"kind": "demo_cuda", "cuda_graph": flag})
    if "queue" in parts:
        part("queue", {"kind": "queue", "count": PARALLEL_DEMOS})
    if "compile" in parts:
        part("compile", {"kind": "compile"})
    return report


def format_cuda_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows: list[tuple[str, str]] = [("machine", f"{m['gpu']}; {m['cpu']}, {m['cores']} cores; torch {m['torch']}")]
    base = report.get("baseline")
    if base:
        rows.append(("reference-style baseline (DataLoader, fp32)",
                     f"{base['epoch_seconds']:.2f} s/epoch, test -ELBO {base['test']['nelbo']:.2f} after 1 epoch"))  # fmt: skip
    for key, name in (("eager_fp32", "ours eager, fp32"), ("eager_auto", "ours eager, bf16 autocast"),
                      ("graph_fp32", "ours CUDA graph, fp32"), ("graph_auto", "ours CUDA graph, bf16 autocast")):  # fmt: skip
        r = report.get(key)
        if not r:
            continue
        secs = ", ".join(f"{s:.2f}" for s in r["epoch_train_seconds"])
        note = "" if r["cuda_graph"] == key.startswith("graph") else f"  [cuda_graph={r['cuda_graph']} {r['warning']}]"
        if r.get("graph_setup_seconds") is not None:
            note += f"; capture + check {r['graph_setup_seconds']:.2f} s before epoch 1"
        rows.append((name, f"fit() call to epoch 1's last batch (set-up included), epoch 2: {secs} s training ({r['epoch_seconds_with_eval'][-1]:.2f} s with test "
                           f"eval); test -ELBO {r['test_nelbo'][0]:.2f} after 1 epoch{note}"))  # fmt: skip
    graph, eager = report.get("graph_fp32") or report.get("graph_auto"), report.get("eager_fp32")
    if graph and base:
        rows.append(
            (
                "speed-up, graph vs baseline (epoch 2)",
                f"{base['epoch_seconds'] / graph['epoch_train_seconds'][-1]:.1f}x",
            )
        )
    if graph and eager:
        rows.append(("speed-up, graph vs eager fp32 (epoch 2)",
                     f"{eager['epoch_train_seconds'][-1] / graph['epoch_train_seconds'][-1]:.1f}x"))  # fmt: skip
        for key in ("graph_fp32", "graph_auto"):
            if report.get(key):
                rows.append((f"test -ELBO after 1 epoch, {key} - eager fp32",
                             f"{report[key]['test_nelbo'][0] - eager['test_nelbo'][0]:+.2f} nats"))  # fmt: skip
    for key in ("demo_eager", "demo_graph"):
        d = report.get(key)
        if d:
            rows.append((f"quick demo, {key[5:]} (cuda_graph={d['cuda_graph']})",
                         f"{d['epochs']} epochs in {d['train_seconds']:.2f} s training "
                         f"({d['seconds_with_loading']:.1f} s with loading): optimisation {d['optimisation_seconds']:.2f} s, "
                         f"test pass and pictures {d['per_epoch_rest_seconds'] * 1000:.0f} ms/epoch, refinement "
                         f"{d['refine_seconds']:.2f} s; test -ELBO {d['test_nelbo']:.2f}, refined {d['test_nelbo_refined']:.2f}"
                         + (f"; capture + check {d['graph_setup_seconds']:.2f} s" if d.get("graph_setup_seconds") else "")
                         + (f"; GPU memory peak {d['gpu_memory_mb']:.0f} MiB" if d.get("gpu_memory_mb") else "")
                         + (f" [{d['warning']}]" if d.get("warning") else "")))  # fmt: skip
    q = report.get("queue")
    if q:
        rows.append((f"{q['count']} quick demos at once through the queue, one GPU",
                     f"last finished after {q['seconds_until_last']:.1f} s (each {min(q['train_seconds']):.1f}-"
                     f"{max(q['train_seconds']):.1f} s training); devices {sorted(set(map(str, q['devices'])))}; "
                     f"test -ELBO {min(q['test_nelbo']):.2f}-{max(q['test_nelbo']):.2f}; graphs "
                     f"{sum(bool(g) for g in q['cuda_graph'])}/{q['count']}; GPU memory {q['gpu_memory_used_mb']:.0f} MiB "
                     f"together, {q['gpu_memory_per_run_mb']:.0f} MiB per run"))  # fmt: skip
    c = report.get("compile")
    if c:
        secs = ", ".join(f"{v:.2f}" for v in c["epoch_train_seconds"])
        failed = "".join(f"; {k} failed: {v}" for k, v in c.get("failures", {}).items())
        rows.append((f"torch.compile reduce-overhead, fp32, {c.get('variant', '')} (epochs 1, 2)",
                     f"{secs} s (epoch 1 includes compiling); test -ELBO {c['test_nelbo'][0]:.2f} after 1 epoch{failed}"))  # fmt: skip
        if graph:
            rows.append(("speed-up, CUDA graph vs torch.compile (epoch 2)",
                         f"{c['epoch_train_seconds'][-1] / graph['epoch_train_seconds'][-1]:.2f}x"))  # fmt: skip
    for key, error in report.get("errors", {}).items():
        rows.append((f"{key}: failed", (error.strip().splitlines() or ["?"])[-1][:300]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _add_fractions(report: dict[str, Any]) -> None:
    """Every speed's share of the ceiling (and ours, of its products' speed), once the ceiling is final."""
    if "speed" in report:
        _add_ceiling_fraction(report, report["speed"], "ours_images_per_s")
        _add_products_fraction(report, report["speed"], "ours_images_per_s")
        _add_ceiling_fraction(report, report["speed"]["baseline"], "images_per_s")
    if "epoch" in report:
        _add_ceiling_fraction(report, report["epoch"]["ours"], "images_per_s")
        _add_products_fraction(report, report["epoch"]["ours"], "images_per_s")
        _add_ceiling_fraction(report, report["epoch"]["baseline"], "images_per_s")
    for demo in report.get("demo", {}).values():
        model = {k: demo[k] for k in ("flops_per_image", "parameters", "batch_size")}
        _add_ceiling_fraction(report, demo, "training_images_per_s", **model)
        _add_ceiling_fraction(report, demo["baseline"], "images_per_s", **model)


def _add_ceiling_fraction(report: dict[str, Any], where: dict[str, Any], key: str, *,
                          flops_per_image: float | None = None, parameters: int | None = None,
                          batch_size: int = BATCH) -> None:  # fmt: skip
    """The share of the matmul ceiling that `where[key]` images/s reach, and of the roofline: the speed that
    neither that ceiling nor the memory's bandwidth (STEP_BYTES_PER_PARAMETER a parameter a step) lets a step
    beat, whichever is lower. The ceiling is the one of the precision our loop trains in on this CPU (bf16
    where it has bf16 matrix instructions, else fp32), for the baseline too: the best this machine offers
    the model's training, whoever's loop runs it. The model is the reference's unless another one's FLOPs,
    parameters and batch size are given (the quick demo's)."""
    ceiling = report.get("ceiling", {})
    flops = flops_per_image or report.get("flops_per_image")
    params = parameters or report.get("parameters")
    precision = ceiling.get("precision", "bf16")
    gflops = ceiling.get(f"{precision}_gflops")
    if gflops and flops:
        where["achieved_gflops"] = where[key] * flops / 1e9
        where["ceiling_precision"] = precision
        where["fraction_of_ceiling"] = where["achieved_gflops"] / gflops
    if gflops and ceiling.get("memory_gbps") and flops and params:
        by_compute = gflops * 1e9 / flops
        by_memory = ceiling["memory_gbps"] * 1e9 * batch_size / (params * STEP_BYTES_PER_PARAMETER[precision])
        where["roofline_images_per_s"] = min(by_compute, by_memory)
        where["roofline_bound"] = "memory" if by_memory < by_compute else "compute"
        where["fraction_of_roofline"] = where[key] / where["roofline_images_per_s"]


def _add_products_fraction(report: dict[str, Any], where: dict[str, Any], key: str) -> None:
    """The share of the speed our step's matrix products alone allow (`measure_products`) that `where[key]`
    images/s reach: how much of the gap to the ceiling is the loop's, and how much the kernels'. Ours only:
    the reference's loop runs other products (fp32, its own layouts)."""
    seconds = report.get("ceiling", {}).get("products_seconds")
    if seconds:
        where["products_images_per_s"] = BATCH / seconds
        where["fraction_of_products"] = where[key] / where["products_images_per_s"]


# -------------------------------------------------------------------- table


def _share(speed: dict[str, Any]) -> str:
    """' (N% of the bf16 ceiling)' where `_add_ceiling_fraction` measured it, else nothing."""
    if "fraction_of_ceiling" not in speed:
        return ""
    return f" ({100 * speed['fraction_of_ceiling']:.0f}% of the {speed['ceiling_precision']} ceiling)"


def format_table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    m = report["machine"]
    simd = (
        f" ({m['vector_instructions']}{', bf16 matrix instructions' if m.get('bf16_matrix_instructions') else ''})"
        if m.get("vector_instructions")
        else ""
    )
    rows.append(("machine", f"{m['cpu']}{simd}, {m['cores']} cores, torch {m['torch']}, {m['date']}"))
    if "optimiser" in m:
        rows.append(("ours: the optimiser's pass", m["optimiser"]))
    if report.get("settings", {}).get("busy_cores"):
        rows.append(("beside (after the ceiling)", f"other programs keeping {report['settings']['busy_cores']:g} "
                     "core(s) busy"))  # fmt: skip
    if "ceiling" in report:
        c = report["ceiling"]
        emulated = (
            ""
            if c.get("bf16_native", True)
            else (f" (no bf16 matrix instructions: {c['bf16_size']} x {c['bf16_size']}, torch's plain loop)")
        )
        digits = 0 if not emulated else 1
        both = c.get("measured")
        rows.append(
            (
                "matmul ceiling fp32 / bf16",
                f"{c['fp32_gflops']:.0f} / {c['bf16_gflops']:.{digits}f} GFLOP/s{emulated}"
                + (f", the better of the start's {both['start']['fp32_gflops']:.0f} / "
                   f"{both['start']['bf16_gflops']:.{digits}f} and the end's {both['end']['fp32_gflops']:.0f} / "
                   f"{both['end']['bf16_gflops']:.{digits}f}" if both else ""),
            )
        )  # fmt: skip
        rows.append(("ours trains in", f"{c.get('precision', 'bf16')}: the shares below are of that ceiling"))
        if "memory_gbps" in c:
            rows.append(("memory bandwidth (a + b into c)", f"{c['memory_gbps']:.1f} GB/s over the model's size"
                         + (f" (start {both['start']['memory_gbps']:.1f}, end {both['end']['memory_gbps']:.1f})"
                            if both else "")))  # fmt: skip
        if c.get("core_to_core_ns"):
            end = f"; {c['core_to_core_ns_end']:.0f} ns at the end" if c.get("core_to_core_ns_end") else ""
            rows.append(("core-to-core latency, first two CPUs", f"{c['core_to_core_ns']:.0f} ns one way{end} (tens "
                         "on one die, about 100 or more across two: benchmarks.placement)"))  # fmt: skip
        ceiling = c.get(f"{c.get('precision', 'bf16')}_gflops")
        if c.get("products_seconds") and ceiling:
            share = c["products_flops"] / c["products_seconds"] / 1e9 / ceiling
            rows.append(("ours: the step's products alone", f"{1e3 * c['products_seconds']:.1f} ms a step "
                         f"({c['products_calls']} replayed) = {BATCH / c['products_seconds']:.0f} images/s, "
                         f"{100 * share:.0f}% of the ceiling"
                         + (f" (the shorter of the start's {1e3 * both['start']['products_seconds']:.1f} and the "
                            f"end's {1e3 * both['end']['products_seconds']:.1f} ms)" if both else "")))  # fmt: skip
    if "flops_per_image" in report:
        rows.append(("model FLOPs per image (fwd + bwd)", f"{report['flops_per_image'] / 1e6:.1f} MFLOP"))
    if "speed" in report:
        s = report["speed"]
        rows += [
            ("baseline: the reference's loop (fp32)", f"{s['baseline_images_per_s']:.0f} images/s"),
            ("ours (cvae.train.fit)", f"{s['ours_images_per_s']:.0f} images/s = {s['ours_seconds_per_epoch']:.0f} s/epoch"),
            ("speed-up, same run", f"{s['speedup']:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in s['speedup_per_round'])})"),
        ]  # fmt: skip
        if "fraction_of_ceiling" in s:
            rows.append((f"ours, share of the {s['ceiling_precision']} ceiling",
                         f"{100 * s['fraction_of_ceiling']:.0f}% ({s['achieved_gflops']:.0f} GFLOP/s)"))  # fmt: skip
        if "fraction_of_roofline" in s:
            rows.append(("ours, share of the roofline", f"{100 * s['fraction_of_roofline']:.0f}% of "
                         f"{s['roofline_images_per_s']:.0f} images/s ({s['roofline_bound']}-bound)"))  # fmt: skip
        if "fraction_of_products" in s:
            rows.append(("ours, share of its products' speed", f"{100 * s['fraction_of_products']:.0f}%"))
        if "fraction_of_roofline" in s.get("baseline", {}):
            b = s["baseline"]
            rows.append((f"baseline, share of the {b['ceiling_precision']} ceiling / roofline",
                         f"{100 * b['fraction_of_ceiling']:.0f}% / {100 * b['fraction_of_roofline']:.0f}%"))  # fmt: skip
        rows.append(("peak RSS baseline / ours", f"{s['baseline_peak_rss_mb']:.0f} / {s['ours_peak_rss_mb']:.0f} MB"))
    if "epoch" in report:
        e = report["epoch"]
        b, o = e["baseline"], e["ours"]
        rows += [
            ("one epoch, baseline fp32", f"{b['epoch_seconds']:.0f} s, test -ELBO {b['test']['nelbo']:.2f} nats"),
            ("one epoch, ours", f"{o['epoch_seconds']:.0f} s ({o['epoch_seconds_with_eval']:.0f} s with test eval), "
                                f"test -ELBO {o['test']['nelbo']:.2f} nats"),
            ("one epoch: speed-up, -ELBO ours - fp32", f"{e['speedup']:.2f}x, {e['nelbo_difference']:+.2f} nats"),
            *[(f"one epoch, {who}: share of the {r['ceiling_precision']} ceiling / roofline",
               f"{100 * r['fraction_of_ceiling']:.0f}% / {100 * r['fraction_of_roofline']:.0f}%")
              for who, r in (("ours", o), ("baseline", b)) if "fraction_of_roofline" in r],
        ]  # fmt: skip
        if "fraction_of_products" in o:
            rows.append(("one epoch, ours: share of its products' speed", f"{100 * o['fraction_of_products']:.0f}%"))
        rows.append(("peak RSS, full-epoch run (ours)", f"{o['peak_rss_mb']:.0f} MB"))
    for key, d in report.get("processes", {}).items():
        rows.append((f"{key}: 2 processes (torchrun) / 1", f"{d['speedup']:.2f}x ({d['two_images_per_s']:.0f} / "
                     f"{d['one_images_per_s']:.0f} images/s; rounds {', '.join(f'{r:.2f}' for r in d['speedup_per_round'])})"))  # fmt: skip
    for key, d in report.get("demo", {}).items():
        refined = (f" ({d['test_nelbo_refined']:.2f} with q refined by {d['refine_steps']} steps)"
                   if d.get("test_nelbo_refined") is not None else "")  # fmt: skip
        first = f", first pictures after {d['first_pictures_s']:.1f} s" if d.get("first_pictures_s") else ""
        before, after = d.get("core_to_core_ns") or (None, None)
        if before and after:
            first += f", core-to-core {before:.0f} / {after:.0f} ns before / after"
        rows.append((f"quick demo {key.replace('z', 'z=')}", f"test -ELBO {d['test_nelbo']:.2f} nats{refined} after "
                     f"{d['epochs']} epochs, {d['train_seconds']:.0f} s training, {d['seconds_with_loading']:.0f} s "
                     f"in all{first}"))  # fmt: skip
        if "speedup" in d:
            b = d["baseline"]
            rows.append((f"quick demo {key.replace('z', 'z=')}: its steps", f"ours {d['training_images_per_s']:.0f} "
                         f"images/s{_share(d)}, the reference's loop on its model {b['images_per_s']:.0f}{_share(b)}: "
                         f"{d['speedup']:.2f}x; its {d['epochs']} epochs' steps in the reference's loop: "
                         f"{d['epochs'] * d['train_images'] / b['images_per_s']:.0f} s"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# ------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    p.add_argument("--only", default=None, help=f"comma-separated parts: {','.join(PARTS)} [{','.join(DEFAULT_PARTS)}]")
    p.add_argument("--epoch", action="store_true", help="also train one full epoch each (adds about 5 minutes)")
    p.add_argument("--batches", type=int, default=60, help="timed batches per speed round [60]")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first [5]")
    p.add_argument("--rounds", type=int, default=3, help="baseline/ours alternations [3]")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the full report here")
    p.add_argument("--busy", type=float, default=0, metavar="N",
                   help="measure all but the ceiling beside programs that keep N cores busy (0.5: one, half the "
                        "time) [0]")  # fmt: skip
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help=f"cpu: the parts above; cuda: the GPU parts ({','.join(CUDA_PARTS)}), --only picks [cpu]",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.device == "cuda":
        return _cli_cuda(args, argv)
    parts = tuple(DEFAULT_PARTS if args.only is None else (p.strip() for p in args.only.split(",") if p.strip()))
    if args.epoch and "epoch" not in parts:
        parts += ("epoch",)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if min(args.batches, args.rounds) < 1 or args.warmup < 1 or not 0 <= args.busy <= MAX_BUSY_CORES:
        print(f"error: --batches and --rounds must be positive, --warmup at least 1, --busy from 0 to {MAX_BUSY_CORES}",
              file=sys.stderr)  # fmt: skip
        return 2
    report = bench(parts, batches=args.batches, warmup=args.warmup, rounds=args.rounds, busy=args.busy)
    return _publish(report, format_table, args, argv)


def _cli_cuda(args: argparse.Namespace, argv: list[str] | None) -> int:
    import torch

    parts = tuple(CUDA_PARTS if args.only is None else (p.strip() for p in args.only.split(",") if p.strip()))
    unknown = sorted(set(parts) - set(CUDA_PARTS))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; with --device cuda choose from {', '.join(CUDA_PARTS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if not torch.cuda.is_available():
        print("error: --device cuda was asked for, but no CUDA GPU is available", file=sys.stderr)
        return 2
    report = bench_cuda(parts)
    return _publish(report, format_cuda_table, args, argv)


def _publish(report: dict[str, Any], table: Any, args: argparse.Namespace, argv: list[str] | None) -> int:
    """The report with the command that made it: a table, then the JSON (also to --json)."""
    report["command"] = "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
