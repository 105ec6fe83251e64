"""The optimiser's one-pass C kernel (cvae.native): built on this machine, torch's numbers, and a clear fallback.

No timing is asserted here: `python -m benchmarks.step_ab` and `python -m benchmarks.bench` measure it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvae import native


def _fake_compiler(tmp_path: Path, body: str) -> str:
    """A 'compiler' that answers --version and then does `body` (a shell snippet) for a build."""
    path = tmp_path / "fakecc"
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "fakecc 1.0"; exit 0; fi\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_this_machine_builds_the_kernel_and_it_is_torchs_adam(tmp_path: Path) -> None:
    """The CI machine has a C compiler (the project's set-up needs none, but then the loop is slower): the kernel
    builds, passes its own check against torch, and updates a weight as three steps of torch's fused Adam do,
    with the bf16 copy torch's rounding gives."""
    kernel, why = native.build(tmp_path, os.environ.get("CC") or "cc")
    assert kernel is not None, why
    assert str(tmp_path) in why and len(list(tmp_path.glob("adam_bf16-*.so"))) == 1
    gen = torch.Generator().manual_seed(1)
    n = 3 * 4096
    start = torch.randn(n, generator=gen)
    ours = [start.clone(), torch.zeros(n), torch.zeros(n)]
    theirs = [start.clone(), torch.zeros(n), torch.zeros(n)]
    half, step = torch.empty(n, dtype=torch.bfloat16), torch.zeros(())
    for s in (1, 2, 3):
        grad = torch.randn(n, generator=gen).bfloat16()
        step += 1
        torch._fused_adam_([theirs[0]], [grad.float()], [theirs[1]], [theirs[2]], [], [step], lr=5e-3, beta1=0.8,
                           beta2=0.99, weight_decay=0.0, eps=1e-6, amsgrad=False, maximize=False)  # fmt: skip
        native.run(kernel, *ours, grad, half, n, float(s), 5e-3, 0.8, 0.99, 1e-6)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        assert torch.equal(half, theirs[0].bfloat16())
    assert not torch.equal(ours[0], start)


def _build_elsewhere(directory: Path) -> str:
    """native.build in a fresh process: what a second run on this machine finds."""
    code = "import pathlib, sys; from cvae import native; k, why = native.build(pathlib.Path(sys.argv[1]), 'cc'); print(k is not None, why)"
    out = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_second_process_loads_the_cached_build_and_a_damaged_one_is_built_again(tmp_path: Path) -> None:
    first, why = native.build(tmp_path, "cc")
    assert first is not None, why
    (built,) = tmp_path.glob("adam_bf16-*.so")
    mtime = built.stat().st_mtime_ns
    assert _build_elsewhere(tmp_path).startswith("True") and built.stat().st_mtime_ns == mtime  # loaded, not rebuilt
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"not a shared library")
    os.replace(damaged, built)  # a new file: this process keeps its mapping of the old one
    assert _build_elsewhere(tmp_path).startswith("True")
    assert built.read_bytes()[:4] == b"\x7fELF" and list(tmp_path.iterdir()) == [built]  # no temporary left
    # A loadable library that is not the kernel (another build's leftovers under the name): built again too.
    (tmp_path / "other.c").write_text("int not_the_kernel = 1;\n")
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "other.c"), "-o", str(damaged)], check=True)
    os.replace(damaged, built)
    assert _build_elsewhere(tmp_path).startswith("True")
    assert native.SYMBOL.encode() in built.read_bytes()


def test_without_a_compiler_or_with_a_failing_build_the_loop_keeps_torchs_path(tmp_path: Path) -> None:
    kernel, why = native.build(tmp_path / "a", str(tmp_path / "no-such-cc"))
    assert kernel is None and "no working C compiler" in why
    kernel, why = native.build(tmp_path / "b", _fake_compiler(tmp_path, 'echo "fatal error: out of luck" >&2; exit 1'))
    assert kernel is None and why == "the build failed: fatal error: out of luck"
    assert list((tmp_path / "b").iterdir()) == []  # its temporary file is gone
    # A "build" that succeeds but leaves no loadable library: one line, no traceback.
    kernel, why = native.build(tmp_path / "c", _fake_compiler(tmp_path, 'eval "last=\\${$#}"; echo junk > "$last"'))
    assert kernel is None and why.startswith("could not build or load it in")


def test_a_library_or_folder_others_could_write_is_never_loaded(tmp_path: Path) -> None:
    """A shared server: a kernel another user could have put in place would run in this process."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    kernel, why = native.build(shared, "cc")
    assert kernel is None and why == f"{shared} is not this user's alone (others could put a library there)"
    assert list(shared.iterdir()) == []
    mine = tmp_path / "mine"
    assert native.build(mine, "cc")[0] is not None
    (built,) = mine.glob("*.so")
    assert stat.S_IMODE(built.stat().st_mode) == 0o700
    planted = tmp_path / "planted.so"
    shutil.copyfile(built, planted)  # a working kernel, even, but writable by anyone: not trusted
    planted.chmod(0o777)
    os.replace(planted, built)
    inode = built.stat().st_ino
    assert _build_elsewhere(mine).startswith("True")
    assert built.stat().st_ino != inode and stat.S_IMODE(built.stat().st_mode) == 0o700  # built anew, not loaded


def test_unwritable_cache_folder_gives_a_reason_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    kernel, why = native.build(blocker / "kernels", "cc")
    assert kernel is None and why.startswith("could not build or load it in")


def test_switched_off_the_status_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    native._loaded.cache_clear()
    monkeypatch.setenv("CVAE_NATIVE", "0")
    try:
        assert native.adam_bf16() is None
        assert native.status() == "torch's fused Adam in pieces (C kernel not used: switched off (CVAE_NATIVE=0))"
    finally:
        native._loaded.cache_clear()


def test_the_kernel_applies_only_to_the_adam_it_reproduces() -> None:
    assert native.applies(0.9, 0.0, False)
    assert not native.applies(0.9, 1e-4, False)  # weight decay
    assert not native.applies(0.9, 0.0, True)  # maximize
    assert not native.applies(0.3, 0.0, False)  # torch's other lerp form
