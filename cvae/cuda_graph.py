"""A whole training step as one CUDA graph: forward, backward and Adam in one launch.

At batch 64 an eager step on a GPU is launch-bound: a few hundred kernel
launches, about 5 ms of host work, for a step the GPU finishes in well under
1 ms. Captured once into a `torch.cuda.CUDAGraph`, the step is one launch:

- static input buffers; each step gathers its batch into them by index
  (`torch.index_select(..., out=...)`), so the graph always reads the same memory;
- fused Adam with `capturable=True` and the learning rate as a device tensor,
  so the cosine and plateau schedules change it in place without a recapture;
- the reparameterisation noise comes from the default CUDA generator, which
  PyTorch advances on every replay, and dynamic binarization from a generator
  registered with the graph and reseeded each epoch from (seed, epoch), so a
  resumed run draws what an uninterrupted one would (the default generator's
  state is in the checkpoint as before);
- autocast with `cache_enabled=False` (a cached cast would be a tensor made
  during capture and freed after it);
- the running sums and the logged batch losses stay on the device and are read
  in chunks (`MetricLog`): no host synchronisation per step;
- the last, partial batch runs eagerly on the same model and optimizer;
- BatchNorm's running statistics are updated in place by the captured kernels.

Safe by construction: `prepare_graph_step` runs two eager steps, then the same
two steps through the graph, from one saved state, and keeps the graph only if
both agree (`agreement`); otherwise, or if capture fails, it restores the state
and returns a one-line warning, and the caller trains eagerly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

import torch
from torch import nn

from cvae.config import CUDA_GRAPH_MODES
from cvae.errors import ConfigError, CVAEError
from cvae.model import CVAE, term_names

FLUSH_EVERY_S = 1.0  # read the logged batch losses back at least this often
LOG_CHUNK = 256  # ... or after this many logged batches
STATUS_EVERY_S = 1.0  # rewrite status.json at most this often, as the eager loop
WARMUP_STEPS = 3  # eager steps on a side stream before capture: lazy initialisations happen outside it
# graph vs eager loss of the same step, relative, by autocast dtype
LOSS_RTOL: dict[torch.dtype | None, float] = {None: 1e-3, torch.bfloat16: 2e-2}
UPDATE_RTOL = 0.1  # |graph's weights - eager's| / |eager's update| after the check's steps


# ------------------------------------------------------------------ option


def use_cuda_graph(option: str, device: torch.device) -> bool:
    """`--cuda-graph auto|on|off`: auto means on for CUDA devices. `on` elsewhere is an error."""
    if option not in CUDA_GRAPH_MODES:
        raise ConfigError(f"cuda_graph must be one of {', '.join(CUDA_GRAPH_MODES)}, got {option!r}")
    if option == "on" and device.type != "cuda":
        raise ConfigError(f"--cuda-graph on needs a CUDA device, but training runs on {device.type}")
    return option != "off" and device.type == "cuda"


# ------------------------------------------------------------ decision


def agreement(
    eager_losses: Sequence[float], graph_losses: Sequence[float], update_difference: float, *, loss_rtol: float
) -> str | None:
    """None if the graph's steps match the eager steps; else why not, in a few words.

    `update_difference` is |graph weights - eager weights| / |eager weights - start| after the same steps.
    """
    if len(eager_losses) != len(graph_losses) or not eager_losses:
        return "the check ran a different number of steps"
    for i, (e, g) in enumerate(zip(eager_losses, graph_losses, strict=True)):
        if not (math.isfinite(e) and math.isfinite(g)):
            return f"step {i + 1}'s loss is not finite (eager {e}, graph {g})"
        if abs(g - e) > loss_rtol * max(1.0, abs(e)):
            return f"step {i + 1}'s loss differs (eager {e:.4f}, graph {g:.4f})"
    if not math.isfinite(update_difference) or update_difference > UPDATE_RTOL:
        return f"the weights after the check differ by {update_difference:.3g} of the update"
    return None


# -------------------------------------------------------------- metrics


class MetricLog:
    """Logged batches' (loss, recon, kl) kept on the device; read back in chunks, one sync per chunk.

    `record` copies the step's values into a device buffer (a kernel, no sync)
    and says whether a read is due: the buffer is full or `every_s` seconds
    passed since the last one. `flush` returns the rows as floats.
    """

    def __init__(
        self, device: torch.device, *, chunk: int = LOG_CHUNK, every_s: float = FLUSH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.buffer = torch.zeros(chunk, 3, dtype=torch.float32, device=device)  # (chunk, [loss, recon, kl])
        self.batches: list[int] = []
        self.every_s = every_s
        self.clock = clock
        self.last_read = clock()

    def record(self, batch: int, values: torch.Tensor) -> bool:
        self.buffer[len(self.batches)].copy_(values)
        self.batches.append(batch)
        return len(self.batches) == len(self.buffer) or self.clock() - self.last_read >= self.every_s

    def flush(self) -> list[tuple[int, float, float, float]]:
        """(batch, loss, recon, kl) for each batch recorded since the last flush."""
        if not self.batches:
            return []
        rows = self.buffer[: len(self.batches)].tolist()  # the one host synchronisation
        out = [(b, *row) for b, row in zip(self.batches, rows, strict=True)]
        self.batches = []
        self.last_read = self.clock()
        return out


# --------------------------------------------------------- checkpoints


def portable_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state_dict as an eager run saves it: float learning rates, capturable off, and the
    parameters' states in their order (a step that updates some parameters apart, as cvae.runtime.HalfWeights
    does, starts their states after the others').

    So a checkpoint from a graph run resumes anywhere (a CPU, or `--cuda-graph off`).
    """
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if torch.is_tensor(group.get("lr")):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
        groups.append(group)
    return {**state, "state": dict(sorted(state["state"].items())), "param_groups": groups}


