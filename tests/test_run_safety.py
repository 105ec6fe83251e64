"""A run is never lost or corrupted: one writer per run folder, no silent overwrite, no mixed
runs, stops told apart from finishes, pictures over the pixel limit refused anywhere, nothing cached for a
refused data set, a bounded evaluation. The checkpoint fuzz test is tests/test_checkpoint_fuzz.py.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.checkpoints import load_checkpoint, save_checkpoint, validate_checkpoint
from cvae.config import DataConfig
from cvae.data import load_data, load_image_folder, peek_info
from cvae.errors import CheckpointError, CVAEError, DataError
from cvae.estimators import MAX_IW_SAMPLES, iwae_per_image
from cvae.evaluate import cli as evaluate_cli
from cvae.generate import load_model
from cvae.runs import RunDir, fresh_run_path, read_json
from cvae.train import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(arch="mlp", mlp_hidden=(32,), train_subset=128, test_subset=64, latent_subset=32, batch_size=64,
             latent_dim=2, threads=1, quiet=True)  # fmt: skip


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cvae.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _one_line_exit_2(proc: subprocess.CompletedProcess, text: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert text in lines[0], lines[0]
    return lines[0]


def _pictures(root: Path, *, mode: str = "L", size: int = 8, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


# ------------------------------------------------------------ run folder: one writer, no overwrite


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert not run.is_locked()
    with run.lock():
        assert run.is_locked()
        with pytest.raises(CVAEError, match=rf"run r is training in another process \(pid {os.getpid()}\)"):
            run.lock()
    assert not run.is_locked()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from cvae.runs import RunDir; RunDir(Path(sys.argv[1])).lock(); "
                               "print('locked', flush=True); time.sleep(60)", str(run.path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CVAEError, match=f"pid {holder.pid}"):
            run.lock()
    finally:
        holder.kill()  # kill -9: no clean-up runs; the kernel drops the lock
        holder.wait()
    run.lock().release()


def test_a_new_run_never_overwrites_a_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    main(epochs=2, run_dir=str(run.path), **SMALL)
    before = {p: p.read_bytes() for p in (run.metrics_path, run.latest_checkpoint, run.epoch_checkpoint(2))}
    with pytest.raises(CVAEError, match=rf"already holds a run: continue it with python -m cvae.train -rp {run.path}"):
        main(epochs=1, run_dir=str(run.path), **SMALL)
    assert {p: p.read_bytes() for p in before} == before  # untouched
    proc = _cli("-e", "1", "--arch", "mlp", "--train-subset", "64", "--run-dir", str(run.path))
    _one_line_exit_2(proc, "--overwrite")
    main(epochs=1, run_dir=str(run.path), overwrite=True, **SMALL)  # explicit: replaced, nothing of the old left
    assert [r["epoch"] for r in run.read_metrics()] == [1] and not run.epoch_checkpoint(2).exists()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    first, second = fresh_run_path(tmp_path, "20260101-000000-MNIST"), fresh_run_path(tmp_path, "20260101-000000-MNIST")
    assert first.path != second.path and second.id == "20260101-000000-MNIST-2"


def _start_pair(folder: Path, data: list[str]) -> list[subprocess.CompletedProcess]:
    args = [*data, "-z", "2", "--arch", "mlp", "-e", "1", "-b", "16", "--threads", "1", "-q", "--run-dir", str(folder)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda _: _cli(*args, timeout=300), range(2)))


# The default suite starts each pair 6 times (label) and 5 times (quadrants); the twenty run with -m slow.
TWO_TRAINERS = [pytest.param("label", 6, id="label-6"), pytest.param("quadrants", 5, id="quadrants-5"),
                pytest.param("label", 20, id="label-20", marks=pytest.mark.slow)]  # fmt: skip


@pytest.mark.parametrize(("condition", "trials"), TWO_TRAINERS)
def test_two_trainers_on_one_folder_twenty_times(tmp_path: Path, condition: str, trials: int) -> None:
    """Started at once on one folder: exactly one trains, the other exits 2 with one line; nothing is mixed."""
    if condition == "label":
        data = ["-d", str(_pictures(tmp_path / "pictures")), "--data-dir", str(tmp_path / "data")]
    else:  # the paper's completion model on 32 MNIST digits: the same lock and files
        data = ["--condition", "quadrants", "--mlp-hidden", "16", "--train-subset", "32", "--test-subset", "16"]
    refusals = set()
    for trial in range(trials):
        run = RunDir(tmp_path / f"run{trial:02d}")
        procs = _start_pair(run.path, data)
        assert sorted(p.returncode for p in procs) == [0, 2], [p.stderr for p in procs]
        loser = next(p for p in procs if p.returncode == 2)
        line = _one_line_exit_2(loser, "")
        assert "is training in another process (pid " in line or "already holds a run" in line, line
        refusals.add("the lock" if "pid" in line else "the finished run in the folder")
        assert [r["epoch"] for r in run.read_metrics()] == [1]  # one line per epoch, from one model
        assert len(run.read_batches()) == len(run.metrics_path.read_text().splitlines()) * 2  # 20 images / 16
        assert validate_checkpoint(load_checkpoint(run.path), expect_config=run.read_config())["epoch"] == 1
        assert read_json(run.status_path)["state"] == "finished"
    print(f"\ntwo trainers, {trials} trials: the second was refused by {sorted(refusals)}")


def test_resume_never_mixes_two_runs(tmp_path: Path) -> None:
    mnist = RunDir(tmp_path / "mnist")
    main(epochs=1, run_dir=str(mnist.path), **SMALL)
    rgb = RunDir(tmp_path / "rgb")
    main(dataset=str(_pictures(tmp_path / "pictures", mode="RGB")), decoder_type="Gaussian", epochs=1,
         run_dir=str(rgb.path), data_dir=str(tmp_path / "data"), **{**SMALL, "train_subset": None})  # fmt: skip
    before = {p.name: p.read_bytes() for p in (mnist.config_path, mnist.metrics_path, mnist.latest_checkpoint)}
    proc = _cli("-rp", str(rgb.latest_checkpoint), "--run-dir", str(mnist.path), "-e", "1", "-q")
    _one_line_exit_2(proc, "checkpoint field config.model.channels is 3 but the run folder's config.json has 1")
    stray = mnist.checkpoints / "from_another_run.pt"  # another run's checkpoint copied into the folder
    stray.write_bytes(rgb.latest_checkpoint.read_bytes())
    mnist.latest_checkpoint.rename(mnist.checkpoints / "mine.pt")
    stray.rename(mnist.latest_checkpoint)
    _one_line_exit_2(_cli("-rp", str(mnist.path), "-e", "1", "-q"), "the checkpoint is of another run")
    (mnist.checkpoints / "mine.pt").replace(mnist.latest_checkpoint)
    assert {p.name: p.read_bytes() for p in (mnist.config_path, mnist.metrics_path, mnist.latest_checkpoint)} == before


# ------------------------------------------------------------- checkpoints


def test_wrong_shape_names_the_tensor_everywhere(tmp_path: Path, tiny_run: Path) -> None:
    payload = load_checkpoint(tiny_run)
    name = next(iter(payload["model"]))
    payload["model"][name] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    save_checkpoint(path, {k: v for k, v in payload.items() if k != "format_version"})
    with pytest.raises(CheckpointError, match=rf"checkpoint field model\.{name} has shape \(3, 3\) but the model's"):
        load_model(path)
    _one_line_exit_2(_cli("-rp", str(path), "--run-dir", str(tmp_path / "new"), "-e", "1"), f"model.{name}")
    assert not (tmp_path / "new").exists() or not RunDir(tmp_path / "new").exists()


def test_segfault_checkpoint_is_refused_and_the_folder_untouched(tmp_path: Path, tiny_run: Path) -> None:
    """The issue's crash: Adam moments of the wrong shape in a weights-only checkpoint (exit 139 before)."""
    import shutil

    shutil.copytree(tiny_run, tmp_path / "r")
    run = RunDir(tmp_path / "r")
    payload = load_checkpoint(run.path)
    for state in payload["optimizer"]["state"].values():
        state["exp_avg"] = state["exp_avg"].reshape(-1)[:1].clone()
    save_checkpoint(run.latest_checkpoint, {k: v for k, v in payload.items() if k != "format_version"})
    before = {p.name: p.read_bytes() for p in (run.config_path, run.metrics_path, run.status_path)}
    for precision in ("auto", "fp32"):
        proc = _cli("-rp", str(run.path), "-e", "1", "--precision", precision)
        _one_line_exit_2(proc, "checkpoint field optimizer.state.0.exp_avg has shape (1,)")
    assert {p.name: p.read_bytes() for p in (run.config_path, run.metrics_path, run.status_path)} == before


