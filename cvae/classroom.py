"""Who may do what on a shared server: accounts, roles, signed sessions and the class's settings.

No UI here: the app and the command line ask the same questions, and every run operation
(`cvae.jobs.start`, `stop`, `resume`, `start_again`, `delete`, `cvae.names.write_meta`) takes the
acting `User` and refuses in one line what that user may not do. `user=None` means sign-in is off
(a laptop): everything is allowed.

Everything lives in `<runs root>/.class/`, beside the runs it governs (a hidden folder is never a run):

- `accounts.json`: per-person accounts, passwords stored only as Argon2id hashes (argon2-cffi,
  the field's usual password hasher), with each account's wrong-password count and lock-out time;
- `secret.key`: the random key that signs session tokens (readable by the server's user only);
- `settings.json`: the lecturer's choices (pinned runs, active runs per student, classmates visible).

A session token names the user, an expiry and the account's session number, signed with HMAC-SHA256:
a browser can keep it but not make or alter one. Signing out, a new password or a removed account
bumps the number, so every older token of that account stops working at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvae.errors import CVAEError
from cvae.runs import ACTIVE_STATES, OWNER_FILE, RunDir, list_runs, read_json, waiting_lock, write_json

CLASS_DIR = ".class"
ROLES = ("lecturer", "student")
NAME = re.compile(r"^[\w.@'-][\w .@'-]{0,39}$")  # a login name: what a class list holds (names, e-mails)
MIN_PASSWORD = 8
SESSION_HOURS = 12.0  # a lesson and then some: a token from the morning no longer works the next day
# Lock-out after repeated wrong passwords: FREE_TRIES are free, then each wrong one doubles the wait.
FREE_TRIES = 3
FIRST_WAIT_S = 5.0
MAX_WAIT_S = 900.0
DEFAULT_SETTINGS = {"pinned": [], "max_active": 2, "classmates_visible": False}
MAX_ACTIVE_LIMIT = 100

# OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane): a class signing in at once on a small server must
# not need a gigabyte. At most HASHING hashes run at once, which bounds that memory whatever the load.
_HASHING = threading.BoundedSemaphore(2)
_hasher = None


def _argon2():
    global _hasher
    if _hasher is None:
        try:
            from argon2 import PasswordHasher
        except ImportError as err:  # a dependency of the package; only a broken install lacks it
            raise CVAEError("per-student accounts need argon2-cffi: pip install argon2-cffi") from err
        _hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
    return _hasher


class NotAllowed(CVAEError):
    """The signed-in user may not do this (someone else's run, a lecturer's setting, a limit reached)."""


class SignInError(CVAEError):
    """Wrong name or password, or too many tries: the message says which and how long to wait."""


@dataclass(frozen=True)
class User:
    name: str
    role: str = "student"

    @property
    def lecturer(self) -> bool:
        return self.role == "lecturer"


# ---------------------------------------------------------------- who may do what


def run_owner(run: RunDir) -> str | None:
    owner = (read_json(run.path / OWNER_FILE) or {}).get("owner")
    return str(owner) if isinstance(owner, str) and owner else None


def record_owner(run: RunDir, user: User) -> None:
    write_json(run.path / OWNER_FILE, {"owner": user.name, "created": time.time(), "lecturer": user.lecturer})


def by_lecturer(run: RunDir) -> bool:
    """Started by a lecturer (owner.json says so: only the app writes it), so it goes first in the queue."""
    return (read_json(run.path / OWNER_FILE) or {}).get("lecturer") is True


def may_manage(user: User | None, owner: str | None) -> bool:
    """Stop, resume, delete, rename: sign-in off, a lecturer, or the run's own owner."""
    return user is None or user.lecturer or (owner is not None and owner == user.name)


def check_manage(user: User | None, run: RunDir, what: str) -> None:
    owner = run_owner(run)
    if not may_manage(user, owner):
        whose = f"{owner}'s run" if owner else "a run started outside the app"
        raise NotAllowed(f"you may not {what} {whose}: only its owner or a lecturer may")


def may_see(user: User | None, owner: str | None, run_id: str, settings: dict) -> bool:
    """A student sees their own runs, the pinned ones, and classmates' only where the lecturer allows it."""
    if may_manage(user, owner):
        return True
    return run_id in settings["pinned"] or bool(settings["classmates_visible"])


