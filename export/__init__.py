"""Export: compaction of masked models and engine builders (ONNX)."""

from prumux_deploy.compact import compact  # compaction lives beside the model; export re-exports it

__all__ = ["compact"]
