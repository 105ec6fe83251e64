"""The run queue: at most N runs train at once; the rest wait in order, on disk."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cvae import classroom, jobs
from cvae.errors import ConfigError
from cvae.runs import RunDir, process_args, process_identity

ROOT = Path(__file__).resolve().parent.parent
TINY = ["-z", "2", "--arch", "mlp", "--train-subset", "512", "--test-subset", "128", "--latent-subset", "64",
        "-e", "3", "-q", "--threads", "1"]  # fmt: skip


def test_one_slot_runs_in_order_and_shows_positions(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [RunDir(tmp_path / f"run{i}") for i in range(3)]
    # The test holds the only slot until all three have queued, so the order is not left to timing.
    (tmp_path / ".slots").mkdir()
    slot = open(tmp_path / ".slots" / "slot-0.lock", "a")  # noqa: SIM115 - released below
    fcntl.flock(slot, fcntl.LOCK_EX)
    procs = []
    for run in runs:
        procs.append(subprocess.Popen([sys.executable, "-m", "cvae.jobs", "--max-active", "1", "--run-dir",
                                       str(run.path), *TINY], cwd=ROOT, env=env, stderr=subprocess.PIPE))  # fmt: skip
        deadline = time.time() + 60
        while run.read_status().get("state") != "queued" and time.time() < deadline:
            time.sleep(0.05)
    deadline = time.time() + 30
    while time.time() < deadline:
        positions = [r.read_status().get("position") for r in runs]
        if positions == [1, 2, 3]:
            break
        time.sleep(0.1)
    assert positions == [1, 2, 3]
    assert all(r.read_status()["state"] == "queued" for r in runs)
    slot.close()  # frees the slot
    max_running = 0
    deadline = time.time() + 240
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        states = [r.read_status().get("state") for r in runs]
        max_running = max(max_running, sum(s in ("starting", "running") for s in states))
        time.sleep(0.05)
    assert all(p.wait(timeout=10) == 0 for p in procs), [p.stderr.read().decode()[-300:] for p in procs]
    assert max_running == 1
    starts = [r.read_status()["started"] for r in runs]
    assert starts == sorted(starts)  # first come, first served
    assert all(r.read_status()["state"] == "finished" for r in runs)


def test_sigterm_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    blocker = subprocess.Popen([sys.executable, "-m", "cvae.jobs", "--max-active", "1", "--run-dir",
                                str(tmp_path / "a"), *TINY[:-5], "-e", "50", "-q"], cwd=ROOT, env=env)  # fmt: skip
    time.sleep(2)
    waiter = subprocess.Popen([sys.executable, "-m", "cvae.jobs", "--max-active", "1", "--run-dir",
                               str(tmp_path / "b"), *TINY], cwd=ROOT, env=env)  # fmt: skip
    run = RunDir(tmp_path / "b")
    deadline = time.time() + 60
    while run.read_status().get("state") != "queued" and time.time() < deadline:
        time.sleep(0.1)
    assert run.read_status()["state"] == "queued"
    waiter.terminate()
    assert waiter.wait(timeout=30) == 0
    assert run.read_status()["state"] == "stopped"
    blocker.kill()
    blocker.wait()


@pytest.mark.parametrize("nice", ["25", "-1", "x"])
def test_bad_nice_is_one_line_exit_2(tmp_path: Path, nice: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cvae.jobs", "--nice", nice, "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--nice" in lines[0], proc.stderr


@pytest.mark.parametrize("gpus", ["[[", '[{"index": -1, "name": "x", "memory": 1}]', '{"index": 0}', "[1]"])
def test_bad_gpus_is_one_line_exit_2(tmp_path: Path, gpus: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cvae.jobs", "--gpus", gpus, "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--gpus" in lines[0], proc.stderr


# ------------------------------------------------- GPUs: slots per (gpu, k), tested with a fake device list

GIB = 1 << 30


def fake_gpus(*memory_gib: int) -> list[jobs.Gpu]:
    return [jobs.Gpu(i, f"Fake GPU {i}", m * GIB) for i, m in enumerate(memory_gib)]


def queued(root: Path, name: str, pool: str, at: float) -> RunDir:
    """A run folder waiting in `pool`, owned by this (live) process, as the queue process writes it."""
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.write_status(state="queued", pid=os.getpid(), process=process_identity(os.getpid()), queued_at=at, pool=pool)
    return run


def test_two_gpus_two_runs_each_four_train_on_distinct_slots_the_fifth_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVAE_RUNS_PER_GPU", "2")
    monkeypatch.setattr(jobs, "list_gpus", lambda: fake_gpus(80, 80))
    monkeypatch.setattr(jobs, "POLL_S", 0.02)
    pool, slots = jobs.plan_slots("auto", 1, jobs.list_gpus())
    assert pool == "gpu" and [s.device for s in slots] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    runs = [queued(tmp_path, f"run{i}", pool, at=100.0 + i) for i in range(5)]
    held = []
    for run in runs[:4]:  # each in queue order takes the next free slot, as `python -m cvae.jobs` does
        handle, slot = jobs.wait_for_slot(run, tmp_path, slots, pool=pool)
        held.append((handle, slot))
        run.write_status(state="starting", device=slot.device)  # no longer waiting
    assert sorted(s.lock for _, s in held) == ["gpu0-0.lock", "gpu0-1.lock", "gpu1-0.lock", "gpu1-1.lock"]
    assert [s.device for _, s in held] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # spread before shared
    # The fifth waits: every slot is held (by real flocks), so it stays queued at position 1.
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(jobs.wait_for_slot(runs[4], tmp_path, slots, pool=pool)))
    waiter.start()
    time.sleep(0.5)
    assert not got and runs[4].read_status()["state"] == "queued" and runs[4].read_status()["position"] == 1
    assert runs[4].read_status()["slots"] == 4
    # A run on GPU 1 ends (its lock is freed): the fifth takes exactly that slot.
    freed = next(i for i, (_, s) in enumerate(held) if s.lock == "gpu1-0.lock")
    held[freed][0].close()
    waiter.join(timeout=10)
    assert got and got[0][1] == jobs.Slot("gpu1-0.lock", "cuda:1")
    got[0][0].close()
    for handle, _ in held:
        handle.close()


def test_a_lecturers_run_goes_ahead_of_the_students_waiting_and_takes_the_next_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "POLL_S", 0.02)
    students = [queued(tmp_path, f"student{i}", "cpu", at=100.0 + i) for i in range(3)]
    for i, run in enumerate(students):
        classroom.record_owner(run, classroom.User(f"s{i}"))
    lecture = queued(tmp_path, "lecture", "cpu", at=200.0)  # joined last
    classroom.record_owner(lecture, classroom.User("prof", role="lecturer"))
    assert jobs.waiting_runs(tmp_path, "cpu") == [lecture, *students]
    # A student cannot claim it by a hand-made owner.json value that is not exactly true.
    (students[2].path / "owner.json").write_text('{"owner": "s2", "lecturer": "yes"}')
    assert jobs.waiting_runs(tmp_path, "cpu")[0] == lecture
    slots = jobs.plan_slots("cpu", 1, [])[1]
    handle, _ = jobs.wait_for_slot(lecture, tmp_path, slots, pool="cpu")
    lecture.write_status(state="starting")
    try:
        asks = iter([False, True])  # one look at the queue, then give up: the lecturer's run holds the slot
        assert jobs.wait_for_slot(students[0], tmp_path, slots, pool="cpu", should_stop=lambda: next(asks)) is None
        assert students[0].read_status()["position"] == 1
    finally:
        handle.close()


def test_cpu_runs_keep_their_slots_and_queue_beside_gpu_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_PER_GPU", "1")
    gpus = fake_gpus(24)
    assert jobs.plan_slots("cpu", 2, gpus) == ("cpu", [jobs.Slot("slot-0.lock"), jobs.Slot("slot-1.lock")])
    assert jobs.plan_slots("auto", 2, []) == ("cpu", [jobs.Slot("slot-0.lock"), jobs.Slot("slot-1.lock")])
    assert jobs.plan_slots("mps", 1, gpus)[0] == "cpu"
    # A GPU run at the head of its own queue does not hold up a CPU run, nor the other way round.
    gpu_run = queued(tmp_path, "g", "gpu", at=1.0)
    cpu_run = queued(tmp_path, "c", "cpu", at=2.0)
    assert jobs.waiting_runs(tmp_path, "cpu") == [cpu_run] and jobs.waiting_runs(tmp_path, "gpu") == [gpu_run]
    first = jobs.wait_for_slot(gpu_run, tmp_path, jobs.plan_slots("auto", 1, gpus)[1], pool="gpu")
    second = jobs.wait_for_slot(cpu_run, tmp_path, jobs.plan_slots("cpu", 1, gpus)[1], pool="cpu")
    assert first[1].device == "cuda:0" and second[1] == jobs.Slot("slot-0.lock")
    first[0].close()
    second[0].close()


def test_a_pinned_gpu_waits_for_that_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_PER_GPU", "3")
    pool, slots = jobs.plan_slots("cuda:1", 1, fake_gpus(16, 16))
    assert pool == "cuda:1" and [s.lock for s in slots] == ["gpu1-0.lock", "gpu1-1.lock", "gpu1-2.lock"]
    with pytest.raises(ConfigError, match="cuda:0, cuda:1"):
        jobs.plan_slots("cuda:2", 1, fake_gpus(16, 16))


def test_runs_per_gpu_by_memory_and_cores_or_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVAE_RUNS_PER_GPU", raising=False)
    h100, small = jobs.Gpu(0, "big", 80 * GIB), jobs.Gpu(1, "small", 3 * GIB)
    assert jobs.runs_per_gpu(h100, 1, cores=64) == 80 * GIB // jobs.GPU_RUN_BYTES  # memory decides
    assert jobs.runs_per_gpu(h100, 1, cores=16) == 16  # one core per run: the cores decide
    assert jobs.runs_per_gpu(h100, 8, cores=16) == 2  # shared out among 8 GPUs
    assert jobs.runs_per_gpu(small, 1, cores=16) == 1  # at least one, even where one barely fits
    assert jobs.runs_per_gpu(h100, 4, cores=1) == 1
    monkeypatch.setenv("CVAE_RUNS_PER_GPU", "10")
    assert jobs.runs_per_gpu(small, 1, cores=1) == 10
    monkeypatch.setenv("CVAE_RUNS_PER_GPU", "zero")  # not a positive number: the default
    assert jobs.runs_per_gpu(small, 1, cores=16) == 1
    # Different cards on one server get their own counts.
    monkeypatch.setenv("CVAE_RUNS_PER_GPU", "")
    mixed = [jobs.Gpu(0, "a", 8 * GIB), jobs.Gpu(1, "b", 4 * GIB)]
    monkeypatch.setattr(jobs, "available_cores", lambda: 64)
    assert [s.lock for s in jobs.plan_slots("cuda", 1, mixed)[1]] == [
        "gpu0-0.lock", "gpu1-0.lock", "gpu0-1.lock", "gpu1-1.lock", "gpu0-2.lock", "gpu0-3.lock"]  # fmt: skip


def test_requested_device_from_flags_or_the_resumed_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    assert jobs.requested_device(["-z", "2", "--device", "cuda:1"], run) == "cuda:1"
    assert jobs.requested_device(["-z", "2"], run) == "auto"
    (run.path / "config.json").write_text(json.dumps({"train": {"device": "cpu"}}))
    assert jobs.requested_device(["--resume_path", str(run.path), "--epochs", "2"], run) == "cpu"
    assert jobs.requested_device(["-rp", str(run.path), "--device", "cuda"], run) == "cuda"
    # The app's run that the queue put on cuda:1: resumed, it may take any GPU; one the person pinned stays.
    (run.path / "config.json").write_text(json.dumps({"train": {"device": "cuda:1"}}))
    (run.path / jobs.LAUNCH_FILE).write_text(json.dumps({"argv": ["-z", "2"], "epochs": 3}))
    assert jobs.requested_device(["--resume_path", str(run.path), "--epochs", "2"], run) == "cuda"
    (run.path / jobs.LAUNCH_FILE).write_text(json.dumps({"argv": ["--device", "cuda:1"], "epochs": 3}))
    assert jobs.requested_device(["--resume_path", str(run.path), "--epochs", "2"], run) == "cuda:1"
    (run.path / jobs.LAUNCH_FILE).unlink()  # started from a command line with --device cuda:1
    assert jobs.requested_device(["--resume_path", str(run.path), "--epochs", "2"], run) == "cuda:1"


def test_a_missing_gpu_fails_the_run_in_one_line(tmp_path: Path) -> None:
    """`--device cuda:7` on a machine without that GPU: the run fails with a sentence, not a traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "cvae.jobs", "--run-dir", str(tmp_path / "r"), *TINY, "--device",
                           "cuda:7"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cuda" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_waiting_in_the_queue_holds_no_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's queued runs wait without torch (tens of MB each, not 0.7 GB), and still train once their turn
    comes: a class's long queue fits in the server's memory."""
    monkeypatch.setenv("CVAE_MAX_RUNS", "1")
    (tmp_path / ".slots").mkdir()
    slot = open(tmp_path / ".slots" / "slot-0.lock", "a")  # noqa: SIM115 - released below
    fcntl.flock(slot, fcntl.LOCK_EX)
    options = dict(latent_dim=2, arch="mlp", train_subset=256, test_subset=64, latent_subset=32, epochs=1, threads=1)
    run = jobs.start(tmp_path, options)
    deadline = time.time() + 60
    while run.read_status().get("position") != 1 and time.time() < deadline:
        time.sleep(0.1)
    pid = run.read_status()["pid"]
    time.sleep(1.0)  # well past its imports: it is in its wait loop
    maps = Path(f"/proc/{pid}/maps").read_text()
    rss_mb = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS")).split()[1]) / 1024  # fmt: skip
    assert "libtorch" not in maps and rss_mb < 150, rss_mb
    slot.close()
    deadline = time.time() + 120
    while run.read_status().get("state") != "finished" and time.time() < deadline:
        time.sleep(0.2)
    assert run.read_status()["state"] == "finished", (run.path / "train.log").read_text()[-500:]


def test_a_queued_run_is_told_when_it_starts_from_the_measured_pace(tmp_path: Path) -> None:
    """One slot: the training run has 2 of its 3 epochs (10 s each) left; the two finished quick demos took 10 s
    an epoch, so the first queued run starts in 20 s, the second once that one has trained its 3 epochs too."""
    me = dict(pid=os.getpid(), process=process_identity(os.getpid()))
    argv = ["--quick-demo"]

    def run(name: str, state: str, epochs_done: int, **status: object) -> RunDir:
        r = RunDir(tmp_path / name)
        r.path.mkdir()
        json.dump({"argv": argv, "epochs": 3}, (r.path / "launch.json").open("w"))
        r.write_status(state=state, epoch=epochs_done, epochs=3, **status)
        with r.metrics_path.open("w") as fh:
            for e in range(1, epochs_done + 1):
                fh.write(json.dumps({"epoch": e, "seconds": 10.0, "time": 10.0 * e}) + "\n")
        return r

    run("done-1", "finished", 3)
    run("done-2", "finished", 3)
    run("training", "running", 1, batch=0, batches=100, **me)
    first = run("queued-1", "queued", 0, queued_at=1.0, **me)
    second = run("queued-2", "queued", 0, queued_at=2.0, **me)
    assert jobs.estimated_start(tmp_path, first, 1) == pytest.approx(20.0)
    assert jobs.estimated_start(tmp_path, second, 1) == pytest.approx(20.0 + jobs.STARTUP_S + 30.0)
    assert jobs.estimated_start(tmp_path, first, 2) == pytest.approx(0.0)  # a second slot is free: at once
    assert jobs.estimated_start(tmp_path, second, 2) == pytest.approx(20.0)  # then the training one's
    ahead = RunDir(tmp_path / "training")  # now in its first epoch, 3 s in: its pace is trusted after 5 % of it
    ahead.metrics_path.unlink()
    ahead.write_status(epoch=0, batch=1, batches=938, epoch_started=time.time() - 3.0)
    assert jobs.estimated_start(tmp_path, first, 1) is None  # not an epoch of 938 x 3 s from its first batch
    ahead.write_status(batch=100)
    assert jobs.estimated_start(tmp_path, first, 1) == pytest.approx(3.0 * (3 * 938 - 100) / 100, rel=0.05)
    (tmp_path / "done-1" / "launch.json").write_text("[")  # broken launch files: those runs do not count
    (tmp_path / "done-2" / "launch.json").write_text("{" * 10_000)
    assert jobs.estimated_start(tmp_path, second, 1) is None  # nothing measured for these flags: no made-up time


STEP_BACK = r"""
import os, sys, threading, time
from pathlib import Path
from cvae.jobs import step_back_after_first_pictures
from cvae.runs import RunDir
start = os.getpriority(os.PRIO_PROCESS, 0)  # pytest itself may run niced
os.nice(1)
run = RunDir(Path(sys.argv[1]))
run.write_status(state="running")
worker_nice, worker_policy = [], []
go = threading.Event()
def worker():  # a thread that was running before, as torch's workers are
    go.wait()
    worker_nice.append(os.getpriority(os.PRIO_PROCESS, 0))
    worker_policy.append(os.sched_getscheduler(0))
