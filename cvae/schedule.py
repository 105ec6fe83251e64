"""The learning-rate schedule: one object, stepped in one place by the loop.

- plateau (the reference): ReduceLROnPlateau on the epoch's mean training
  loss, the rate cut by 10 after `plateau_patience` epochs without improvement.
- exponential: the plateau cut, and the rate multiplied by `lr_decay` after
  every epoch. (Runs saved before the names changed called plateau
  "exponential"; with a decay of 1 the two are the same.)
- cosine: a linear warm-up over `warmup_epochs`, then half a cosine down to 0
  at the run's last epoch, set before every batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cvae.config import ModelConfig, TrainConfig


def cosine_lr(base: float, position: float, warmup: float, end: int, batches_per_epoch: int) -> float:
    """The cosine schedule's rate for the step that starts `position` epochs into the run.

    A function of the position alone, so a resumed run continues on the same
    curve; resuming with more epochs stretches the rest of the curve to the new end.
    """
    if position < warmup:
        return base * min(1.0, (position + 1 / batches_per_epoch) / warmup)
    t = min(1.0, (position - warmup) / max(end - warmup, 1e-9))
    return base * 0.5 * (1 + math.cos(math.pi * t))


class LearningRate:
    """Sets the optimizer's rate: before each batch (cosine) or after each epoch (plateau, exponential)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, *, end_epoch: int, batches: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.end_epoch = end_epoch
        self.batches = batches
        # Kept for every schedule: its state is part of the checkpoint format.
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=cfg.plateau_patience)

    @property
    def per_batch(self) -> bool:
        return self.cfg.lr_schedule == "cosine"

    @property
    def current(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):  # a CUDA graph's optimizer reads this memory: change it in place
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def rate(self, epoch: int, batch: int) -> float:
        """The per-batch schedule's rate for `batch` (0-based) of `epoch` (1-based)."""
        position = epoch - 1 + batch / self.batches
        return cosine_lr(self.cfg.learning_rate, position, self.cfg.warmup_epochs, self.end_epoch, self.batches)

    def before_batch(self, epoch: int, batch: int) -> None:
        """`batch` (0-based) of `epoch` (1-based) is about to run."""
        if self.per_batch:
            self._set(self.rate(epoch, batch))

    def after_epoch(self, train_loss: float) -> None:
        if self.per_batch:
            return
        self.plateau.step(train_loss)
        if self.cfg.lr_decay != 1:  # saved with the optimizer's state: a resume continues exactly
            self._set(self.current * self.cfg.lr_decay)

    def override(self, lr: float) -> None:
        """A resumed run given a new --learning_rate continues from it."""
        self._set(lr)

    def state_dict(self) -> dict[str, Any]:
        """The plateau scheduler's state, its remembered rates as floats (a graph's are tensors)."""
        state = self.plateau.state_dict()
        if "_last_lr" in state:
            state = {**state, "_last_lr": [float(v) for v in state["_last_lr"]]}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state)


def kl_weight_at(model: ModelConfig, epoch: int, batch: int, batches: int) -> float:
    """The KL's weight for `batch` (0-based) of `epoch` (1-based): beta, rising linearly from 0 over the
    warm-up's epochs (counted in batches, so it rises within the first epoch too)."""
    if model.kl_warmup_epochs <= 0:
        return model.kl_weight
    position = epoch - 1 + batch / max(batches, 1)
    return model.kl_weight * min(1.0, position / model.kl_warmup_epochs)
