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


class ModelError(PruMuxError, ValueError):
    """A model configuration or structure that cannot be built or run (an unknown kind, a shape that does not
    fit). Also a ValueError, as the model code's callers have long caught."""


class ExportError(PruMuxError):
    """A graph transformation broke an invariant (changed the engine's inputs, left a cycle); nothing is
    written. This is a bug in prumux-deploy or in the library it drives: report it with the traceback (the CLI
    prints it with --debug)."""


def first_line(error: BaseException, width: int = 200) -> str:
    """The first non-blank line of a library's error message, at most `width` characters; the error's type name
    when the message is empty (so that a one-line error never shows empty parentheses)."""
    line = next((l.strip() for l in str(error).splitlines() if l.strip()), "")
    return line[:width] if line else type(error).__name__
