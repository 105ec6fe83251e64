"""A run's display name and note, kept in `<run>/meta.json` apart from everything the trainer writes.

The trainer never reads or writes this file, so naming a run while it trains cannot race with it;
the file is replaced atomically, so a reader sees the old or the new name, never half of one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cvae.classroom import User, check_manage
from cvae.config import BY_NAME, OPTIONS
from cvae.errors import ConfigError
from cvae.runs import RunDir, read_json, write_json

META_FILE = "meta.json"
MAX_NAME = 80  # a name fits a picker and a legend
MAX_NOTE = 2000


def read_meta(run_dir: Path) -> dict[str, str]:
    """{"name": ..., "note": ...} of a run folder; empty strings when unset or unreadable."""
    raw = read_json(Path(run_dir) / META_FILE) or {}
    return {key: str(raw.get(key) or "").strip() for key in ("name", "note")}


def write_meta(run_dir: Path, *, name: str, note: str, user: User | None = None) -> dict[str, str]:
    """Set a run's display name and note (empty = unset); raises ConfigError for text that does not fit.

    `user`: who asks, where sign-in is on: the run's owner or a lecturer (cvae.classroom)."""
    run_dir = Path(run_dir)
    check_manage(user, RunDir(run_dir), "rename or change the note of")
    name, note = " ".join(name.split()), note.strip()  # one line for the name: it is shown in pickers and legends
    if len(name) > MAX_NAME:
        raise ConfigError(f"a run name has at most {MAX_NAME} characters, got {len(name)}")
    if len(note) > MAX_NOTE:
        raise ConfigError(f"a run note has at most {MAX_NOTE} characters, got {len(note)}")
    if not run_dir.is_dir():
        raise ConfigError(f"no run folder at {run_dir}")
    meta = {"name": name, "note": note}
    write_json(run_dir / META_FILE, meta)
    return meta


def differing_config(configs: list[dict]) -> list[str]:
    """The dotted config keys (e.g. "model.latent_dim") whose values differ between the runs' configs."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _flatten(obj: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# Settings that change how a run is carried out or logged, not what it learns: left out of "what differs".
NOT_A_DIFFERENCE = {
    "train.threads", "train.device", "train.print_every", "train.checkpoint_every", "train.latent_subset",
    "train.grid_size", "train.preview_every", "train.refine_steps", "data.data_dir",
}  # fmt: skip
SHORT = {
    "model.latent_dim": "z", "model.likelihood": "decoder", "model.learn_sigma": "learned σ",
    "model.arch": "arch", "train.learning_rate": "lr", "train.epochs": "epochs", "train.batch_size": "batch",
    "train.lr_schedule": "schedule", "data.dataset": "data", "train.seed": "seed", "model.mlp_hidden": "hidden",
    "data.train_subset": "train images", "data.binarize": "binarize", "model.fixed_sigma": "σ",
    "train.warmup_epochs": "warm-up epochs", "model.condition": "condition",
}  # fmt: skip


def _label(key: str) -> str:
    """A config key in plain words: its short name (z, lr, ...), else its option's label ("warm-up epochs")."""
    if key in SHORT:
        return SHORT[key]
    section, field = key.split(".", 1)
    option = next((o for o in OPTIONS if o.section == section and o.field == field), None)
    if not option:
        return field.replace("_", " ")
    # "Latent size z" reads "latent size z" inside a sentence; "KL weight β" keeps its acronym
    return option.label if option.label[1:2].isupper() else option.label[0].lower() + option.label[1:]


def what_differs(configs: list[dict], most: int | None = None) -> list[str]:
    """For each run, its values of the config keys that differ between the runs (learning, not logging), in
    plain words: ["z=2 · decoder=bernoulli", "z=10 · decoder=bernoulli", ...]; "" for a run when nothing
    differs. With `most`, at most that many (the usual suspects first) and "+ N more"."""
    keys = _learning_keys(configs)
    shown, hidden = (keys, 0) if most is None or len(keys) <= most else (keys[: most - 1], len(keys) - most + 1)
    more = f" · + {hidden} more" if hidden else ""
    return [_words(f, shown) + (more if shown else "") for f in (_flatten(c) for c in configs)]


def apart_from_most(configs: list[dict]) -> tuple[list[str], list[str]]:
    """What sets each run apart from most of the others: (the most common value of each setting that differs
    between the runs, in plain words, one a setting; for each run, its own values where they are not the most
    common, "" where it has them all). For many runs at once (a class's wall), where `what_differs` would list every setting
    that any run changed on every run."""
    keys, flat = _learning_keys(configs), [_flatten(c) for c in configs]
    usual = {k: Counter(repr(f.get(k)) for f in flat).most_common(1)[0][0] for k in keys}
    typical = {k: next(f.get(k) for f in flat if repr(f.get(k)) == usual[k]) for k in keys}
    own = [_words(f, [k for k in keys if repr(f.get(k)) != usual[k]]) for f in flat]
    return [_words(typical, [k]) for k in keys], own


def _learning_keys(configs: list[dict]) -> list[str]:
    """The keys that differ between the configs and change what a run learns, the usual suspects first."""
    keys = [k for k in differing_config(configs) if k not in NOT_A_DIFFERENCE]
    order = list(SHORT)  # the usual suspects first (latent size, decoder, ...), in this order
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def _words(flat: dict[str, object], keys: list[str]) -> str:
    return " · ".join(f"{_label(k)}={_show(k, flat.get(k))}" for k in keys)


def setting_words(name: str, value: object) -> str:
    """One option's value in the plain words of `what_differs`: setting_words("kl_weight", 4.0) is "KL weight β=4"."""
    option = BY_NAME[name]
    key = f"{option.section}.{option.field}"
    return f"{_label(key)}={_show(key, list(value) if isinstance(value, tuple) else value)}"


def _show(key: str, value: object) -> str:
    if value is None:  # an option left unset: for a subset, all the images; otherwise its automatic choice
        return "all" if key.endswith("_subset") else "auto"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "×".join(str(v) for v in value)
    return str(value)