t = threading.Thread(target=worker); t.start()
watch = step_back_after_first_pictures(run, nice=max(start + 2, 19), poll_s=0.05)
time.sleep(0.3)
before = os.getpriority(os.PRIO_PROCESS, 0)
run.write_status(first_pictures_at=time.time())
watch.join(10)
go.set(); t.join()
print(start, before, os.getpriority(os.PRIO_PROCESS, 0), worker_nice[0],
      int(os.sched_getscheduler(0) == os.SCHED_IDLE) + int(worker_policy[0] == os.SCHED_IDLE))
"""


def test_a_run_steps_back_once_its_first_pictures_are_out(tmp_path: Path) -> None:
    """A class's runs time-share the cores: a trainer that has shown its first pictures lowers every one of its
    threads (the main one and those already running) so that runs still without pictures, and the pages, go
    first."""
    run = tmp_path / "run"
    run.mkdir()
    out = subprocess.run([sys.executable, "-c", STEP_BACK, str(run)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    start, before, main_after, worker_after, idle = map(int, out.stdout.split())
    assert start < 18 and before == start + 1 and main_after == worker_after == 19
    assert idle == 2  # both threads in SCHED_IDLE: they run when nothing else wants the core


def test_a_run_that_ends_without_pictures_stops_watching(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_status(state="failed")
    assert not jobs.step_back_after_first_pictures(run, poll_s=0.01).join(5) and os.getpriority(os.PRIO_PROCESS, 0) < 19


SESSION = r"""
import os
from cvae.jobs import lower_priority
def autogroup():
    try:  # "/autogroup-17 nice 0"; empty for a process in init's session (a container's), which has no group
        return int(open("/proc/self/autogroup").read().split()[-1])
    except (OSError, IndexError):
        return None
