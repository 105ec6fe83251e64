"""The bounds ladder and its gaps (cvae.bounds): against the exact linear-Gaussian model, against
`evaluate_checkpoint`'s own figures, through `cvae evaluate --bounds`, from crafted files, in a background
process, and on the Train page."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_evaluate import LinearGaussian  # the exact model: log p(x | y) and its ELBOs in closed form

from cvae import bounds
from cvae.bounds import Bounds, Figure, bounds_of, measure_bounds, measure_checkpoint, read_bounds, read_status
from cvae.classroom import NotAllowed, User
from cvae.errors import ConfigError
from cvae.estimators import iwae_per_image
from cvae.evaluate import cli, evaluate_checkpoint
from cvae.runs import RunDir, process_identity, write_json
from cvae.train import main as train

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> RunDir:
    """A copy of the finished tiny run (its folder is shared by other tests: never written to)."""
    shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")
    return RunDir(tmp_path / "runs" / "tiny")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ------------------------------------------------------------------ the figures


def test_the_ladder_on_the_exact_model() -> None:
    """A mis-set encoder on a model whose posterior is a diagonal Gaussian: the amortization gap is all of the
    inference gap, the approximation gap is 0, and fitting q per image reaches log p(x | y)."""
    lg = LinearGaussian()
    x, y = lg.sample(400)
    model = lg.model(std_scale=1.8, mu_shift=0.4)
    exact = float(-lg.log_px(x, y).mean())
    closed = float(-lg.elbo(x, y, *lg.posterior(x, y, 1.8, 0.4)).mean())  # the encoder's -ELBO, exactly
    b = measure_bounds(model, x, y, k=100, gap_steps=300)
    iwae = dict(b.iwae)
    assert list(iwae) == [1, 10, 100] and b.k == 100 and b.test_images == 400 and b.scored == "whole image"
    assert closed - exact > 0.5  # a real gap to measure
    assert abs(b.nelbo_encoder.nats - closed) < 0.05  # 256 draws of the encoder's q
    assert iwae[1].nats > iwae[10].nats > iwae[100].nats > exact - 0.01  # tighter with K, never past log p
    assert abs(b.nelbo_refined.nats - exact) < 0.03  # the fitted q is the exact posterior
    assert abs(b.iwae_refined.nats - exact) < 0.01 and b.tightest == "refined"
    assert b.amortization_gap.nats == pytest.approx(b.nelbo_encoder.nats - b.nelbo_refined.nats, abs=1e-9)
    assert b.approximation_gap.nats == pytest.approx(b.nelbo_refined.nats - b.iwae_refined.nats, abs=1e-9)
    assert b.amortization_gap.nats == pytest.approx(closed - exact, abs=0.05)
    assert abs(b.approximation_gap.nats) < 0.03  # a Gaussian q misses nothing here
    assert 0 < b.amortization_gap.se < b.nelbo_encoder.se  # a paired difference: known far better than a level


def test_iwae_at_k_1_is_the_elbo_in_expectation() -> None:
    """K = 1 is the encoder's -ELBO estimated with one draw (its KL sampled): on 4,000 images it is the closed-form
    -ELBO within the draws' noise, and so is the ladder's one-z -ELBO (its KL analytic)."""
    lg = LinearGaussian()
    x, y = lg.sample(4000, seed=2)
    model = lg.model(std_scale=1.8, mu_shift=0.4)
    closed = -lg.elbo(x, y, *lg.posterior(x, y, 1.8, 0.4))  # per image, exact
    b = measure_bounds(model, x, y, k=1, gap_steps=1)
    one_draw = -iwae_per_image(model, x, y, k=1).log_px
    assert [k for k, _ in b.iwae] == [1] and b.iwae[0][1].nats == float(one_draw.mean())
    noise = float((one_draw - closed).std()) / math.sqrt(len(x))  # the draws' noise alone: closed is exact
    assert abs(b.iwae[0][1].nats - float(closed.mean())) < 4 * noise
    assert abs(b.nelbo.nats - float(closed.mean())) < 4 * noise


def test_progress_rises_step_by_step_to_the_end() -> None:
    """A progress bar's figures: the fit reports every Adam step (most of the work), then each bound."""
    lg = LinearGaussian()
    x, y = lg.sample(40)
    told: list[tuple[str, float]] = []
    measure_bounds(lg.model(), x, y, k=10, gap_steps=20, progress=lambda stage, share: told.append((stage, share)))
    shares = [share for _, share in told]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0 and told[-1][0] == "done"
    fitting = [share for stage, share in told if stage.startswith("fitting q")]
    assert len(fitting) == 21 and 0.5 < fitting[-1] < 1  # its start, then each of the 20 steps


