"""Does the form's time estimate hold? Measure it, then train the same run as the app starts it, and compare.

    python -m scripts.estimate_check [train options]     # e.g. --arch mlp: the form's default on a CPU server

Prints the estimate (`cvae.estimate`, measured the way the Train page measures it: in a process of its own at
the trainers' priority, with the threads the run would get now), the run's own wall time from the click to
its finished state (`cvae.jobs.start`, queue and start-up included), and their ratio. Runs in a scratch runs
folder; nothing else on the server is touched.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from cvae import estimate, jobs
from cvae.cli import given, run_main
from cvae.progress import format_seconds


def main(argv: list[str] | None = None) -> int:
    parser = estimate.build_parser()
    parser.prog = "python -m scripts.estimate_check"
    options = {k: v for k, v in given(parser.parse_args(argv)).items() if k not in ("json", "nice")}

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="cvae-estimate-check-") as scratch:
            root = Path(scratch)
            guess = estimate.in_subprocess(options, root, nice=jobs.train_nice())
            t0 = time.time()
            run = jobs.start(root, options)
            while (state := run.read_status().get("state")) not in ("finished", "failed", "stopped"):
                time.sleep(0.5)
            took = time.time() - t0
        print(json.dumps({"options": options, "estimate_s": guess.seconds, "measured_s": took, "state": state,
                          "ratio": took / guess.seconds, "threads": guess.threads}))  # fmt: skip
        print(f"estimate {format_seconds(guess.seconds)}, measured {format_seconds(took)} ({state}): the run took "
              f"{took / guess.seconds:.2f} times the estimate", file=sys.stderr)  # fmt: skip
        return 0 if state == "finished" else 1

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
