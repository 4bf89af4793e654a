"""prumux-deploy: dense, validated inference engines from PruMUX (pruned + multiplexed) BERT classifiers."""

from .checkpoint import create_model, load_checkpoint, save_checkpoint
from .errors import PruMuxError
from .model import PruMuxConfig, PruMuxModel

__version__ = "0.1.0"
__all__ = ["PruMuxConfig", "PruMuxModel", "PruMuxError", "create_model", "load_checkpoint",
           "save_checkpoint", "__version__"]
