"""Twin runs (cvae.twins): a fork keeps its parent's options, seed and batches, and changes exactly one setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cvae import classroom, jobs, twins
from cvae.classroom import User
from cvae.data import builtin_info
from cvae.errors import ConfigError, CVAEError
from cvae.runs import RunDir, read_jsonl
from cvae.train import cli as train_cli
from cvae.training import build_config, resolve_options

ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB, PROF = User("alice"), User("bob"), User("prof", "lecturer")
# Small enough to train twice in a few seconds, with several batches an epoch to compare.
TINY = {"latent_dim": 2, "arch": "mlp", "mlp_hidden": (64,), "train_subset": 320, "test_subset": 128,
        "latent_subset": 64, "batch_size": 64, "epochs": 2, "learning_rate": 1e-3, "threads": 1, "quiet": True,
        "preview_every": 0.0}  # fmt: skip


@pytest.fixture()
def queue(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """jobs.start without a process: the flags each start would have queued, in order."""
    spawned: list[list[str]] = []
    monkeypatch.setattr(jobs, "_spawn", lambda run, argv, epochs: spawned.append(argv))
    return spawned


def _train(run: RunDir) -> list[dict]:
    """Train the run in this process from the flags its start queued (launch.json); its logged batches."""
    argv = json.loads((run.path / "launch.json").read_text())["argv"]
    assert train_cli([*argv, "--run-dir", str(run.path)]) == 0
    return read_jsonl(run.batches_path)


def test_a_fork_keeps_the_parents_flags_and_records_the_change(tmp_path: Path, queue: list) -> None:
    parent = jobs.start(tmp_path, {"quick_demo": True, "latent_dim": 10})
    twin = twins.fork(tmp_path, parent, {"kl_weight": 4})
    assert jobs.launch_options(parent) == {"quick_demo": True, "latent_dim": 10}
    assert jobs.launch_options(twin) == {"quick_demo": True, "latent_dim": 10, "kl_weight": 4.0}
    assert sorted(queue[1]) == sorted([*queue[0], "--kl-weight", "4.0"])  # what was queued: those flags
    assert "-twin-kl_weight-4" in twin.id
    record = twins.read_twin(twin)
    assert record == {"parent": parent.id, "setting": "kl_weight", "value": 4.0, "parent_value": 1.0}
    assert twins.change_words(record) == ("KL weight β=1", "KL weight β=4")
    assert [r.id for r in twins.twins_of(tmp_path, parent.id)] == [twin.id]
    assert twins.twins_of(tmp_path, twin.id) == []


def test_a_run_trained_from_a_shell_forks_from_its_config(tmp_path: Path, tiny_run: Path, queue: list) -> None:
    """No launch.json: every setting comes from config.json, so the twin's config is the parent's but one value."""
    parent = RunDir(tiny_run)
    twin = twins.fork(tmp_path, parent, {"learning_rate": "0.0005"})  # text, as a command line gives it
    saved = json.loads(parent.config_path.read_text())
    options = jobs.launch_options(twin)
    built = build_config(resolve_options(options), builtin_info("MNIST")).to_dict()
    flat = lambda c: {f"{s}.{k}": v for s in ("data", "model", "train") for k, v in c[s].items()}  # noqa: E731
    before, after = flat(json.loads(json.dumps(saved))), flat(json.loads(json.dumps(built)))
    assert {k for k in before if before[k] != after[k]} == {"train.learning_rate"}
    assert after["train.learning_rate"] == 0.0005 and after["train.seed"] == before["train.seed"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({}, "exactly one setting, 0 given"),
        ({"kl_weight": 4, "latent_dim": 3}, "exactly one setting, 2 given"),
        ({"wobble": 1}, "unknown setting 'wobble'"),
        ({"seed": 1}, "seed decides which images each batch holds"),
        ({"batch-size": 32}, "batch_size decides which images each batch holds"),
        ({"train_subset": 100}, "train_subset decides"),
        ({"dataset": "CIFAR10"}, "dataset decides"),
        ({"threads": 2}, "threads changes how a run is carried out"),
        ({"quick_demo": True}, "quick_demo says how a run is launched"),
        ({"kl_weight": -1}, "kl_weight must be a number from 0 to 1000, got -1"),
        ({"latent_dim": "ten"}, "latent_dim must be an integer"),
        ({"latent_dim": 2}, "already has z=2"),
        ({"condition": "quadrants"}, "condition = quadrants also changes"),
        ({"decoder_type": "Gaussian"}, "the Gaussian decoder models grey levels"),
    ],
)
def test_refused_changes_say_why_in_one_line(tmp_path: Path, queue: list, changes: dict, words: str) -> None:
    parent = jobs.start(tmp_path, {"quick_demo": True, "binarize": "static"})
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CVAEError) as err:
        twins.fork(tmp_path, parent, changes)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no half-made twin
    assert len(queue) == 1


def test_a_crafted_twin_record_is_no_twin(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "x")
    run.path.mkdir()
    for raw in ('{"parent": "../etc", "setting": "kl_weight", "value": 4, "parent_value": 1}',
                '{"parent": "a", "setting": "threads", "value": 4, "parent_value": 1}',
                '{"parent": "a", "setting": "kl_weight", "value": "4; rm", "parent_value": 1}',
                '{"parent": "a", "setting": "kl_weight", "value": 1e400, "parent_value": 1}', "[1, 2]", "{"):  # fmt: skip
        (run.path / "twin.json").write_text(raw)
        assert twins.read_twin(run) is None


def test_only_a_run_one_may_see_is_forked_and_the_twin_is_the_forkers(tmp_path: Path, queue: list) -> None:
    alices = jobs.start(tmp_path, {"quick_demo": True}, user=ALICE)
    with pytest.raises(classroom.NotAllowed, match="not shared with you"):
        twins.fork(tmp_path, alices, {"kl_weight": 4}, user=BOB)
    classroom.set_pinned(tmp_path, PROF, alices.id, True)  # a run the lecturer pins is every student's to fork
    twin = twins.fork(tmp_path, alices, {"kl_weight": 4}, user=BOB)
    assert classroom.run_owner(twin) == "bob"
    assert classroom.run_owner(alices) == "alice"
    classroom.update_settings(tmp_path, PROF, max_active=0)  # the class's limit holds for twins too
    with pytest.raises(classroom.NotAllowed, match="class's limit is 0"):
        twins.fork(tmp_path, alices, {"kl_weight": 2}, user=BOB)


def test_twins_see_the_same_batches_in_the_same_order(tmp_path: Path, queue: list) -> None:
    """A change that cannot touch training (the test subset) leaves every batch's loss equal to the last bit: the
    same shuffles, the same initial weights, the same z noise. A change of the objective (beta) leaves the first
    batch's loss equal (same weights, images and noise, before any step) and then takes its own path."""
    parent = jobs.start(tmp_path, TINY)
    first = _train(parent)
    assert len(first) == 10  # 5 batches of 64 a epoch, 2 epochs
    same = _train(twins.fork(tmp_path, parent, {"test_subset": 64}))
    assert [(b["step"], b["loss"], b["recon"], b["kl"]) for b in same] == \
        [(b["step"], b["loss"], b["recon"], b["kl"]) for b in first]  # fmt: skip
    beta = _train(twins.fork(tmp_path, parent, {"kl_weight": 4.0}))
    assert (beta[0]["loss"], beta[0]["kl"]) == (first[0]["loss"], first[0]["kl"])
    assert beta[-1]["kl"] < first[-1]["kl"]  # and beta did change what it learned: a smaller KL


