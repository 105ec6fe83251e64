"""One run on several processes (DistributedDataParallel), for the one training loop.

    torchrun --nproc_per_node=2 -m cvae.train --quick-demo

Where `cvae.ranks.launched()` says this process is one of several (torchrun or srun set the environment),
`cvae.training.train_model` joins them (`process_group`) and `cvae.loop.fit` trains one run with them all:

- The batch size is the global batch. Every rank draws the epoch's permutation from the same seed and trains
  on its share of each batch (`Ranks.share`); DDP averages the gradients, so each step is one process's step
  on the whole batch, up to the order of float sums and the z noise, which each rank draws from a seed of its
  own (`noise_seed`).
- Batch norm normalises over the global batch: SyncBatchNorm on CUDA; on a CPU, where PyTorch refuses
  SyncBatchNorm, `AllReduceBatchNorm` all-reduces each layer's sums (`sync_batchnorm`).
- Rank 0 alone writes the run folder. Whatever can end the loop (a stop signal on any rank, a non-finite
  loss, rank 0 failing to write) is decided together by one all-reduce per step (`agree`), so no rank is
  left waiting in a collective the others never reach; `together` does the same for the set-up, where an
  error on any rank ends them all and rank 0 says it once.

Gloo carries CPU tensors and NCCL CUDA ones (one group, "cpu:gloo,cuda:nccl", where there is a GPU); each
rank trains on cuda:LOCAL_RANK. With one process nothing here runs and the loop is what it always was.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from cvae.errors import ConfigError, CVAEError, Elsewhere
from cvae.model import CVAE, Objective
from cvae.ranks import ONE, Ranks, launched
from cvae.runtime import select_device

__all__ = ["AllReduceBatchNorm", "Elsewhere", "Ranks", "Verdict", "agree", "broadcast", "check_batch", "current",
           "data_parallel", "noise_seed", "process_group", "rank_device", "sync_batchnorm", "together"]  # fmt: skip


# ------------------------------------------------------------------ joining


def _backend() -> str:
    # One group for both: the loop's tensors go by NCCL on GPUs, the set-up's small objects by gloo on the CPU.
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _join(ranks: Ranks) -> None:
    try:  # MASTER_ADDR and MASTER_PORT come from torchrun (or the batch script of an srun)
        dist.init_process_group(_backend(), init_method="env://", rank=ranks.rank, world_size=ranks.world)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"cannot join the other {ranks.world - 1} training processes: "
                          f"{str(err).splitlines()[0][:200]}") from None  # fmt: skip


@contextlib.contextmanager
def process_group(ranks: Ranks) -> Iterator[None]:
    """The block runs with this process joined to its launch's others (left after); nothing for one process or
    where a group is already joined."""
    if not ranks.active or dist.is_initialized():
        yield
        return
    _join(ranks)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    # The ranks leave together: a rank that tears its sockets down while another is still in gloo's last
    # exchange can make that one's transport fail (an abort, not an exception) after the run is written.
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def current() -> Ranks:
    """The ranks this process trains with: the joined group's, or the launch's (joined now, for the process's
    life, when a caller of `cvae.loop.fit` has not), or one process."""
    if not dist.is_initialized():
        ranks = launched()
        if not ranks.active:
            return ONE
        _join(ranks)
        atexit.register(dist.destroy_process_group)
    world = dist.get_world_size()
    if world <= 1:
        return ONE
    env = launched()
    local = (env.local_rank, env.local_world) if (env.rank, env.world) == (dist.get_rank(), world) else (0, 1)
    return Ranks(rank=dist.get_rank(), world=world, local_rank=local[0], local_world=local[1])


# ------------------------------------------------------------------ what the ranks train on


def check_batch(batch_size: int, ranks: Ranks) -> None:
    """The batch size is the global batch: every rank takes an equal share of it."""
    if ranks.active and batch_size % ranks.world:
        raise ConfigError(f"batch_size {batch_size} must be divisible by the {ranks.world} processes training this "
                          "run: it is the global batch, and each process takes an equal share of it")  # fmt: skip


def rank_device(option: str, ranks: Ranks) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK where CUDA trains (--device auto or cuda), else the CPU.

    The index is taken modulo the GPUs this process sees, so srun's --gpus-per-task=1 (which shows each task
    its own GPU alone) puts each task on its cuda:0."""
    if option == "mps" or option.startswith("cuda:"):
        raise ConfigError(f"--device {option} cannot train a run on several processes: each takes cuda:LOCAL_RANK "
                          "(--device cuda or auto), or the CPU (--device cpu)")  # fmt: skip
    device = select_device(option)
    if device.type == "mps":  # auto on a Mac: DDP has no MPS backend
        return torch.device("cpu")
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if ranks.local_world > count:
        raise ConfigError(f"{ranks.local_world} processes on this node, but it has {count} GPU(s): one process per "
                          "GPU (torchrun --nproc_per_node)")  # fmt: skip
    return torch.device("cuda", ranks.local_rank % count)


def noise_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a rank's z noise in an epoch: its own, and a function of (seed, epoch, rank) alone, so a
    resumed run's ranks draw what they would have drawn had it never stopped. The permutation's generator
    is seeded with seed * 100_003 + epoch (below 2^48); the rank's number sits above those bits."""
    return seed * 100_003 + epoch + ((rank + 1) << 48)


