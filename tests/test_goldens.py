"""The label and none conditions train as they did before the one model family: small seeded runs
against the goldens recorded with the code before it (`python -m scripts.goldens`, results/goldens.json).
On the machine they were recorded on they match to the last digit; here a tolerance far below any change of
draw order or arithmetic leaves room for another CPU's kernels."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest

from scripts.goldens import record_case

GOLDENS = json.loads((Path(__file__).resolve().parent.parent / "results" / "goldens.json").read_text())


def _numbers(value: object, prefix: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        return {k2: v2 for k, v in value.items() for k2, v2 in _numbers(v, f"{prefix}{k}.").items()}
    if isinstance(value, list):
        return {k2: v2 for i, v in enumerate(value) for k2, v2 in _numbers(v, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value} if isinstance(value, float) and math.isfinite(value) else {}


@pytest.mark.parametrize("case", ["label-mlp", "none-mlp"])
def test_a_seeded_run_gives_the_recorded_figures(case: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = record_case(case, Path(tmp))
    old, new = _numbers(GOLDENS[case]), _numbers(fresh)
    assert old.keys() <= new.keys()
    differ = {k: (old[k], new[k]) for k in old if new[k] != pytest.approx(old[k], rel=1e-4, abs=1e-4)}
    assert not differ, differ
    assert len(old) >= 20  # both metrics lines and the evaluation were compared
