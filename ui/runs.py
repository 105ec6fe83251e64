"""Reading run folders for the pages: which runs exist, and cached readers.

Every reader is keyed by the file's (mtime, size) stamp, so a page that polls
a training run re-reads a file only when the trainer has changed it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from cvae.config import RunConfig
from cvae.errors import CVAEError
from cvae.legacy import upgrade_config
from cvae.runs import ACTIVE_STATES, OWNER_FILE, RunDir, default_runs_root, list_runs, live_status, read_json, run_path

STATE_COLORS = {
    "queued": "gray", "starting": "blue", "running": "blue", "stopping": "orange", "finished": "green",
    "failed": "red", "stopped": "orange", "interrupted": "red", "unknown": "gray",
}  # fmt: skip


def state_badge(state: str, text: str | None = None) -> str:
    """Markdown for a coloured badge naming the run's state (or `text`, e.g. 'queued — position 2')."""
    return f":{STATE_COLORS.get(state, 'gray')}-badge[{text or state}]"


def runs_root() -> Path:
    return default_runs_root().resolve()


def stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a file, (0, -1) if it is missing: the cache key of its content."""
    try:
        s = path.stat()
    except OSError:
        return (0, -1)
    return (s.st_mtime_ns, s.st_size)


def run_ids(root: Path) -> list[str]:
    """Run folders under `root`, newest first, including half-written ones (no config.json yet)."""
    return [run.id for run in list_runs(root, started=True)]


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
            return self.problem or "no config yet"
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
    raw, config, problem = _config(str(run.config_path), stamp(run.config_path))
    status = _sane_status(live_status(_json(str(run.status_path), stamp(run.status_path)) or {}))
    if status.get("state") == "unknown" and not run.path.is_dir():
        problem = "this run folder no longer exists (deleted?)"
    owner = (_json(str(run.path / OWNER_FILE), stamp(run.path / OWNER_FILE)) or {}).get("owner")
    return Run(run, raw, config, problem, status, str(owner) if owner else None)


def open_runs(root: Path) -> list[Run]:
    """Every run under `root` that opens (newest first); a folder that cannot be read is left out."""
    found = []
    for run_id in run_ids(root):
        try:
            found.append(open_run(root, run_id))
        except CVAEError:
            continue
    return found


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sane_status(status: dict) -> dict:
    """Drop fields of the wrong type (a hand-edited or hostile status.json must not crash a page)."""
    for key in ("epoch", "epochs", "batch", "batches", "position", "pid"):
        if key in status and not (isinstance(status[key], int) and not isinstance(status[key], bool)
                                  and 0 <= status[key] < 10**12):  # fmt: skip
            status.pop(key)
    for key in ("epoch_started", "started", "updated", "queued_at"):
        if key in status and not _number(status[key]):
            status.pop(key)
    for key in ("device", "device_name", "pool"):  # shown as text: a string of sane length, or nothing
        if key in status and not (isinstance(status[key], str) and len(status[key]) <= 100):
            status.pop(key)
    if "slots" in status and not (isinstance(status["slots"], int) and 0 < status["slots"] < 10**6):
        status.pop("slots")
    if not isinstance(status.get("message", ""), str):
        status["message"] = ""
    if not isinstance(status.get("last", {}), dict):
        status.pop("last")
    return status


def _row(row: object, key: str) -> dict | None:
    """A row with a whole-number `key` (epoch or step), keeping numeric (or null) fields only; None if unusable."""
    if not isinstance(row, dict) or not isinstance(row.get(key), int) or isinstance(row.get(key), bool):
        return None
    return {k: v for k, v in row.items() if v is None or _number(v)}


@st.cache_data(max_entries=64, show_spinner=False)
def _jsonl(path: str, version: tuple[int, int], key: str) -> list[dict]:
    from cvae.runs import read_jsonl

    return [r for r in (_row(row, key) for row in read_jsonl(Path(path))) if r is not None]


class JsonlTail:
    """An append-only JSON-lines file, read incrementally: each call parses only the bytes added since the last.

    The trainer appends a line per logged batch while every open tab polls the
    file, so re-reading it whole would cost each poll the whole run's history.
    A rewritten file (a resume replaces it atomically: a new inode) or a shorter
    one is read again from the start. A last line without its newline is left
    for the next call (the writer is mid-line, or was killed there: then it is
    never used, like `read_jsonl`'s torn line). Shared by every session of the
    server, so it is guarded by a lock.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read so far
        self._offset, self._rows, self._generation = 0, [], 0

    def read(self) -> tuple[list[dict], tuple[int, int]]:
        """(the rows so far, a version that changes whenever they do)."""
        with self._lock:
            try:
                info = self.path.stat()
            except OSError:
                info = None
            ident = (info.st_dev, info.st_ino) if info else None
            if ident != self._file or (info and info.st_size < self._offset):
                self._file, self._offset, self._rows = ident, 0, []
                self._generation += 1
            if info and info.st_size > self._offset:
                try:
                    with open(self.path, "rb") as f:
                        f.seek(self._offset)
                        chunk = f.read(info.st_size - self._offset)
                except OSError:
                    chunk = b""
                end = chunk.rfind(b"\n") + 1
                for line in chunk[:end].splitlines():
                    try:
                        row = _row(json.loads(line.decode("utf-8", errors="replace")), self.key)
                    except ValueError:
                        continue  # a garbled line spoils only itself
                    if row is not None:
                        self._rows.append(row)
                self._offset += end
            return list(self._rows), (self._generation, len(self._rows))


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


def log_tail(run: RunDir, lines: int = 15) -> str:
    try:
        text = run.log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def eta_text(status: dict, epoch_seconds: list[float]) -> str:
    """Time left, from the finished epochs' mean duration or the current epoch's batch rate."""
    epoch, epochs = int(status.get("epoch") or 0), int(status.get("epochs") or 0)
    batch, batches_per = int(status.get("batch") or 0), int(status.get("batches") or 0)
    per_epoch = float(np.mean(epoch_seconds[-5:])) if epoch_seconds else None
    if per_epoch is None and batch and batches_per and status.get("epoch_started"):
        per_epoch = (time.time() - float(status["epoch_started"])) / batch * batches_per
    if per_epoch is None or not epochs:
        return "estimating time left…"
    left = max(0.0, (epochs - epoch) * per_epoch - (batch / batches_per * per_epoch if batches_per else 0))
    return f"about {format_seconds(left)} left"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
