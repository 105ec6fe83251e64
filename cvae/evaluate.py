"""Test-set metrics in nats: the negative ELBO, split into reconstruction and KL.

The training loop's per-epoch test numbers come from `evaluate_elbo`, so a
run's metrics and `python -m cvae.evaluate` agree by construction.
"""

from __future__ import annotations

import contextlib

import torch

from cvae.model import CVAE

EVAL_SEED = 1234  # the noise of z ~ q is fixed, so the same weights give the same numbers


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_elbo(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1000,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL over (x, y), one z sample per image.

    Runs in eval mode (batch-norm running statistics) under a forked RNG with
    a fixed seed, so it neither depends on nor disturbs the training noise.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                terms = model.elbo_terms(xb, yb)
            totals += torch.stack([terms.recon.sum(), terms.kl.sum()]).double().cpu()
    model.train(was_training)
    recon, kl = (totals / max(len(x), 1)).tolist()
    return {"nelbo": recon + kl, "recon": recon, "kl": kl}