def test_cvae_runs_fork_on_the_command_line(tmp_path: Path, tiny_run: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "tiny")
    cvae = [sys.executable, "-m", "cvae", "runs", "--runs-root", str(root)]

    def fork(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cvae, "fork", "tiny", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)

    for flags, words in ((["--set", "seed=3"], "seed decides"), (["--set", "kl_weight=2", "--set", "free_bits=1"],
                         "exactly one setting, 2 given"), (["--set", "kl_weight=4", "--threads", "1"],
                         "unrecognized arguments: --threads 1"), (["--set", "kl_weight"], "--set NAME=VALUE")):  # fmt: skip
        bad = fork(*flags)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and words in bad.stderr, bad.stderr
    assert sorted(p.name for p in root.iterdir()) == ["tiny"]
    ok = fork("--set", "kl_weight=4")
    assert ok.returncode == 0, ok.stderr
    assert "KL weight β=1 -> KL weight β=4" in ok.stdout
    (twin,) = twins.twins_of(root, "tiny")
    done = subprocess.run([*cvae, "wait", twin.id, "--timeout", "300"], cwd=ROOT, capture_output=True, text=True,
                          timeout=330)  # fmt: skip
    assert done.returncode == 0, (done.stdout, (twin.path / "train.log").read_text()[-500:])
    rows = twin.read_metrics()
    assert len(rows) == 2 and rows[-1]["kl_weight"] == 4.0
    with pytest.raises(ConfigError, match="already has KL weight β=4"):
        twins.plan(root, twin, {"kl_weight": 4})


