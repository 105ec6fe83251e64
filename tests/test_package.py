"""The package as pip installs it: the wheel holds the library and MNIST only, and the installed `cvae`
command and `import cvae` work from a folder outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_library_mnist_and_the_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("cvae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"cvae", next(t for t in top if t.endswith(".dist-info"))}, top  # no app, benchmarks, tests
    assert "cvae/mnist/train-images-idx3-ubyte.gz" in names and "cvae/mnist/t10k-labels-idx1-ubyte.gz" in names
    assert "cvae/model.py" in names and not any(n.startswith("cvae/bench") for n in names)
    assert "cvae/csrc/adam_bf16.c" in names  # the optimiser's kernel, built where the package is used (cvae.native)
    info = next(t for t in top if t.endswith(".dist-info"))
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "cvae = cvae.__main__:console" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Requires-Dist: torch" in metadata and "Requires-Dist: ipywidgets" in metadata


def test_the_installed_command_and_import_work_outside_the_checkout(tmp_path: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import cvae, cvae.data; print(cvae.data.PACKAGED_MNIST)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip(), "train-images-idx3-ubyte.gz").is_file()
    command = Path(sys.executable).with_name("cvae")
    assert command.is_file(), "the set-up (pip install -e .) puts the cvae command beside python"
    for args, expected in ((["train", "--help"], "--quick-demo"), (["evaluate", "--help"], "--iw-samples"),
                           (["--help"], "train")):  # fmt: skip
        out = subprocess.run([str(command), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and expected in out.stdout, (args, out.stderr)
    bad = subprocess.run([str(command), "fly"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown command" in bad.stderr
