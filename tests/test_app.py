"""AppTest for every page, over every kind of run folder the app may meet.

Runs: finished (the shared tiny MNIST run), still training, failed, stopped,
half-written (status but no config), corrupt config, a Gaussian learned-sigma
run with z=3 (PCA on the latent page), an RGB image-folder run, a plain VAE
(condition none) and a digit-completion run (condition quadrants).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cvae import jobs
from cvae.errors import ConfigError
from cvae.runs import RunDir, process_identity, write_json
from cvae.train import main as train

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGES = ["app_pages/train.py", "app_pages/reconstructions.py", "app_pages/latent.py", "app_pages/generate.py",
         "app_pages/draw.py", "app_pages/complete.py", "app_pages/twins.py", "app_pages/wall.py"]  # fmt: skip
KINDS = ["finished", "running", "failed", "stopped", "half", "corrupt", "gauss", "rgb", "vae", "completion",
         "completion-mixed"]  # fmt: skip


def _copy(src: Path, dst: Path, **status: object) -> None:
    shutil.copytree(src, dst)
    if status:
        RunDir(dst).write_status(**status)


def _image_folder(root: Path) -> Path:
    """Two classes of 12x12 RGB squares: red-ish and blue-ish."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
            pixels[..., 0 if k == 0 else 2] += 170
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """A runs folder holding one run of each kind; $CVAE_RUNS_DIR points at it."""
    root = tmp_path_factory.mktemp("app_runs")
    _copy(tiny_run, root / "finished")
    _copy(tiny_run, root / "running", state="running", pid=os.getpid(), epoch=1, epochs=5, batch=3, batches=8,
          epoch_started=time.time() - 2)  # fmt: skip
    _copy(tiny_run, root / "failed", state="failed", message="the loss became nan at epoch 2: lower the learning rate")
    (root / "failed" / "train.log").write_text("Traceback ...\nerror: the loss became nan\n")
    _copy(tiny_run, root / "stopped", state="stopped", epoch=1, message="stopped during epoch 2")
    (root / "half").mkdir()
    write_json(root / "half" / "status.json", {"state": "starting", "pid": 999_999_999})
    _copy(tiny_run, root / "corrupt")
    (root / "corrupt" / "config.json").write_text('{"data": {"dataset": "MNI')
    common = dict(epochs=1, batch_size=32, learning_rate=1e-3, arch="mlp", mlp_hidden=(32,), quiet=True, threads=1)
    train(dataset="MNIST", decoder_type="Gaussian", model_sigma=True, latent_dim=3, train_subset=128,
          test_subset=64, latent_subset=64, run_dir=str(root / "gauss"), refine_steps=3, **common)  # fmt: skip
    folder = _image_folder(tmp_path_factory.mktemp("images"))
    train(dataset=str(folder), decoder_type="Gaussian", latent_dim=2, run_dir=str(root / "rgb"), **common)
    train(dataset="MNIST", condition="none", latent_dim=2, train_subset=128, test_subset=64, latent_subset=64,
          run_dir=str(root / "vae"), **common)  # fmt: skip
    train(dataset="MNIST", condition="quadrants", quadrants=1, latent_dim=3, train_subset=128, test_subset=64,
          run_dir=str(root / "completion"), **common)  # fmt: skip
    train(dataset="MNIST", condition="quadrants", quadrants=0, latent_dim=3, train_subset=128, test_subset=64,
          run_dir=str(root / "completion-mixed"), **common)  # fmt: skip
    old = os.environ.get("CVAE_RUNS_DIR")
    os.environ["CVAE_RUNS_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("CVAE_RUNS_DIR", None)
    else:
        os.environ["CVAE_RUNS_DIR"] = old


def open_page(page: str, run: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if run:
        at.query_params["run"] = run
    at.run()
    if page != "app_pages/train.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def of_type(at: AppTest, name: str) -> list:
    return [e for e in at.main if type(e).__name__ == name]


def texts(at: AppTest) -> str:
    parts = [
        e.value for kind in ("error", "info", "warning", "success", "markdown", "caption") for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("page", PAGES)
def test_every_page_every_run(runs: Path, page: str, kind: str) -> None:
    at = open_page(page, kind)
    assert at.session_state["current_run"] == kind
    assert at.query_params["run"] == kind
    # (the Complete a digit page shows completion runs only, whichever run the sidebar has)
    # (the Class wall shows every run, whichever the sidebar has: each as a card, the half-written ones too)
    if kind in ("half", "corrupt") and page not in ("app_pages/train.py", "app_pages/complete.py", "app_pages/wall.py"):
        assert at.error or at.info, "a half-written run needs a message"


def test_train_page_widgets(runs: Path) -> None:
    at = open_page("app_pages/train.py", "finished")
    assert "start" not in {b.key for b in at.button}  # the form is folded away while a run is shown
    assert {"new_run", "quick_demo_again"} <= {b.key for b in at.button}  # the quick demo stays on offer
    at.button(key="new_run").click().run()
    keys = {
        w.key for kind in ("selectbox", "radio", "number_input", "checkbox", "text_input") for w in getattr(at, kind)
    }
    assert {
        "f_dataset",
        "f_decoder_type",
        "f_model_sigma",
        "f_arch",
        "f_latent_dim",
        "f_epochs",
        "f_learning_rate",
        "f_batch_size",
        "f_seed",
    } <= keys
    assert {b.key for b in at.button} >= {"start", "resume"}
    # the latent scatter, the batch loss, the per-epoch curves and the ELBO's ledger
    assert [c.key for c in at.get("plotly_chart")] == ["live_latent", "batch_chart", "epoch_chart", "ledger_chart"]
    assert "Finished" in texts(at)
    active = [m for m in at.metric if m.label == "active units"]
    assert len(active) == 1 and active[0].value.endswith(" of 2")  # z = 2
    assert any("latent dimensions active" in m.value for m in at.markdown)


def test_train_page_draws_a_completion_runs_live_curve(runs: Path) -> None:
    """The one loop logs every condition's batches: the completion run's batch-loss chart has its points."""
    at = open_page("app_pages/train.py", "completion-mixed")
    assert not at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    batch = [c for c in charts if "Batch loss" in json.dumps(c.get("layout", {}).get("title", ""))]
    # + the epochs, the latent scatter and the ledger
    assert len(charts) == 4 and len(batch) == 1 and batch[0]["data"] and "Finished" in texts(at)


def test_train_page_shows_the_refined_test_elbo(runs: Path) -> None:
    assert "refined for each test image by 3 gradient steps" in texts(open_page("app_pages/train.py", "gauss"))
    assert "refined" not in texts(open_page("app_pages/train.py", "finished"))  # not measured: not shown


def test_train_page_running_and_failed(runs: Path) -> None:
    at = open_page("app_pages/train.py", "running")
    assert "stop" in {b.key for b in at.button}
    assert "epoch 2 of 5" in texts(at) or at.get("progress")
    at = open_page("app_pages/train.py", "failed")
    assert "lower the learning rate" in texts(at)
    at = open_page("app_pages/train.py", "half")
    assert "interrupted" in texts(at) or at.error


def test_train_page_shows_the_gpu_a_run_got_and_its_queue(runs: Path, tiny_run: Path) -> None:
    gpu, waiting = runs / "on-gpu", runs / "waiting-gpu"
    _copy(tiny_run, gpu, state="running", pid=os.getpid(), epoch=0, epochs=2, batch=3, batches=8,
          device="cuda:1", device_name="Fake GPU 1")  # fmt: skip
    waiting.mkdir()
    write_json(waiting / "status.json", {"state": "queued", "pid": os.getpid(), "process": process_identity(os.getpid()),
                                         "position": 2, "slots": 8, "pool": "gpu"})  # fmt: skip
    try:
        at = open_page("app_pages/train.py", "on-gpu")
        progress = " ".join(p.proto.text for p in at.get("progress"))
        assert "on cuda:1 (Fake GPU 1)" in progress, progress
        at = open_page("app_pages/train.py", "waiting-gpu")
        assert "at most 8 run(s) train at once on this server's GPUs" in texts(at)
        assert "position 2" in texts(at)
    finally:
        shutil.rmtree(gpu)
        shutil.rmtree(waiting)


def test_latent_page(runs: Path) -> None:
    at = open_page("app_pages/latent.py", "finished")
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert len(spec["frames"]) == 2 and spec["layout"]["sliders"]
    assert [t["name"] for t in spec["data"]] == [str(d) for d in range(10)]
    at = open_page("app_pages/latent.py", "gauss")
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "PCA" in spec["layout"]["title"]["text"]


def test_latent_page_shows_a_plain_vae_beside_the_cvae(runs: Path) -> None:
    at = open_page("app_pages/latent.py", "finished")
    assert len(at.get("plotly_chart")) == 1  # the toggle starts off
    at.toggle(key="latent_vae").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3 and "VAE, no label<br><sup>vae" in charts[2]["layout"]["title"]["text"]
    assert not charts[2].get("frames") and not charts[2]["layout"].get("updatemenus") and "Why they differ" in texts(at)
    at = open_page("app_pages/latent.py", "vae")  # a VAE's own page: no toggle, clusters explained
    assert not at.toggle and "form clusters" in str([e.label for e in at.expander])


def test_generate_page(runs: Path) -> None:
    for kind in ("finished", "gauss", "rgb"):
        at = open_page("app_pages/generate.py", kind)
        assert len(at.tabs) == 4
        assert len(of_type(at, "DownloadButton")) == 7  # uniform grid, random grid, checkpoint; each grid for slides
        assert len(at.slider) >= 1  # the grid's span; the latent sliders are drawn in the browser (ui.scrub)
        assert len(of_type(at, "Image")) >= 4
        assert at.get("iframe"), "the latent sliders' scrubber"


def test_reconstructions_page(runs: Path) -> None:
    at = open_page("app_pages/reconstructions.py", "finished")
    assert at.select_slider(key="recon_epoch").value == 2
    assert at.multiselect(key="recon_epochs").value
    at.selectbox(key="recon_other").select("rgb").run()
    assert not at.exception


def test_no_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path / "none"))
    for page in PAGES:
        at = open_page(page)
        assert "No run" in texts(at)
    at = open_page("app_pages/train.py")
    started = []
    monkeypatch.setattr(jobs, "start", lambda root, opts, **kw: started.append(opts) or RunDir(root / "x"))
    at.button(key="quick_demo").click().run()
    assert started == [jobs.QUICK_DEMO_OPTIONS]


def test_a_quick_demo_click_counts_after_a_classmates_run_changed_the_page(tmp_path: Path, tiny_run: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A class opens the empty Train page; the first click makes a run, so every other student's next rerun
    draws the runs view, where their button is not: their click still starts their demo."""
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    at = open_page("app_pages/train.py")
    assert "No runs yet" in texts(at)
    _copy(tiny_run, tmp_path / "classmates-demo")  # started by someone else meanwhile
    started = []
    monkeypatch.setattr(jobs, "start", lambda root, opts, **kw: started.append(opts) or RunDir(root / "x"))
    at.button(key="quick_demo").click().run()
    assert started == [jobs.QUICK_DEMO_OPTIONS] and not at.exception


def test_a_click_that_arrives_twice_starts_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A double click, or a reconnecting page that sends its last click again, starts one quick demo."""
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    started = []

    def queue(root: Path, opts: dict, **kw: object) -> RunDir:  # queued as the app queues it, no trainer
        started.append(opts)
        run = RunDir(root / f"r{len(started)}")
        write_json(run.path / "launch.json", {"argv": jobs.build_argv(opts), "epochs": 1})
        run.write_status(state="queued", pid=os.getpid())
        return run

    monkeypatch.setattr(jobs, "start", queue)
    at = open_page("app_pages/train.py")
    at.button(key="quick_demo").click().run()
    assert started == [jobs.QUICK_DEMO_OPTIONS] and at.session_state["current_run"] == "r1"
    at.button(key="quick_demo_again").click().run()  # the same click again, seconds later
    assert len(started) == 1 and at.session_state["current_run"] == "r1" and not at.exception
    at.session_state["last_start"]["at"] -= 60  # a minute on: a new click is a new demo
    at.button(key="quick_demo_again").click().run()
    assert len(started) == 2 and at.session_state["current_run"] == "r2"


def test_complete_page(runs: Path) -> None:
    def images(at: AppTest) -> list[tuple[str, str]]:  # (caption, url: named by the picture's bytes) per image
        return [(e.proto.imgs[0].caption, e.proto.imgs[0].url) for e in of_type(at, "Image")]

    at = open_page("app_pages/complete.py", "completion")
    picker = at.selectbox(key="complete_run")  # the picked run, of the two completion runs (newest first)
    assert picker.options[picker.value].startswith("1 quadrant · z=") and len(picker.options) == 2
    assert at.segmented_control(key="complete_k").options == ["1"]  # trained for 1 quadrant: only 1 offered
    shown = images(at)
    assert len(shown) == 4  # baseline, spread, the samples' grid, the latent walk (the given part is the canvas)
    assert "blur" in texts(at) and "Given: the bottom-left quadrant of test digit #1" in texts(at)
    assert shown[1][0].startswith("Spread: where 64 CVAE completions disagree")
    at.button(key="complete_again").click().run()
    assert not at.exception and at.session_state["complete_seed"] == 1
    assert images(at)[2][1] != shown[2][1] and images(at)[0][1] == shown[0][1]  # new draws, the same input
    ink = np.zeros((280, 280), np.float32)  # the given part erased, then one stroke drawn in it
    ink[150:270, 60:80] = 1.0
    at.session_state["complete_canvas_ink"] = ink
    at.run()
    drawn = images(at)
    assert not at.exception and drawn[0][1] != shown[0][1]  # the baseline completes the drawing, not the digit
    assert "Given: your drawing in the bottom-left quadrant" in texts(at)
    at.selectbox(key="complete_class").select(7).run()
    at.button(key="complete_random").click().run()
    index = at.number_input(key="complete_index").value
    assert not at.exception and f"test digit #{index}" in texts(at)
    assert at.session_state["complete_canvas_ink"] is None  # a new test digit: the canvas starts from its part
    walk = images(at)[3][1]
    at.slider(key="complete_t").set_value(1.5).run()
    assert not at.exception and images(at)[3][1] != walk
    at = open_page("app_pages/latent.py", "completion")  # other pages send it here
    assert "Complete a digit" in texts(at)


def test_draw_page(runs: Path) -> None:
    def images(at: AppTest) -> list[str]:
        return [e.proto.imgs[0].caption for e in of_type(at, "Image")]

    ink = np.zeros((280, 280), np.float32)  # a "1", as the canvas would send it
    ink[40:240, 130:150] = 1.0
    at = open_page("app_pages/draw.py", "finished")
    assert "Draw a digit in the black square" in texts(at) and not images(at)
    at.session_state["draw_canvas_ink"] = ink
    at.run()
    assert not at.exception and "What the model saw" in texts(at) and "pixel ≥ 0.5 → 1" in texts(at)
    assert "The model reads a" in texts(at)
    recon = images(at)[-1]
    assert "decoded under every class" in recon and "y = " in recon
    chart = at.get("plotly_chart")[0]
    assert chart.proto.id and "your digit" in chart.proto.spec  # the test images' scatter, the drawing ringed
    at.selectbox(key="draw_label").select(3).run()
    assert not at.exception and "y = 3" in images(at)[-1]  # encoded under the class chosen
    at = open_page("app_pages/draw.py", "vae")  # a plain VAE: one reconstruction, no class to choose
    at.session_state["draw_canvas_ink"] = ink
    at.run()
    assert not at.exception and "plain VAE" in images(at)[-1] and "draw_label" not in {w.key for w in at.selectbox}
    assert "your digit" in at.get("plotly_chart")[0].proto.spec
    at = open_page("app_pages/draw.py", "gauss")  # z = 3 (PCA of the scatter), grey levels: not binarized
    at.session_state["draw_canvas_ink"] = ink
    at.run()
    assert not at.exception and "The model reads a" in texts(at) and "pixel ≥ 0.5" not in texts(at)
    assert "PCA" in at.get("plotly_chart")[0].proto.spec
    at = open_page("app_pages/draw.py", "rgb")
    assert "colour images" in texts(at)


def test_complete_page_preset_starts_the_one_quadrant_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    started = []
    monkeypatch.setattr(jobs, "start", lambda root, opts, **kw: started.append(opts) or RunDir(root / "x"))
    at = open_page("app_pages/complete.py")
    at.button(key="complete_preset").click().run()
    assert started == [{"condition": "quadrants", "quadrants": 1, "epochs": 1}]
    jobs.check_options(started[0])  # the preset is valid as it is
    queued = tmp_path / "queued-q1"  # queued by the app: no config.json yet, its flags in launch.json
    write_json(queued / "launch.json", {"argv": jobs.build_argv(started[0]), "epochs": 1})
    RunDir(queued).write_status(state="queued", pid=os.getpid())
    at = open_page("app_pages/complete.py")
    assert "One is training" in texts(at) and "Queued" in texts(at) and "it starts" in texts(at)  # its progress


def test_bad_run_id_in_url(runs: Path) -> None:
    at = open_page("app_pages/latent.py", "../../etc")
    assert at.session_state["current_run"] != "../../etc"
    assert any("No run called" in w.value for w in at.sidebar.warning) or at.session_state["current_run"]


def test_form_validates_and_starts_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    at = open_page("app_pages/train.py")
    at.selectbox(key="f_dataset").select("CIFAR10").run()
    at.button(key="start").click().run()
    assert any("Bernoulli" in e.value for e in at.error)  # CIFAR-10 is colour
    assert not list(tmp_path.iterdir())
    at.selectbox(key="f_dataset").select("MNIST")
    at.number_input(key="f_epochs").set_value(1)
    at.number_input(key="f_train_subset").set_value(128)
    at.number_input(key="f_test_subset").set_value(64)
    at.number_input(key="f_threads").set_value(1)
    at.radio(key="f_arch").set_value("mlp")
    at.selectbox(key="f_lr_schedule").set_value("cosine").run()  # the warm-up box opens for cosine
    at.number_input(key="f_warmup_epochs").set_value(0.5)
    at.number_input(key="f_refine_steps").set_value(3)
    at.button(key="start").click().run()
    assert not at.exception
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "status.json").is_file()
    run = RunDir(folders[0])
    deadline = time.time() + 90
    while jobs.is_active(run) and time.time() < deadline:
        time.sleep(0.5)
    jobs.stop(run)
    assert run.read_status()["state"] == "finished", run.log_path.read_text()
    assert run.config_path.is_file() and run.read_metrics()
    train = run.read_config()["train"]
    assert (train["lr_schedule"], train["warmup_epochs"]) == ("cosine", 0.5)
    assert train["refine_steps"] == 3 and run.read_metrics()[-1]["refine_steps"] == 3


def test_compare_page(runs: Path) -> None:
    """Three runs overlaid, the legend naming what differs, a table of final figures, the runs in the URL."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["runs"] = "finished,gauss,rgb"
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="compare_runs").value == ["finished", "gauss", "rgb"]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 4  # test -ELBO, reconstruction, KL, and the ledgers: the KL of each latent dimension
    assert [len(t["y"]) for t in charts[3]["data"]] == [2, 3, 2]  # z = 2, 3, 2
    names = [t["name"] for t in charts[0]["data"]]
    assert len(names) == 3 and "z=2" in names[0] and "z=3" in names[1] and "decoder=gaussian" in names[1]
    assert not any("threads" in n for n in names)  # how a run was carried out is not a difference
    table = at.dataframe[0].value
    assert list(table["run"]) == ["finished", "gauss", "rgb"] and table["test −ELBO"].notna().all()
    at.multiselect(key="compare_runs").unselect("rgb").run()
    assert at.query_params["runs"] == ["finished,gauss"] or at.query_params["runs"] == "finished,gauss"


def test_compare_page_keeps_completion_runs_apart(runs: Path) -> None:
    """A completion run's -ELBO is of the hidden pixels only: its own charts and table, not a line among others.
    A random-count completion run draws there too (its -ELBO: the mean over 1, 2 and 3 given quadrants)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["runs"] = "finished,completion,completion-mixed"
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    # whole image: -ELBO, reconstruction, KL, ledger; completion: -ELBO, baseline, ledger
    assert len(charts) == 7, titles
    assert [len(c["data"]) for c in charts] == [1, 1, 1, 1, 2, 2, 2]
    assert "hidden pixels" in titles[4] and "baseline" in titles[5] and "latent dimension" in titles[6]
    whole, completion = (t.value for t in at.dataframe)
    assert list(whole["run"]) == ["finished"] and "KL" in whole.columns
    assert sorted(completion["run"]) == ["completion", "completion-mixed"]
    assert completion["baseline NLL"].notna().all() and completion["test −ELBO"].notna().all()
    assert any("measure different things" in c.value for c in at.caption)


def test_compare_page_sounds_the_ledgers_alarm(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose posterior collapsed is named in a warning; a crafted ledger is neither drawn nor a crash."""
    root = tmp_path / "runs"
    for name in ("healthy", "collapsed", "crafted"):
        _copy(runs / "finished", root / name)
    for name, dims, active in (("collapsed", [0.01, 0.02], 0), ("crafted", ["x", None], "many")):
        path = root / name / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[-1].update(test_kl_dims=dims, test_active_units=active, test_kl=0.03 if name == "collapsed" else 1)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("CVAE_RUNS_DIR", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["runs"] = "healthy,collapsed,crafted"
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "collapsed" in warnings[0] and "Posterior collapse" in warnings[0]
    ledger = json.loads(at.get("plotly_chart")[3].proto.spec)
    assert [len(t["y"]) for t in ledger["data"]] == [2, 2]  # the crafted run's ledger is left out
    table = at.dataframe[0].value
    assert dict(zip(table["run"], table["active units"].fillna(-1), strict=True)) == {
        "healthy": 2, "collapsed": 0, "crafted": -1}  # fmt: skip


def test_run_name_and_note(runs: Path, tmp_path: Path) -> None:
    """A name set on the Train page goes to meta.json only, and the picker and compare page show it."""
    import shutil

    shutil.copytree(runs / "finished", runs / "named")
    before = {p.name: p.stat().st_mtime_ns for p in (runs / "named").iterdir()}
    at = open_page("app_pages/train.py", "named")
    at.text_input[0].input("z=2, lr 1e-3")
    at.text_area[0].input("the first try")
    at.button[[b.label for b in at.button].index("Save")].click().run()
    assert not at.exception
    assert json.loads((runs / "named" / "meta.json").read_text()) == {"name": "z=2, lr 1e-3", "note": "the first try"}
    after = {p.name: p.stat().st_mtime_ns for p in (runs / "named").iterdir() if p.name != "meta.json"}
    assert after == before  # nothing else in the run folder was touched
    picker = at.sidebar.selectbox(key="run")
    assert "z=2, lr 1e-3" in picker.format_func("named")
    shutil.rmtree(runs / "named")


def test_options_are_checked_with_the_configs_own_words() -> None:
    jobs.check_options(jobs.QUICK_DEMO_OPTIONS)
    with pytest.raises(ConfigError, match="does not exist"):
        jobs.check_options({"dataset": "/no/such/folder", "epochs": 3})
    with pytest.raises(ConfigError, match="learned sigma needs the Gaussian"):
        jobs.check_options({"model_sigma": True})
    with pytest.raises(ConfigError, match="epochs must be an integer from 1 to 100000, got 0"):
        jobs.check_options({"epochs": 0})
    argv = jobs.build_argv({"decoder_type": "gaussian", "model_sigma": True, "train_subset": 10})
    assert argv[argv.index("--model_sigma") + 1] == "True" and "--train-subset" in argv and "--binarize" not in argv
    assert "--lr-schedule" not in argv  # the default: left out
    argv = jobs.build_argv({"lr_schedule": "cosine", "warmup_epochs": 1.5})
    assert argv[argv.index("--lr-schedule") + 1] == "cosine" and argv[argv.index("--warmup-epochs") + 1] == "1.5"
    with pytest.raises(ConfigError, match="warmup_epochs needs lr_schedule cosine"):
        jobs.check_options({"warmup_epochs": 1.0})
    assert "--refine-steps" not in argv  # off by default
    argv = jobs.build_argv({"refine_steps": 7})
    assert argv[argv.index("--refine-steps") + 1] == "7"
    with pytest.raises(ConfigError, match="refine_steps must be an integer from 0 to 10000, got -1"):
        jobs.check_options({"refine_steps": -1})


def test_train_page_shows_the_epoch_in_progress_live(runs: Path, tiny_run: Path) -> None:
    """While an epoch trains, the Train page shows its live pictures, newer than the last finished epoch's;
    stale or broken live files fall back to the finished epoch's."""
    live = runs / "live-pictures"
    _copy(tiny_run, live, state="running", pid=os.getpid(), process=process_identity(os.getpid()), epoch=2, epochs=5,
          batch=3, batches=8)  # fmt: skip
    run = RunDir(live)
    assert run.epochs_with("latent.npy")[-1] == 2
    np.save(run.live_artifact("latent.npy"), np.zeros((7, 2), np.float32))
    for name in ("recon_mean.png", "recon_sample.png"):
        shutil.copy(run.artifact(1, name), run.live_artifact(name))

    def shown() -> str:
        at = open_page("app_pages/train.py", "live-pictures")
        images = " ".join(c for e in at.get("image") for c in e.captions)
        return images + " " + " ".join(str(c.value) for c in at.caption)

    try:
        for info, caption in (({"epoch": 3, "batch": 3, "batches": 8}, "7 test images in epoch 3 (batch 3 of 8)"),
                              ({"epoch": 2, "batch": 3, "batches": 8}, "200 test images after epoch 2"),
                              ({"epoch": "3", "batch": [], "batches": 8}, "200 test images after epoch 2")):  # fmt: skip
            write_json(run.live_artifact("info.json"), info)
            text = shown()
            assert f"Where the encoder puts {caption}" in text, text
            assert f"Their reconstructions {caption.split(' images ')[1]}" in text, text
        run.live_artifact("info.json").write_text("[" * 100_000)  # hostile: deeply nested
        assert "Their reconstructions after epoch 2" in shown()
    finally:
        shutil.rmtree(live)
