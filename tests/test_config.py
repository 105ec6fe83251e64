"""Configs validate every value and round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from cvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cvae.errors import ConfigError


def run_config(**train) -> RunConfig:
    model = ModelConfig(channels=1, height=28, width=28, num_classes=10, latent_dim=2)
    return RunConfig(data=DataConfig(binarize="static"), model=model, train=TrainConfig(**train))


def test_json_round_trip() -> None:
    cfg = run_config(epochs=3).validate()
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "train",
    [dict(epochs=0), dict(batch_size=-1), dict(learning_rate=float("nan")), dict(learning_rate=0.0),
     dict(learning_rate=float("inf")), dict(epochs=10**9), dict(precision="fp8"), dict(device="tpu")],
)  # fmt: skip
def test_bad_training_values_are_refused(train: dict) -> None:
    with pytest.raises(ConfigError):
        run_config(**train).validate()


def test_unknown_keys_are_refused() -> None:
    raw = run_config().to_dict()
    raw["model"]["evil"] = 1
    with pytest.raises(ConfigError, match="evil"):
        RunConfig.from_dict(raw)


def test_bernoulli_needs_binarized_data() -> None:
    model = ModelConfig(channels=1, height=28, width=28, num_classes=10)
    with pytest.raises(ConfigError, match="binarized"):
        RunConfig(data=DataConfig(binarize="none"), model=model).validate()
