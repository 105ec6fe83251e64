"""The Train page's live poll: incremental reading of the batch log, and the refresh shared out among tabs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cvae.runs import write_atomic
from ui.live import MAX_POLL_S, POLL_S, STALE_S, VIEWERS_AT_FULL_SPEED, Viewers, poll_interval
from ui.runs import JsonlTail


def _line(step: int) -> str:
    return json.dumps({"epoch": 1, "batch": step, "step": step, "loss": 100.0 - step, "note": "text is dropped"}) + "\n"


def test_tail_reads_appended_lines_and_waits_for_a_whole_last_line(tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    tail = JsonlTail(path, "step")
    assert tail.read()[0] == []  # no file yet
    path.write_text(_line(1) + _line(2))
    rows, v1 = tail.read()
    assert [r["step"] for r in rows] == [1, 2] and "note" not in rows[0]
    with open(path, "a") as f:
        f.write(_line(3)[:10])  # the writer is mid-line
    rows, v2 = tail.read()
    assert [r["step"] for r in rows] == [1, 2] and v2 == v1
    with open(path, "a") as f:
        f.write(_line(3)[10:] + "{garbled\n" + json.dumps({"step": "x"}) + "\n" + _line(4))
    rows, v3 = tail.read()
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and v3 != v2


def test_tail_parses_only_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    path.write_text(_line(1) + _line(2))
    tail = JsonlTail(path, "step")
    assert len(tail.read()[0]) == 2
    with open(path, "r+b") as f:  # spoil the bytes already read, in place (same file, same size)
        f.write(b"X" * len(_line(1)))
    with open(path, "a") as f:
        f.write(_line(3))
    assert [r["step"] for r in tail.read()[0]] == [1, 2, 3]  # the old rows were not read again


def test_tail_rereads_a_replaced_or_shorter_file(tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    path.write_text(_line(1) + _line(2) + _line(3))
    tail = JsonlTail(path, "step")
    _, v1 = tail.read()
    write_atomic(path, (_line(1) + _line(2)).encode())  # a resume truncates the log to its checkpoint
    rows, v2 = tail.read()
    assert [r["step"] for r in rows] == [1, 2] and v2 != v1
    path.write_text(_line(7))  # rewritten in place, shorter
    assert [r["step"] for r in tail.read()[0]] == [7]
    os.remove(path)
    assert tail.read()[0] == []


def test_refresh_slows_down_as_more_tabs_watch() -> None:
    assert poll_interval(1) == poll_interval(VIEWERS_AT_FULL_SPEED) == POLL_S
    assert poll_interval(2 * VIEWERS_AT_FULL_SPEED) == 2 * POLL_S
    assert poll_interval(1000) == MAX_POLL_S
    intervals = [poll_interval(n) for n in range(1, 60)]
    assert intervals == sorted(intervals)
    # The whole server's refreshes per second stay bounded until the slowest pace is reached.
    assert all(n / poll_interval(n) <= VIEWERS_AT_FULL_SPEED / POLL_S + 1e-9 for n in range(1, 27))


def test_viewers_count_live_tabs_and_forget_closed_ones() -> None:
    v = Viewers()
    assert v.beat("a", now=0.0) == 1
    assert v.beat("b", now=1.0) == 2
    assert v.beat("a", now=2.0) == 2  # the same tab again
    v.leave("b")
    assert v.beat("a", now=3.0) == 1
    v.beat("c", now=3.0)
    assert v.beat("a", now=3.0 + STALE_S + 1) == 1  # "c" was not heard from: its tab is gone


def test_a_long_runs_latent_animation_stays_light() -> None:
    import numpy as np

    from ui.plots import MAX_FRAMES, frame_epochs, latent_animation

    assert frame_epochs(3) == [0, 1, 2]
    keep = frame_epochs(200)
    assert len(keep) == MAX_FRAMES and keep[0] == 0 and keep[-1] == 199 and keep == sorted(set(keep))
    rng = np.random.default_rng(0)
    z, labels = rng.normal(size=(200, 300, 2)).astype(np.float32), rng.integers(0, 10, 300)
    fig, _ = latent_animation(list(range(1, 201)), z, labels, [str(k) for k in range(10)])
    assert len(fig.frames) == MAX_FRAMES and fig.frames[-1].name == "200"
    assert fig.layout.sliders[0].steps[-1].label == "200" and len(fig.layout.sliders[0].steps) == MAX_FRAMES
    # A frame moves the points; colours, names and hover text stay the traces'.
    assert fig.frames[-1].data[3].marker.color is None and fig.frames[-1].data[3].customdata is None
    assert np.allclose(fig.frames[-1].data[3].x, np.round(z[-1, labels == 3, 0], 3))
    assert np.allclose(fig.data[3].x, fig.frames[-1].data[3].x) and fig.data[3].marker.color is not None
