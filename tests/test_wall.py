"""The class wall (app_pages/wall.py, ui/wall.py): every run as a card, readable on a projector."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cvae import classroom
from cvae.classroom import User
from cvae.names import write_meta
from cvae.runs import RunDir, write_json
from ui.runs import open_runs
from ui.wall import since

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


@pytest.fixture()
def wall(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fourteen copies of a finished run, each with its own latent size, two of them still training, one queued
    (no config yet), and a crafted one: a hostile name, a broken status, a metrics line of text, a bad picture."""
    for k in range(14):
        folder = tmp_path / f"run{k:02d}"
        shutil.copytree(tiny_run, folder)
        config = json.loads((folder / "config.json").read_text())
        config["model"]["latent_dim"] = 2 if k < 8 else 2 + k  # most at z=2: a card says where it is not
        (folder / "config.json").write_text(json.dumps(config))
    RunDir(tmp_path / "run00").write_status(state="running", pid=os.getpid(), epoch=1, epochs=5, batch=3, batches=8)
    write_meta(tmp_path / "run01", name="Ana's <b>bold</b> run", note="")
    queued = RunDir(tmp_path / "waiting")
    write_json(queued.path / "launch.json", {"argv": ["--quick-demo", "-z", "5"], "epochs": 12})
    queued.write_status(state="queued", pid=os.getpid(), position=2)
    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_run, crafted)
    write_meta(crafted, name="<script>alert(1)</script>' onmouseover='x", note="")
    (crafted / "status.json").write_text('{"state": "finished", "epoch": "many", "epochs": -3}')
    with open(crafted / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "test_nelbo": "NaN please"}\n')
    (crafted / "artifacts" / "epoch_0002_recon_mean.png").write_bytes(b"not a png")
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    return tmp_path


