"""Golden outputs of small, seeded runs of every condition, through the command line only.

    python -m scripts.goldens --out results/goldens.json            # record
    python -m scripts.goldens --compare results/goldens.json        # run again and compare

Each case trains on a real MNIST subset for 2 epochs on the CPU in fp32 with one
thread and a fixed seed, then evaluates a few hundred test images. What is
recorded: the final weights' hash (label and none runs), every metrics line
without its timings, the `evaluate --json` report without its timings, and for
completion runs the -log p(y | x) report with S=10 and the hash of one
completion sheet. The commands are the public ones, so the same script records
the goldens before a redesign and checks them after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

COMMON = ["--threads", "1", "--precision", "fp32", "--device", "cpu", "--seed", "0", "-e", "2", "-q"]
CASES: dict[str, list[str]] = {
    "label-mlp": ["--arch", "mlp", "-z", "2", "--train-subset", "1000", "--test-subset", "500", "-lr", "1e-3"],
    "label-conv": ["--arch", "conv", "-z", "2", "--train-subset", "256", "--test-subset", "300", "-lr", "1e-3"],
    "none-mlp": [
        "--condition",
        "none",
        "--arch",
        "mlp",
        "-z",
        "2",
        "--train-subset",
        "1000",
        "--test-subset",
        "500",
        "-lr",
        "1e-3",
    ],  # fmt: skip
    "none-conv": [
        "--condition",
        "none",
        "--arch",
        "conv",
        "-z",
        "2",
        "--train-subset",
        "256",
        "--test-subset",
        "300",
        "-lr",
        "1e-3",
    ],  # fmt: skip
    "completion-q1": ["--condition", "quadrants", "--quadrants", "1", "--train-subset", "2000", "--test-subset", "500"],
    "completion-mixed": [
        "--condition",
        "quadrants",
        "--quadrants",
        "0",
        "--train-subset",
        "2000",
        "--test-subset",
        "500",
    ],  # fmt: skip
}
TIMINGS = {"seconds", "time", "train_seconds", "images_per_s", "refine_seconds", "checkpoint"}
EVAL_IMAGES, EVAL_SAMPLES = "300", "10"


def _run(args: list[str]) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return done.stdout


def _weights_hash(run: Path) -> str:
    payload = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name in sorted(payload["model"]):
        digest.update(name.encode())
        digest.update(payload["model"][name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _sheet_hash(run: Path, work: Path) -> str:
    """One completion sheet (test digit 7), by whichever command this version of cvae has for it."""
    png = work / "sheet.png"
    for args in (["-m", "cvae.generate", "completion", str(run), "--index", "7", "--samples", "8", "--out", str(png)],
                 ["-m", "cvae.completion", "--evaluate", str(run), "--eval-samples", "0", "--figure", str(png),
                  "--figure-index", "7"]):  # fmt: skip
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
        if done.returncode == 0 and png.is_file():
            return hashlib.sha256(png.read_bytes()).hexdigest()
    raise SystemExit(f"no command wrote a completion sheet for {run}")


def record_case(name: str, work: Path) -> dict[str, Any]:
    run = work / name
    args = ["-m", "cvae.train", *COMMON, *CASES[name], "--run-dir", str(run)]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0 and "has no device, precision" in done.stderr:
        # the completion trainer before the redesign ran on the CPU in fp32 only, and refused the flags
        args = [a for a in args if a not in ("--device", "cpu", "--precision", "fp32")]
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
               for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]  # fmt: skip
    report = json.loads(
        _run(
            [
                "-m",
                "cvae.evaluate",
                str(run),
                "-k",
                EVAL_SAMPLES,
                "--test-subset",
                EVAL_IMAGES,
                "--json",
                "--device",
                "cpu",
            ]
        )
    )
    out: dict[str, Any] = {"metrics": metrics, "evaluate": _drop_timings(report)}
    if name.startswith("completion"):
        out["sheet_sha256"] = _sheet_hash(run, work)
    else:
        out["weights_sha256"] = _weights_hash(run)
    return out


def _drop_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if k not in TIMINGS}
    return value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k2: v2 for k, v in value.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    if isinstance(value, list):
        return {k2: v2 for i, v in enumerate(value) for k2, v2 in _flat(v, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per case: exact, or each differing number with its difference."""
    lines = []
    for name in old:
        a, b = _flat(old[name]), _flat(new.get(name, {}))
        differ = []
        for key, value in a.items():
            if key not in b:
                differ.append(f"{key} missing")
            elif b[key] != value:
                if isinstance(value, float) and isinstance(b[key], float) and math.isfinite(value):
                    differ.append(f"{key} {value:.6g} -> {b[key]:.6g} ({b[key] - value:+.3g})")
                else:
                    differ.append(f"{key} {value!r} -> {b[key]!r}")
        lines.append(f"{name}: " + ("exact" if not differ else f"{len(differ)} differ: " + "; ".join(differ[:40])))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the goldens here")
    p.add_argument("--compare", type=Path, help="compare a fresh run with these goldens")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated cases [all]")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {name: record_case(name, Path(tmp)) for name in args.cases.split(",")}
    if args.out:
        args.out.write_text(json.dumps(fresh, indent=1) + "\n")
    if args.compare:
        old = json.loads(args.compare.read_text())
        old = {k: v for k, v in old.items() if k in fresh}
        print("\n".join(compare(old, fresh)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
