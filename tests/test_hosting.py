"""The app on a shared server: the queue, interrupted runs, sign-in and owners, delete, uploads, faults.

AppTest drives the pages; runs are copies of the shared tiny run. The one real
process here is a queued run that waits behind a slot this test holds.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from cvae import jobs
from cvae.runs import RunDir, process_identity, write_json

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGES = ["app_pages/train.py", "app_pages/reconstructions.py", "app_pages/latent.py", "app_pages/generate.py"]


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CVAE_UPLOADS_DIR", str(tmp_path / "uploads"))
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


def _copy(tiny_run: Path, root: Path, name: str, owner: str | None = None, **status: object) -> RunDir:
    shutil.copytree(tiny_run, root / name)
    run = RunDir(root / name)
    if status:
        run.write_status(**status)
    if owner:
        write_json(run.path / "owner.json", {"owner": owner})
    return run


def _app(run: str | None = None, page: str = "app_pages/train.py", accounts: bool = False) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if accounts:
        at.secrets["cvae"] = {"sign_in": "accounts"}
    if run:
        at.query_params["run"] = run
    at.run()
    if page != "app_pages/train.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _text(at: AppTest) -> str:
    kinds = ("error", "info", "warning", "success", "markdown", "caption", "subheader")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(at, kind))


def _keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button}


def test_the_default_number_of_runs_at_once_is_what_memory_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class's runs time-share the cores (first pictures for all within seconds) as far as memory allows."""
    monkeypatch.delenv("CVAE_MAX_RUNS", raising=False)
    monkeypatch.setattr(jobs, "available_cores", lambda: 2)
    monkeypatch.setattr(jobs, "memory_bytes", lambda: 24 << 30)
    assert jobs.max_active("mlp") == 32  # a class of 30 quick demos at once: 16 a core
    assert jobs.max_active("conv") == jobs.max_active() == 14  # 24 GB less 2 for the app, 1.5 GB a run
    monkeypatch.setattr(jobs, "memory_bytes", lambda: 8 << 30)
    assert jobs.max_active("mlp") == 12 and jobs.max_active("conv") == 4
    monkeypatch.setattr(jobs, "memory_bytes", lambda: 2 << 30)
    assert jobs.max_active("mlp") == 1
    monkeypatch.setattr(jobs, "memory_bytes", lambda: None)  # no /proc/meminfo: one per two cores
    assert jobs.max_active() == 1
    monkeypatch.setenv("CVAE_MAX_RUNS", "3")
    assert jobs.max_active() == 3


