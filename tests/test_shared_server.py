"""Run folders on a shared server: one hostile file is its own run's problem, a resume never trains on from a
stale checkpoint beside a live trainer, and --overwrite clears one run folder only."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cvae.checkpoints import load_checkpoint
from cvae.runs import JsonlTail, RunDir, read_json, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
NESTED = b"[" * 200_000 + b"]" * 200_000  # 400 KB of brackets: json.loads raises RecursionError on it
TINY = ["-z", "2", "--arch", "mlp", "--mlp-hidden", "32", "--train-subset", "256", "--test-subset", "64",
        "--latent-subset", "32", "-b", "32", "--threads", "1", "-q", "--device", "cpu"]  # fmt: skip


def _cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cvae.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _trainer(run: RunDir, env: dict) -> subprocess.Popen:
    """A long training run into `run`, once its first checkpoint is on disk."""
    trainer = subprocess.Popen([sys.executable, "-m", "cvae.train", *TINY, "-e", "5000", "--run-dir", str(run.path)],
                               cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not run.latest_checkpoint.is_file():
        time.sleep(0.05)
    return trainer


def _one_line_exit_2(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and text in proc.stderr, proc.stderr


def test_readers_are_total_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(NESTED)
    assert read_json(path) is None  # not a RecursionError
    path.write_bytes(b'{"a": "' + b"x" * (5 << 20) + b'"}')  # over the size any run file has
    assert read_json(path) is None
    path.write_bytes(b'{"epoch": 3}')
    assert read_json(path) == {"epoch": 3}
    lines = tmp_path / "metrics.jsonl"
    lines.write_bytes(b'{"epoch": 1}\n' + NESTED + b"\n" + b'{"epoch": 2, "x": "' + b"y" * (3 << 20) + b'"}\n'
                      + b'{"epoch": 3}\n{"epoch": 4')  # fmt: skip
    assert read_jsonl(lines) == [{"epoch": 1}, {"epoch": 3}]  # nesting and an overlong line skipped, torn tail too
    tail = JsonlTail(lines, "epoch")
    assert [r["epoch"] for r in tail.read()[0]] == [1, 3]
    with open(lines, "ab") as fh:
        fh.write(b"}\n")  # the torn line completes
    assert [r["epoch"] for r in tail.read()[0]] == [1, 3, 4]


def test_a_hostile_run_file_leaves_every_other_run_and_page_working(tmp_path: Path, tiny_run: Path) -> None:
    root = tmp_path / "runs"
    for name in ("good", "nested-status", "nested-config", "nested-metrics"):
        shutil.copytree(tiny_run, root / name)
    (root / "nested-status" / "status.json").write_bytes(NESTED)
    (root / "nested-config" / "config.json").write_bytes(NESTED)
    with open(root / "nested-metrics" / "metrics.jsonl", "ab") as fh:
        fh.write(NESTED + b"\n")
    old = os.environ.get("CVAE_RUNS_DIR")
    os.environ["CVAE_RUNS_DIR"] = str(root)
    try:
        for run in ("good", "nested-status", "nested-config", "nested-metrics"):
            for page in ("app_pages/train.py", "app_pages/compare.py", "app_pages/latent.py"):
                at = AppTest.from_file(APP, default_timeout=60)
                at.query_params["run"] = run
                at.query_params["runs"] = f"good,{run}"
                at.run()
                at.switch_page(page).run()
                assert not at.exception, (run, page, [e.value for e in at.exception])
    finally:
        if old is None:
            os.environ.pop("CVAE_RUNS_DIR", None)
        else:
            os.environ["CVAE_RUNS_DIR"] = old


def test_resume_of_a_run_with_an_unreadable_config_is_refused_and_writes_nothing(tmp_path: Path,
                                                                              tiny_run: Path) -> None:  # fmt: skip
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    (run / "config.json").write_bytes(NESTED)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    _one_line_exit_2(_cli("-rp", str(run), "-e", "1", "-q"), "config.json is unreadable")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}


# Each data-loss sequence runs a few times in the suite and 20 times, at other random moments, with -m slow.
TRIALS = [pytest.param(3, id="3"), pytest.param(20, id="20", marks=pytest.mark.slow)]


@pytest.mark.parametrize("trials", TRIALS)
def test_a_resume_beside_a_live_trainer_is_refused_and_loses_nothing(tmp_path: Path, trials: int) -> None:
    """At random moments of a trainer's life: the resume exits 2 in one line, the trainer's epochs go on in
    order, and the checkpoint is never rolled back."""
    rng = random.Random(trials)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(trials):
        run = RunDir(tmp_path / f"r{trial}")
        trainer = _trainer(run, env)
        time.sleep(rng.uniform(0, 2))
        resume = _cli("-rp", str(run.path), "-e", "1", "-q")
        assert trainer.poll() is None, "the trainer must still be training for this to mean anything"
        _one_line_exit_2(resume, "is training in another process")
        trainer.terminate()
        assert trainer.wait(timeout=60) == 143, trainer.stderr.read()
        epochs = [r["epoch"] for r in run.read_metrics()]
        assert epochs == list(range(1, len(epochs) + 1)) and epochs
        assert read_json(run.status_path)["epoch"] == epochs[-1]


@pytest.mark.parametrize("trials", TRIALS)
def test_overwrite_beside_a_live_run_never_clears_it(tmp_path: Path, trials: int) -> None:
    """`--run-dir . --overwrite` from the folder above the runs root, at random moments while another user's
    run trains there: refused each time in one line, and that run trains on, its epochs in order."""
    rng = random.Random(trials)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    home = tmp_path / "home"
    other = RunDir(home / "checkpoints" / "someone-elses-run")
    trainer = subprocess.Popen([sys.executable, "-m", "cvae.train", *TINY, "-e", "5000", "--run-dir",
                                str(other.path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not other.latest_checkpoint.is_file():
            time.sleep(0.05)
        for _ in range(trials):
            time.sleep(rng.uniform(0, 1))
            _one_line_exit_2(_cli(*TINY, "-e", "1", "--run-dir", ".", "--overwrite", cwd=home), "refusing to overwrite")
            assert trainer.poll() is None and other.latest_checkpoint.is_file()
    finally:
        trainer.terminate()
    assert trainer.wait(timeout=60) == 143, trainer.stderr.read()
    epochs = [r["epoch"] for r in other.read_metrics()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2


def test_overwrite_never_clears_a_folder_of_runs(tmp_path: Path, tiny_run: Path) -> None:
    """`--run-dir . --overwrite` from a folder whose checkpoints/ is the runs root: refused, nothing deleted."""
    home = tmp_path / "home"
    shutil.copytree(tiny_run, home / "checkpoints" / "someone-elses-run")
    (home / "metrics.jsonl").write_text('{"epoch": 1}\n')  # the folder looks as if it held a run of its own
    proc = _cli(*TINY, "-e", "1", "--run-dir", ".", "--overwrite", cwd=home)
    _one_line_exit_2(proc, "refusing to overwrite")
    assert (home / "checkpoints" / "someone-elses-run" / "checkpoints" / "latest.pt").is_file()
    parent = tmp_path / "parent"
    shutil.copytree(tiny_run, parent / "inner-run")
    (parent / "metrics.jsonl").write_text('{"epoch": 1}\n')
    _one_line_exit_2(_cli(*TINY, "-e", "1", "--run-dir", str(parent), "--overwrite"), "holds another run folder")
    assert (parent / "inner-run" / "config.json").is_file()
    own = tmp_path / "own"
    shutil.copytree(tiny_run, own)
    assert _cli(*TINY, "-e", "1", "--run-dir", str(own), "--overwrite").returncode == 0  # one run: replaced
    assert [r["epoch"] for r in RunDir(own).read_metrics()] == [1]


@pytest.mark.parametrize("name", ["Übung 1 (Gruppe A)", "run with spaces"])
def test_run_folders_with_any_name_train_and_appear_in_the_app(tmp_path: Path, name: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    proc = _cli(*TINY, "-e", "1", "--run-dir", str(tmp_path / name))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = name
    at.run()
    assert not at.exception and at.session_state["current_run"] == name
    assert not any("No run called" in w.value for w in at.sidebar.warning)


@pytest.mark.parametrize("trials", TRIALS)
def test_a_run_folder_moved_while_it_trains_is_not_made_again(tmp_path: Path, trials: int) -> None:
    """mv of a training run's folder at a random moment: the trainer stops with one line and exit 2, writes
    nothing at the old path, and the moved folder holds whole epochs that resume there, with one writer."""
    rng = random.Random(trials)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(trials):
        run, moved = RunDir(tmp_path / f"r{trial}"), RunDir(tmp_path / f"moved{trial}")
        trainer = _trainer(run, env)
        time.sleep(rng.uniform(0, 2))
        run.path.rename(moved.path)
        assert trainer.wait(timeout=120) == 2
        err = trainer.stderr.read()
        assert err.count("\n") == 1 and "was moved or deleted while it trained" in err, err
        time.sleep(1.5)  # longer than the trainer's status interval: nothing comes back
        assert not run.path.exists()
        epochs = [r["epoch"] for r in moved.read_metrics()]
        assert epochs and epochs == list(range(1, len(epochs) + 1))
        # Moved between an epoch's checkpoint and its metrics line, the checkpoint is one epoch ahead: the
        # resume writes that line back from it, then trains one epoch more.
        saved = load_checkpoint(moved.path)["epoch"]
        assert saved in (epochs[-1], epochs[-1] + 1)
        assert _cli("-rp", str(moved.path), "-e", "1", "-q").returncode == 0
        assert [r["epoch"] for r in moved.read_metrics()] == list(range(1, saved + 2))  # one writer, in order


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cvae.runs import write_atomic

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as the kernel reports it: no file name

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "checkpoints" / "latest.pt"
    with pytest.raises(OSError) as caught:
        write_atomic(target, b"x" * 10)
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert not target.exists() and not list(target.parent.glob(".latest.pt.*"))  # no half file, no temporary


def _loading_torch(pid: int) -> bool:
    """Whether the process has begun to load torch's libraries (it is past the interpreter's start-up)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# The later delays land in the set-up after the import (the data, the model, torch's lazy imports at its first