# ------------------------------------------------------------------ the app: the Train page's control, the Twin runs page

APP = str(ROOT / "streamlit_app.py")


@pytest.fixture()
def pair(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runs folder with a run, its twin (the KL weight 4: its config says so, as a fork's would) and a loner."""
    for name in ("parent", "twin", "loner"):
        shutil.copytree(tiny_run, tmp_path / name)
    config = json.loads((tmp_path / "twin" / "config.json").read_text())
    config["model"]["kl_weight"] = 4.0
    (tmp_path / "twin" / "config.json").write_text(json.dumps(config))
    record = {"parent": "parent", "setting": "kl_weight", "value": 4.0, "parent_value": 1.0, "created": 0}
    (tmp_path / "twin" / "twin.json").write_text(json.dumps(record))
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    return tmp_path


def _page(page: str, run: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = run
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("shown", ["twin", "parent"])
def test_twin_page_shows_both_runs_at_one_epoch(pair: Path, shown: str) -> None:
    at = _page("app_pages/twins.py", shown)
    slider = at.select_slider(key="twin_epoch_twin")
    assert slider.options == ["1", "2"] and slider.value == 2
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3  # both curves on one chart, then the two latent scatters
    names = [t["name"] for t in charts[0]["data"]]
    assert names == ["KL weight β=1 (parent)", "KL weight β=4 (twin)"]  # the change, in plain words
    assert charts[0]["layout"]["shapes"][0]["x0"] == 2  # the epoch on screen, marked
    assert charts[1]["layout"]["xaxis"]["range"] == charts[2]["layout"]["xaxis"]["range"]  # the same axes
    assert charts[1]["layout"]["yaxis"]["range"] == charts[2]["layout"]["yaxis"]["range"]
    assert len(at.get("image")) == 2
    slider.set_value(1).run()
    assert not at.exception
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["shapes"][0]["x0"] == 1
    assert sum("reconstructions after epoch 1, test −ELBO" in c.value for c in at.caption) == 2


def test_twin_page_without_a_twin_or_with_a_crafted_record(pair: Path) -> None:
    at = _page("app_pages/twins.py", "loner")
    assert any("has no twin yet" in i.value for i in at.info)
    (pair / "loner" / "twin.json").write_text('{"parent": "../parent", "setting": "kl_weight", "value": 4}')
    at = _page("app_pages/twins.py", "loner")
    assert any("has no twin yet" in i.value for i in at.info)
    (pair / "loner" / "twin.json").write_text('{"parent": "gone", "setting": "kl_weight", "value": 4, '
                                              '"parent_value": 1}')  # fmt: skip
    at = _page("app_pages/twins.py", "loner")  # its parent deleted
    assert any("has no twin yet" in i.value for i in at.info)


def test_fork_as_a_twin_on_the_train_page(pair: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control starts the twin through the form's own start; a refusal is one line, and nothing starts."""
    # queued as the app queues it (a status naming a live process: this one), without a trainer
    monkeypatch.setattr(jobs, "_spawn", lambda run, argv, epochs: run.write_status(state="queued", pid=os.getpid()))
    at = _page("app_pages/train.py", "loner")
    assert at.selectbox(key="twin_setting").value == "kl_weight"
    assert "batch_size" not in at.selectbox(key="twin_setting").options  # the data order is kept
    at.button(key="twin_start").click().run()  # the parent's own value
    assert any("already has KL weight β=1" in e.value for e in at.error)
    assert sorted(p.name for p in pair.iterdir()) == ["loner", "parent", "twin"]
    at.number_input(key="twin_value_kl_weight").set_value(4.0)
    at.button(key="twin_start").click().run()
    assert not at.exception and not at.error
    (twin,) = twins.twins_of(pair, "loner")
    assert at.session_state["current_run"] == twin.id  # the new twin is shown next
    assert twins.read_twin(twin)["value"] == 4.0
