"""The run folder: atomic files, torn lines, dead processes, safe ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvae.errors import CVAEError
from cvae.runs import RunDir, list_runs, read_jsonl, run_path, write_json


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 1}) + "\n" + '{"epoch": 2, "test_ne')
    assert read_jsonl(path) == [{"epoch": 1}]


def test_write_json_replaces_whole_file_and_stores_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_json(path, {"loss": float("nan"), "epoch": 1})
    assert json.loads(path.read_text()) == {"loss": None, "epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary left behind


def test_dead_process_reads_as_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = RunDir(tmp_path)
    run.write_status(state="running", pid=proc.pid)
    status = run.read_status()
    assert status["state"] == "interrupted" and "resume" in status["message"]
    run.write_status(state="running", pid=__import__("os").getpid())
    assert run.read_status()["state"] == "running"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "..", "a\nb", "/abs"])
def test_run_ids_cannot_leave_the_root(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CVAEError, match="invalid run id"):
        run_path(tmp_path, bad)


def test_list_runs_skips_half_written_folders(tmp_path: Path, tiny_run: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert list_runs(tmp_path) == []
    runs = list_runs(tiny_run.parent)
    assert [r.path for r in runs] == [tiny_run]
    assert runs[0].epochs_with("recon_mean.png") == [1, 2]
