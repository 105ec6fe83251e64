"""How a training run reports as it goes: callbacks, and a progress bar for terminals and notebooks.

The loop calls `on_batch` for every logged batch and `on_epoch` after every
epoch; it knows nothing of who listens (a console, a notebook, the app reading
the run folder).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


def format_seconds(seconds: float) -> str:
    """A duration as a person reads it: 45 s, 3 min 05 s, 1 h 20 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Callback(Protocol):
    def on_batch(self, record: dict[str, Any]) -> None: ...
    def on_epoch(self, record: dict[str, Any]) -> None: ...


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is no terminal but a progress widget shows)."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and shell.get_ipython().__class__.__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


class ConsoleProgress:
    """A progress bar within each epoch (terminal or Jupyter, via tqdm.auto); one summary line per epoch."""

    def __init__(self, batches_per_epoch: int, *, quiet: bool = False) -> None:
        self.batches = batches_per_epoch
        self.quiet = quiet
        self.bars = not quiet and (sys.stderr.isatty() or in_notebook())
        self.bar = None

    def on_batch(self, record: dict[str, Any]) -> None:
        if not self.bars:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.batches, desc=f"epoch {record['epoch']}", leave=False, unit="batch")
        self.bar.n = record["batch"]
        self.bar.set_postfix(loss=f"{record['loss']:.2f}", refresh=True)

    def on_epoch(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            print(format_epoch(record), flush=True)


def format_epoch(r: dict[str, Any]) -> str:
    return (
        f"epoch {r['epoch']:>3}  train -ELBO {r['train_nelbo']:.2f} nats  "
        f"test -ELBO {r['test_nelbo']:.2f} nats (recon {r['test_recon']:.2f} + KL {r['test_kl']:.2f})  "
        f"lr {r['lr']:.1e}  {r['seconds']:.1f}s"
        + (f"\n  test -ELBO {r['test_nelbo_refined']:.2f} nats with q refined per image by {r['refine_steps']} steps"
           if "test_nelbo_refined" in r else "")
    )  # fmt: skip