def portable_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """A scheduler state_dict with its remembered learning rates as floats."""
    if "_last_lr" not in state:
        return state
    return {**state, "_last_lr": [float(v) for v in state["_last_lr"]]}


def learning_rate(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    """In place where the rate is a tensor: a captured optimizer keeps reading the same memory."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


# ---------------------------------------------------------------- state


class _Snapshot:
    """Copies of every tensor a training step changes, to put back in place (same memory)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, generators: Sequence[torch.Generator]):
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        tensors += [g["lr"] for g in optimizer.param_groups if torch.is_tensor(g["lr"])]
        self.pairs = [(t, t.detach().clone()) for t in tensors]
        self.generators = [(g, g.get_state()) for g in generators]

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, copy in self.pairs:
            tensor.copy_(copy)
        for generator, state in self.generators:
            generator.set_state(state)


def _ensure_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments exist before capture (it creates them lazily), equal to a fresh optimizer's.

    One step with zero gradients creates them: the moments stay 0 and the
    update is 0 / (0 + eps) = 0, so the weights do not move; the step count
    goes back to 0.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if all(optimizer.state.get(p) for p in params):
        return
    grads = [p.grad for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad
        optimizer.state[p]["step"].zero_()


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def binarize_seed(seed: int, epoch: int) -> int:
    """The dynamic-binarization generator's seed for an epoch: a function of (seed, epoch) only."""
    return (seed * 100_003 + epoch) * 2 + 1  # not the eager loop's seed, whose generator also shuffles


# ------------------------------------------------------------ the step


class _Stop(Protocol):
    requested: bool


class _Callback(Protocol):
    def on_batch(self, record: dict[str, Any]) -> None: ...


class _StatusWriter(Protocol):
    def write_status(self, **fields: Any) -> None: ...


class GraphStep:
    """One training step on static buffers, captured as a CUDA graph (or run eagerly where not captured)."""

    def __init__(
        self, model: CVAE, optimizer: torch.optim.Optimizer, *, train_x: torch.Tensor, train_y: torch.Tensor,
        batch: int, amp_dtype: torch.dtype | None, dynamic: bool,
    ) -> None:  # fmt: skip
        self.model, self.optimizer = model, optimizer
        self.train_x, self.train_y = train_x, train_y
        self.batch = batch
        self.amp_dtype = amp_dtype
        self.device = train_x.device
        self.static_x = torch.empty((batch, *train_x.shape[1:]), dtype=train_x.dtype, device=self.device)
        self.static_y = torch.empty(batch, dtype=train_y.dtype, device=self.device)
        # the model's named terms (nelbo, recon, kl, ...) summed over the epoch
        self.sums = torch.zeros(len(term_names(model.config)), dtype=torch.float64, device=self.device)
        self.last = torch.zeros(3, dtype=torch.float32, device=self.device)  # the step's loss, recon, kl means
        self.bin_gen = torch.Generator(device=self.device) if dynamic else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.setup_seconds = 0.0  # capture and check, before the first epoch
        self._last_status = 0.0

    # -- one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The eager loop's step, plus the running sums and the step's values kept on the device."""
        if self.bin_gen is not None:
            x = torch.bernoulli(x, generator=self.bin_gen)
        with self._autocast():
            terms = self.model.objective(x, y)
        loss = terms.loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.sums += torch.stack([t.sum() for t in terms.terms().values()])
            self.last.copy_(torch.stack([terms.nelbo.mean(), terms.recon.mean(), terms.kl.mean()]))

    def load(self, idx: torch.Tensor) -> None:
        """Gather a full batch into the static buffers: two kernels, no allocation, no sync."""
        torch.index_select(self.train_x, 0, idx, out=self.static_x)
        torch.index_select(self.train_y, 0, idx, out=self.static_y)

    def step(self, idx: torch.Tensor) -> None:
        """Train on the images `idx`: a graph replay for a full batch, an eager step otherwise."""
        if len(idx) == self.batch:
            self.load(idx)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._train_step(self.static_x, self.static_y)
        else:
            self._train_step(self.train_x.index_select(0, idx), self.train_y.index_select(0, idx))

    def capture(self) -> None:
        """Warm up on a side stream, then capture one step on the static buffers (changes the weights)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self._train_step(self.static_x, self.static_y)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self.bin_gen is not None:
            graph.register_generator_state(self.bin_gen)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self._train_step(self.static_x, self.static_y)
        self.graph = graph

    # -- one epoch

    def run_epoch(
        self, *, epoch: int, seed: int, order: torch.Tensor, batches: int, before_batch: Callable[[int], None] | None,
        print_every: int, run: _StatusWriter, batch_log: IO[str], callbacks: Sequence[_Callback], t_run: float,
        t_epoch: float, stop: _Stop,
    ) -> tuple[torch.Tensor, int]:  # fmt: skip
        """The eager loop's epoch: (sums of nelbo, recon, kl over the images seen, images seen).

        `before_batch(b)` sets what changes per batch (the learning rate, the KL's weight) in the memory the
        graph reads. Batch records are written and passed to the callbacks when the log is
        read back (every `FLUSH_EVERY_S` seconds, `LOG_CHUNK` logged batches,
        and at the end), each with the time it was read.
        """
        self.sums.zero_()
        if self.bin_gen is not None:
            self.bin_gen.manual_seed(binarize_seed(seed, epoch))
        log = MetricLog(self.device)
        seen = 0
        for b in range(batches):
            if before_batch is not None:
                before_batch(b)
            idx = order[b * self.batch : (b + 1) * self.batch]
            self.step(idx)
            seen += len(idx)
            logged = (b + 1) % print_every == 0 or b + 1 == batches  # the eager loop's choice
            due = log.record(b + 1, self.last) if logged else False
            stopping = stop.requested
            if due or stopping or b + 1 == batches:
                self._emit(log.flush(), epoch, batches, run, batch_log, callbacks, t_run, t_epoch)
            if stopping:
                break
        return self.sums.clone(), seen

    def _emit(
        self, rows: list[tuple[int, float, float, float]], epoch: int, batches: int, run: _StatusWriter,
        batch_log: IO[str], callbacks: Sequence[_Callback], t_run: float, t_epoch: float,
    ) -> None:  # fmt: skip
        now = time.time()
        lines = []
        try:
            for b, loss, recon, kl in rows:
                if not math.isfinite(loss):
                    raise CVAEError(
                        f"the loss became {loss} at epoch {epoch}, batch {b}: lower the learning rate (-lr)"
                    )
                record = dict(epoch=epoch, batch=b, step=(epoch - 1) * batches + b, loss=loss, recon=recon, kl=kl,
                              time=now - t_run)  # fmt: skip
                lines.append(json.dumps(record) + "\n")
                for cb in callbacks:
                    cb.on_batch(record)
        finally:
            batch_log.write("".join(lines))
        if rows and now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            run.write_status(epoch=epoch - 1, batch=rows[-1][0], epoch_started=t_epoch)


# ---------------------------------------------------------------- setup


def _trial(step: GraphStep, batches: Sequence[torch.Tensor]) -> tuple[list[float], torch.Tensor]:
    """Run `batches` through `step`: each step's loss and the weights after, flat."""
    losses = []
    for idx in batches:
        step.step(idx)
        losses.append(step.last[0].clone())
    weights = torch.cat([p.detach().flatten().float() for p in step.model.parameters()])
    return [float(v) for v in losses], weights


def prepare_graph_step(
    model: CVAE, optimizer: torch.optim.Optimizer, *, option: str, train_x: torch.Tensor, train_y: torch.Tensor,
    batch: int, amp_dtype: torch.dtype | None, dynamic: bool,
) -> tuple[GraphStep | None, str | None]:  # fmt: skip
    """(a captured, checked step, None), or (None, None) where graphs are off, or (None, warning).

    Leaves the model, the optimizer and the RNG as it found them (the optimizer
    in capturable form with tensor learning rates when a step is returned).
    """
    device = train_x.device
    if not use_cuda_graph(option, device):
        return None, None
    t_start = time.perf_counter()
    groups = [(g["lr"], g.get("capturable", False)) for g in optimizer.param_groups]
    snapshot: _Snapshot | None = None
    try:
        model.train()
        for group in optimizer.param_groups:
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        _ensure_optimizer_state(optimizer)
        step = GraphStep(model, optimizer, train_x=train_x, train_y=train_y, batch=batch, amp_dtype=amp_dtype,
                         dynamic=dynamic)  # fmt: skip
        generators = [_default_generator(device)] + ([step.bin_gen] if step.bin_gen is not None else [])
        if step.bin_gen is not None:
            step.bin_gen.manual_seed(0)
        snapshot = _Snapshot(model, optimizer, generators)
        n = len(train_x)
        check = [torch.arange(i * batch, (i + 1) * batch, device=device) % n for i in range(2)]
        start = torch.cat([p.detach().flatten().float() for p in model.parameters()])
        eager_losses, eager_weights = _trial(step, check)
        snapshot.restore()
        step.load(check[0])
        step.capture()
        snapshot.restore()
        graph_losses, graph_weights = _trial(step, check)
        snapshot.restore()
        update = float((eager_weights - start).norm())
        difference = float((graph_weights - eager_weights).norm()) / max(update, 1e-30)
        problem = agreement(eager_losses, graph_losses, difference, loss_rtol=LOSS_RTOL.get(amp_dtype, 2e-2))
        if problem is not None:
            raise _Disagreement(problem)
        step.sums.zero_()
        step.setup_seconds = time.perf_counter() - t_start
        return step, None
    except Exception as err:  # any failure to capture or to agree: train eagerly, as before
        reason = str(err) if isinstance(err, _Disagreement) else f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        if snapshot is not None:
            with contextlib.suppress(Exception):
                snapshot.restore()
        for group, (lr, capturable) in zip(optimizer.param_groups, groups, strict=True):
            group["lr"] = float(lr)
            group["capturable"] = capturable
        reason = " ".join(reason.split())[:300]
        return None, f"CUDA graph off, training eagerly: {reason}"


class _Disagreement(Exception):
    pass
