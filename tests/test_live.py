"""The Train page's live poll: incremental reading of the batch log, and the refresh shared out among tabs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cvae.runs import JsonlTail, write_atomic
from ui.live import MAX_POLL_S, POLL_S, STALE_S, VIEWERS_AT_FULL_SPEED, Viewers, poll_interval


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


# ------------------------------------------------------------------ time left, stop text, charts, names


def _batches(epoch: int, n: int, seconds_per_batch: float, start: float = 30.0, first_slow: float = 20.0) -> list[dict]:
    """A batch log whose first batch took `first_slow` seconds (start-up), the rest `seconds_per_batch`."""
    rows, t = [], start + first_slow
    for b in range(1, n + 1):
        rows.append({"epoch": epoch, "batch": b, "step": b, "loss": 200.0 / b, "time": t})
        t += seconds_per_batch
    return rows


def test_time_left_settles_within_the_first_epoch() -> None:
    from ui.live import batch_seconds, eta_text

    status = {"epoch": 0, "epochs": 10, "batch": 8, "batches": 100}
    assert eta_text(status, [], _batches(1, 3, 0.5)) == "estimating time left…"  # too few batches to judge
    rows = _batches(1, 12, 0.5)
    assert abs(batch_seconds({**status, "batch": 12}, rows) - 0.5) < 1e-9  # the slow start-up is left out
    # 10 epochs of 100 batches at 0.5 s, 12 batches done: 494 s, whatever the start-up cost.
    assert eta_text({**status, "batch": 12}, [], rows) == "about 8 min 14 s left"
    # With finished epochs, their mean duration (evaluation included) counts; the batch rate places us in the epoch.
    later = {"epoch": 2, "epochs": 10, "batch": 50, "batches": 100}
    assert eta_text(later, [60.0, 60.0], _batches(3, 50, 0.5)) == "about 7 min 35 s left"  # 8 * 60 - 25


def test_stop_text_reads_as_sentences() -> None:
    from ui.live import stop_text

    text = stop_text(26, True)
    assert text.startswith("**Stopped** during epoch 27. The model of epoch 26 is kept")
    assert "Resume from epoch 26" in text and "kept Resume" not in text.replace("**", "")
    assert "start it again" in stop_text(0, False)


def test_batch_loss_range_ignores_the_first_batches() -> None:
    from ui import plots

    rows = [{"step": i, "loss": 580.0 if i < 20 else 120.0 + (i % 7)} for i in range(1, 1001)]
    fig = plots.batch_loss(rows, smoothing=0.9)
    low, high = fig.layout.yaxis.range
    assert 110 < low < 121 and 126 < high < 140  # the 580-nat start does not flatten the curve
    assert [t.name for t in fig.data] == ["each batch", "smoothed (0.9)"]
    assert len(plots.batch_loss(rows, smoothing=0.0).data) == 1
    recent = plots.batch_loss(rows, recent=0.05)
    assert min(recent.data[0].x) > 940
    smooth = plots.ema(np.array([10.0, 10.0, 10.0]), 0.99)
    assert np.allclose(smooth, 10.0)  # no pull towards 0 at the start


def test_epoch_panels_integer_ticks_and_a_linear_learning_rate() -> None:
    from ui import plots

    rows = [{"epoch": e, "train_nelbo": 150 - e, "test_nelbo": 152 - e, "lr": 5e-3 * (1 + np.cos(np.pi * e / 40)) / 2}
            for e in range(1, 41)]  # fmt: skip
    fig = plots.epoch_curves(rows)
    assert fig.layout.xaxis.dtick == 10 and fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.tickangle == 0
    assert fig.layout.yaxis4.type in (None, "linear") and fig.layout.yaxis4.rangemode == "tozero"
    assert fig.layout.xaxis.tickfont.size >= 14 and fig.layout.xaxis.tickfont.color == plots.INK


def test_epoch_of_a_clicked_point() -> None:
    from ui import plots

    z = np.stack([np.full((4, 2), e, dtype=float) + np.arange(4)[:, None] for e in range(3)])  # (E=3, N=4, 2)
    fig, _ = plots.latent_animation([1, 2, 3], z, np.array([0, 1, 0, 1]), ["a", "b"])
    # Point 1 of class b (test image #3) where epoch 2 put it: (1 + 3, 1 + 3).
    assert plots.epoch_of_point(fig, {"curve_number": 1, "point_index": 1, "x": 4.0, "y": 4.0}) == 2
    assert plots.epoch_of_point(fig, {"curve_number": 1, "point_index": 1, "x": 9.0, "y": 9.0}) is None


def test_run_names_and_what_differs(tmp_path: Path) -> None:
    import pytest

    from cvae.errors import ConfigError
    from cvae.names import read_meta, what_differs, write_meta

    (tmp_path / "run").mkdir()
    assert read_meta(tmp_path / "run") == {"name": "", "note": ""}
    write_meta(tmp_path / "run", name="  big\nlatent ", note="try z=10\n")
    assert read_meta(tmp_path / "run") == {"name": "big latent", "note": "try z=10"}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["meta.json"]  # atomic: no temp file left behind
    with pytest.raises(ConfigError):
        write_meta(tmp_path / "run", name="x" * 81, note="")
    with pytest.raises(ConfigError):
        write_meta(tmp_path / "missing", name="a", note="")
    base = {"model": {"latent_dim": 2, "likelihood": "bernoulli"}, "train": {"learning_rate": 1e-3, "threads": 1}}
    other = {"model": {"latent_dim": 10, "likelihood": "bernoulli"}, "train": {"learning_rate": 1e-4, "threads": 2}}
    assert what_differs([base, other]) == ["z=2 · lr=0.001", "z=10 · lr=0.0001"]
    assert what_differs([base, base]) == ["", ""]


def test_compare_names_settings_in_plain_words_and_keeps_each_runs_colour() -> None:
    from cvae.names import what_differs

    a = {"train": {"learning_rate": 1e-3, "warmup_epochs": 1.0, "refine_steps": 10, "seed": 0},
         "data": {"train_subset": None}, "model": {"latent_dim": 2, "learn_sigma": False}}  # fmt: skip
    b = {"train": {"learning_rate": 1e-4, "warmup_epochs": 0.0, "refine_steps": 0, "seed": 1},
         "data": {"train_subset": 1000}, "model": {"latent_dim": 10, "learn_sigma": True}}  # fmt: skip
    full = what_differs([a, b])
    assert full[0] == "z=2 · learned σ=no · lr=0.001 · seed=0 · train images=all · warm-up epochs=1"
    assert "None" not in " ".join(full) and "_" not in " ".join(full)  # no internal names, no None
    assert what_differs([a, b], most=3) == ["z=2 · learned σ=no · + 4 more", "z=10 · learned σ=yes · + 4 more"]
    from ui import plots

    ids = [f"run-{k}" for k in range(10)]
    assert len(set(plots.run_colors(ids).values())) == 10  # ten runs, ten colours
    alone = {i: plots.run_colors([i])[i] for i in ids}  # a run's own colour, from its id
    assert all(plots.run_colors(ids)[i] == alone[i] for i in sorted(ids)[:1])  # kept whatever else is chosen
    assert plots.run_colors(["run-4", "run-7"]) == plots.run_colors(["run-7", "run-4"])  # in any order


def test_the_run_picker_never_shows_two_runs_alike() -> None:
    """The browser answers a pick with the label it showed: a class's demos started in one minute, or two runs
    given one name, must not read alike (the page then showed a classmate's run)."""
    from ui.sidebar import readable_id, unique_labels

    assert readable_id("20261202-170733-MNIST-bernoulli-z2") == "MNIST-bernoulli-z2 (12-02 17:07:33)"
    assert readable_id("20261202-170733-MNIST-bernoulli-z2-2") == "MNIST-bernoulli-z2-2 (12-02 17:07:33)"
    labels = unique_labels({"a": "running · demo", "b": "running · demo", "c": "finished · demo"})
    assert labels == {"a": "running · demo · a", "b": "running · demo · b", "c": "finished · demo"}