def check_lecturer(user: User | None, what: str) -> None:
    if user is not None and not user.lecturer:
        raise NotAllowed(f"only a lecturer may {what}")


def active_runs_of(root: Path, name: str) -> list[str]:
    """Ids of the runs `name` owns that are queued or training."""
    found = []
    for run in list_runs(root, started=True):
        if run_owner(run) == name and run.read_status().get("state") in ACTIVE_STATES:
            found.append(run.id)
    return found


def check_may_start(root: Path, user: User | None) -> None:
    """A student below the class's limit of active runs (a lecturer and a laptop have none)."""
    if user is None or user.lecturer:
        return
    limit = read_settings(root)["max_active"]
    active = active_runs_of(root, user.name)
    if len(active) >= limit:
        raise NotAllowed(f"you already have {len(active)} run(s) queued or training, the class's limit is {limit}: "
                         "stop one or wait for it to finish")  # fmt: skip


# ---------------------------------------------------------------- files under .class/


def class_dir(root: Path) -> Path:
    return Path(root) / CLASS_DIR


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One writer of the class's files at a time, across the app's threads and command lines."""
    folder = class_dir(root)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with waiting_lock(folder / "lock"):
        yield


def read_settings(root: Path) -> dict:
    """The lecturer's settings, each field checked; a missing or hostile file gives the defaults."""
    raw = read_json(class_dir(root) / "settings.json") or {}
    pinned = raw.get("pinned")
    max_active = raw.get("max_active")
    return {
        "pinned": [p for p in pinned if isinstance(p, str)][:1000] if isinstance(pinned, list) else [],
        "max_active": max_active if type(max_active) is int and 0 <= max_active <= MAX_ACTIVE_LIMIT
        else DEFAULT_SETTINGS["max_active"],
        "classmates_visible": raw.get("classmates_visible") is True,
    }  # fmt: skip


def update_settings(root: Path, user: User | None, **changes: Any) -> dict:
    """Change the class's settings (a lecturer only); returns the new settings."""
    check_lecturer(user, "change the class's settings")
    if "max_active" in changes and not (
        type(changes["max_active"]) is int and 0 <= changes["max_active"] <= MAX_ACTIVE_LIMIT
    ):
        raise CVAEError(f"active runs per student must be a whole number from 0 to {MAX_ACTIVE_LIMIT}")
    unknown = set(changes) - set(DEFAULT_SETTINGS)
    if unknown:
        raise CVAEError(f"unknown class setting(s): {', '.join(sorted(unknown))}")
    with locked(root):
        settings = {**read_settings(root), **changes}
        write_json(class_dir(root) / "settings.json", settings)
    return settings


def set_pinned(root: Path, user: User | None, run_id: str, pinned: bool) -> dict:
    """Pin a run for the class (every student sees it) or unpin it; a lecturer only."""
    check_lecturer(user, "pin runs for the class")
    with locked(root):
        settings = read_settings(root)
        ids = [p for p in settings["pinned"] if p != run_id] + ([run_id] if pinned else [])
        settings["pinned"] = ids
        write_json(class_dir(root) / "settings.json", settings)
    return settings


def _secret(root: Path) -> bytes:
    path = class_dir(root) / "secret.key"
    try:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) >= 32:
            return key
    except (OSError, ValueError):
        pass
    with locked(root):
        try:  # another process may have made it while this one waited for the lock
            key = bytes.fromhex(path.read_text().strip())
            if len(key) >= 32:
                return key
        except (OSError, ValueError):
            pass
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        return key


def _accounts_path(root: Path) -> Path:
    return class_dir(root) / "accounts.json"


def _read_accounts(root: Path) -> dict[str, dict]:
    """Accounts by name; an entry whose fields are not what this module writes is left out."""
    raw = read_json(_accounts_path(root)) or {}
    users = raw.get("users") if isinstance(raw.get("users"), dict) else {}
    good = {}
    for name, entry in users.items():
        if not (isinstance(name, str) and NAME.match(name) and isinstance(entry, dict)):
            continue
        if entry.get("role") not in ROLES or not isinstance(entry.get("hash"), str):
            continue
        good[name] = {
            "role": entry["role"], "hash": entry["hash"], "one_time": entry.get("one_time") is True,
            "failures": entry["failures"] if type(entry.get("failures")) is int and entry["failures"] >= 0 else 0,
            "locked_until": float(entry["locked_until"]) if type(entry.get("locked_until")) in (int, float) else 0.0,
            "session": entry["session"] if type(entry.get("session")) is int else 0,
        }  # fmt: skip
    return good


