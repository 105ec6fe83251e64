"""`cvae`: one command for the library's tools (also `python -m cvae`).

cvae train --quick-demo            # python -m cvae.train
cvae runs start --quick-demo       # python -m cvae.manage: queued as the app's Start queues it
cvae estimate --quick-demo         # python -m cvae.estimate: its time here, measured
cvae evaluate checkpoints/<run>    # python -m cvae.evaluate
cvae generate uniform checkpoints/<run>
cvae export checkpoints/<run> --what latent   # python -m cvae.figures: a slide, 1280x720 PNG and SVG
cvae class add --from class.txt    # per-student accounts, one-time passwords
cvae app                           # streamlit run streamlit_app.py, from a checkout
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import NoReturn

COMMANDS = {
    "train": ("cvae.train", "train a CVAE into a run folder"),
    "runs": ("cvae.manage", "start, list, stop, resume a run where the server trains them (its queue, or Slurm)"),
    "estimate": ("cvae.estimate", "how long a run with these options takes on this machine, measured"),
    "evaluate": ("cvae.evaluate", "test-set likelihoods of a trained run, in nats"),
    "generate": ("cvae.generate", "image grids per class, or a completion sheet"),
    "export": ("cvae.figures", "slide-ready figures of a run (PNG, SVG, the latent animation as a GIF), captioned"),
    "class": ("cvae.classroom", "accounts for a class on a shared server (add, remove, list)"),
    "app": (None, "start the Streamlit app (from a checkout of the repository)"),
}
USAGE = (
    "usage: cvae {"
    + ",".join(COMMANDS)
    + "} ...\n\n"
    + "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    + "\n\n`cvae COMMAND --help` lists a command's options."
)


def _app(args: Sequence[str]) -> int:
    """streamlit run streamlit_app.py from the checkout it belongs to (the app's pages live beside it)."""
    for folder in (Path.cwd(), Path(__file__).resolve().parent.parent):
        app = folder / "streamlit_app.py"
        if app.is_file() and (folder / "app_pages").is_dir():
            return subprocess.call([sys.executable, "-m", "streamlit", "run", str(app), *args], cwd=folder)
    print("error: the app runs from a checkout of the repository (streamlit_app.py, app_pages/, ui/): cd there "
          "and run cvae app, or streamlit run streamlit_app.py", file=sys.stderr)  # fmt: skip
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cvae: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if name == "app":
        return _app(rest)
    try:
        return import_module(COMMANDS[name][0]).cli(rest)
    except KeyboardInterrupt:  # while torch is still importing
        return 130


def console() -> NoReturn:
    """The `cvae` command's entry point: main, then the process's end (cvae.cli.exit_with)."""
    from cvae.cli import exit_with

    exit_with(main())


if __name__ == "__main__":
    console()