class _SumOverRanks(torch.autograd.Function):
    """A tensor summed over the ranks, with its gradient: each rank's sum depends on every rank's tensor, so the
    gradient of a rank's input is the sum of every rank's output gradient. (torch.distributed.nn.functional's
    all_reduce does this, but is deprecated for a private module's.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """Batch norm over the global batch: each rank's per-channel sum, sum of squares and count all-reduced.

    PyTorch's SyncBatchNorm refuses CPU tensors ("SyncBatchNorm layers only work with GPU modules"). Without
    it each rank would normalise over its own share of the batch; with it a step is one process's step up to
    rounding. The all-reduce carries gradients (`_SumOverRanks`), so the backward pass is
    that of the whole batch's normalisation. Sums are in float64: E[x^2] - E[x]^2 cancels badly in float32.
    In eval mode, or outside a process group, it is BatchNorm: the running statistics, the same state_dict.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        xf = x.float()  # a bf16 activation under autocast: its square in bf16 would keep 8 bits
        count = torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)
        local = torch.cat([xf.sum(dims, dtype=torch.float64), (xf * xf).sum(dims, dtype=torch.float64), count])
        total = _SumOverRanks.apply(local)  # (2C + 1,), summed over the ranks
        n = total[2 * c]
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean * mean  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        shape = (1, c) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps).float()
        y = (xf - mean.float().view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _to_all_reduce(bn: _BatchNorm) -> AllReduceBatchNorm:
    """The same layer as an AllReduceBatchNorm: its very parameters and buffers (an optimizer over them stays valid)."""
    new = AllReduceBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var, new.num_batches_tracked = bn.running_mean, bn.running_var, \
            bn.num_batches_tracked  # fmt: skip
    new.train(bn.training)
    return new


def _replace_batchnorm(module: nn.Module, make: Callable[[_BatchNorm], nn.Module]) -> None:
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            setattr(module, name, make(child))
        else:
            _replace_batchnorm(child, make)


def sync_batchnorm(model: CVAE, device: torch.device) -> CVAE:
    """`model` with every batch norm normalising over the global batch (SyncBatchNorm on CUDA, AllReduceBatchNorm
    elsewhere), in place; the parameters, buffers and state_dict keys stay those of the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _replace_batchnorm(model, _to_all_reduce)
    return model


class _ObjectiveModule(nn.Module):
    """The model's objective as a module's forward: DDP prepares each step's gradient all-reduce in forward."""

    def __init__(self, model: CVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> Objective:
        return self.model.objective(x, labels)


def data_parallel(model: CVAE, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], Objective]:
    """`model.objective`, with each step's gradients averaged over the ranks (DistributedDataParallel).

    DDP starts from rank 0's weights and buffers. Buffers are not synced again before each step: the running
    statistics of the synchronised batch norms are the same on every rank already."""
    return DistributedDataParallel(_ObjectiveModule(model), device_ids=[device.index] if device.type == "cuda"
                                   else None, forward_sync_buffers=False)  # fmt: skip


# ------------------------------------------------------------------ deciding together


class Verdict(NamedTuple):
    """What every rank decided together after a step."""

    signum: int | None  # the signal that stops every rank (SIGTERM before SIGINT); None: go on
    failed: bool  # some rank failed (rank 0 could not write the run folder): every rank ends
    values: list[float]  # the values handed in, summed over the ranks


def _lost(err: BaseException) -> CVAEError:
    return CVAEError(f"lost the other training processes ({str(err).splitlines()[0][:200] if str(err) else 'gone'}): "
                     "stopped")  # fmt: skip


def agree(device: torch.device, *, signum: int | None, failed: bool, values: torch.Tensor | None = None) -> Verdict:
    """One all-reduce: this rank's stop signal and failure, and `values` (float64, summed over the ranks)."""
    flags = torch.tensor([signum == signal.SIGINT, signum == signal.SIGTERM, failed], dtype=torch.float64)
    both = flags.to(device) if values is None else torch.cat([flags.to(device), values.double().flatten()])
    try:
        dist.all_reduce(both)
    except RuntimeError as err:  # gloo and NCCL say a peer is gone so (DistError is one)
        raise _lost(err) from None
    out = both.tolist()
    stop = signal.SIGTERM if out[1] else signal.SIGINT if out[0] else None
    return Verdict(int(stop) if stop else None, bool(out[2]), out[3:])


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (a small object: a path, a message)."""
    if not ranks.active:
        return value
    box = [value if ranks.main else None]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as err:  # gloo and NCCL say a peer is gone so (DistError is one)
        raise _lost(err) from None
    return box[0]


@contextlib.contextmanager
def together(ranks: Ranks) -> Iterator[None]:
    """A stretch that every rank runs to its end: an error on any rank ends them all there.

    The failing rank raises its own error; the others raise `Elsewhere` with the first failing rank's words,
    so rank 0 reports it (once) whichever rank it was. Nothing for one process.
    """
    if not ranks.active:
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - raised below, once every rank has reached the gather
        error = err
    said: list[Any] = [None] * ranks.world
    try:
        dist.all_gather_object(said, None if error is None else str(error) or type(error).__name__)
    except RuntimeError as err:  # gloo and NCCL say a peer is gone so (DistError is one)
        raise _lost(err) from error
    if error is not None:
        raise error
    failed = [(rank, words) for rank, words in enumerate(said) if words is not None]
    if failed:
        rank, words = failed[0]
        raise Elsewhere(f"rank {rank}: {words}")
