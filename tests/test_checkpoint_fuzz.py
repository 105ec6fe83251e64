"""Checkpoint fuzzing: a real checkpoint, mutated field by field, never crashes the trainer.

One tiny checkpoint is trained through the real command line (an MLP on a
small image folder: MNIST's would make the in-process part 7 times slower). Every field of
it (each config option, each tensor of the model, each Adam moment and step,
each scheduler field, the RNG state, the metrics) is then deleted, retyped,
reshaped, set to NaN, infinity, a huge or a negative value, or emptied when it
is a container. Every mutant must either load correctly or be refused with one
line naming the field:

- all of them go through `validate_checkpoint` in this process; the accepted
  ones are then loaded into a real model, fused Adam and scheduler and take a
  training step, as the trainer does (a wrong-shaped moment there is a
  segmentation fault, which would kill this test run);
- one mutant of each kind goes through `python -m cvae.train -rp ...` in a
  subprocess with a timeout: exit 0, or exit 2 with exactly one line on stderr;
  no traceback, no signal, no hang.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.checkpoints import load_checkpoint, validate_checkpoint
from cvae.config import RunConfig
from cvae.errors import CheckpointError, CVAEError
from cvae.model import CVAE
from cvae.runs import RunDir, read_json
from cvae.runtime import make_optimizer, match_optimizer_state

ROOT = Path(__file__).resolve().parent.parent
TINY = ["-z", "2", "--arch", "mlp", "--train-subset", "256", "--test-subset", "128", "--latent-subset", "64",
        "-b", "64", "-e", "1", "--threads", "1", "-q"]  # fmt: skip
MIN_MUTANTS = 200
CLI_TIMEOUT_S = 120
DELETE = object()  # the mutation that removes the field


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def tiny_image_folder(root: Path) -> Path:
    """Two classes of 8x8 grey pictures: an MLP on them has 0.6 M parameters (MNIST's: 4 M), so that
    the hundreds of mutants below are checked in seconds, not minutes, on 2 cores."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A one-epoch MLP run on a tiny image folder, trained by the real command line."""
    tmp = tmp_path_factory.mktemp("fuzz")
    run = RunDir(tmp / "real")
    data = ["-d", str(tiny_image_folder(tmp / "pictures")), "--data-dir", str(tmp / "data")]  # cache stays in tmp
    proc = subprocess.run([sys.executable, "-m", "cvae.train", *TINY, *data, "--run-dir", str(run.path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return run


# ------------------------------------------------------------------ mutants


@dataclass(frozen=True)
class Mutant:
    path: tuple[Any, ...]  # keys from the payload down to the field
    kind: str
    value: Any  # the new value, or DELETE

    @property
    def name(self) -> str:
        return ".".join(str(k) for k in self.path) + f" <- {self.kind}"

    def apply(self, payload: dict) -> dict:
        """A new payload with this field changed; the containers on the path are copied, the rest shared."""
        return _set(payload, self.path, self.value)


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    key, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    if rest:
        copy[key] = _set(node[key], rest, value)
    elif value is DELETE:
        del copy[key]
    else:
        copy[key] = value
    return copy if isinstance(node, (dict, list)) else tuple(copy)


# Each field gets: deleted; one retyping; one bad value (tensors: a bad shape or dtype too). The
# retyping and the bad value rotate through their kinds from field to field, so every kind is
# used many times over the checkpoint's ~130 fields without trying every pair (1,500 mutants).
RETYPES: dict[str, Any] = {"str": "many", "none": None, "list": [1], "dict": {}, "bool": True, "tensor": "TENSOR"}


def _tensor_values(t: torch.Tensor) -> dict[str, Any]:
    flat = t.reshape(-1)
    out = {
        "reshaped": flat.reshape(t.shape[0], -1, 1) if t.dim() > 1 else torch.cat([flat, flat[:1]]),
        "empty-tensor": t.new_zeros(0),
        "scalar-tensor": t.new_ones(()),
        "transposed": t.T.contiguous() if t.dim() == 2 else t.reshape(1, -1),
        "float64": t.double(),
        "int64": t.long(),
        "bool-tensor": t.bool(),
    }
    if t.is_floating_point():
        out |= {"nan": t.clone().fill_(math.nan), "inf": t.clone().fill_(math.inf), "huge": t.clone().fill_(1e30),
                "negative": -t.abs() - 1}  # fmt: skip
    else:
        out["float"] = t.float()
    return out


def _scalar_values(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"int-for-bool": 2, "text-bool": "false", "flipped": not value}
    if isinstance(value, (int, float)):
        out = {"nan": math.nan, "inf": math.inf, "negative": -abs(value) - 1, "-inf": -math.inf,
               "huge": 10**30 if isinstance(value, int) else 1e300, "zero": 0}  # fmt: skip
        if isinstance(value, int):
            out["fraction"] = value + 0.5
        return out
    if isinstance(value, str):
        return {"empty-str": "", "long-str": "x" * 10_000, "other-str": "../../etc"}
    return {}


def _fields(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every field under `node`, containers before their contents."""
    if path:
        yield path, node
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _fields(child, (*path, key))
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            yield from _fields(child, (*path, i))


def all_mutants(payload: dict) -> list[Mutant]:
    mutants = []
    turn: Counter[str] = Counter()

    def rotate(category: str, options: dict[str, Any], path: tuple[Any, ...]) -> None:
        if options:
            kind = sorted(options)[turn[category] % len(options)]
            turn[category] += 1
            mutants.append(Mutant(path, kind, options[kind]))

    for path, value in _fields(payload, ()):
        mutants.append(Mutant(path, "deleted", DELETE))
        same = {"dict": dict, "list": (list, tuple), "bool": bool, "tensor": torch.Tensor, "str": str}
        retypes = {k: v for k, v in RETYPES.items() if not (k in same and isinstance(value, same[k]))}
        if "tensor" in retypes:
            retypes["tensor"] = torch.tensor(float(value)) if isinstance(value, (int, float)) else torch.ones(2)
        rotate("retype", retypes, path)
        if torch.is_tensor(value):
            rotate("tensor", _tensor_values(value), path)
            rotate("tensor", _tensor_values(value), path)  # tensors: two of their kinds each
        elif isinstance(value, dict):
            rotate("container", {"emptied": {}, "extra-key": {**value, "bogus": 1}}, path)
        elif isinstance(value, (list, tuple)):
            rotate("container", {"emptied": type(value)(), "extra-item": type(value)([*value, *value[-1:], 1])}, path)
        else:
            rotate(type(value).__name__, _scalar_values(value), path)
    mutants.append(Mutant(("epoch",), "named-many", "many"))
    mutants.append(Mutant(("rng_cpu",), "named-float-rng", payload["rng_cpu"].float()))
    mutants.append(Mutant(("config", "model", "mlp_hidden"), "named-2e12-parameters", (1_000_000, 1_000_000)))
    mutants.append(Mutant(("config", "model", "channels"), "named-rgb-config", 3))
    mutants.append(Mutant(("optimizer", "state", 3, "exp_avg"), "named-adam-shape", torch.zeros(7)))
    mutants.append(Mutant(("lr_override",), "injected-lr", math.nan))
    return mutants


# ---------------------------------------------------------------- checks


_MODELS: dict[str, CVAE] = {}


def load_like_the_trainer(checked: dict) -> None:
    """What `fit` does with a resumed checkpoint, then one fused Adam step: must not crash."""
    config = RunConfig.from_dict(checked["config"])
    key = repr(config.model)
    if key not in _MODELS:  # building one costs more than everything else here; the weights are loaded anyway
        _MODELS[key] = CVAE(config.model)
    model = _MODELS[key]
    optimizer = make_optimizer(model, config.train.learning_rate, torch.device("cpu"))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=5)
    model.load_state_dict(checked["model"])
    optimizer.load_state_dict(checked["optimizer"])
    scheduler.load_state_dict(checked["scheduler"])
    match_optimizer_state(optimizer, optimizer.defaults.get("fused"))
    if "rng_cpu" in checked:
        torch.set_rng_state(checked["rng_cpu"])
    for param in model.parameters():  # the fused kernel walks every moment with its parameter and gradient
        param.grad = torch.ones_like(param)
    optimizer.step()
    scheduler.step(1.0)
    int(checked["epoch"])


@pytest.fixture(scope="module")
def completion_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A one-epoch digit-completion run (random quadrant count: mask, prior network, baseline) on MNIST."""
    run = RunDir(tmp_path_factory.mktemp("fuzz-completion") / "real")
    args = ["--condition", "quadrants", "--quadrants", "0", "--mlp-hidden", "16", "-z", "2", "--train-subset", "64",
            "--test-subset", "16", "--latent-subset", "16", "-e", "1", "--threads", "1", "-q"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "cvae.train", *args, "--run-dir", str(run.path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.mark.parametrize("which", ["label", "quadrants"])
def test_every_mutant_is_refused_in_one_line_or_loads(real_run: RunDir, completion_run: RunDir, which: str) -> None:
    real_run = real_run if which == "label" else completion_run
    payload = load_checkpoint(real_run.path)
    expect = read_json(real_run.config_path)
    mutants = all_mutants(payload)
    outcomes: Counter[str] = Counter()
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: on 2 busy cores a second thread only adds waiting (8x slower)
    try:
        for mutant in mutants:
            mutated = mutant.apply(payload)
            try:
                checked = validate_checkpoint(mutated, expect_config=expect)
            except CheckpointError as err:
                assert "\n" not in str(err) and str(err), mutant.name
                outcomes["refused"] += 1
                continue
            load_like_the_trainer(checked)
            outcomes["loaded"] += 1
    finally:
        torch.set_rng_state(state)
        torch.set_num_threads(threads)
    print(f"\ncheckpoint fuzz: {len(mutants)} mutants tried in-process: {dict(outcomes)}")
    assert len(mutants) >= MIN_MUTANTS
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10  # both paths are really exercised


def test_the_named_cases_name_the_field(real_run: RunDir) -> None:
    payload = load_checkpoint(real_run.path)
    cases = {m.kind: m for m in all_mutants(payload) if m.kind.startswith("named-")}
    expect = {
        "named-many": "checkpoint field epoch must be an integer, got 'many'",
        "named-float-rng": "checkpoint field rng_cpu must be a torch.uint8 tensor",
        "named-2e12-parameters": "would have 2,000,142,000,068 parameters",
        "named-rgb-config": "the Bernoulli decoder models black-and-white",
    }
    for kind, text in expect.items():
        with pytest.raises(CheckpointError, match=text):
            validate_checkpoint(cases[kind].apply(payload))
    shapes = Mutant(("optimizer", "state", 3, "exp_avg"), "x", torch.zeros(7)).apply(payload)
    with pytest.raises(CheckpointError, match=r"optimizer\.state\.3\.exp_avg has shape \(7,\) but the model's "
                                              r"parameter encoder\.net\.2\.bias has \(512,\)"):  # fmt: skip
        validate_checkpoint(shapes)
    other = {**read_json(real_run.config_path)}
    other["data"] = {**other["data"], "dataset": "/some/rgb/folder"}
    with pytest.raises(
        CheckpointError,
        match="config.data.dataset is .*pictures' but the run folder's config.json has '/some/rgb/folder'",
    ):
        validate_checkpoint(payload, expect_config=other)
    assert "lr_override" not in validate_checkpoint({**payload, "lr_override": math.nan})  # never trusted


CLI_MUTANTS = 24  # each a trainer process (2-5 s): the in-process test covers the other kinds


def _representatives(mutants: list[Mutant]) -> list[Mutant]:
    """The named cases, then one mutant each of a seeded choice of the other kinds, on a seeded field."""
    rng = random.Random(13)
    by_kind: dict[str, list[Mutant]] = {}
    for m in mutants:
        by_kind.setdefault(m.kind, []).append(m)
    chosen = [m for m in mutants if m.kind.startswith(("named-", "injected-"))]
    others = sorted(k for k in by_kind if not k.startswith(("named-", "injected-")))
    for kind in rng.sample(others, min(len(others), CLI_MUTANTS - len(chosen))):
        chosen.append(rng.choice(by_kind[kind]))
    return chosen


def _resume(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cvae.train", *args, "-e", "1", "-q", "--threads", "1"]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def test_resume_cli_on_one_mutant_of_each_kind(real_run: RunDir, tmp_path: Path) -> None:
    payload = load_checkpoint(real_run.path)
    chosen = _representatives(all_mutants(payload))
    jobs = []
    for i, mutant in enumerate(chosen):
        if i % 2:  # a loose file resumed into a new folder
            target = tmp_path / f"m{i:03d}.pt"
            _save_raw(target, mutant.apply(payload))
            jobs.append((mutant, ["-rp", str(target), "--run-dir", str(tmp_path / f"out{i:03d}")]))
        else:  # the run folder itself, its latest.pt replaced: checked against its config.json too
            folder = RunDir(tmp_path / f"run{i:03d}")
            folder.checkpoints.mkdir(parents=True)
            shutil.copy(real_run.config_path, folder.config_path)
            shutil.copy(real_run.metrics_path, folder.metrics_path)
            _save_raw(folder.latest_checkpoint, mutant.apply(payload))
            jobs.append((mutant, ["-rp", str(folder.path)]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _resume(job[1]), jobs))
    codes: Counter[int] = Counter()
    for (mutant, _), proc in zip(jobs, results, strict=True):
        codes[proc.returncode] += 1
        assert "Traceback" not in proc.stderr, (mutant.name, proc.stderr[-2000:])
        assert proc.returncode in (0, 2), (mutant.name, proc.returncode, proc.stderr[-2000:])
        if proc.returncode == 2:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (mutant.name, proc.stderr)
    print(f"\ncheckpoint fuzz: {len(jobs)} mutants resumed through the CLI: exit codes {dict(codes)}")
    assert codes[2] >= len(jobs) // 2 and len(jobs) >= 20
    adam = [proc for (m, _), proc in zip(jobs, results, strict=True) if m.kind == "named-adam-shape"]
    assert adam[0].returncode == 2 and "optimizer.state.3.exp_avg has shape (7,)" in adam[0].stderr


def _save_raw(path: Path, payload: dict) -> None:
    """torch.save the payload exactly as given (save_checkpoint would put format_version back)."""
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


def test_a_resumed_checkpoint_still_validates(real_run: RunDir, tmp_path: Path) -> None:
    """The checked payload is what the trainer saves again: resuming twice works, and it stays valid."""
    shutil.copytree(real_run.path, tmp_path / "r")
    for _ in range(2):
        proc = _resume(["-rp", str(tmp_path / "r")])
        assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "r")
    checked = validate_checkpoint(load_checkpoint(run.path), expect_config=run.read_config())
    assert checked["epoch"] == 3 and [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    with pytest.raises(CVAEError):
        validate_checkpoint({**checked, "epoch": -1})
