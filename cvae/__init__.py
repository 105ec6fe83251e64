"""cvae: conditional variational autoencoders (Sohn et al., NIPS 2015) for teaching.

from cvae import load_data, DataConfig, CVAE
from cvae.train import main
result = main(dataset="MNIST", decoder_type="Bernoulli", latent_dim=2, epochs=1)
"""

from cvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cvae.data import DatasetInfo, ImageData, load_data
from cvae.errors import CheckpointError, ConfigError, CVAEError, DataError
from cvae.model import CVAE, CVAEOutput, ElboTerms
from cvae.runs import RunDir, list_runs, load_checkpoint

__all__ = [
    "CVAE",
    "CVAEOutput",
    "CVAEError",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DatasetInfo",
    "ElboTerms",
    "ImageData",
    "ModelConfig",
    "RunConfig",
    "RunDir",
    "TrainConfig",
    "list_runs",
    "load_checkpoint",
    "load_data",
]
