"""Reading run folders for the pages: which runs exist, and cached readers.

Every reader is keyed by the file's (mtime, size) stamp, so a page that polls
a training run re-reads a file only when the trainer has changed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from cvae import classroom
from cvae.config import RunConfig
from cvae.errors import CVAEError
from cvae.legacy import upgrade_config
from cvae.runs import (
    ACTIVE_STATES,
    LAUNCH_FILE,
    OWNER_FILE,
    JsonlTail,
    RunDir,
    default_runs_root,
    list_runs,
    live_status,
    read_json,
    read_numeric_jsonl,
    run_path,
    sane_status,
)

STATE_COLORS = {
    "queued": "gray", "starting": "blue", "running": "blue", "stopping": "orange", "finished": "green",
    "failed": "red", "stopped": "orange", "interrupted": "red", "unknown": "gray",
}  # fmt: skip


def state_badge(state: str, text: str | None = None) -> str:
    """Markdown for a coloured badge naming the run's state (or `text`, e.g. 'queued — position 2')."""
    return f":{STATE_COLORS.get(state, 'gray')}-badge[{text or state}]"


VIEWER = "cvae_viewer"  # session key: the signed-in cvae.classroom.User (None: sign-in off), set by ui.auth


def runs_root() -> Path:
    return default_runs_root().resolve()


def stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a file, (0, -1) if it is missing: the cache key of its content."""
    try:
        s = path.stat()
    except OSError:
        return (0, -1)
    return (s.st_mtime_ns, s.st_size)


def _owner(run: RunDir) -> str | None:
    owner = (_json(str(run.path / OWNER_FILE), stamp(run.path / OWNER_FILE)) or {}).get("owner")
    return str(owner) if isinstance(owner, str) and owner else None


def _sees(root: Path):
    """A test of (run folder) -> may the signed-in user see it (their own, pinned, or shared by the lecturer)."""
    user = st.session_state.get(VIEWER)
    if user is None or user.lecturer:
        return lambda run: True
    settings = classroom.read_settings(root)
    return lambda run: classroom.may_see(user, _owner(run), run.id, settings)


def run_ids(root: Path) -> list[str]:
    """Run folders under `root` that the signed-in user may see, newest first, including half-written
    ones (no config.json yet)."""
    sees = _sees(root)
    return [run.id for run in list_runs(root, started=True) if sees(run)]


@dataclass(frozen=True)
class Run:
    """One run folder as the pages see it: reader, parsed config (or why not) and status."""

    dir: RunDir
    raw_config: dict | None
    config: RunConfig | None
    problem: str | None  # why the config is unusable, if it is
    status: dict
    owner: str | None = None  # who started it, when sign-in is on

    @property
    def id(self) -> str:
        return self.dir.id

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def state_text(self) -> str:
        """The state for people: 'queued — position 2' while waiting for a training slot."""
        position = self.status.get("position")
        if self.state == "queued" and isinstance(position, int):
            return f"queued — position {position}"
        return self.state

    @property
    def device_text(self) -> str:
        """Where it trains (or trained): 'cuda:1 (NVIDIA H100)', 'cpu'; '' before the queue gives it a slot."""
        device, name = self.status.get("device") or "", self.status.get("device_name") or ""
        return f"{device} ({name})" if device and name else device

    @property
    def planned_sections(self) -> dict | None:
        """The data, model and train sections of the config a queued run will write, from the options it was
        queued with (cvae.training.planned_sections); None where there are none or they do not resolve."""
        return _planned_sections(str(self.dir.path), stamp(self.dir.path / LAUNCH_FILE))

    @property
    def class_names(self) -> list[str]:
        info = (self.raw_config or {}).get("dataset_info") or {}
        return [str(c) for c in info.get("class_names", [])]

    @property
    def completion(self) -> bool:
        """A digit-completion run (condition quadrants): its config.json says so."""
        return ((self.raw_config or {}).get("model") or {}).get("condition") == "quadrants"

    @property
    def quadrants(self) -> int:
        """Completion runs: the quadrants given in training (1-3; 0 = a random count per image)."""
        value = ((self.raw_config or {}).get("model") or {}).get("quadrants")
        return value if value in (0, 1, 2, 3) else 1

    @property
    def description(self) -> str:
        """What was trained: MNIST · bernoulli · mlp · z=2 (· VAE, no label)."""
        if self.completion:
            z = ((self.raw_config or {}).get("model") or {}).get("latent_dim")
            return f"MNIST · completes digits from {self.quadrants or '1-3'} quadrant(s) · z={z}"
        if self.config is None:
            return (_planned(str(self.dir.path), stamp(self.dir.path / LAUNCH_FILE)) if self.active else "") or (
                self.problem or "no config yet")  # fmt: skip
        m = self.config.model
        sigma = " (learned σ)" if m.learn_sigma else ""
        vae = " · VAE (no label)" if m.condition == "none" else ""
        info = (self.raw_config or {}).get("dataset_info") or {}
        return (
            f"{info.get('name', self.config.data.dataset)} · {m.likelihood}{sigma} · {m.arch} · z={m.latent_dim}{vae}"
        )

    @property
    def label(self) -> str:
        """A short description for pickers: MNIST · bernoulli · mlp · z=2 · 3/5 epochs."""
        if self.config is None:
            return self.description
        total = self.status.get("epochs") or (self.config.train.epochs if self.config else "?")
        return f"{self.description} · {self.status.get('epoch') or 0}/{total} epochs"


@st.cache_data(max_entries=256, show_spinner=False)
def _planned(folder: str, version: tuple[int, int]) -> str:
    """What a run that has not written its config yet is to train, from the flags the app queued it with
    ('' for a run without them): so a waiting run reads 'MNIST · mlp · z=2 · 3 epochs', not a missing file."""
    from cvae.jobs import launch_options
    from cvae.training import resolve_options

    options = launch_options(RunDir(Path(folder)))
    if not options:
        return ""
    try:
        o = resolve_options(options)
    except (CVAEError, TypeError, ValueError):
        return ""
    what = {"none": " · VAE (no label)", "quadrants": " · completes digits"}.get(str(o["condition"]), "")
    return f"{o['dataset']} · {o['decoder_type']} · {o['arch']} · z={o['latent_dim']}{what} · {o['epochs']} epoch{'' if o['epochs'] == 1 else 's'}"


@st.cache_data(max_entries=256, show_spinner=False)
def _planned_sections(folder: str, version: tuple[int, int]) -> dict | None:
    """Run.planned_sections, read once per launch file: the wall asks for it on every refresh."""
    from cvae.jobs import launch_options
    from cvae.training import planned_sections

    options = launch_options(RunDir(Path(folder)))
    if not options:
        return None
    try:
        return planned_sections(options)
    except (CVAEError, TypeError, ValueError):
        return None


@st.cache_data(max_entries=512, show_spinner=False)
def _json(path: str, version: tuple[int, int]) -> dict | None:
    """A JSON file's object, re-read only when its (mtime, size) stamp changes."""
    return read_json(Path(path))


@st.cache_data(max_entries=256, show_spinner=False)
def _config(path: str, version: tuple[int, int]) -> tuple[dict | None, RunConfig | None, str | None]:
    raw = upgrade_config(read_json(Path(path)))  # an earlier version's completion run, read as today's
    if raw is None:
        return None, None, "config.json is corrupt" if version[1] >= 0 else "config.json is not written yet"
    try:
        return raw, RunConfig.from_dict(raw), None
    except (CVAEError, TypeError, ValueError, AttributeError) as err:
        return raw, None, f"config.json is unusable: {str(err)[:200]}"


def open_run(root: Path, run_id: str) -> Run:
    """The run called `run_id` (validated: no path may leave `root`).

    Cheap enough to call on every poll: each file is parsed once per change
    (cached by its stamp); only the liveness of the trainer's pid is checked anew.
    """
    run = run_path(root, run_id)
    if not _sees(root)(run):
        raise CVAEError("this run is not shared with you")
    raw, config, problem = _config(str(run.config_path), stamp(run.config_path))
    status = sane_status(live_status(_json(str(run.status_path), stamp(run.status_path)) or {}, run.id))
    if status.get("state") == "unknown" and not run.path.is_dir():
        problem = "this run folder no longer exists (deleted?)"
    return Run(run, raw, config, problem, status, _owner(run))