def _wall(secrets: dict | None = None, user: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    at.run()
    at.switch_page("app_pages/wall.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _cards(at: AppTest) -> list[str]:
    (block,) = [h.proto.body for h in at.get("html") if "class='wall'" in h.proto.body]
    return re.findall(r"<a class='card'.*?</a>", block)


def test_the_wall_shows_every_run_as_a_card(wall: Path) -> None:
    at = _wall()
    cards = _cards(at)
    assert len(cards) == 16  # the fourteen, the queued one and the crafted one, newest first
    by_id = {re.search(r"href='\./\?run=([^']+)'", c).group(1): c for c in cards}
    assert "running</b> epoch 1/5" in by_id["run00"] and "finished</b> epoch 2/2" in by_id["run05"]
    assert re.search(r"<span class='nelbo'>\d+\.\d</span>", by_id["run05"])  # its test −ELBO
    assert by_id["run05"].count("data:image/") == 2  # a curve and a crop of its newest reconstructions
    assert "<div class='differs'>as most runs</div>" in by_id["run05"]
    assert "<div class='differs'>z=13</div>" in by_id["run11"]  # what sets it apart, in plain words
    assert "most runs: z=2" in " ".join(c.value for c in at.caption)
    assert "queued — position 2" in by_id["waiting"]
    # what sets it apart, from the options it was queued with: the quick demo at z=5 among 2-epoch MLP runs
    assert "<div class='differs'>z=5 · " in by_id["waiting"] and "lr=0.005" in by_id["waiting"]
    assert "Ana&#x27;s &lt;b&gt;bold&lt;/b&gt; run" in by_id["run01"]  # what people type is text, not HTML
    crafted = by_id["crafted"]
    assert "<script>" not in crafted and "onmouseover='x" not in crafted and "no pictures yet" in crafted


def test_the_wall_filters_by_words_and_by_time(wall: Path) -> None:
    at = _wall()
    at.text_input(key="wall_filter").input("z=13").run()
    assert [re.search(r"run=(\w+)", c).group(1) for c in _cards(at)] == ["run11"]
    at.text_input(key="wall_filter").input("").run()
    old = time.time() - 5 * 3600
    for k in range(10):  # runs from an earlier lecture
        config = json.loads((wall / f"run{k:02d}" / "config.json").read_text())
        config["created"] = old
        (wall / f"run{k:02d}" / "config.json").write_text(json.dumps(config))
    at.segmented_control(key="wall_since").set_value("lecture").run()
    assert len(_cards(at)) == 6
    at.segmented_control(key="wall_since").set_value("all").run()
    assert len(_cards(at)) == 16


def test_a_students_wall_shows_only_what_the_class_settings_let_them_see(wall: Path) -> None:
    """As the run picker and the All-runs table: a student sees their own runs and the pinned ones (with whose run
    it is), a lecturer every run."""
    for k in range(14):
        classroom.record_owner(RunDir(wall / f"run{k:02d}"), User("bob" if k == 3 else f"student{k}"))
    classroom.set_pinned(wall, User("prof", "lecturer"), "run07", True)
    passwords = classroom.add_accounts(wall, ["bob"]) | classroom.add_accounts(wall, ["prof"], "lecturer")
    for name, password in passwords.items():
        classroom.set_password(wall, User(name), password + "-own")
    secrets = {"cvae": {"sign_in": "accounts"}}
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["cvae"] = secrets["cvae"]
    at.run()
    at.text_input(key="sign_in_name").input("bob")
    at.text_input(key="sign_in_password").input(passwords["bob"] + "-own")
    at.button[0].click().run()
    at.switch_page("app_pages/wall.py").run()
    assert not at.exception, [e.value for e in at.exception]
    cards = _cards(at)
    assert sorted(re.search(r"run=(\w+)", c).group(1) for c in cards) == ["run03", "run07"]
    assert "bob · " in " ".join(cards) and "student7 · " in " ".join(cards)
    assert "student5" not in " ".join(cards)


def test_what_sets_each_run_apart_from_most() -> None:
    from cvae.names import apart_from_most

    def config(z: int, beta: float = 1.0, threads: int = 1) -> dict:
        return {"model": {"latent_dim": z, "kl_weight": beta}, "train": {"threads": threads}}

    usual, own = apart_from_most([config(2), config(2, threads=4), config(10), config(2, 4.0), config(10, 4.0)])
    assert usual == ["z=2", "KL weight β=1"]  # the most common value of each setting that differs (threads: not one)
    assert own == ["", "", "z=10", "KL weight β=4", "z=10 · KL weight β=4"]
    assert apart_from_most([config(2)]) == ([], [""]) and apart_from_most([]) == ([], [])


def test_an_evening_lectures_runs_stay_on_the_wall_past_midnight(wall: Path) -> None:
    """The wall's first span ends now, not at midnight: runs started at 23:50 still show at 00:10."""
    runs = sorted((r for r in open_runs(wall) if r.id.startswith("run")), key=lambda r: r.id)
    midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
    for k, run in enumerate(runs):
        config = json.loads(run.dir.config_path.read_text())
        config["created"] = midnight - 600 if k < 5 else midnight - 30 * 3600
        run.dir.config_path.write_text(json.dumps(config))
    fresh = sorted((r for r in open_runs(wall) if r.id.startswith("run")), key=lambda r: r.id)
    shown = since(fresh, "today", now=midnight + 600)
    assert sorted(r.id for r in shown) == sorted(r.id for r in fresh[:5])
    assert [r.id for r in since(fresh, "lecture", now=midnight + 600)] == [r.id for r in shown]
    assert len(since(fresh, "all", now=midnight + 600)) == 14


def test_a_queued_runs_options_make_the_config_it_then_writes(tiny_run: Path) -> None:
    """planned_sections (what the wall compares a queued run by) gives, field for field, the config.json that a
    run given those options writes: the data and train sections whole, the model's options."""
    from cvae.training import planned_sections

    options = dict(dataset="MNIST", decoder_type="Bernoulli", latent_dim=2, epochs=2, batch_size=64,
                   learning_rate=1e-3, arch="mlp", mlp_hidden=(64,), train_subset=512, test_subset=256,
                   latent_subset=200)  # fmt: skip  # tiny_run's (conftest.py)
    written = json.loads((tiny_run / "config.json").read_text())
    planned = planned_sections(options)
    assert planned["data"] == written["data"] and planned["train"] == written["train"]
    assert planned["model"] == {k: written["model"][k] for k in planned["model"]} and planned["model"][
        "mlp_hidden"
    ] == [64]
    planned["model"]["latent_dim"] = 5
    assert planned_sections({**options, "latent_dim": 5})["model"] == planned["model"]