def test_the_figures_are_evaluate_checkpoints(tiny_run: Path) -> None:
    """Same estimators, seed and images as `cvae evaluate -k K --gap-images N`: the very same numbers; and on a
    real model the ladder is ordered as theory says."""
    epoch, b = measure_checkpoint(tiny_run, k=100, test_images=64, gap_steps=20, save=False)
    assert epoch == 2 and not (tiny_run / bounds.BOUNDS_FILE).exists()
    full = evaluate_checkpoint(tiny_run, iw_samples=100, test_subset=64, gap_images=64, gap_steps=20)
    assert b.nelbo.nats == full["nelbo"] and b.nelbo.se == full["nelbo_se"]
    assert b.nelbo_encoder.nats == full["gap_nelbo_amortized"]
    assert b.nelbo_refined.nats == full["gap_nelbo_optimized"]
    assert b.amortization_gap.nats == pytest.approx(full["amortization_gap"], rel=1e-12)
    iwae = dict(b.iwae)
    assert iwae[100].nats == full["iwae_nll"] and iwae[100].se == full["iwae_nll_se"]
    for k in (1, 10):
        assert iwae[k].nats == evaluate_checkpoint(tiny_run, iw_samples=k, test_subset=64)["iwae_nll"]
    assert iwae[1].nats > iwae[10].nats > iwae[100].nats  # larger K, tighter (far beyond the paired noise)
    assert b.nelbo_refined.nats < b.nelbo_encoder.nats and b.approximation_gap.nats >= 0
    assert b.tightest_bound.nats == min(iwae[100].nats, b.iwae_refined.nats)


def test_a_random_count_completion_run_averages_the_three_counts(tmp_path: Path) -> None:
    run = train(dataset="MNIST", condition="quadrants", quadrants=0, latent_dim=2, epochs=1, batch_size=32,
                arch="mlp", mlp_hidden=(32,), train_subset=128, test_subset=32, latent_subset=16, quiet=True,
                threads=1, run_dir=str(tmp_path / "completion")).run_dir  # fmt: skip
    _, b = measure_checkpoint(run, k=10, test_images=32, gap_steps=5, save=False)
    full = evaluate_checkpoint(run, iw_samples=10, test_subset=32, gap_images=32, gap_steps=5)
    assert b.scored == "hidden pixels" and full["quadrants"] == 0
    assert b.nelbo.nats == pytest.approx(full["nelbo"], rel=1e-12)  # the mean of 1, 2 and 3 quadrants given
    assert dict(b.iwae)[10].nats == pytest.approx(full["iwae_nll"], rel=1e-12)
    assert b.amortization_gap.nats == pytest.approx(full["amortization_gap"], rel=1e-12)


# ------------------------------------------------------------------ the command line


