"""prumux-deploy: dense, validated inference engines from PruMUX (pruned + multiplexed) BERT classifiers."""

from .errors import PruMuxError

__version__ = "0.1.0"
__all__ = ["PruMuxConfig", "PruMuxModel", "PruMuxError", "create_model", "load_checkpoint",
           "save_checkpoint", "__version__"]

# the model API is imported on first use (PEP 562): `prumux-deploy` starts without torch, so a Ctrl-C while it
# loads is handled by the command line (cli.py), and `import prumux_deploy` alone stays light
_LAZY = {"create_model": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
         "PruMuxConfig": "model", "PruMuxModel": "model"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