# operations), where a Python handler's KeyboardInterrupt could be swallowed by a callback (the run then trained
# on and exited 0) or end the process by SIGINT at exit (-2).
@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8, 1.5, 2.2, 3.0])
def test_ctrl_c_while_torch_loads_exits_130_without_a_traceback(tmp_path: Path, delay: float) -> None:
    import signal

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cvae.train", "--quick-demo", "-q", "--run-dir",
                             str(tmp_path / "r")], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    # The signal lands while torch loads (seconds), timed from the first of its libraries being mapped: a fixed
    # delay from the start can, on a loaded machine, land before the interpreter has installed its handlers.
    deadline = time.time() + 60
    while not _loading_torch(proc.pid) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    said = proc.stderr.read()
    assert "Traceback" not in said and "Exception ignored" not in said
    # It says to resume only a run that has a checkpoint to resume from.
    assert ("resume with" in said) == (tmp_path / "r" / "checkpoints" / "latest.pt").is_file()


def test_only_a_runs_owner_or_a_lecturer_renames_it(tmp_path: Path) -> None:
    from cvae.classroom import NotAllowed, User
    from cvae.names import read_meta, write_meta
    from cvae.runs import write_json

    run = tmp_path / "r"
    run.mkdir()
    write_json(run / "owner.json", {"owner": "alice"})
    write_meta(run, name="alice's", note="", user=User("alice"))
    with pytest.raises(NotAllowed, match="alice's run"):
        write_meta(run, name="bob's now", note="mine", user=User("bob"))
    assert read_meta(run) == {"name": "alice's", "note": ""}
    write_meta(run, name="checked", note="", user=User("prof", "lecturer"))
    assert read_meta(run)["name"] == "checked"
    write_meta(run, name="on a laptop", note="", user=None)  # sign-in off: every run is everyone's
    assert read_meta(run)["name"] == "on a laptop"