# ------------------------------------------------------------ exit codes


@pytest.mark.parametrize(("sig", "code", "condition"), [
    (signal.SIGINT, 130, "label"), (signal.SIGTERM, 143, "label"), (signal.SIGINT, 130, "quadrants"),
    (signal.SIGTERM, 143, "none"),
])  # fmt: skip
def test_a_stop_is_told_apart_from_a_finish(tmp_path: Path, sig: signal.Signals, code: int, condition: str) -> None:
    run = RunDir(tmp_path / "r")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    extra = ["--condition", condition, "--mlp-hidden", "64"] if condition != "label" else []
    proc = subprocess.Popen([sys.executable, "-m", "cvae.train", *extra, "-z", "2", "--arch", "mlp", "-e", "500",
                             "--train-subset", "256", "--test-subset", "64", "-b", "32", "--threads", "1", "-q",
                             "--run-dir", str(run.path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not run.latest_checkpoint.is_file():
        time.sleep(0.1)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code, proc.stderr.read()
    status = read_json(run.status_path)
    assert status["state"] == "stopped" and status["signal"] == sig.name
    assert "resume with" in proc.stderr.read()
    kept = validate_checkpoint(load_checkpoint(run.path), expect_config=run.read_config())["epoch"]
    assert kept >= 1 and status["epoch"] == kept  # the last finished epoch is kept, and the status says which


def test_sigterm_while_loading_exits_143(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "import signal, os, sys; from cvae import train, training; "
                             "training.load_data = lambda c: os.kill(os.getpid(), signal.SIGTERM); "
                             "sys.exit(train.cli(['--arch', 'mlp', '-e', '1', '--run-dir', sys.argv[1]]))",
                             str(tmp_path / "r")], cwd=ROOT, env=env)  # fmt: skip
    assert proc.wait(timeout=120) == 143


# ------------------------------------------------------------ image folders


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header) with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


@pytest.mark.parametrize("side", [20_000, 10_000], ids=["over-2x-the-limit", "between-1x-and-2x"])
def test_decompression_bomb_as_the_first_image(tmp_path: Path, side: int) -> None:
    root = tmp_path / "d"
    for split in ("train", "test"):
        _pictures(root / split)
    (root / "train" / "a" / "0.png").write_bytes(_png_header(side, side))  # the first image read
    with pytest.raises(DataError, match="decompression bomb"):
        load_image_folder(root)
    with pytest.raises(DataError, match="decompression bomb"):
        peek_info(DataConfig(dataset=str(root)))
    proc = _cli("-d", str(root), "-t", "Gaussian", "--arch", "mlp", "-e", "1", "--data-dir", str(tmp_path / "data"))
    _one_line_exit_2(proc, "(a decompression bomb?)")


def test_a_refused_data_set_is_not_cached(tmp_path: Path) -> None:
    rgb = _pictures(tmp_path / "rgb", mode="RGB")
    proc = _cli("-d", str(rgb), "--arch", "mlp", "-e", "1", "--data-dir", str(tmp_path / "data"),
                "--run-dir", str(tmp_path / "r"))  # fmt: skip
    _one_line_exit_2(proc, "the Bernoulli decoder models black-and-white")
    assert not (tmp_path / "data").exists() and not (tmp_path / "r").exists()


def test_peek_info_is_what_loading_gives(tmp_path: Path) -> None:
    folder = _pictures(tmp_path / "grey", size=12)
    for config in (DataConfig(dataset="MNIST", train_subset=8, test_subset=8),
                   DataConfig(dataset=str(folder), data_dir=str(tmp_path / "data"), image_size=8)):  # fmt: skip
        assert peek_info(config) == load_data(config).info


# ------------------------------------------------------------ evaluation


def test_evaluate_k_has_a_maximum(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_cli([str(tiny_run), "-k", str(MAX_IW_SAMPLES + 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"0 (skip) to {MAX_IW_SAMPLES}" in err
    assert evaluate_cli([str(tiny_run), "--max-rows", "1000000000"]) == 2
    assert "--max-rows must be 1 to" in capsys.readouterr().err


def test_importance_sampling_memory_is_bounded_by_batching(tiny_run: Path) -> None:
    model = load_model(tiny_run)
    rows = []
    decode = model.decode

    def counting_decode(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows.append(len(z))
        return decode(z, labels)

    model.decode = counting_decode  # the real decoder, watched: how many rows each pass gets
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    result = iwae_per_image(model, x, torch.tensor([0, 1, 2]), k=MAX_IW_SAMPLES, max_rows=512)
    assert max(rows) <= 512 and sum(rows) == 3 * MAX_IW_SAMPLES and torch.isfinite(result.log_px).all()
    with pytest.raises(CVAEError, match=f"1 to {MAX_IW_SAMPLES}"):
        iwae_per_image(model, x, torch.tensor([0, 1, 2]), k=MAX_IW_SAMPLES + 1)


def test_meta_device_size_check_on_resume(tmp_path: Path, tiny_run: Path) -> None:
    payload = load_checkpoint(tiny_run)
    payload["config"]["model"]["mlp_hidden"] = [1_000_000, 1_000_000]
    path = tmp_path / "huge.pt"
    save_checkpoint(path, {k: v for k, v in payload.items() if k != "format_version"})
    proc = _cli("-rp", str(path), "--run-dir", str(tmp_path / "r"), "-e", "1")
    _one_line_exit_2(proc, "parameters (at most 200,000,000)")  # counted on the meta device: nothing allocated