def test_cli_measures_prints_and_keeps_the_bounds(run: RunDir, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(run.path), "--bounds", "--test-subset", "32", "-k", "10", "--gap-steps", "5"]
    assert cli([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epoch"] == 2 and [r["k"] for r in printed["iwae"]] == [1, 10] and printed["test_images"] == 32
    kept = read_bounds(run)
    assert list(kept) == [2] and kept[2].to_dict() == {k: v for k, v in printed.items() if k != "epoch"}
    assert bounds_of(run, 2) == kept[2] and read_status(run)["state"] == "finished"
    assert cli(argv) == 0  # the table: the same figures, the gaps named
    table = capsys.readouterr().out
    assert f"{kept[2].amortization_gap.nats:.2f} ± {kept[2].amortization_gap.se:.2f} nats" in table
    assert "approximation gap" in table and "≥ " in table and "IWAE, K = 10, refined q" in table


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("bad", [["-k", "0"], ["-k", "6000"], ["-k", "ten"], ["--test-subset", "0"],
                                 ["--gap-steps", "0"], ["--gap-images", "5"], ["--precision", "bf16"],
                                 ["--nice", "40"], ["--max-rows", "0"]])  # fmt: skip
def test_cli_bad_values_are_one_line_and_change_nothing(run: RunDir, bad: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    before = _files(run.path)
    try:
        code = cli([str(run.path), "--bounds", *bad])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2, bad
    _one_line_error(capsys)
    assert _files(run.path) == before  # no bounds.json, no status: the run folder as it was


def test_cli_refuses_while_another_process_measures(run: RunDir, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_json(run.path / bounds.STATUS_FILE, {"state": "measuring", "pid": other.pid,
                                                   "process": process_identity(other.pid), "started": time.time()})  # fmt: skip
        assert bounds.measuring(run)
        assert cli([str(run.path), "--bounds", "--test-subset", "8", "-k", "2", "--gap-steps", "2"]) == 2
        assert f"pid {other.pid}" in _one_line_error(capsys) and not (run.path / bounds.BOUNDS_FILE).exists()
    finally:
        other.kill()
        other.wait()
    assert not bounds.measuring(run)  # its process is gone: a stale status holds nothing up
    assert cli([str(tmp_path / "missing"), "--bounds"]) == 2
    _one_line_error(capsys)


def test_a_killed_measurement_says_it_stopped_and_keeps_nothing(run: RunDir) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cvae.evaluate", str(run.path), "--bounds", "--test-subset", "64",
                             "--gap-steps", "100000"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not read_status(run).get("stage", "").startswith("fitting") and time.time() < deadline:
        time.sleep(0.2)
    assert bounds.measuring(run)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM and "Traceback" not in proc.stderr.read()
    status = read_status(run)
    assert status["state"] == "failed" and status["message"] == "stopped before it finished"
    assert not bounds.measuring(run) and not (run.path / bounds.BOUNDS_FILE).exists()


# ------------------------------------------------------------------ the files, read as anyone could write them


def _a_measurement() -> Bounds:
    f = Figure(100.0, 1.0)
    return Bounds(test_images=10, seed=1, gap_steps=3, scored="whole image", density=False, nelbo=f,
                  nelbo_encoder=Figure(101.0, 1.0), nelbo_refined=Figure(99.0, 1.0), iwae=((1, f), (10, Figure(98.5, 1.0))),
                  iwae_refined=Figure(98.0, 1.0), tightest="refined", amortization_gap=Figure(2.0, 0.1),
                  approximation_gap=Figure(1.0, 0.05), measured=time.time(), seconds=5.0)  # fmt: skip


CRAFTED = [
    "not json", "[1, 2]", '{"2": "text"}', '{"two": {}}', '{"2": {"nelbo": 1}}', "{" * 100_000,
    *[json.dumps({"2": {**_a_measurement().to_dict(), **change}}) for change in (
        {"nelbo": {"nats": "NaN", "se": 1}}, {"nelbo": {"nats": 1e300, "se": 1}}, {"iwae_refined": {"nats": 1, "se": -1}},
        {"iwae": [{"k": 10, "nats": 1, "se": 1}, {"k": 1, "nats": 1, "se": 1}]}, {"iwae": []}, {"iwae": "1, 10"},
        {"iwae": [{"k": True, "nats": 1, "se": 1}]}, {"density": "yes"}, {"scored": "<b>all</b>"},
        {"tightest": None}, {"test_images": 0}, {"seed": -1}, {"measured": None}, {"gap_steps": 2.5},
    )],
]  # fmt: skip


@pytest.mark.parametrize("text", CRAFTED)
def test_a_crafted_bounds_file_reads_as_no_measurement(tmp_path: Path, text: str) -> None:
    run = RunDir(tmp_path)
    (tmp_path / bounds.BOUNDS_FILE).write_text(text)
    assert read_bounds(run) == {} and bounds_of(run, 2) is None


def test_good_entries_survive_a_bad_neighbour_and_a_resume_voids_what_it_retrains(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    good = _a_measurement()
    write_json(run.config_path, {"history": [{"time": good.measured - 100, "start_epoch": 0}]})
    write_json(tmp_path / bounds.BOUNDS_FILE, {"2": good.to_dict(), "3": {"nelbo": "x"}, "x": 1})
    assert read_bounds(run) == {2: good} and bounds_of(run, 2) == good
    bounds.save_bounds(run, 5, good)  # keeps the good entry, drops what could not be read
    assert sorted(json.loads((tmp_path / bounds.BOUNDS_FILE).read_text())) == ["2", "5"]
    history = [{"time": good.measured - 100, "start_epoch": 0}, {"time": good.measured + 1, "start_epoch": 3}]
    write_json(run.config_path, {"history": history})  # resumed from epoch 3, after the measurement
    assert bounds_of(run, 2) == good and bounds_of(run, 5) is None  # epoch 5 was trained again
    write_json(run.config_path, {"history": "crafted"})
    assert bounds_of(run, 5) == good


@pytest.mark.parametrize("status", [{"state": "measuring", "pid": "1"}, {"state": "dancing"}, [1],
                                    {"state": "measuring", "done": 7, "stage": "x" * 10_000, "started": "now"}])  # fmt: skip
def test_a_crafted_status_is_no_measurement_in_progress(tmp_path: Path, status: object) -> None:
    (tmp_path / bounds.STATUS_FILE).write_text(json.dumps(status))
    read = read_status(RunDir(tmp_path))
    assert not bounds.measuring(RunDir(tmp_path))
    assert read == {} or (read["done"] == 0.0 and read["stage"] == "" and "started" not in read)


# ------------------------------------------------------------------ in the background, as the app starts it


def test_start_measures_in_its_own_process_once_and_for_its_owner_only(run: RunDir) -> None:
    write_json(run.path / "owner.json", {"owner": "alice"})
    with pytest.raises(NotAllowed, match="alice's run"):
        bounds.start(run, User("bob"), test_images=8)
    run.write_status(state="running", pid=os.getpid())
    with pytest.raises(ConfigError, match="still training"):
        bounds.start(run, User("alice"), test_images=8)
    run.write_status(state="finished", pid=None)
    pid = bounds.start(run, User("alice"), test_images=8)
    assert bounds.measuring(run) and read_status(run)["pid"] == pid
    with pytest.raises(ConfigError, match="being measured already"):
        bounds.start(run, User("prof", "lecturer"), test_images=8)  # a second click, anyone's: one process
    deadline = time.time() + 240
    while bounds.measuring(run) and time.time() < deadline:
        time.sleep(0.5)
    status = read_status(run)
    assert status["state"] == "finished", (run.path / "bounds.log").read_text()
    measured = bounds_of(run, 2)
    assert measured is not None and measured.test_images == 8 and measured.k == bounds.BOUNDS_K
    assert [k for k, _ in measured.iwae] == [1, 10, 100, 1000] and measured.gap_steps == 300
    assert not math.isnan(measured.approximation_gap.nats)


# ------------------------------------------------------------------ the Train page


def _page(run_id: str, sign_in: tuple[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if sign_in:
        at.secrets["cvae"] = {"sign_in": "accounts"}
    at.query_params["run"] = run_id
    at.run()
    if sign_in:
        at.text_input(key="sign_in_name").input(sign_in[0])
        at.text_input(key="sign_in_password").input(sign_in[1])
        at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _text(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("error", "markdown", "caption") for e in getattr(at, kind))


def test_the_train_page_offers_draws_and_guards_the_bounds(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(run.path.parent))
    at = _page("tiny")
    assert "Bounds and gaps" in _text(at) and "measure_bounds" in {b.key for b in at.button}
    assert "bounds_chart" not in [c.key for c in at.get("plotly_chart")]
    # measured (as `cvae evaluate --bounds` keeps it): the chart, with the figures and both gaps in nats
    epoch, measured = measure_checkpoint(run.path, k=10, test_images=16, gap_steps=3)
    at = _page("tiny")
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == "bounds_chart")
    shown = sorted(y for trace in chart["data"] for y in trace["y"])
    figures = [measured.nelbo_encoder, measured.nelbo_refined, *dict(measured.iwae).values(), measured.iwae_refined]
    assert shown == pytest.approx(sorted(f.nats for f in figures), abs=1e-9)
    labels = " ".join(a["text"] for a in chart["layout"]["annotations"])
    assert f"amortization gap</b><br>{measured.amortization_gap.nats:.2f} ± " in labels
    assert f"approximation gap</b><br>≥ {measured.approximation_gap.nats:.2f}" in labels
    assert "measure_bounds" not in {b.key for b in at.button}  # measured: nothing to start
    # a crafted file: no chart and no crash, the button back
    (run.path / bounds.BOUNDS_FILE).write_text('{"2": {"iwae": [{"k": "1000"}]}}')
    at = _page("tiny")
    assert "bounds_chart" not in [c.key for c in at.get("plotly_chart")]
    assert "measure_bounds" in {b.key for b in at.button}
    # a measurement whose process died says so
    write_json(run.path / bounds.STATUS_FILE, {"state": "measuring", "pid": 999_999_999, "started": time.time()})
    assert "ended without a result: its process is gone" in _text(_page("tiny"))


def test_only_the_owner_or_a_lecturer_gets_the_button(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvae import classroom

    root = run.path.parent
    monkeypatch.setenv("CVAE_RUNS_DIR", str(root))
    passwords = classroom.add_accounts(root, ["alice", "bob"])
    classroom.update_settings(root, None, classmates_visible=True)
    write_json(run.path / "owner.json", {"owner": "alice"})
    for name in passwords:  # each chose their own password on first sign-in
        classroom.set_password(root, User(name), f"{name}-own-password")
    bob = _page("tiny", ("bob", "bob-own-password"))
    assert "Bounds and gaps" in _text(bob) and "measure_bounds" not in {b.key for b in bob.button}
    assert "Started by **alice**" in _text(bob)
    alice = _page("tiny", ("alice", "alice-own-password"))
    assert "measure_bounds" in {b.key for b in alice.button}
