"""Accounts, roles, signed sessions and the class's settings (cvae.classroom), checked in the library itself:
the app's buttons only mirror these checks."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvae import classroom, jobs
from cvae.classroom import NotAllowed, SignInError, User
from cvae.runs import RunDir, process_identity, write_json

ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB, PROF = User("alice"), User("bob"), User("prof", "lecturer")


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


def _account(root: Path, user: User, password: str) -> None:
    classroom.add_accounts(root, [user.name], role=user.role)
    classroom.set_password(root, user, password)


def test_one_time_password_then_ones_own(root: Path) -> None:
    one_time = classroom.add_accounts(root, ["alice"])["alice"]
    user, must_change = classroom.sign_in(root, "alice", one_time)
    assert user == ALICE and must_change
    with pytest.raises(NotAllowed):
        classroom.issue_token(root, user)  # no session until a password of one's own is chosen
    with pytest.raises(classroom.CVAEError, match="at least 8"):
        classroom.set_password(root, user, "short")
    classroom.set_password(root, user, "alice's own")
    assert classroom.sign_in(root, "alice", "alice's own") == (ALICE, False)
    with pytest.raises(SignInError):
        classroom.sign_in(root, "alice", one_time)  # used once, gone
    stored = (root / ".class" / "accounts.json").read_text()
    assert "alice's own" not in stored and one_time not in stored and "$argon2id$" in stored
    assert (root / ".class" / "accounts.json").stat().st_mode & 0o077 == 0
    classroom.issue_token(root, ALICE)
    assert (root / ".class" / "secret.key").stat().st_mode & 0o077 == 0


def test_wrong_passwords_lock_the_account_for_longer_and_longer(root: Path) -> None:
    _account(root, ALICE, "right-password")
    now = 1_000_000.0
    for _ in range(classroom.FREE_TRIES - 1):
        with pytest.raises(SignInError, match="before a wait"):
            classroom.sign_in(root, "alice", "guess", now=now)
    with pytest.raises(SignInError, match="wait 5 s"):
        classroom.sign_in(root, "alice", "guess", now=now)
    with pytest.raises(SignInError, match="too many wrong passwords"):
        classroom.sign_in(root, "alice", "right-password", now=now + 4)  # locked: even the right one waits
    with pytest.raises(SignInError, match="wait 10 s"):
        classroom.sign_in(root, "alice", "guess", now=now + 6)  # the next wrong one doubles the wait
    assert classroom.sign_in(root, "alice", "right-password", now=now + 17)[0] == ALICE
    with pytest.raises(SignInError, match="2 more tries"):  # a right password clears the count
        classroom.sign_in(root, "alice", "guess", now=now + 18)
    with pytest.raises(SignInError, match="wrong name or password"):
        classroom.sign_in(root, "nobody", "guess")  # an unknown name reads the same as a wrong password


def test_tokens_cannot_be_forged_altered_or_kept_after_sign_out(root: Path) -> None:
    _account(root, ALICE, "alice-password")
    _account(root, PROF, "prof-password")
    token = classroom.issue_token(root, ALICE, hours=1, now=1_000_000)
    assert classroom.user_of_token(root, token, now=1_000_000 + 3599) == ALICE
    assert classroom.user_of_token(root, token, now=1_000_000 + 3601) is None  # expired
    payload, signature = classroom.issue_token(root, ALICE).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    as_prof = base64.urlsafe_b64encode(json.dumps({**claims, "u": "prof"}).encode()).rstrip(b"=").decode()
    for forged in (f"{as_prof}.{signature}", f"{payload}.{'A' * 43}", "prof", "", None, 42, "a.b.c", "x" * 5000):
        assert classroom.user_of_token(root, forged) is None
    fresh = classroom.issue_token(root, ALICE)
    classroom.end_sessions(root, "alice")  # signing out ends every session of the account
    assert classroom.user_of_token(root, fresh) is None
    again = classroom.issue_token(root, ALICE)
    classroom.add_accounts(root, ["alice"])  # a reset by the lecturer ends it too
    assert classroom.user_of_token(root, again) is None
    _account(root, BOB, "bob-password")
    bobs = classroom.issue_token(root, BOB)
    classroom.remove_accounts(root, ["bob"])
    assert classroom.user_of_token(root, bobs) is None
    (root / ".class" / "secret.key").write_text("00" * 32)  # a new key: every old token is void
    assert classroom.user_of_token(root, classroom.issue_token(root, PROF)) == PROF


@pytest.mark.parametrize(
    "content",
    ["[" * 200_000, '{"users": {"alice": {"role": "admin", "hash": "x"}}}', '{"users": []}', "\xff\xfe", '{"users":'],
)
def test_a_hostile_accounts_file_signs_no_one_in(root: Path, content: str) -> None:
    (root / ".class").mkdir()
    (root / ".class" / "accounts.json").write_text(content, errors="surrogateescape")
    with pytest.raises(SignInError):
        classroom.sign_in(root, "alice", "x")
    assert classroom.accounts(root) == {}
    write_json(root / ".class" / "settings.json", {"pinned": "all", "max_active": 10**9, "classmates_visible": 1})
    assert classroom.read_settings(root) == classroom.DEFAULT_SETTINGS  # each field checked, else the default


def test_run_operations_check_the_user(root: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvae.names import read_meta, write_meta

    shutil.copytree(tiny_run, root / "alices")
    run = RunDir(root / "alices")
    write_json(run.path / "owner.json", {"owner": "alice"})
    for action in (lambda u: jobs.delete(run, u), lambda u: jobs.stop(run, u), lambda u: jobs.resume(run, 1, u),
                   lambda u: jobs.start_again(run, u), lambda u: write_meta(run.path, name="x", note="", user=u)):  # fmt: skip
        with pytest.raises(NotAllowed, match="alice's run"):
            action(BOB)
    assert run.path.is_dir() and read_meta(run.path)["name"] == ""
    spawned = []
    monkeypatch.setattr(jobs, "_spawn", lambda run, argv, epochs: spawned.append(run.id))
    jobs.resume(run, 1, PROF)  # a lecturer may act on any run
    write_meta(run.path, name="checked", note="", user=PROF)
    assert spawned == ["alices"] and read_meta(run.path)["name"] == "checked"
    jobs.delete(run, ALICE)
    assert not run.path.exists()


def test_a_student_is_held_to_the_classs_limit_of_active_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def queue(run, argv, epochs):  # what _spawn writes: queued, with a live process (here, this one)
        run.write_status(state="queued", epochs=epochs, pid=os.getpid(), process=process_identity(os.getpid()))

    monkeypatch.setattr(jobs, "_spawn", queue)
    classroom.update_settings(root, PROF, max_active=2)
    options = {"arch": "mlp", "epochs": 1, "train_subset": 128}
    jobs.start(root, options, user=ALICE)
    jobs.start(root, options, user=ALICE)
    with pytest.raises(NotAllowed, match="the class's limit is 2"):
        jobs.start(root, options, user=ALICE)
    assert len(classroom.active_runs_of(root, "alice")) == 2
    jobs.start(root, options, user=BOB)  # a limit per student, not for the class
    for _ in range(3):
        jobs.start(root, options, user=PROF)  # lecturers have none
    with pytest.raises(NotAllowed, match="only a lecturer"):
        classroom.update_settings(root, ALICE, max_active=50)
    with pytest.raises(NotAllowed, match="only a lecturer"):
        classroom.set_pinned(root, BOB, "x", True)


def test_visibility(root: Path) -> None:
    settings = classroom.read_settings(root)
    assert classroom.may_see(ALICE, "alice", "a", settings) and not classroom.may_see(ALICE, "bob", "b", settings)
    assert classroom.may_see(PROF, "bob", "b", settings) and classroom.may_see(None, None, "b", settings)
    pinned = classroom.set_pinned(root, PROF, "b", True)
    assert classroom.may_see(ALICE, "bob", "b", pinned)
    shared = classroom.update_settings(root, PROF, classmates_visible=True)
    assert classroom.may_see(ALICE, "bob", "c", shared)


def test_the_class_command(root: Path, tmp_path: Path) -> None:
    (tmp_path / "class.txt").write_text("# week 1\nalice\nbob smith\n\n")
    cmd = [sys.executable, "-m", "cvae", "class", "--runs-dir", str(root)]
    out = subprocess.run([*cmd, "add", "--from", str(tmp_path / "class.txt")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("\t") for line in out.stdout.splitlines())
    assert set(lines) == {"alice", "bob smith"}
    assert classroom.sign_in(root, "bob smith", lines["bob smith"]) == (User("bob smith"), True)
    bad = subprocess.run([*cmd, "add", "../etc"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "invalid account name" in bad.stderr
    listed = subprocess.run([*cmd, "list"], capture_output=True, text=True, cwd=ROOT)
    assert "alice\tstudent\tone-time password" in listed.stdout
    assert subprocess.run([*cmd, "frobnicate"], capture_output=True, text=True, cwd=ROOT).returncode == 2
