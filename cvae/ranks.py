"""Which process of a launch this is: its rank, the world size and its place on its node, from the environment.

    torchrun --nproc_per_node=2 -m cvae.train ...          # RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE
    srun --ntasks-per-node=4 python -m cvae.train ...      # SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID

No torch here: the command line asks before torch loads, so that a launch's other ranks stay silent about a bad
flag that rank 0 reports (every rank parses the same flags). cvae.distributed joins the ranks together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cvae.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a launch; a plain `python -m cvae.train` is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # which of its node's processes: its GPU is cuda:local_rank
    local_world: int = 1  # processes sharing this one's cores and GPUs (srun gives each task its own)

    @property
    def active(self) -> bool:
        """Several processes train one run."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's part of a batch of n images: consecutive, the parts' sizes differing by at most one
        (the whole batch on one process)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)


ONE = Ranks()


def _whole(env: Mapping[str, str], name: str) -> int:
    try:
        value = int(env[name])
    except ValueError:
        raise ConfigError(f"the environment's {name} must be a whole number, got {env[name]!r}") from None
    if value < 0:
        raise ConfigError(f"the environment's {name} must be a whole number, got {env[name]!r}")
    return value


def launched(env: Mapping[str, str] | None = None) -> Ranks:
    """This process's ranks as torchrun or srun set them; `ONE` for a process started on its own.

    torchrun (and `python -m torch.distributed.run`) sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE,
    and MASTER_ADDR and MASTER_PORT for the rendezvous. srun sets SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID:
    they count only where the batch script exported MASTER_ADDR (and MASTER_PORT), since a plain `srun -n 4
    python -m cvae.train` has always meant four runs of their own. srun gives each task its own cores
    (--cpus-per-task) and GPU (--gpus-per-task), so there each task shares them with nobody.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        world = _whole(env, "WORLD_SIZE")
        if world <= 1:
            return ONE
        ranks = Ranks(rank=_whole(env, "RANK") if "RANK" in env else 0, world=world,
                      local_rank=_whole(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                      local_world=_whole(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1)  # fmt: skip
    elif "SLURM_NTASKS" in env and "MASTER_ADDR" in env and _whole(env, "SLURM_NTASKS") > 1:
        ranks = Ranks(rank=_whole(env, "SLURM_PROCID"), world=_whole(env, "SLURM_NTASKS"),
                      local_rank=_whole(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0)  # fmt: skip
    else:
        return ONE
    if ranks.rank >= ranks.world or ranks.local_world < 1 or ranks.local_rank >= max(ranks.local_world, ranks.world):
        raise ConfigError(f"the environment's ranks do not fit together: rank {ranks.rank} of {ranks.world}, local "
                          f"rank {ranks.local_rank} of {ranks.local_world}")  # fmt: skip
    return ranks