def test_a_queued_runs_architecture_sets_its_slots(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert jobs.requested_arch(["--quick-demo", "-z", "10"], run) == "mlp"
    assert jobs.requested_arch(["--quick-demo", "--arch", "conv"], run) == "conv"
    assert jobs.requested_arch(["-e", "3"], run) == "conv"  # the command line's default: the reference's net
    assert jobs.requested_arch(["--resume_path", str(tmp_path / "gone")], run) == "conv"


def test_queue_flags_and_the_cores_shared_among_the_runs_training_together(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The queue gets the slots, the priority and the GPUs; a trainer with threads 0 (the app's) takes every core
    alone, and a share of them while other runs of its runs folder train, looked at anew as they come and go."""
    import torch

    from cvae import loop

    run = RunDir(tmp_path / "r")
    monkeypatch.setenv("CVAE_MAX_RUNS", "4")
    monkeypatch.delenv("CVAE_TRAIN_NICE", raising=False)
    monkeypatch.setattr(jobs, "list_gpus", lambda: [jobs.Gpu(0, "Fake GPU", 8 << 30)])
    argv = jobs._queue_argv(jobs.build_argv(jobs.QUICK_DEMO_OPTIONS), run)
    gpus = '[{"index": 0, "name": "Fake GPU", "memory": 8589934592}]'
    assert argv == ["--max-active", "4", "--nice", "10", "--gpus", gpus, "--run-dir", str(run.path), "--quick-demo"]
    assert jobs.parse_gpus(argv[5]) == [jobs.Gpu(0, "Fake GPU", 8 << 30)]  # so the queue needs no torch to wait
    monkeypatch.setenv("CVAE_TRAIN_NICE", "0")
    assert jobs._queue_argv([], run)[2:4] == ["--nice", "0"]

    monkeypatch.setattr(loop, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        share = loop.CoreShare(run, threads=0)
        share()
        assert torch.get_num_threads() == 8  # alone: every core
        for k in range(4):  # three train beside it, one waits in the queue (it uses no core)
            RunDir(tmp_path / f"other-{k}").path.mkdir()
            RunDir(tmp_path / f"other-{k}").write_status(state="running" if k < 3 else "queued", pid=os.getpid(),
                                                         process=process_identity(os.getpid()))  # fmt: skip
        share()
        assert torch.get_num_threads() == 8  # looked at again only after SHARE_EVERY_S
        share.next_at = 0.0
        share()
        assert torch.get_num_threads() == 2  # four training: a quarter each
        fixed = loop.CoreShare(run, threads=3)  # a run given its threads keeps them
        fixed()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_run_keeps_the_thread_count_whose_steps_it_measures_faster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Steps timed on a clock of the test's, with the other programs' CPU time on the run's cores a count of the
    test's: with nothing else running the run stays on both cores and tries nothing; once a program keeps a core
    busy and two threads' steps take several times as long, it moves to one thread within a few steps, does
    not try both again while that program runs, and goes back to both when the core is free again, or by a
    trial once the program uses less of it. Where another program uses the cores but two threads stay the
    faster, trials on one come now and then and lose."""
    from cvae import loop

    monkeypatch.setattr(loop, "available_cores", lambda: 2)
    now, others, load = [0.0], [0.0], [0.0]  # the clock; others' CPU seconds; the cores they keep busy
    step_s = {2: 0.030, 1: 0.055}  # nothing else running: two threads' steps are the faster
    share = loop.CoreShare(RunDir(tmp_path / "r"), threads=0, clock=lambda: now[0], others=lambda: others[0])
    before = torch.get_num_threads()

    def train(seconds: float) -> list[int]:
        """Steps for `seconds` of the test's clock; the thread count each ran on."""
        ran, end = [], now[0] + seconds
        while now[0] < end:
            share()  # the loop calls it after each step
            ran.append(torch.get_num_threads())
            now[0] += step_s[ran[-1]]
            others[0] += step_s[ran[-1]] * load[0]
        return ran

    try:
        assert set(train(120.0)) == {2}  # alone: no trial
        load[0] = 0.5  # something else on the cores, but two threads stay the faster
        shared = train(120.0)
        assert shared[-1] == 2 and 0 < shared.count(1) < 0.02 * len(shared)  # trials on one thread, which lose
        load[0] = 1.0
        step_s.update({2: 1.0, 1: 0.055})  # a core kept busy: two threads wait for the one without a time slice
        busy = train(180.0)
        assert busy.index(1) < 10  # the slowed steps call a trial at once, which moves to one thread
        assert "CPU threads: 1 from now on (55 ms a step against " in capsys.readouterr().out
        settled = busy[busy.index(1) :]
        assert set(settled) == {1}  # no trial back on two while a core's worth of other work is there
        load[0] = 0.0
        step_s.update({2: 0.030, 1: 0.055})  # the core free again
        again = train(120.0)
        assert again[-1] == 2 and again.index(2) < 61 / 0.055  # back on two by the next look, at most 60 s on
        assert "CPU threads: 2 " in capsys.readouterr().out  # by a trial, or by a look that found the cores free
        # A run that starts beside a busy core whose two-thread steps take seconds: one thread after the first
        # step (not timed), two that say enough and the trial's first; none on two after that.
        share = loop.CoreShare(RunDir(tmp_path / "r"), threads=0, clock=lambda: now[0], others=lambda: others[0])
        load[0] = 1.0
        step_s.update({2: 3.0, 1: 0.090})
        late = train(300.0)
        assert late.index(1) == 3 and set(late[3:]) == {1}
        assert "CPU threads: 1 from now on (90 ms a step against 3000 ms on 2)" in capsys.readouterr().out
        load[0] = 0.5  # the other program now uses half a core, and two threads are the faster again
        step_s.update({2: 0.030, 1: 0.055})
        partly = train(60.0)
        assert partly[-1] == 2 and partly.index(2) < 11 / 0.055  # by a trial within two looks, 5 s apart
        assert "CPU threads: 2 from now on (30 ms a step against 55 ms on 1)" in capsys.readouterr().out
        torch.set_num_threads(2)
        fixed = loop.CoreShare(RunDir(tmp_path / "r"), threads=1, clock=lambda: now[0], others=lambda: others[0])
        for _ in range(1000):
            fixed()
            now[0] += 0.2
            others[0] += 0.2
        assert torch.get_num_threads() == 2  # a run given its threads is left alone
    finally:
        torch.set_num_threads(before)


def test_a_quiet_run_prints_nothing_not_even_its_thread_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `-q` promises nothing but errors: a run that moves to one thread beside a busy core (a test suite, another
    # user's job) must not print that into output another program reads, such as `cvae evaluate --json`'s.
    from cvae import loop
    from cvae.train import main

    made: list[loop.CoreShare] = []
    real = loop.CoreShare

    def kept(*args: object, **kwargs: object) -> loop.CoreShare:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(loop, "CoreShare", kept)
    tiny = dict(dataset="MNIST", arch="mlp", mlp_hidden=(16,), latent_dim=2, epochs=1, train_subset=256,
                test_subset=64, latent_subset=16, device="cpu")  # fmt: skip
    main(**tiny, run_dir=str(tmp_path / "quiet"), quiet=True)
    made[-1].say("CPU threads: 1 from now on (8 ms a step against 141 ms on 2)")
    assert capsys.readouterr().out == ""
    main(**tiny, run_dir=str(tmp_path / "told"))
    capsys.readouterr()
    made[-1].say("CPU threads: 1 from now on (8 ms a step against 141 ms on 2)")
    assert capsys.readouterr().out == "CPU threads: 1 from now on (8 ms a step against 141 ms on 2)\n"


def test_a_run_beside_its_folders_other_runs_tries_its_share_again_once_outside_work_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """On 16 cores with one other run of its folder (8 cores each), that run's work on the cores is not a
    reason to stay below the share: a run that moved to 4 threads beside an outside program tries 8 again once
    that program stops, though the other run still keeps 8 cores busy."""
    from cvae import loop

    monkeypatch.setattr(loop, "available_cores", lambda: 16)
    monkeypatch.setattr(loop, "active_runs", lambda *args, **kwargs: 1)
    now, others, load = [0.0], [0.0], [9.0]  # the other run's 8 cores and an outside program's one
    step_s = {8: 1.0, 4: 0.055}
    share = loop.CoreShare(RunDir(tmp_path / "r"), threads=0, clock=lambda: now[0], others=lambda: others[0])
    before = torch.get_num_threads()

    def train(seconds: float) -> list[int]:
        ran, end = [], now[0] + seconds
        while now[0] < end:
            share()
            ran.append(torch.get_num_threads())
            now[0] += step_s[ran[-1]]
            others[0] += step_s[ran[-1]] * load[0]
        return ran

    try:
        assert train(60.0)[-1] == 4
        assert "CPU threads: 4 from now on (55 ms a step against 1000 ms on 8)" in capsys.readouterr().out
        load[0], step_s[8] = 8.0, 0.030  # the outside program stopped; the other run goes on
        assert train(30.0)[-1] == 8
        assert "CPU threads: 8 from now on (30 ms a step against 55 ms on 4)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_the_cpu_time_of_other_programs_on_the_runs_cores_is_measured(capsys: pytest.CaptureFixture) -> None:
    """What tells a run that its cores are not its own: /proc/stat's busy time less this process's own, which
    grows by about a core's time while the bench's busy program runs (`--busy`), and by part of one beside a
    program busy part of the time."""
    from benchmarks.bench import busy_cores, cli
    from cvae.runs import others_cpu_seconds

    first = others_cpu_seconds()
    with busy_cores(1):
        time.sleep(1.5)
    second = others_cpu_seconds()
    assert first is not None and second - first > 0.4  # its 1.5 s of a core, less a busy machine's share
    with busy_cores(0.5):  # one program, busy half of every 20 ms
        time.sleep(1.5)
    assert others_cpu_seconds() - second > 0.2
    for wrong in ("-1", "nan", "65"):
        assert cli(["--busy", wrong]) == 2
    assert capsys.readouterr().err.count("\n") == 3


def test_the_queue_beside_busy_programs_command_reports_a_finished_run(capsys: pytest.CaptureFixture,
                                                                      even_priority) -> None:  # fmt: skip
    """`python -m benchmarks.queue_busy`, which docs/hosting.md's figures beside busy programs come from: a
    one-epoch quick demo through the run queue finishes and its epoch is reported; bad flags get one line."""
    from benchmarks import queue_busy

    assert queue_busy.main(["--busy", "0", "--epochs", "1", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("beside 0 busy core(s): finished (") and "epochs: 1: " in out, out
    for wrong in (["--busy", "-1"], ["--epochs", "0"], ["--timeout", "0"]):
        assert queue_busy.main(wrong) == 2
    assert capsys.readouterr().err.count("\n") == 3


def test_a_queued_run_shows_its_position_and_can_be_cancelled(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_MAX_RUNS", "1")
    monkeypatch.delenv("CVAE_TRAIN_NICE", raising=False)
    (root / ".slots").mkdir()
    with open(root / ".slots" / "slot-0.lock", "a") as slot:  # the one training slot is busy
        fcntl.flock(slot, fcntl.LOCK_EX)
        run = jobs.start(root, {"arch": "mlp", "epochs": 1, "train_subset": 128, "threads": 1})
        assert "cvae.jobs" in run.log_path.read_text()
        deadline = time.time() + 60
        while run.read_status().get("position") != 1 and time.time() < deadline:
            time.sleep(0.2)
        # The trainer runs at a lower CPU priority than the app, so pages stay quick while it trains.
        assert os.getpriority(os.PRIO_PROCESS, run.read_status()["pid"]) == min(
            19, os.getpriority(os.PRIO_PROCESS, 0) + 10
        )
        at = _app(run.id)
        assert "queued — position 1" in _text(at)
        assert "MNIST · bernoulli · mlp · z=10 · 1 epoch" in _text(at) and "not written yet" not in _text(at)
        assert at.button(key="stop").label.startswith("Cancel")
        at.button(key="stop").click().run()
        while jobs.is_active(run) and time.time() < deadline:
            time.sleep(0.2)
    status = run.read_status()
    assert status["state"] == "stopped" and "queue" in status["message"]
    at = _app(run.id)
    assert "start_again" in _keys(at) and "resume" not in _keys(at)  # no checkpoint: start it again


def test_interrupted_run_resumes_in_one_click(root: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _copy(tiny_run, root, "dead", state="running", pid=999_999_999, epoch=2, epochs=5)
    at = _app("dead")
    assert "Interrupted" in _text(at)
    assert at.button(key="resume").label == "Resume from epoch 2"
    resumed = []
    monkeypatch.setattr(jobs, "resume", lambda run, more, user: resumed.append((run.id, more)))
    at.button(key="resume").click().run()
    assert resumed == [("dead", 5)]


def test_delete_asks_first_and_never_an_active_run(root: Path, tiny_run: Path) -> None:
    _copy(tiny_run, root, "old")
    _copy(tiny_run, root, "live", state="running", pid=os.getpid(), epoch=1, epochs=5)
    at = _app("live")
    assert "delete" not in _keys(at)
    with pytest.raises(Exception, match="stop this run"):
        jobs.delete(RunDir(root / "live"))
    at = _app("old")
    at.button(key="delete").click().run()
    assert (root / "old").is_dir() and "cannot be undone" in _text(at)
    at.button(key="delete_yes").click().run()
    assert not at.exception and not (root / "old").exists()


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    return at.button[0].click().run()


def test_accounts_sign_in_roles_and_owners(root: Path, tiny_run: Path) -> None:
    from cvae import classroom
    from cvae.classroom import User

    one_time = classroom.add_accounts(root, ["alice", "bob"])
    lecturer = classroom.add_accounts(root, ["prof"], role="lecturer")
    _copy(tiny_run, root, "alices", owner="alice")
    _copy(tiny_run, root, "profs", owner="prof")
    at = _app("alices", accounts=True)
    assert not at.selectbox and not at.title[0].value.startswith(":material/model")  # nothing before sign-in
    _sign_in(at, "alice", "wrong")  # someone else's name without their password
    assert "Wrong name or password" in _text(at) and not at.selectbox
    _sign_in(at, "bob", one_time["bob"])  # a one-time password: choose your own first
    assert at.text_input(key="new_password") and not at.selectbox
    at.text_input(key="new_password").input("bobs-own-pw")
    at.text_input(key="new_password_again").input("bobs-own-pw")
    at.button[0].click().run()
    assert at.session_state["cvae_viewer"] == User("bob", "student")
    # bob sees neither alice's nor the lecturer's run (nothing pinned, classmates hidden): the link is refused
    assert at.sidebar.selectbox(key="run").options == [] and "No run called 'alices'" in _text(at)
    classroom.update_settings(root, None, classmates_visible=True)
    at = _app("alices", accounts=True)
    _sign_in(at, "bob", "bobs-own-pw")
    assert not {"resume", "delete", "stop"} & _keys(at) and "Started by **alice**" in _text(at)
    assert not [box for box in at.text_input if box.label.startswith("Name")]  # no rename form to be refused
    assert " · alice · " in at.sidebar.selectbox(key="run").format_func("alices")  # the picker says whose run
    with pytest.raises(classroom.NotAllowed, match="alice's run"):
        jobs.delete(RunDir(root / "alices"), User("bob"))  # the library refuses, not only the page
    # the lecturer manages everyone's runs and pins one for the class
    classroom.update_settings(root, None, classmates_visible=False)
    at = _app("alices", accounts=True)
    _sign_in(at, "prof", lecturer["prof"])
    at.text_input(key="new_password").input("lecturer-pw")
    at.text_input(key="new_password_again").input("lecturer-pw")
    at.button[0].click().run()
    assert {"resume", "delete", "pin"} <= _keys(at)
    assert [box for box in at.text_input if box.label.startswith("Name")]  # the lecturer renames anyone's run
    at.switch_page("app_pages/train.py").run()
    at.sidebar.selectbox(key="run").select("profs").run()
    at.button(key="pin").click().run()
    assert classroom.read_settings(root)["pinned"] == ["profs"]
    at = _app("profs", accounts=True)
    _sign_in(at, "bob", "bobs-own-pw")
    assert [o.split(" · ")[-1] for o in at.sidebar.selectbox(key="run").options] == ["profs"]  # pinned, not alice's
    assert not {"resume", "delete", "pin"} & _keys(at)


def test_the_old_shared_class_password_is_refused(root: Path, tiny_run: Path) -> None:
    _copy(tiny_run, root, "alices", owner="alice")
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["cvae"] = {"password": "s3cret"}  # anyone could sign in under any name with it
    at.run()
    assert not at.exception and not at.selectbox and not at.text_input
    assert 'sign_in = "accounts"' in at.error[0].value


def test_a_new_run_records_its_owner(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "_spawn", lambda run, argv, epochs: 0)
    from cvae.classroom import User

    run = jobs.start(root, jobs.QUICK_DEMO_OPTIONS, user=User("carol"))
    assert (run.path / "owner.json").is_file() and "carol" in (run.path / "owner.json").read_text()
    assert (run.path / "launch.json").is_file()


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "full"),
        (PermissionError(errno.EACCES, "denied"), "read-only"),
    ],
)
def test_disk_full_or_read_only_when_starting(root: Path, monkeypatch: pytest.MonkeyPatch, error, said) -> None:
    def refuse(path, obj):
        raise error

    monkeypatch.setattr(jobs, "write_json", refuse)
    at = _app()
    at.button(key="quick_demo").click().run()
    assert not at.exception
    assert any(said in e.value and "Could not start" in e.value for e in at.error)
    assert not [p for p in root.iterdir() if not p.name.startswith(".")]  # no half-made run left


@pytest.mark.parametrize("page", PAGES)
def test_run_folder_deleted_while_shown(root: Path, tiny_run: Path, page: str) -> None:
    _copy(tiny_run, root, "gone")
    at = _app("gone", page)
    shutil.rmtree(root / "gone")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "No run" in _text(at) or any("No run called" in w.value for w in at.sidebar.warning)


def _generate_upload(at: AppTest) -> AppTest:
    at.segmented_control(key="gen_source").set_value("upload").run()
    assert not at.exception
    return at


def test_upload_a_checkpoint_and_a_picture(root: Path, tiny_run: Path) -> None:
    at = _generate_upload(_app(page="app_pages/generate.py"))
    data = (tiny_run / "checkpoints" / "latest.pt").read_bytes()
    at.file_uploader(key="upload_ckpt").upload("mine.pt", data).run()
    assert not at.exception and not at.error
    # The uniform grid and the random samples (the latent sliders are a component, not an image).
    assert len([e for e in at.main if type(e).__name__ == "Image"]) == 2
    assert at.get("iframe")  # the latent sliders' pre-decoded sheet (ui.scrub), switched in the browser
    picture = io.BytesIO()
    Image.new("RGBA", (300, 200), (255, 255, 255, 128)).save(picture, format="PNG")  # other size and mode
    at.file_uploader(key="style_upload").upload("me.png", picture.getvalue(), "image/png").run()
    assert not at.exception and not at.error
    assert len([e for e in at.main if type(e).__name__ == "Image"]) == 4  # and the picture, restyled in every class
    at.file_uploader(key="style_upload").clear().upload("notes.png", b"not an image at all", "image/png").run()
    assert any("not a picture" in e.value for e in at.error)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "pickle", "foreign", "huge"])
def test_hostile_checkpoint_upload(root: Path, tiny_run: Path, tmp_path: Path, kind: str) -> None:
    data = (tiny_run / "checkpoints" / "latest.pt").read_bytes()
    if kind == "corrupt":
        data = b"garbage" * 100
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "pickle":
        import pickle

        data = pickle.dumps(Boom())
    elif kind == "foreign":
        buffer = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(2)}}, buffer)
        data = buffer.getvalue()
    else:  # a valid file whose config claims a network of billions of parameters
        payload = torch.load(tiny_run / "checkpoints" / "latest.pt", weights_only=True)
        payload["config"]["model"]["mlp_hidden"] = [10**6, 10**6]
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
    at = _generate_upload(_app(page="app_pages/generate.py"))
    at.file_uploader(key="upload_ckpt").upload(f"{kind}.pt", data).run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value and at.error[0].value.startswith("Cannot use")
    assert not (tmp_path / "pwned").exists()


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['CVAE_RUNS_DIR']).parent / 'pwned'}",))
