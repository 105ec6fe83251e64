"""`cvae runs`: a server's runs from a shell, through the very operations behind the app's buttons (cvae.jobs).

    cvae runs start --quick-demo -e 5      # cvae train's flags; queued where the server's backend says
    cvae runs list                         # every run under the runs root: its state, epoch and where it is
    cvae runs stop RUN                     # as the app's Stop: the last finished epoch is kept
    cvae runs resume RUN -e 5              # 5 more epochs from its last checkpoint
    cvae runs fork RUN --set kl_weight=4   # its twin: the same options, seed and batches, one setting changed
    cvae runs log RUN -n 40                # the end of its train.log

A run trains where `CVAE_BACKEND` says: this server's queue (the default) or Slurm (`slurm`: one batch job
a run, docs/hosting.md). `cvae train` itself trains in the foreground instead, in the shell that runs it.
RUN is a run's id under the runs root (`--runs-root`, or $CVAE_RUNS_DIR), or the path of its folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from cvae.cli import OneLineParser, exit_with, given, run_main
from cvae.errors import ConfigError
from cvae.runs import ACTIVE_STATES, RunDir, default_runs_root, is_run_id, log_tail, run_path

__all__ = ["cli"]

# Flags of cvae train that `start` sets itself: the folder is the runs root's, a resume is `resume`.
NOT_FOR_START = {"run_dir": "--run-dir", "runs_root": "--runs-root (give it before start)",
                 "resume_path": "--resume_path (use cvae runs resume RUN)", "resume_epoch": "--resume_epoch"}  # fmt: skip


def _run(root: Path, name: str) -> RunDir:
    """The run that `name` names: an id under `root`, or a run folder's path."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "status.json").is_file():
        return RunDir(path.resolve())
    if not is_run_id(name):
        raise ConfigError(f"no run {name!r}: give a run's id under {root} or the path of its folder")
    run = run_path(root, name)
    if not run.status_path.is_file():
        raise ConfigError(f"no run {name!r} under {root} (cvae runs list shows them)")
    return run


def _where(status: dict[str, Any]) -> str:
    if status.get("cluster"):
        job = f" (job {status['job_id']})" if status.get("job_id") else ""
        return f"{status['cluster']}{job}"
    if status.get("state") == "queued" and status.get("position"):
        return f"waiting, position {status['position']}"
    return str(status.get("device") or "")


def _rows(root: Path) -> list[tuple[str, ...]]:
    folders = sorted(p for p in root.iterdir() if is_run_id(p.name) and (p / "status.json").is_file()) \
        if root.is_dir() else []  # fmt: skip
    rows = []
    for folder in folders:
        status = RunDir(folder).read_status()
        epoch = f"{status.get('epoch') or 0}/{status.get('epochs') or '?'}"
        rows.append((folder.name, str(status.get("state") or "?"), epoch, _where(status),
                     str(status.get("message") or "")[:80]))  # fmt: skip
    return rows


def _list(root: Path) -> int:
    rows = _rows(root)
    if not rows:
        print(f"no runs under {root}")
        return 0
    rows.insert(0, ("run", "state", "epoch", "where", "message"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4])
    return 0


def _start(root: Path, train_args: list[str], run_id: str | None) -> int:
    from cvae import jobs
    from cvae.train import build_parser

    parser = build_parser()
    parser.prog = "cvae runs start"
    options = given(parser.parse_args(train_args))
    for name, flag in NOT_FOR_START.items():
        if name in options:
            raise ConfigError(f"cvae runs start sets the run's folder itself: leave out {flag}")
    options.pop("overwrite", None)
    run = jobs.start(root, options, run_id=run_id)
    status = run.read_status()
    print(f"started {run.id}: {status.get('state')} ({_where(status) or jobs.backend()}); "
          f"follow it with cvae runs list, or in the app")  # fmt: skip
    return 0


def _stop(run: RunDir) -> int:
    from cvae import jobs

    if not jobs.stop(run):
        print(f"{run.id} is not training (state: {run.read_status().get('state')})", file=sys.stderr)
        return 1
    print(f"stopping {run.id}: it keeps its last finished epoch")
    return 0


def _resume(run: RunDir, epochs: int) -> int:
    from cvae import jobs

    jobs.resume(run, epochs)
    print(f"resumed {run.id} for {epochs} more epoch(s): {run.read_status().get('state')}")
    return 0


def _fork(root: Path, run: RunDir, changes: list[str]) -> int:
    from cvae import twins

    pairs = dict(change.split("=", 1) if "=" in change else (change, "") for change in changes)
    if len(pairs) != len(changes) or any(not value.strip() for value in pairs.values()):
        raise ConfigError("give the change as --set NAME=VALUE (e.g. --set kl_weight=4), once")
    twin = twins.fork(root, run, pairs)
    before, after = twins.change_words(twins.read_twin(twin) or {})
    print(f"forked {run.id} into {twin.id}: {before} -> {after}, the same seed and batches; "
          f"{twin.read_status().get('state')}")  # fmt: skip
    return 0


def _wait(run: RunDir, timeout: float) -> int:
    """Until the run is no longer active; its last state, and 0 only if it finished."""
    deadline = time.monotonic() + timeout
    while (state := run.read_status().get("state")) in ACTIVE_STATES:
        if time.monotonic() > deadline:
            print(f"{run.id} is still {state} after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(1.0)
    print(f"{run.id}: {state}")
    return 0 if state == "finished" else 1


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="cvae runs", description="Runs started, followed and stopped as the app does it.")
    parser.add_argument("--runs-root", default=None, help="the folder of run folders [$CVAE_RUNS_DIR or checkpoints]")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    start = sub.add_parser("start", help="queue a new run; every flag after it is cvae train's", add_help=False,
                           allow_abbrev=False)  # fmt: skip
    start.add_argument("--id", default=None, help="the run's id (a fresh one if not given)")
    sub.add_parser("list", help="every run: state, epoch, where it trains")
    for name, text in (("stop", "stop a run (it keeps its last finished epoch)"), ("log", "the end of its log"),
                       ("resume", "train a stopped or finished run on"), ("wait", "wait until a run ends")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="a run's id under the runs root, or its folder")
        if name == "resume":
            p.add_argument("-e", "--epochs", type=int, required=True, help="how many more epochs")
        if name == "log":
            p.add_argument("-n", "--lines", type=int, default=20, help="how many lines [20]")
        if name == "wait":
            p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds [3600]")
    fork = sub.add_parser("fork", help="start a twin of a run: its options, seed and data order, one setting changed")
    fork.add_argument("run", help="a run's id under the runs root, or its folder")
    fork.add_argument("--set", dest="changes", action="append", default=[], metavar="NAME=VALUE", required=True,
                      help="the one setting the twin changes, e.g. kl_weight=4")  # fmt: skip
    return parser


def cli(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if rest and args.command != "start":
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")

    def body() -> int:
        root = Path(args.runs_root).expanduser().resolve() if args.runs_root else default_runs_root().resolve()
        if args.command == "list":
            return _list(root)
        if args.command == "start":
            return _start(root, rest, args.id)
        run = _run(root, args.run)
        if args.command == "stop":
            return _stop(run)
        if args.command == "resume":
            return _resume(run, args.epochs)
        if args.command == "wait":
            return _wait(run, args.timeout)
        if args.command == "fork":
            return _fork(root, run, args.changes)
        print(log_tail(run, max(1, args.lines)) or f"{run.id} has no log yet")
        return 0

    return run_main(body)


if __name__ == "__main__":
    exit_with(cli())
