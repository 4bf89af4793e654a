"""User-facing errors: one line that names the problem and the fix; the CLI prints it and exits non-zero."""


class PruMuxError(Exception):
    """Bad input or a refused operation. The message is shown to the user as is (no traceback)."""

    exit_code = 2


class CheckpointError(PruMuxError):
    """A checkpoint directory is missing files or holds something inconsistent."""


class EngineError(PruMuxError):
    """An engine directory (model.onnx / model.plan + manifest.json) is missing, edited or unusable."""


class ParityError(PruMuxError):
    """An exported engine disagrees with the PyTorch model by more than the tolerance."""

    exit_code = 1


class DataError(PruMuxError):
    """A data file or text input cannot be used."""
