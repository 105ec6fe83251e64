"""The learning-rate schedules: their shapes, exact resume, and their options' checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvae.schedule import cosine_lr
from cvae.train import main


def test_cosine_schedule_warms_up_then_falls_to_zero() -> None:
    rates = [cosine_lr(1.0, b / 10, 1.0, 5, 10) for b in range(50)]  # 5 epochs of 10 batches, 1 warm-up
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # linear warm-up
    assert rates[10] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(rates[10:], rates[11:], strict=False))  # then falls every step
    assert rates[30] == pytest.approx(0.5)  # half-way through the cosine
    assert 0 < rates[-1] < 0.01
    assert cosine_lr(1.0, 3.0, 0.0, 2, 10) == 0.0  # past the end: stays at 0


def test_cosine_resume_is_exact(tmp_path: Path) -> None:
    """An interrupted cosine run, resumed for its remaining epochs, ends exactly as an uninterrupted one."""
    common = dict(dataset="MNIST", arch="mlp", mlp_hidden=(64,), latent_dim=2, batch_size=32, learning_rate=5e-3,
                  lr_schedule="cosine", warmup_epochs=0.5, train_subset=96, test_subset=64, latent_subset=16,
                  checkpoint_every=1, threads=1, quiet=True)  # fmt: skip
    straight = main(**common, epochs=3, run_dir=str(tmp_path / "straight"))  # one thread: the same sums at any load
    lrs = [m["lr"] for m in straight.metrics]
    assert lrs[0] > lrs[1] > lrs[2] > 0 and lrs[2] < 0.1 * common["learning_rate"]  # the last step's rate
    shutil.copytree(tmp_path / "straight", tmp_path / "split")
    resumed = main(**{**common, "epochs": 2}, resume_path=str(tmp_path / "split" / "checkpoints" / "epoch_0001.pt"))
    assert [m["lr"] for m in resumed.metrics] == lrs
    assert resumed.metrics[-1]["test_nelbo"] == straight.metrics[-1]["test_nelbo"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_options_are_checked_from_the_command_line(tmp_path: Path) -> None:
    for argv, message in (
        (["--quick-demo", "--lr-decay", "0.9"], "lr_decay belongs to the exponential schedule"),
        (["--warmup-epochs", "2"], "warmup_epochs needs lr_schedule cosine"),
        (["--lr-schedule", "linear"], "lr_schedule must be one of plateau, cosine, exponential, got 'linear'"),
        (["--warmup-epochs", "nan"], "warmup_epochs must be a number from 0 to 1000, got nan"),
    ):
        proc = subprocess.run([sys.executable, "-m", "cvae.train", *argv, "--runs-root", str(tmp_path), "-q"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was started