def _write_accounts(root: Path, users: dict[str, dict]) -> None:
    path = _accounts_path(root)
    write_json(path, {"users": users})
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


def _hash(password: str) -> str:
    with _HASHING:
        return _argon2().hash(password)


def _verify(hashed: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    with _HASHING:
        try:
            return _argon2().verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False


_DUMMY: list[str] = []  # a hash to check unknown names against, so they take as long as known ones


def check_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not NAME.match(name):
        raise CVAEError(f"invalid account name {name[:60]!r}: 1 to 40 letters, digits, spaces or . @ ' - _")
    return name


def add_accounts(root: Path, names: list[str], role: str = "student") -> dict[str, str]:
    """Create accounts (or give existing ones a new one-time password); returns {name: one-time password}.

    The person signs in with it once and then chooses their own password."""
    if role not in ROLES:
        raise CVAEError(f"role must be one of {', '.join(ROLES)}")
    names = [check_name(n) for n in names]
    passwords = {name: secrets.token_urlsafe(9) for name in names}
    hashes = {name: _hash(pw) for name, pw in passwords.items()}  # outside the lock: hashing is the slow part
    with locked(root):
        users = _read_accounts(root)
        for name in names:
            old = users.get(name, {})
            users[name] = {"role": role, "hash": hashes[name], "one_time": True, "failures": 0, "locked_until": 0.0,
                           "session": int(old.get("session", 0)) + 1}  # fmt: skip
        _write_accounts(root, users)
    return passwords


def remove_accounts(root: Path, names: list[str]) -> list[str]:
    """Remove accounts; their sessions end at once. Returns the names that were there."""
    with locked(root):
        users = _read_accounts(root)
        gone = [n for n in names if users.pop(n, None) is not None]
        _write_accounts(root, users)
    return gone


def accounts(root: Path) -> dict[str, dict]:
    """Name -> {role, one_time, locked_until}: what a lecturer's list shows (never the hashes)."""
    return {name: {"role": e["role"], "one_time": e["one_time"], "locked_until": e["locked_until"]}
            for name, e in _read_accounts(root).items()}  # fmt: skip


def sign_in(root: Path, name: str, password: str, now: float | None = None) -> tuple[User, bool]:
    """Check a name and password: (the user, whether this was a one-time password to replace now).

    After FREE_TRIES wrong passwords an account is locked for FIRST_WAIT_S, doubling with each wrong
    one after that (up to MAX_WAIT_S); while it is locked even the right password is refused."""
    now = time.time() if now is None else now
    name = " ".join(str(name).split())
    password = str(password)[:1024]
    entry = _read_accounts(root).get(name)
    if entry is None:
        if not _DUMMY:
            _DUMMY.append(_hash(secrets.token_urlsafe(9)))
        _verify(_DUMMY[0], password)
        raise SignInError("wrong name or password")
    if entry["locked_until"] > now:
        raise SignInError(f"too many wrong passwords for {name}: try again in {int(entry['locked_until'] - now) + 1} s")
    good = _verify(entry["hash"], password)
    with locked(root):
        users = _read_accounts(root)
        current = users.get(name)
        if current is None:
            raise SignInError("wrong name or password")
        if good:
            current["failures"], current["locked_until"] = 0, 0.0
        else:
            current["failures"] += 1
            over = current["failures"] - FREE_TRIES
            if over >= 0:
                current["locked_until"] = now + min(MAX_WAIT_S, FIRST_WAIT_S * 2**over)
        _write_accounts(root, users)
    if not good:
        left = FREE_TRIES - current["failures"]
        raise SignInError("wrong name or password" + (f" ({left} more {'try' if left == 1 else 'tries'} before a wait)" if left > 0 else
                          f": wait {int(current['locked_until'] - now)} s before the next try"))  # fmt: skip
    return User(name, current["role"]), current["one_time"]


def set_password(root: Path, user: User, password: str) -> None:
    """Replace the account's password (a one-time one, or the user's own); every older session ends."""
    if len(password) < MIN_PASSWORD:
        raise CVAEError(f"choose a password of at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise CVAEError("a password has at most 1024 characters")
    hashed = _hash(password)
    with locked(root):
        users = _read_accounts(root)
        if user.name not in users:
            raise NotAllowed("this account was removed")
        users[user.name].update(hash=hashed, one_time=False, session=users[user.name]["session"] + 1)
        _write_accounts(root, users)


def end_sessions(root: Path, name: str) -> None:
    """Sign `name` out everywhere: every token issued so far stops working."""
    with locked(root):
        users = _read_accounts(root)
        if name in users:
            users[name]["session"] += 1
            _write_accounts(root, users)


# ---------------------------------------------------------------- session tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(root: Path, user: User, hours: float = SESSION_HOURS, now: float | None = None) -> str:
    """A signed token for `user`'s browser: valid for `hours`, until sign-out or a new password."""
    now = time.time() if now is None else now
    entry = _read_accounts(root).get(user.name)
    if entry is None or entry["one_time"]:
        raise NotAllowed("no session for an account that is removed or still has its one-time password")
    payload = _b64(json.dumps({"u": user.name, "s": entry["session"], "x": int(now + hours * 3600)}).encode())
    return payload + "." + _b64(hmac.new(_secret(root), payload.encode(), hashlib.sha256).digest())


def user_of_token(root: Path, token: object, now: float | None = None) -> User | None:
    """The user a token was issued to, or None for anything forged, altered, expired or revoked."""
    now = time.time() if now is None else now
    if not isinstance(token, str) or len(token) > 1000 or token.count(".") != 1:
        return None
    payload, signature = token.split(".")
    expected = _b64(hmac.new(_secret(root), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    try:
        claims = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("u"), str):
        return None
    entry = _read_accounts(root).get(claims["u"])
    expiry = claims.get("x")
    if entry is None or entry["one_time"] or claims.get("s") != entry["session"]:
        return None
    if type(expiry) is not int or expiry <= now:
        return None
    return User(claims["u"], entry["role"])


def session_alive(root: Path, user: User, session: int | None) -> bool:
    """Is `user`'s account still there with session number `session` (not signed out or reset since)?"""
    entry = _read_accounts(root).get(user.name)
    return entry is not None and not entry["one_time"] and entry["session"] == session and entry["role"] == user.role


def session_number(root: Path, name: str) -> int | None:
    entry = _read_accounts(root).get(name)
    return None if entry is None else entry["session"]


# ---------------------------------------------------------------- command line


def cli(argv: list[str] | None = None) -> int:
    """`cvae class`: the lecturer's accounts, from a shell on the server."""
    import sys

    from cvae.cli import OneLineParser
    from cvae.runs import default_runs_root

    p = OneLineParser(prog="cvae class", description="Accounts for a class on a shared server (sign-in mode "
                      "'accounts'). One-time passwords are printed once; only their hashes are kept.")  # fmt: skip
    p.add_argument("--runs-dir", default=None, help="the app's runs folder [CVAE_RUNS_DIR or checkpoints]")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create accounts (or reset them) and print a one-time password for each")
    add.add_argument("names", nargs="*", help="login names (or use --from)")
    add.add_argument("--from", dest="source", default=None, help="a class list: one name per line ('-' = stdin)")
    add.add_argument("--lecturer", action="store_true", help="these accounts are lecturers")
    remove = sub.add_parser("remove", help="remove accounts; their sessions end at once")
    remove.add_argument("names", nargs="+")
    sub.add_parser("list", help="the accounts, their roles and whether they still have a one-time password")
    args = p.parse_args(argv)
    root = Path(args.runs_dir) if args.runs_dir else default_runs_root()
    try:
        if args.command == "add":
            names = list(args.names)
            if args.source:
                text = sys.stdin.read() if args.source == "-" else Path(args.source).read_text(encoding="utf-8")
                names += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            if not names:
                raise CVAEError("name at least one account (or give a class list with --from)")
            for name, password in add_accounts(root, names, "lecturer" if args.lecturer else "student").items():
                print(f"{name}\t{password}")
        elif args.command == "remove":
            gone = remove_accounts(root, args.names)
            missing = sorted(set(args.names) - set(gone))
            print(f"removed {len(gone)} account(s)" + (f"; no account called {', '.join(missing)}" if missing else ""))
        else:
            for name, entry in sorted(accounts(root).items()):
                print(f"{name}\t{entry['role']}\t{'one-time password' if entry['one_time'] else 'own password'}")
    except (CVAEError, OSError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
