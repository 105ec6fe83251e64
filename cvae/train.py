"""`python -m cvae.train`: train a CVAE from the command line; `main(**kwargs)` for notebooks.

    python -m cvae.train -d MNIST -t Bernoulli -s False -e 10 -b 64 -lr 3e-4 -z 10 -p 1

Every flag is an option declared once in cvae.config; this module only parses
them and calls `cvae.training.train_model`. `main` is the reference's notebook
name for the same function (`cvae.train_model`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from cvae.cli import EXIT_BAD_INPUT, OneLineParser, add_options, exit_with, given, run_main
from cvae.errors import CVAEError
from cvae.ranks import launched
from cvae.runs import RunDir

__all__ = ["build_parser", "cli", "main"]  # and train_model, loaded when first used (below)


def __getattr__(name: str) -> Any:
    # torch loads with cvae.training: imported when first used, so that the command line parses its flags,
    # and a Ctrl-C while torch loads exits 130 without a traceback (run_main), before anything heavy.
    if name in ("train_model", "TrainResult"):
        from cvae import training

        return getattr(training, name)
    raise AttributeError(f"module 'cvae.train' has no attribute {name!r}")


def main(**kwargs: Any) -> Any:
    """The reference's notebook entry point: `main(dataset='MNIST', decoder_type='Bernoulli', ...)`.

    The same as `cvae.train_model`; see help(cvae.train_model) for every option. Returns its TrainResult.
    """
    from cvae.training import train_model

    return train_model(**kwargs)


# -------------------------------------------------------------- command line


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m cvae.train", description="Train a conditional VAE. Defaults in [brackets].")
    add_options(parser)
    return parser


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM before or after the loop (loading data, say) exits 143; the loop itself stops cleanly."""

    def exit_143(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, exit_143)
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


WATCHED = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_held() -> Iterator[bool]:
    """Ctrl-C and SIGTERM held back by the kernel (blocked) from here, through torch's import and the run's
    set-up, until the training loop installs its own handler for them (cvae.loop.StopRequested, which unblocks
    them) or the block ends. Yields whether they are held.

    Not a Python handler that raises: it runs wherever the interpreter next looks, and in torch's import and its
    lazy imports at the first operations that can be a callback that swallows the exception (the Ctrl-C is lost
    and the run trains on to the end) or C code running Python of its own (the process then dies of SIGINT at
    exit). Blocked, nothing runs until a place chosen for it. Torch's threads started meanwhile inherit the
    block; a thread started before it (numpy's) can still be handed the signal by the kernel, and the handler
    here passes it on to the main thread, where it waits with the others. Needs a way to collect blocked
    signals (Linux; not macOS) and the main thread, where Python runs its handlers; elsewhere nothing is held."""
    if not hasattr(signal, "sigtimedwait") or threading.current_thread() is not threading.main_thread():
        yield False
        return
    main = threading.get_ident()
    previous: dict[int, Any] = {}

    def hand_on(signum: int, frame: Any) -> None:
        if signum in signal.pthread_sigmask(signal.SIG_BLOCK, set()):  # still held: wait on the main thread
            signal.pthread_kill(main, signum)
        elif callable(previous[signum]):  # after the loop unblocked them: what would have happened without us
            previous[signum](signum, frame)
        else:
            raise SystemExit(128 + signum)

    for sig in WATCHED:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored
            previous[sig] = signal.signal(sig, hand_on)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    try:
        yield True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _import_training(held: bool) -> Any:
    """cvae.training.train_model, imported (torch with it, seconds). A held Ctrl-C that came meanwhile is a
    KeyboardInterrupt here (run_main: exit 130), a SIGTERM exit 143; one during the set-up after it (the data,
    the model) stops the loop before its first batch ends."""
    from cvae.training import train_model

    arrived = set()
    while held and (info := signal.sigtimedwait(WATCHED, 0)) is not None:  # collected: not delivered again
        arrived.add(info.si_signo)
    if signal.SIGTERM in arrived:
        raise SystemExit(128 + signal.SIGTERM)
    if arrived:
        raise KeyboardInterrupt
    return train_model


def _rank_zero() -> bool:
    """Whether this process speaks for its launch: rank 0 of a torchrun (or srun) launch, or a process on its
    own. The other ranks parse the same flags and stop with the same errors, which rank 0 reports once."""
    try:
        return launched().main
    except CVAEError:  # ranks that do not fit together: each says so (cvae.distributed refuses to join)
        return True


def cli(argv: Sequence[str] | None = None) -> int:
    speaks = _rank_zero()
    parser = build_parser()
    parser.quiet = not speaks
    args = given(parser.parse_args(argv))

    def body() -> int:
        try:
            with _sigterm_exits(), _signals_held() as held:
                train_model = _import_training(held)
                result = train_model(**args)
        except CVAEError:
            # A launch's other ranks stop with rank 0's error (the same flags, config and data), or with one
            # that they have handed to rank 0 (cvae.distributed): rank 0 says it, once.
            if speaks:
                raise
            return EXIT_BAD_INPUT
        if result.state == "stopped":
            if speaks and RunDir(result.run_dir).latest_checkpoint.is_file():
                print(f"stopped; resume with: python -m cvae.train -rp {result.run_dir}", file=sys.stderr)
            elif speaks:
                print(f"stopped before its first epoch ended; nothing to resume in {result.run_dir}", file=sys.stderr)
            return 128 + int(result.stop_signal or signal.SIGINT)  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
        elif not args.get("quiet") and result.metrics:
            last = result.metrics[-1]
            refined = (f" ({last['test_nelbo_refined']:.2f} with q refined per image by {last['refine_steps']} steps)"
                       if "test_nelbo_refined" in last else "")  # fmt: skip
            print(f"done: test negative ELBO {last['test_nelbo']:.2f} nats{refined} after epoch {last['epoch']}; "
                  f"run folder {result.run_dir}")  # fmt: skip
        return 0

    return run_main(body)


if __name__ == "__main__":
    exit_with(cli())
