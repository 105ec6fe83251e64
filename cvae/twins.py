"""Twin runs: a run forked into a new one that differs in one setting, and learns from the same batches.

`fork` starts the twin like any run (cvae.jobs.start: validated, owned, queued) from its parent's own options,
with exactly one of them changed: the flags the parent was started with (its launch.json), else its
config.json. The twin's folder records the parent and the change in twin.json, and its id says the change
(`<time>-MNIST-bernoulli-z10-twin-kl_weight-4`).

What makes the two comparable, epoch by epoch (cvae.loop):

- the data order: epoch e trains on `torch.randperm(N, generator seeded with seed * 100003 + e)` of the N
  training images, cut into batches of `batch_size`. A twin keeps the seed, the batch size and the training
  images (dataset, train subset, an image folder's split), so it sees the same batches in the same order;
  a change of any of them is refused (DATA_ORDER);
- the initial weights and the z noise: both come from torch's generator seeded with the seed, the model's
  initialisation first, then one draw per reparameterised z. Where the change leaves the network's shapes
  alone (the KL weight, the learning rate, the schedule, ...) the twins start from the same weights and draw
  the same noise; a change of the latent size or of the network draws other numbers, so there they differ.

A setting that changes how a run is carried out or logged, not what it learns (threads, device, ...:
cvae.names.NOT_A_DIFFERENCE) is refused too: its twin would learn the same.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from cvae import jobs
from cvae.classroom import NotAllowed, User, may_see, read_settings, run_owner
from cvae.config import BY_NAME, OPTIONS
from cvae.errors import ConfigError
from cvae.names import NOT_A_DIFFERENCE, setting_words
from cvae.runs import LAUNCH_FILE, TWIN_FILE, RunDir, is_run_id, new_run_id, read_json

# The options that decide which images each batch holds, and in which order: never a twin's change.
DATA_ORDER = ("seed", "batch_size", "dataset", "train_subset", "test_fraction", "split_seed")
# Options a twin may change: a run's own settings (data, model, training), minus the two kinds above.
SETTINGS = tuple(o.name for o in OPTIONS if o.section != "launch" and o.name not in DATA_ORDER
                 and f"{o.section}.{o.field}" not in NOT_A_DIFFERENCE)  # fmt: skip


def parent_options(run: RunDir) -> dict[str, Any]:
    """The options `run` was started with: its launch.json's flags (what the app and `cvae runs start` keep),
    else every setting in its config.json (a run trained from a shell); each value checked. A ConfigError
    when the folder holds neither in a usable form."""
    if (run.path / LAUNCH_FILE).is_file():
        options = jobs.launch_options(run)
        if options:
            return options
    raw = run.read_config()
    if not isinstance(raw, dict):
        raise ConfigError(f"run {run.id} has no usable launch.json or config.json: there is nothing to fork")
    options = {}
    for opt in OPTIONS:
        section = raw.get(opt.section)
        if opt.section == "launch" or not isinstance(section, dict) or opt.field not in section:
            continue
        options[opt.name] = opt.check(section[opt.field])  # a crafted config.json: the option's own sentence
    return options


def _named(name: object) -> str:
    """The option a user names (kl_weight, kl-weight or --kl-weight), refused in one line if it is no setting."""
    key = str(name).strip().lstrip("-").replace("-", "_")
    if key in DATA_ORDER:
        raise ConfigError(f"{key} decides which images each batch holds and in which order: a twin keeps its "
                          "parent's, so that only the changed setting differs")  # fmt: skip
    if key not in SETTINGS:
        if key in BY_NAME and BY_NAME[key].section == "launch":
            raise ConfigError(f"{key} says how a run is launched, not what it learns: a twin changes a setting")
        if key in BY_NAME:
            raise ConfigError(f"{key} changes how a run is carried out or logged, not what it learns: its twin "
                              "would learn the same")  # fmt: skip
        raise ConfigError(f"unknown setting {str(name)[:40]!r}: a twin changes one of {', '.join(SETTINGS)}")
    return key


def _id_part(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) \
        else str(value)  # fmt: skip
    return re.sub(r"[^A-Za-z0-9.,]+", "-", text).strip("-")[:20] or "none"


def plan(root: Path, run: RunDir, changes: dict[str, Any], user: User | None = None) -> tuple[dict, dict, str]:
    """What `fork` starts: (the twin's options, its twin.json record, its run id). Refused in one line: a
    parent the user may not see, zero or several changes, an unknown setting, one that would change the data
    order, a value outside its limits, the parent's own value, or a change that brings others with it.
    A value may be given as text (a command line's `kl_weight=4`)."""
    from cvae.training import resolve_options

    owner = run_owner(run)
    if not may_see(user, owner, run.id, read_settings(root)):
        raise NotAllowed(f"you may not fork {owner or 'this'}'s run: it is not shared with you")
    if not isinstance(changes, dict) or len(changes) != 1:
        count = len(changes) if isinstance(changes, dict) else 0
        raise ConfigError(f"a twin differs from its parent in exactly one setting, {count} given: name one "
                          "(e.g. kl_weight=4); for two changes, fork twice")  # fmt: skip
    (given, raw), = changes.items()  # fmt: skip
    name = _named(given)
    option = BY_NAME[name]
    value = option.check(option.parse(raw) if isinstance(raw, str) and option.kind is not str else raw)
    options = parent_options(run)
    before, after = resolve_options(options), resolve_options({**options, name: value})
    if before[name] == after[name]:
        raise ConfigError(f"run {run.id} already has {setting_words(name, value)}: a twin differs from its parent "
                          "in one setting")  # fmt: skip
    also = [o.name for o in OPTIONS if o.section != "launch" and o.name != name and before[o.name] != after[o.name]]
    if also:  # a preset that comes with a value (condition quadrants brings the completion model's sizes)
        raise ConfigError(f"{name} = {value} also changes {', '.join(also)}: a twin differs in one setting")
    record = {"parent": run.id, "setting": name, "value": after[name], "parent_value": before[name],
              "created": time.time()}  # fmt: skip
    run_id = f"{new_run_id(str(after['dataset']), after['decoder_type'], after['latent_dim'])}-twin-{name}-" + \
        _id_part(after[name])  # fmt: skip
    return {**options, name: value}, record, run_id[:110]  # room for fresh_run_path's -2


def fork(root: Path, run: RunDir, changes: dict[str, Any], *, user: User | None = None,
         data_roots: list[Path] | None = None) -> RunDir:  # fmt: skip
    """Start a twin of `run`: its options with the one change in `changes` (`plan` says what is refused),
    queued like any start (ownership, the class's limit of active runs, the queue) under `root`."""
    options, record, run_id = plan(root, run, changes, user)
    return jobs.start(root, options, run_id=run_id, user=user, data_roots=data_roots, twin=record)


def read_twin(run: RunDir) -> dict[str, Any] | None:
    """A twin's record (parent, setting, value, parent_value), each field checked; None for a run that is no
    twin, or whose twin.json is not what `fork` writes."""
    raw = read_json(run.path / TWIN_FILE)
    if not isinstance(raw, dict) or not is_run_id(raw.get("parent")) or raw.get("setting") not in SETTINGS:
        return None
    option = BY_NAME[raw["setting"]]
    pair = (raw.get("value"), raw.get("parent_value"))
    try:
        value, before = (option.check(tuple(v) if isinstance(v, list) else v) for v in pair)
    except ConfigError:
        return None
    return {"parent": raw["parent"], "setting": raw["setting"], "value": value, "parent_value": before}


def change_words(record: dict[str, Any]) -> tuple[str, str]:
    """(the parent's, the twin's) value of the changed setting in plain words: ("KL weight β=1", "KL weight β=4")."""
    return setting_words(record["setting"], record["parent_value"]), setting_words(record["setting"], record["value"])


def twins_of(root: Path, run_id: str) -> list[RunDir]:
    """The runs under `root` forked from `run_id`, oldest first."""
    found = []
    for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if is_run_id(folder.name) and (folder / TWIN_FILE).is_file():
            record = read_twin(RunDir(folder))
            if record is not None and record["parent"] == run_id:
                found.append(RunDir(folder))
    return found
