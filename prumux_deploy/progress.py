"""Progress bars for long work (training, validation, benchmarks): tqdm on a terminal; on a log file, a pipe or
CI's captured stderr, one plain line at most every LOG_INTERVAL_S seconds, since tqdm's carriage-return redraws
pile up there into one line of thousands of characters that no log viewer shows."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between progress lines written to a file or pipe


class _Lines:
    """A stream wrapper that turns tqdm's redraws ('\\r' + bar) into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, *, disable: bool = False, stream=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs) on `stream` (default sys.stderr): redrawn in place on a terminal, else written as
    a line at the start, at most every LOG_INTERVAL_S seconds, and at the end."""
    stream = stream or sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, file=stream, disable=disable, dynamic_ncols=True, **kwargs)
    # miniters=1: tqdm's adaptive miniters would let its monitor thread force a line every 10 s (maxinterval)
    return tqdm(iterable, file=_Lines(stream), mininterval=LOG_INTERVAL_S, miniters=1, ncols=100, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
