"""cvae: conditional variational autoencoders (Sohn et al., NIPS 2015) for teaching.

    import cvae

    result = cvae.train_model(dataset="MNIST", decoder_type="Bernoulli", latent_dim=2, epochs=1)
    model = cvae.load_model(result.run_dir)                             # model.run_config, model.info
    report = cvae.evaluate_checkpoint(result.run_dir, iw_samples=100)   # nats per image
    images = cvae.generate_images(model, label=7, mode="uniform")      # (400, 1, 28, 28)
    run = cvae.load_run(result.run_dir)                                 # model, config, checkpoint, metrics

`help(cvae.train_model)` lists every option with its default; the same options
are the flags of `python -m cvae.train`. The reference's `cvae.train.main(...)`
still works.

The names below are imported when first used, so that `python -m cvae.evaluate`
(and the other commands) run their module once, not a copy the package made first.
"""

from importlib import import_module
from typing import Any

from cvae.config import DataConfig, LaunchOptions, ModelConfig, RunConfig, TrainConfig
from cvae.errors import CheckpointError, ConfigError, CVAEError, DataError

_LAZY = {
    "train_model": "cvae.training",
    "TrainResult": "cvae.loop",
    "load_model": "cvae.generate",
    "load_run": "cvae.generate",
    "LoadedRun": "cvae.generate",
    "complete": "cvae.generate",
    "generate_images": "cvae.generate",
    "evaluate_checkpoint": "cvae.evaluate",
    "evaluate_model": "cvae.evaluate",
    "CVAE": "cvae.model",
    "CVAEOutput": "cvae.model",
    "Objective": "cvae.model",
    "Condition": "cvae.model",
    "DatasetInfo": "cvae.data",
    "ImageData": "cvae.data",
    "load_data": "cvae.data",
    "RunDir": "cvae.runs",
    "list_runs": "cvae.runs",
    "load_checkpoint": "cvae.checkpoints",
    "validate_checkpoint": "cvae.checkpoints",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "CVAEError",
    "DataConfig",
    "DataError",
    "LaunchOptions",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    *_LAZY,
]
