"""The measured time estimate (cvae.estimate): what it measures, its command line, and the form that uses it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cvae import estimate, jobs
from cvae.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
SMALL = {"arch": "mlp", "mlp_hidden": (64,), "latent_dim": 2, "train_subset": 640, "test_subset": 200, "epochs": 3,
         "batch_size": 64}  # fmt: skip


def test_the_estimate_is_one_measured_epoch_of_the_real_loop_scaled_to_the_run() -> None:
    got = estimate.measure(SMALL, threads=1)
    assert got.batches == 10 and got.epochs == 3 and got.threads == 1  # 640 images in batches of 64
    assert 0 < got.per_batch < 5 and got.other > 0 and got.startup > 0 and got.final == 0  # no refined ELBO asked
    live = 1 + 0.05  # the live pictures' share of the training time, at most
    assert got.per_epoch == pytest.approx(got.batches * got.per_batch * live + got.other)
    assert got.seconds == pytest.approx(got.startup + got.epochs * got.per_epoch)
    assert got.images_per_s == pytest.approx(64 / got.per_batch)
    # The data's real size decides the batches (CIFAR-10: 50,000 images), and a refined ELBO is timed apart.
    cifar = estimate.measure({**SMALL, "dataset": "CIFAR10", "decoder_type": "gaussian", "train_subset": None,
                              "test_subset": 100, "refine_steps": 2, "epochs": 1}, threads=1)  # fmt: skip
    assert cifar.batches == 782 and cifar.final > 0
    assert cifar.seconds == pytest.approx(cifar.startup + cifar.per_epoch + cifar.final)


def test_the_command_line_prints_one_json_object_or_one_line_errors(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cvae", "estimate", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    done = cli("--json", *jobs.build_argv(SMALL), "--runs_root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert set(got) == {f.name for f in estimate.dataclasses.fields(estimate.Estimate)} and got["batches"] == 10
    for args, words in [(("--latent_dim", "0"), "latent_dim must be"), (("--run_dir", "x"), "does not change"),
                        (("-d", str(tmp_path / "nothing")), "does not exist"), (("--nice", "40"), "--nice must")]:  # fmt: skip
        done = cli(*args)
        assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1, args
    assert not list(tmp_path.iterdir())  # measuring writes nothing in the runs folder


def _run_until(at: AppTest, text: str, seconds: float = 240) -> AppTest:
    """Rerun the page (as its polling fragment does) until `text` shows."""
    deadline = time.time() + seconds
    while True:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown = "\n".join(str(e.value) for kind in ("markdown", "caption") for e in getattr(at, kind))
        if text in shown or time.time() > deadline:
            return at
        time.sleep(1)


def test_the_form_starts_from_settings_sized_to_this_server_and_says_their_measured_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ui import train_form

    monkeypatch.setenv("CVAE_ESTIMATE", "1")
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(train_form, "FORM_BUDGET_S", 1.0)  # no conv net trains in a second here: the MLP
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert "Measuring this server's speed" in "\n".join(c.value for c in at.caption)  # the page did not wait
    at = _run_until(at, "About")
    assert at.radio(key="f_arch").value == "mlp" and at.number_input(key="f_epochs").value == 1  # even 1 is over
    said = "\n".join(str(e.value) for e in at.caption) + "\n".join(str(e.value) for e in at.markdown)
    assert "The reference's conv net would take" in said and "on this server" in said
    started = []
    monkeypatch.setattr(jobs, "start", lambda root, opts, **kw: started.append(opts) or RunDir(root / "x"))
    at.button(key="start").click().run()
    assert started == [{"arch": "mlp", "epochs": 1}]  # what the form showed is what starts
    # A setting the class has not measured yet is measured in its turn, and shown.
    at.number_input(key="f_latent_dim").set_value(3).run()
    assert "Measuring these settings" in "\n".join(c.value for c in at.caption)
    at = _run_until(at, "About")
    assert "About" in "\n".join(str(e.value) for e in at.markdown)


def test_the_quick_demo_sizes_its_epochs_to_the_runs_sharing_the_server() -> None:
    from cvae.training import resolve_options

    alone = estimate.Estimate(seconds=89.0, epochs=12, per_epoch=7.0, batches=469, per_batch=0.014, other=0.4,
                              startup=2.0, final=3.0, threads=2, images_per_s=9000.0)  # fmt: skip
    assert estimate.sized_quick_demo(alone, sharing=0) == jobs.QUICK_DEMO_OPTIONS  # alone: the preset's 12
    assert estimate.sized_quick_demo(None, sharing=29) == jobs.QUICK_DEMO_OPTIONS  # not measured: as it is
    four = estimate.sized_quick_demo(alone, sharing=4)  # 180 s / 5 runs = 36 s each: 2 + 3 + 4 x 7
    assert four == {**jobs.QUICK_DEMO_OPTIONS, "epochs": 4}
    jobs.check_options(four)
    assert resolve_options(four)["epochs"] == 4 and resolve_options(four)["lr_schedule"] == "cosine"
    assert estimate.sized_quick_demo(alone, sharing=29)["epochs"] == 1  # thirty at once: one epoch each, not none
