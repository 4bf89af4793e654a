"""Export: compaction of masked models and engine builders (ONNX)."""

from .compact import compact

__all__ = ["compact"]