def open_runs(root: Path) -> list[Run]:
    """Every run under `root` that opens (newest first); a folder that cannot be read is left out."""
    found = []
    for run_id in run_ids(root):
        try:
            found.append(open_run(root, run_id))
        except CVAEError:
            continue
    return found


@st.cache_data(max_entries=64, show_spinner=False)
def _jsonl(path: str, version: tuple[int, int], key: str) -> list[dict]:
    return read_numeric_jsonl(Path(path), key)


@st.cache_resource(max_entries=64, show_spinner=False)
def _tail(path: str, key: str) -> JsonlTail:
    return JsonlTail(Path(path), key)


def metrics(run: RunDir) -> list[dict]:
    return _jsonl(str(run.metrics_path), stamp(run.metrics_path), "epoch")


def batches_versioned(run: RunDir) -> tuple[list[dict], tuple[int, int]]:
    """The logged batches and their version (for caching what is drawn from them), read incrementally."""
    return _tail(str(run.batches_path), "step").read()


@st.cache_data(max_entries=8, show_spinner=False)
def _latents(folder: str, epochs: tuple[int, ...], version: tuple) -> tuple[np.ndarray, np.ndarray]:
    run = RunDir(Path(folder))
    labels = np.load(run.artifacts / "latent_labels.npy", allow_pickle=False)
    arrays = [np.load(run.artifact(e, "latent.npy"), allow_pickle=False) for e in epochs]
    n = min([len(labels), *(len(a) for a in arrays)])
    return np.stack([a[:n] for a in arrays]).astype(np.float32), labels[:n]


def latents(run: RunDir) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(epochs, (E, N, Z) posterior means of the latent subset, (N,) labels); raises OSError/ValueError."""
    epochs = tuple(run.epochs_with("latent.npy"))
    stamps = tuple(stamp(run.artifact(e, "latent.npy")) for e in epochs[-1:])
    z, labels = _latents(str(run.path), epochs, stamps)
    return list(epochs), z, labels


@st.cache_data(max_entries=64, show_spinner=False)
def _points(path: str, version: tuple[int, int], labels_path: str, labels_version: tuple[int, int]):
    z = np.load(path, allow_pickle=False)
    labels = np.load(labels_path, allow_pickle=False)
    if z.ndim != 2 or labels.ndim != 1 or not np.isfinite(z).all():
        raise ValueError("latent codes of an unexpected shape")
    n = min(len(z), len(labels))
    return z[:n].astype(np.float32), labels[:n].astype(np.int64)


def newest_pictures(run: RunDir, active: bool) -> dict | None:
    """What the newest pictures of a run are: the live ones of the epoch in progress while it trains and they
    are newer than the last finished epoch's, else that epoch's. A dict with `recon` and `latent` (paths),
    `epoch`, and `batch`/`batches` for live ones; None before any."""
    epochs = run.epochs_with("recon_mean.png")
    done = epochs[-1] if epochs else 0
    live = _json(str(run.live_artifact("info.json")), stamp(run.live_artifact("info.json"))) if active else None
    numbers = live and all(isinstance(live.get(k), int) and not isinstance(live.get(k), bool)
                           for k in ("epoch", "batch", "batches"))  # fmt: skip
    if numbers and live["epoch"] > done and 0 < live["batch"] <= live["batches"]:
        return dict(recon=run.live_artifact("recon_mean.png"), latent=run.live_artifact("latent.npy"),
                    epoch=live["epoch"], batch=live["batch"], batches=live["batches"])  # fmt: skip
    if not done:
        return None
    return dict(recon=run.artifact(done, "recon_mean.png"), latent=run.artifact(done, "latent.npy"), epoch=done)


def latent_points(run: RunDir, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One latent file's means (N, Z) and their labels; raises OSError/ValueError for a missing or bad file."""
    labels = run.artifacts / "latent_labels.npy"
    return _points(str(path), stamp(path), str(labels), stamp(labels))
