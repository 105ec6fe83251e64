"""The ELBO's ledger: where the KL goes, dimension by dimension, and whether the posterior has collapsed.

The KL term of the negative ELBO is a sum over the latent dimensions; how it is shared out is the part of a
VAE that a loss curve hides. Per test set (every epoch in metrics.jsonl, and `evaluate --json`):

- `kl_dims`: the mean KL(q(z_j | x, c) || p(z_j | c)) of each dimension j, in nats; they sum to the KL.
- `active_units`: the dimensions whose posterior mean varies over the data, Var_x(E_q[z_j]) > 0.01
  (Burda, Grosse & Salakhutdinov 2016, "active units"): an inactive one says the same thing for every image.
- `alarm`: a plain sentence when the posterior has collapsed (the decoder ignores z) or when one dimension
  carries nearly all of the KL; None otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from cvae.runs import number_list

ACTIVE_VARIANCE = 0.01  # Burda et al. 2016: a unit is active when Var_x(E_q[z_j]) exceeds this
COLLAPSED_KL = 0.5  # nats per image: below it, z tells the decoder almost nothing about the image
DOMINANT_SHARE = 0.9  # one dimension's share of the KL above which the others hardly matter


def ledger(kl_dims: torch.Tensor, mu: torch.Tensor) -> dict[str, Any]:
    """The ledger of a test set from its per-image KL of each dimension and posterior means, both (N, Z)."""
    if len(mu) < 2:
        return {}
    variance = mu.double().var(0)
    return {
        "kl_dims": [float(v) for v in kl_dims.double().mean(0)],
        "active_units": int((variance > ACTIVE_VARIANCE).sum()),
        "mu_variance": [float(v) for v in variance],  # which units are the active ones
    }


def valid_dims(value: Any) -> list[float] | None:
    """A ledger's `kl_dims` or `mu_variance` read from a run file, or None where it is missing or is not a list
    of finite numbers."""
    return number_list(value)


def alarm(kl_dims: list[float] | None, active_units: Any) -> str | None:
    """A sentence for a collapsed or lopsided posterior, from a ledger's two figures; None when all is well."""
    if kl_dims is None:
        return None
    total = sum(kl_dims)
    dims = len(kl_dims)
    active = active_units if isinstance(active_units, int) and not isinstance(active_units, bool) else None
    if total < COLLAPSED_KL or active == 0:
        return (f"Posterior collapse: the KL is {total:.2f} nats and {active if active is not None else '?'} of "
                f"{dims} latent dimensions are active, so the decoder ignores z and draws every image alike.")  # fmt: skip
    top = max(range(dims), key=lambda j: kl_dims[j])
    if dims > 1 and kl_dims[top] >= DOMINANT_SHARE * total:
        return (
            f"One dimension carries the code: z{top + 1} holds {kl_dims[top] / total:.0%} of the KL "
            f"({kl_dims[top]:.1f} of {total:.1f} nats); the other {dims - 1} hardly matter."
        )
    return None
