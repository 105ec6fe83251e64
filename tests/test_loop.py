"""The training loop's epoch writer: files written behind training, in order, from snapshots."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import cvae.checkpoints
from cvae.artifacts import EpochArtifacts
from cvae.checkpoints import load_checkpoint
from cvae.loop import EpochWriter
from cvae.runs import RunDir, read_json
from cvae.train import main

SMALL = dict(arch="mlp", mlp_hidden=(64,), train_subset=512, test_subset=256, latent_subset=100, batch_size=64,
             learning_rate=1e-3, latent_dim=2, quiet=True, threads=1, seed=3)  # fmt: skip


def test_the_writer_runs_jobs_in_order_on_its_own_thread_and_wait_waits() -> None:
    writer = EpochWriter()
    done: list[tuple[int, str]] = []
    try:
        for i in range(5):
            writer.submit(lambda i=i: (time.sleep(0.02), done.append((i, threading.current_thread().name))))
        writer.wait()
        assert [i for i, _ in done] == [0, 1, 2, 3, 4]
        assert {name for _, name in done} == {"cvae-epoch-writer"}
    finally:
        writer.close()


def test_a_writer_error_is_raised_in_the_loop_and_later_epochs_are_not_written() -> None:
    writer = EpochWriter()
    done: list[int] = []

    def fail() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        writer.submit(lambda: done.append(1))
        writer.submit(fail)
        writer.submit(lambda: done.append(3))  # after a failure: skipped, so files stay in epoch order
        with pytest.raises(OSError, match="No space"):
            writer.wait()
        with pytest.raises(OSError, match="No space"):  # sticky: the next epoch's submit raises it too
            writer.submit(lambda: done.append(4))
        assert done == [1]
    finally:
        writer.close()


def test_saving_an_epochs_pictures_runs_no_torch_operation(tmp_path: Path) -> None:
    """A torch kernel on the writer thread starts a second pool of compute threads (CPU training 80% slower)."""
    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    class RecordCalls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    grid = np.full((30, 58, 3), 255, np.uint8)
    pictures = EpochArtifacts(grid, grid, np.zeros((4, 2), np.float32))
    run = RunDir(tmp_path / "r")
    run.artifacts.mkdir(parents=True)  # as the trainer makes it at its start (save_fixed_inputs)
    with Record(), RecordCalls():
        pictures.save(run, 1)
    assert seen == []
    assert {p.name for p in run.artifacts.iterdir()} == {
        "epoch_0001_recon_mean.png", "epoch_0001_recon_sample.png", "epoch_0001_latent.npy"}  # fmt: skip


def test_a_checkpoint_holds_its_own_epochs_weights_while_the_next_epoch_trains(tmp_path: Path, monkeypatch) -> None:
    """The writer gets CPU copies: a slow disk cannot let epoch 2's updates into epoch 1's checkpoint."""
    one = main(**SMALL, epochs=1, run_dir=str(tmp_path / "one"))
    expected = load_checkpoint(RunDir(one.run_dir).epoch_checkpoint(1))["model"]
    real = cvae.checkpoints.write_atomic

    def slow(path: Path, data: bytes, **kw: bool) -> None:
        time.sleep(0.5)  # longer than an epoch here: epoch 2 trains while epoch 1's checkpoint waits
        real(path, data, **kw)

    monkeypatch.setattr(cvae.checkpoints, "write_atomic", slow)
    two = main(**SMALL, epochs=2, checkpoint_every=1, run_dir=str(tmp_path / "two"))
    got = load_checkpoint(RunDir(two.run_dir).epoch_checkpoint(1))["model"]
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert [r["epoch"] for r in RunDir(two.run_dir).read_metrics()] == [1, 2]
    assert RunDir(two.run_dir).read_status()["last"]["epoch"] == 2


@pytest.mark.parametrize("condition", [{}, {"condition": "none"}, {"condition": "quadrants", "quadrants": 0}],
                         ids=["label", "none", "quadrants"])  # fmt: skip
def test_a_disk_filling_up_in_epoch_two_keeps_epoch_one_and_the_run_resumes(tmp_path: Path, monkeypatch,
                                                                             condition: dict) -> None:  # fmt: skip
    real = cvae.checkpoints.write_atomic
    calls = {"n": 0}

    def full_from_the_second_epoch(path: Path, data: bytes, **kw: bool) -> None:
        if path.suffix == ".pt" and "0002" in path.name or (path.name == "latest.pt" and calls["n"] >= 1):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        calls["n"] += path.name == "latest.pt"
        real(path, data, **kw)

    monkeypatch.setattr(cvae.checkpoints, "write_atomic", full_from_the_second_epoch)
    run = RunDir(tmp_path / "r")
    with pytest.raises(OSError, match="No space"):
        main(**SMALL, **condition, epochs=3, checkpoint_every=1, run_dir=str(run.path))
    status = run.read_status()
    assert status["state"] == "failed" and status["epoch"] == 1 and "checkpoint of epoch 1 is kept" in status["message"]
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    assert load_checkpoint(run.path)["epoch"] == 1
    assert not run.epoch_checkpoint(3).exists()
    monkeypatch.setattr(cvae.checkpoints, "write_atomic", real)
    resumed = main(resume_path=str(run.path), epochs=1, quiet=True)
    assert [r["epoch"] for r in RunDir(resumed.run_dir).read_metrics()] == [1, 2]


def test_live_pictures_appear_inside_an_epoch_and_leave_training_as_it_was(tmp_path: Path, monkeypatch) -> None:
    """The epoch in progress gets pictures (reconstructions and latent means) before it ends; making them
    changes nothing the run learns."""
    import cvae.loop

    monkeypatch.setattr(cvae.loop, "FIRST_PREVIEW_S", 0.0)  # a preview at the first batch: these epochs are short
    live = main(**SMALL, epochs=2, preview_every=1e-3, run_dir=str(tmp_path / "live"))
    plain = main(**SMALL, epochs=2, preview_every=0, run_dir=str(tmp_path / "plain"))
    run = RunDir(live.run_dir)
    where = read_json(run.live_artifact("info.json"))
    assert where is not None and 1 <= where["epoch"] <= 2 and 1 <= where["batch"] < where["batches"] == 8
    latent = np.load(run.live_artifact("latent.npy"), allow_pickle=False)
    assert latent.shape == (100, 2) and np.isfinite(latent).all()
    for name in ("recon_mean.png", "recon_sample.png"):
        shown = run.live_artifact(name).read_bytes()
        assert shown.startswith(b"\x89PNG") and shown[16:24] == run.artifact(1, name).read_bytes()[16:24]  # same size
    assert not list(run.artifacts.glob("live_decoder*"))
    assert not list(RunDir(plain.run_dir).artifacts.glob("live_*"))
    drop = ("seconds", "train_seconds", "images_per_s", "time")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in (live.metrics + plain.metrics)]
    assert strip[:2] == strip[2:]  # the same losses to the last bit: previews touch no training state
