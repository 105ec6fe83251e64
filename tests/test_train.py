"""Real training on MNIST subsets: loss falls, resume is exact, bad input is one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvae.checkpoints import load_checkpoint
from cvae.errors import CheckpointError, ConfigError, CVAEError
from cvae.runs import RunDir
from cvae.train import main

ROOT = Path(__file__).resolve().parent.parent
# One thread: with threads 0 a run follows the cores other work leaves it (cvae.loop.CoreShare), and a
# different thread count sums in another order, so two runs compared bit for bit must not depend on the load.
SMALL = dict(arch="mlp", mlp_hidden=(64,), train_subset=512, test_subset=256, latent_subset=100,
             batch_size=64, learning_rate=1e-3, latent_dim=2, threads=1, quiet=True)  # fmt: skip


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_conv_smoke_two_steps_writes_the_run_folder(tmp_path: Path) -> None:
    result = main(dataset="MNIST", latent_dim=2, epochs=1, batch_size=32, train_subset=64, test_subset=64,
                  latent_subset=50, run_dir=str(tmp_path / "r"), quiet=True)  # fmt: skip
    run = RunDir(result.run_dir)
    assert run.read_status()["state"] == "finished"
    (record,) = run.read_metrics()
    assert record["epoch"] == 1 and record["test_nelbo"] == pytest.approx(record["test_recon"] + record["test_kl"])
    assert len(run.read_batches()) == 2  # print_every=1: both batches logged
    for name in ("truth.png", "epoch_0001_recon_mean.png", "epoch_0001_recon_sample.png", "epoch_0001_latent.npy"):
        assert (run.artifacts / name).is_file(), name
    assert run.latest_checkpoint.is_file() and run.epoch_checkpoint(1).is_file()
    config = json.loads(run.config_path.read_text())
    assert config["model"]["latent_dim"] == 2 and config["dataset_info"]["name"] == "MNIST"


def test_test_loss_falls_on_real_mnist(tmp_path: Path) -> None:
    result = main(dataset="MNIST", epochs=3, run_dir=str(tmp_path / "r"), **{**SMALL, "train_subset": 2048})
    losses = [m["test_nelbo"] for m in result.metrics]
    assert losses[-1] < losses[0] - 20, losses
    assert 80 < losses[-1] < 400  # nats per binarized MNIST image: a plausible range


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = main(dataset="MNIST", epochs=2, run_dir=str(tmp_path / "a"), **SMALL)
    main(dataset="MNIST", epochs=1, run_dir=str(tmp_path / "b"), **SMALL)
    resumed = main(resume_path=str(tmp_path / "b"), resume_epoch=1, epochs=1, quiet=True)
    assert resumed.run_dir == tmp_path / "b"
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert resumed.metrics[-1]["test_nelbo"] == straight.metrics[-1]["test_nelbo"]
    a = load_checkpoint(tmp_path / "a")["model"]
    b = load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in RunDir(tmp_path / "b").read_metrics()] == [1, 2]


def test_resume_checks_epoch_and_model_options(tmp_path: Path) -> None:
    main(dataset="MNIST", epochs=1, run_dir=str(tmp_path / "r"), **SMALL)
    with pytest.raises(ConfigError, match="does not match"):
        main(resume_path=str(tmp_path / "r"), resume_epoch=3, epochs=1, quiet=True)
    with pytest.raises(ConfigError, match="latent_dim"):
        main(resume_path=str(tmp_path / "r"), latent_dim=5, epochs=1, quiet=True)


def test_notebook_api_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        main(epochs=0)
    with pytest.raises(ConfigError):
        main(dataset="CIFAR10", decoder_type="Bernoulli")
    with pytest.raises(ConfigError, match="unknown option"):
        main(epoch=3)
    with pytest.raises(ConfigError, match="decoder_type"):
        main(decoder_type="Poisson")


def test_gaussian_learned_sigma_trains(tmp_path: Path) -> None:
    result = main(dataset="MNIST", decoder_type="Gaussian", model_sigma=True, epochs=1,
                  run_dir=str(tmp_path / "g"), **SMALL)  # fmt: skip
    # With sigma fixed at 1 the reconstruction term alone is at least 784 * log(2 pi) / 2 = 720.4 nats;
    # a learned sigma below 1 must beat that.
    assert result.metrics[0]["test_recon"] < 720


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cvae-pwned",))


def test_hostile_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "config": {}}, path)
    Path("/tmp/cvae-pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(path)
    assert not Path("/tmp/cvae-pwned").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not Path("/tmp/cvae-pwned").exists()


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cvae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    main(dataset="MNIST", epochs=1, run_dir=str(tmp_path / "r"), **SMALL)
    payload = load_checkpoint(tmp_path / "r")
    payload["config"]["model"]["mlp_hidden"] = [32]  # config says one thing, weights another
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(
        CVAEError,
        match=r"field model\.encoder\.net\.0\.weight has shape \(64, 794\) but the model's tensor has \(32, 794\)",
    ):
        main(resume_path=str(tmp_path / "mismatch.pt"), epochs=1, quiet=True, run_dir=str(tmp_path / "m"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["-d", "FashionMNIST"], "unknown dataset"),
        (["-d", "CIFAR10", "-t", "Bernoulli"], "Gaussian"),
        (["--data-dir", "/nonexistent/data"], "data folder /nonexistent/data not found"),
        (["-e", "0"], "epochs must be an integer from 1 to 100000, got 0"),
        (["-b", "-5"], "batch_size must be an integer from 1 to 65536, got -5"),
        (["-lr", "nan"], "learning_rate must be a number above 0 and at most 1, got nan"),
        (["-z", "two"], "latent_dim must be an integer from 1 to 1024, got 'two'"),
        (["-s", "maybe"], "model_sigma must be true or false, got 'maybe'"),
        (["-t", "Poisson"], "decoder_type must be one of Bernoulli, Gaussian, got 'Poisson'"),
        (["-rp", "/nonexistent/run"], "not found"),
        (["-re", "3"], "needs --resume_path"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    proc = run_cli("-m", "cvae.train", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_hostile_checkpoint_exit_2(tmp_path: Path) -> None:
    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    proc = run_cli("-m", "cvae.train", "-rp", str(tmp_path / "evil.pt"))
    assert proc.returncode == 2 and "would run code" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_s_false_means_false_and_trains(tmp_path: Path) -> None:
    proc = run_cli("-m", "cvae.train", "-d", "MNIST", "-t", "Gaussian", "-s", "False", "-e", "1", "-z", "2",
                   "--arch", "mlp", "--train-subset", "256", "--test-subset", "64", "--run-dir", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "test -ELBO" in proc.stdout
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["learn_sigma"] is False and config["model"]["likelihood"] == "gaussian"


def test_sigterm_stops_cleanly_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvae.train", "-z", "2", "-e", "50", "--arch", "mlp", "--train-subset", "4096",
         "--test-subset", "256", "-q", "--run-dir", str(tmp_path / "r")],
        cwd=ROOT, env=env,
    )  # fmt: skip
    run = RunDir(tmp_path / "r")
    deadline = time.time() + 120
    while time.time() < deadline and not run.latest_checkpoint.is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143  # 128 + SIGTERM: a script can tell a stop from a finish
    status = run.read_status()
    assert status["state"] == "stopped" and "checkpoint" in status["message"] and status["signal"] == "SIGTERM"
    assert load_checkpoint(run.path)["epoch"] >= 1


def test_disk_full_is_one_line_and_marks_the_run_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    import cvae.checkpoints
    import cvae.train

    real = cvae.checkpoints.write_atomic

    def full_on_checkpoint(path: Path, data: bytes, **kw: bool) -> None:
        if path.suffix == ".pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data, **kw)

    monkeypatch.setattr(cvae.checkpoints, "write_atomic", full_on_checkpoint)  # where save_checkpoint writes
    args = ["-z", "2", "-e", "1", "--arch", "mlp", "--train-subset", "128", "--test-subset", "64", "-q",
            "--run-dir", str(tmp_path / "r")]  # fmt: skip
    assert cvae.train.cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    status = RunDir(tmp_path / "r").read_status()
    assert status["state"] == "failed" and "No space" in status["message"]
