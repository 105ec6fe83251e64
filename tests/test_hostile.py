"""Hostile or broken inputs not covered elsewhere; docs/hostile-inputs.md lists them all, with the tests
in tests/test_train.py, tests/test_data.py, tests/test_runs.py, tests/test_app.py and tests/test_hosting.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image
from streamlit.testing.v1 import AppTest

from cvae import jobs
from cvae.config import DataConfig
from cvae.data import load_image_folder
from cvae.errors import ConfigError
from ui import upload

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
PAGES = ["app_pages/train.py", "app_pages/reconstructions.py", "app_pages/latent.py", "app_pages/generate.py"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cvae.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "1000000000"], "epochs must be an integer from 1 to 100000"),
        (["-z", "1000000000"], "latent_dim must be an integer from 1 to 1024"),
        (["-z", "0"], "latent_dim must be an integer from 1 to 1024, got 0"),
        (["-e", "nan"], "epochs must be an integer from 1 to 100000, got 'nan'"),
        (["-b", "1e9"], "batch_size must be an integer from 1 to 65536, got '1e9'"),
    ],
)
def test_cli_absurd_numbers_are_one_line_exit_2(args: list[str], message: str) -> None:
    proc = _cli("--arch", "mlp", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_form_values_out_of_range_are_refused_before_anything_starts() -> None:
    bad = {"epochs": 10**9, "latent_dim": 10**9, "learning_rate": float("nan"), "batch_size": 0}
    with pytest.raises(ConfigError, match="epochs must be an integer from 1 to 100000"):
        jobs.check_options(bad)
    with pytest.raises(ConfigError, match="latent_dim must be an integer from 1 to 1024"):
        jobs.check_options({**bad, "epochs": 10})
    with pytest.raises(ConfigError, match="epochs"):
        jobs.start(Path("/nonexistent-root-never-created"), bad)
    assert not Path("/nonexistent-root-never-created").exists()


def _folder(root: Path) -> Path:
    """Class a: RGB 20×20 PNGs; class b: greyscale 16×16 JPEGs and a palette GIF; plus files that are not images."""
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "a" / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "b" / f"{i}.jpg")
    Image.new("P", (12, 30)).save(root / "b" / "palette.gif")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "Thumbs.db").write_bytes(os.urandom(64))
    return root


def test_mixed_sizes_modes_and_non_image_files(tmp_path: Path) -> None:
    data = load_image_folder(_folder(tmp_path / "d"), image_size=16)
    n = len(data.train_x) + len(data.test_x)
    assert n == 9 and data.train_x.shape[1:] == (3, 16, 16)  # RGB (the first image), every picture resized
    assert list(data.info.class_names) == ["a", "b"]


def test_image_folder_of_system_files_is_refused(tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / "sys" / name).mkdir(parents=True)
        (tmp_path / "sys" / name / "passwd").write_text("root:x:0:0")
    proc = _cli("-d", str(tmp_path / "sys"), "-t", "Gaussian", "--arch", "mlp", "-e", "1")
    assert proc.returncode == 2 and "has no images" in proc.stderr and "Traceback" not in proc.stderr
    assert DataConfig(dataset=str(tmp_path / "sys")).dataset


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width × height pixels (a decompression bomb's header) with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"%PDF-1.4 not a picture", "not a picture"),
        (_png_header(40_000, 40_000), "too many"),
        (_png_header(6_000, 6_000), "too many"),
        (_png_header(8, 8), "damaged"),
        (b"x" * ((upload.MAX_IMAGE_MB << 20) + 1), "larger than"),
    ],
    ids=["pdf", "bomb", "36M-pixels", "truncated", "oversized"],
)
def test_uploaded_picture_is_checked(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        upload.picture_for(1, 28, 28, data)


def test_uploaded_picture_takes_the_models_channels_and_size() -> None:
    import io

    buffer = io.BytesIO()
    Image.new("CMYK", (77, 13), (0, 255, 0, 0)).save(buffer, format="JPEG")
    assert upload.picture_for(3, 32, 32, buffer.getvalue()).shape == (3, 32, 32)
    assert upload.picture_for(1, 28, 28, buffer.getvalue(), invert=True).shape == (1, 28, 28)


def test_oversized_checkpoint_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CVAE_UPLOADS_DIR", str(tmp_path / "uploads"))
    monkeypatch.setattr(upload, "MAX_CHECKPOINT_MB", 1)  # the same check as at 50 MB, with less memory
    at = AppTest.from_file(APP, default_timeout=60)
    at.run().switch_page("app_pages/generate.py").run()
    at.segmented_control(key="gen_source").set_value("upload").run()
    at.file_uploader(key="upload_ckpt").upload("big.pt", b"\0" * ((1 << 20) + 1)).run()
    assert not at.exception and any("larger than 1 MB" in e.value for e in at.error)
    assert not list((tmp_path / "uploads").glob("*.pt"))  # never written to disk
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["maxUploadSize"] <= 200 and server["enableXsrfProtection"] is True


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "..", "%2e%2e%2fetc", "a/../../b", "x" * 500])
def test_path_as_run_id_in_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = bad
    at.run()
    assert any("No run called" in w.value for w in at.sidebar.warning)
    at.switch_page("app_pages/generate.py").run()
    assert not at.exception and at.session_state["current_run"] is None


@pytest.mark.parametrize("page", PAGES)
def test_garbage_status_and_metrics(tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch, page) -> None:
    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    shutil.copytree(tiny_run, tmp_path / "junk")
    (tmp_path / "junk" / "status.json").write_text(
        '{"state": "running", "pid": "1; rm -rf /", "epoch": "many", "epochs": -3, "batch": 1e300, '
        '"message": {"x": 1}, "last": [1], "position": true}'
    )
    with open(tmp_path / "junk" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": "three", "test_nelbo": "low"}\n[1, 2]\n\x00\xff garbage\n{"epoch": 9, "lr": "x"}\n')
    (tmp_path / "junk" / "batches.jsonl").write_bytes(os.urandom(500))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = "junk"
    at.run()
    if page != "app_pages/train.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    (tmp_path / "junk" / "status.json").write_text("[1, 2")  # not an object, and torn
    at.run()
    assert not at.exception, [e.value for e in at.exception]
