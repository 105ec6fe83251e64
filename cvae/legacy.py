"""Run folders of earlier versions, read as today's: a key map applied when a file is read.

Nothing on disk is rewritten: an old run's config.json and checkpoints are
converted in memory each time they are read, and a resumed run writes
today's format from then on (docs/run-folder.md).

Before the one model family, digit completion (condition quadrants) had its
own networks and run format, marked `"kind": "quadrant-completion"`:

- config.json / the checkpoint's config: `model` = {quadrants, height, width,
  latent_dim, hidden, mask_channel, alpha}, `train` = {epochs, batch_size,
  learning_rate, seed, threads, data_dir, train_subset, test_subset, ...}.
  Today: a RunConfig with condition quadrants, a conditional prior and the
  baseline (the networks that run always had).
- weights: `cvae.recognition`, `cvae.prior`, `cvae.generation` and `baseline`
  map onto `encoder`, `prior_net`, `decoder` and `baseline`. The recognition
  network read [c, hidden pixels], today's encoder reads [hidden pixels, c]:
  its first weight's columns swap. The generation network's first layer was
  two maps (from c with a bias, from z without one); today's decoder has one
  map of [z, c]: the two weights are concatenated. Adam's moments are mapped
  the same way, so a resume continues the same optimisation.
- it had no learning-rate schedule: a fresh plateau schedule's state is added.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cvae.errors import CheckpointError

if TYPE_CHECKING:
    import torch

COMPLETION_KIND = "quadrant-completion"


def is_legacy(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") == COMPLETION_KIND


def upgrade_config(raw: Any) -> Any:
    """A config.json (or a checkpoint's config) in today's format; anything else is returned as it is."""
    if not is_legacy(raw):
        return raw
    model, train = raw.get("model"), raw.get("train", {})
    if not isinstance(model, dict) or not isinstance(train, dict):
        return raw  # not convertible: today's reader refuses it with its own one-line error
    hidden = model.get("hidden", [500, 500])
    info = raw.get("dataset_info") if isinstance(raw.get("dataset_info"), dict) else {}
    return {
        "data": {"dataset": "MNIST", "data_dir": train.get("data_dir") or "", "binarize": "static",
                 "train_subset": train.get("train_subset"), "test_subset": train.get("test_subset")},
        "model": {"channels": 1, "height": model.get("height", 28), "width": model.get("width", 28), "num_classes": 10,
                  "condition": "quadrants", "quadrants": model.get("quadrants", 1),
                  "mask_channel": model.get("mask_channel", False), "prior": "conditional",
                  "alpha": float(model.get("alpha", 1.0)), "baseline": True, "latent_dim": model.get("latent_dim", 32),
                  "likelihood": "bernoulli", "arch": "mlp",
                  "mlp_hidden": list(hidden) if isinstance(hidden, (list, tuple)) else hidden},
        "train": {k: train[k] for k in ("epochs", "batch_size", "learning_rate", "seed", "threads") if k in train},
        "dataset_info": {**info, "class_names": [str(d) for d in range(10)]},
        "created": raw.get("started"),
        "history": [],
        "converted_from": COMPLETION_KIND,
    }  # fmt: skip


def _weight_map(hidden: list[int], cond_width: int) -> list[tuple[str, Callable[[dict], torch.Tensor]]]:
    import torch  # here, not above: reading a run folder (the queue, the app's listing) needs no torch

    """(today's name, how to build it from the old tensors of one kind: weights or one Adam moment)."""
    n = len(hidden)
    pairs: list[tuple[str, Callable[[dict], torch.Tensor]]] = []

    def same(old: str) -> Callable[[dict], torch.Tensor]:
        return lambda t: t[old]

    for new, old in (("encoder", "cvae.recognition"), ("prior_net", "cvae.prior")):
        for i in range(n):
            for kind in ("weight", "bias"):
                pairs.append((f"{new}.net.{2 * i}.{kind}", same(f"{old}.body.{2 * i}.{kind}")))
        pairs += [(f"{new}.net.{2 * n}.weight", same(f"{old}.head.weight")),
                  (f"{new}.net.{2 * n}.bias", same(f"{old}.head.bias"))]  # fmt: skip
    first = "cvae.recognition.body.0.weight"  # old columns [c, hidden pixels] -> today's [hidden pixels, c]
    pairs[0] = ("encoder.net.0.weight", lambda t: torch.cat([t[first][:, cond_width:], t[first][:, :cond_width]], 1))
    for new, old, with_z in (("decoder", "cvae.generation", True), ("baseline", "baseline.net", False)):
        pairs.append((f"{new}.net.0.weight", (lambda o: lambda t: torch.cat([t[f"{o}.from_z.weight"],
                      t[f"{o}.from_x.weight"]], 1))(old) if with_z else same(f"{old}.from_x.weight")))  # fmt: skip
        pairs.append((f"{new}.net.0.bias", same(f"{old}.from_x.bias")))
        for i in range(1, n):
            for kind in ("weight", "bias"):
                pairs.append((f"{new}.net.{2 * i}.{kind}", same(f"{old}.body.{2 * (i - 1)}.{kind}")))
        pairs += [(f"{new}.net.{2 * n}.weight", same(f"{old}.out.weight")),
                  (f"{new}.net.{2 * n}.bias", same(f"{old}.out.bias"))]  # fmt: skip
    return pairs


def upgrade_checkpoint(payload: Any) -> Any:
    """An old completion checkpoint in today's format (weights, Adam state, schedule, config); others as they are."""
    import torch

    if not is_legacy(payload):
        return payload
    from cvae.config import RunConfig
    from cvae.errors import CVAEError
    from cvae.model import CVAE

    try:
        raw = upgrade_config(payload.get("config"))
        config = RunConfig.from_dict(raw)
        hidden = list(config.model.mlp_hidden)
        if hidden != hidden[::-1]:
            raise CheckpointError("its hidden widths are not symmetric, so its generation network has no "
                                  "counterpart today")  # fmt: skip
        pairs = _weight_map(hidden, config.model.condition_width)
        old_weights = payload["model"]
        weights = {name: build(old_weights) for name, build in pairs}
        with torch.device("meta"):
            names = [name for name, _ in CVAE(config.model).named_parameters()]
        optimizer = _upgrade_adam(payload.get("optimizer"), list(old_weights), names, dict(pairs))
    except (CVAEError, KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"an old digit-completion checkpoint that cannot be converted: "
                              f"{str(err).splitlines()[0][:160] if str(err) else type(err).__name__}") from None  # fmt: skip
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.train.learning_rate)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(adam, mode="min", patience=config.train.plateau_patience)
    scheduler = {**plateau.state_dict(), "_last_lr": [float(config.train.learning_rate)]}
    out = {k: v for k, v in payload.items() if k not in ("kind", "config", "model", "optimizer")}
    return {**out, "config": config.to_dict(), "dataset_info": raw["dataset_info"], "model": weights,
            "optimizer": optimizer, "scheduler": scheduler}  # fmt: skip


def _upgrade_adam(state: Any, old_names: list[str], new_names: list[str], build: dict) -> dict:
    """Adam's state_dict with its moments mapped as the weights are; param ids follow today's order."""
    state = copy.copy(state)
    entries = state["state"]
    old_index = {name: i for i, name in enumerate(old_names)}

    def moments(key: str) -> dict:
        return {name: entries[i][key] for name, i in old_index.items() if i in entries and key in entries[i]}

    new_state = {}
    if entries:
        avg, avg_sq = moments("exp_avg"), moments("exp_avg_sq")
        step = next(iter(entries.values()))["step"]
        for i, name in enumerate(new_names):
            new_state[i] = {"step": step, "exp_avg": build[name](avg), "exp_avg_sq": build[name](avg_sq)}
    group = {**state["param_groups"][0], "params": list(range(len(new_names)))}
    return {"state": new_state, "param_groups": [group]}