def test_a_linked_class_folder_that_repeats_pictures_is_refused(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from cvae.config import DataConfig
    from cvae.data import load_data
    from cvae.errors import DataError

    root = tmp_path / "pictures"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link back to the folder itself
    with pytest.raises(DataError, match="inside or above the image folder"):
        load_data(DataConfig(dataset=str(root), data_dir=str(tmp_path / "data")))
    (root / "loop").unlink()
    (root / "again").symlink_to(root / "a", target_is_directory=True)  # a second name for class a
    with pytest.raises(DataError, match="inside or above the image folder"):
        load_data(DataConfig(dataset=str(root), data_dir=str(tmp_path / "data")))
    (root / "again").unlink()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "b", elsewhere)
    (root / "c").symlink_to(elsewhere, target_is_directory=True)  # a link to pictures of its own: a class
    (root / "d").symlink_to(elsewhere, target_is_directory=True)  # and a second link to the same pictures
    with pytest.raises(DataError, match="are the same folder"):
        load_data(DataConfig(dataset=str(root), data_dir=str(tmp_path / "data")))
    (root / "d").unlink()
    assert load_data(DataConfig(dataset=str(root), data_dir=str(tmp_path / "data"))).info.class_names == ("a", "b", "c")
    proc = _cli("-d", str(root / "c" / ".." / "loop"), "-e", "1", "-q")  # a missing folder: one line, as before
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