before = autogroup()
lower_priority(12)
print(before, autogroup(), os.getsid(0) == os.getpid())
"""


def test_a_run_in_a_session_of_its_own_lowers_the_sessions_priority_and_no_one_elses() -> None:
    """Where Linux shares the cores between sessions first (autogroups), a run's nice counts only against its own
    session's other threads: the app's runs each lead a session, which they lower with their threads, so thirty
    of them do not each weigh as much as the web server. A trainer started from a terminal leaves the terminal's
    session (the shell, the editor) as it was."""
    own = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, timeout=60,
                         start_new_session=True)  # fmt: skip
    shared = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, timeout=60)
    assert own.returncode == shared.returncode == 0, own.stderr + shared.stderr
    own_before, own_after, own_leads = own.stdout.split()
    shared_before, shared_after, shared_leads = shared.stdout.split()
    assert own_leads == "True" and shared_leads == "False"
    assert shared_after == shared_before  # pytest's session: untouched
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if enabled.is_file() and enabled.read_text().strip() == "1":  # this machine groups by session: it must count
        assert (own_before, own_after) == ("0", "12")
    else:  # no autogroups here: the thread priorities alone decide, and nothing fails
        assert own_after == own_before


def test_a_process_just_started_is_known_by_its_command_line_once_exec_has_put_it_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Popen can return while the child's exec has not yet set its arguments: /proc shows an empty command line
    for that moment, and a stop sent then found "no trainer". It is waited out; a zombie's empty one is not."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert process_args(child.pid)[:2] == [sys.executable.encode(), b"-c"]
        real, reads = Path.read_bytes, []

        def mid_exec(path: Path) -> bytes:  # the first two reads land in exec's window
            reads.append(path)
            return b"" if path.name == "cmdline" and len(reads) <= 2 else real(path)

        monkeypatch.setattr(Path, "read_bytes", mid_exec)
        assert process_args(child.pid)[:2] == [sys.executable.encode(), b"-c"] and len(reads) == 3
        monkeypatch.undo()
    finally:
        child.communicate(b"")  # it exits
    assert process_args(child.pid) is None  # reaped: no such process

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)

    def no_waiting(seconds: float) -> None:
        raise AssertionError("waited on a zombie's empty command line")

    monkeypatch.setattr("cvae.runs.time.sleep", no_waiting)
    assert process_args(zombie.pid, wait_s=60) == [b""]
    monkeypatch.undo()
    zombie.wait()
