"""The scoring pipeline: rows in, probabilities out, with tokenization overlapped with the engine.

The pipeline. A background thread reads rows, checks them and tokenizes them with the fast tokenizer's batch call
(which releases the GIL and is parallel inside), while the calling thread runs the engine on the batch before: a
queue of depth 2 (QUEUE_DEPTH) lies between them, so at most that many tokenized batches wait, whatever the
input's size. Results come back in input order. `sort_window` K > 0 sorts the rows of each window of K batches by
token length before cutting it into batches (rows of one length share an engine call, with less padding), and
restores input order before anything is written. Rows are grouped `batch_size` at a time in input order otherwise.

Which rows share a mux group. In `shared` isolation the N consecutive rows of a batch are encoded together, so a
row's answer depends on its neighbours (isolation.py): sorting changes the neighbours, so it is off by default in
shared mode (an explicit `sort_window` turns it on, and the grouping then follows the sorted order). In `request`
isolation every row is answered exactly as classifying it alone (classify(..., isolation="request")), so sorting
(on by default, 8 batches) changes only the speed, never a probability.

"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import DataError, EngineError
from ..engine import softmax
from ..isolation import each_alone

DEFAULT_BATCH_SIZE = 256
DEFAULT_SORT_WINDOW = {"shared": 0, "request": 8}  # batches per sorting window; 0: no sorting
QUEUE_DEPTH = 2            # tokenized batches waiting for the engine


# --- results ---------------------------------------------------------------------------------------

@dataclass
class ScoredRows:
    """What score_rows yields for k consecutive rows."""

    start: int                  # index (0-based, in the rows given) of the first of these rows
    probabilities: np.ndarray   # [k, C] float64, the softmax of the engine's logits, rows in input order
    labels: list[str]           # the C class names, in id order

    def best(self) -> list[tuple[str, float]]:
        """(label, probability) of the most likely class of each row."""
        return [(self.labels[k], float(p[k])) for p, k in zip(self.probabilities, self.probabilities.argmax(1))]


@dataclass
class ScoreSummary:
    """What score_file did."""

    output: Path
    rows_read: int          # input rows read, good and bad (all sessions of a resumed run)
    rows_written: int       # output rows (all sessions of a resumed run)
    bad_rows: int           # input rows skipped (skip_bad_rows)
    truncated: int          # rows longer than the engine's maximum length, truncated
    resumed_at: int         # input rows an interrupted run had done when this one started (0: a fresh run)
    seconds: float          # this session's wall time


# --- rows, windows and batches ---------------------------------------------------------------------

class _Missing:
    def __repr__(self):
        return "missing"


MISSING = _Missing()  # a column a row does not have


@dataclass
class _BadRow:
    """A row that cannot be read at all (not UTF-8, not a JSON object, wrong number of fields)."""

    reason: str


@dataclass
class _Window:
    """Up to `sort_window` (at least 1) batches of good rows, in input order."""

    rows: list[int]            # 0-based input row index of each good row
    ids: list
    texts: list[str]
    seconds: list[str] | None
    end: int                   # input rows consumed up to the end of this window (good and bad)
    bad: int = 0               # bad rows skipped inside it
    truncated: int = 0


@dataclass
class _Batch:
    feeds: dict                # the engine's inputs, [b, S] int64
    positions: np.ndarray      # [b] index of each row in its window
    size: int                  # rows in its window
    first_row: int             # 0-based input row of the batch's first row (for messages)


def _text_problem(value, column: str | None) -> str | None:
    """Why `value` cannot be classified (None when it can). column None: a .txt line."""
    name = "line" if column is None else repr(column)
    if value is MISSING or value is None:
        return f"no value in {name}" if column else "no text"
    if not isinstance(value, str):
        shown = repr(value)
        return f"{name} is not text ({type(value).__name__} {shown[:40]})"
    if not value.strip():
        return f"empty {name}"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # surrogate escapes of bytes that were not UTF-8
            return f"{name} is not valid UTF-8 (character {e.start + 1})"
    return None


def _windows(raw, start: int, window_rows: int, text_column: str | None, second_column: str | None,
             id_column: str | None, skip_bad_rows: bool, source: str) -> Iterator[_Window]:
    """Group raw rows ((id, text, second) tuples or _BadRow, the first being input row `start`) into windows of
    `window_rows` good rows. A bad row raises DataError unless skip_bad_rows."""
    pair = second_column is not None

    def new():
        return _Window([], [], [], [] if pair else None, start)

    window = new()
    consumed = start
    for index, row in enumerate(raw, start=start):
        consumed = index + 1
        if isinstance(row, _BadRow):
            problem = row.reason
        else:
            row_id, text, second = row
            problem = (_text_problem(text, text_column) or (pair and _text_problem(second, second_column))
                       or (id_column is not None and (row_id is MISSING or row_id is None)
                           and f"no value in {id_column!r}") or None)
        if problem:
            if not skip_bad_rows:
                raise DataError(f"{source}: row {consumed}: {problem}; fix the data or pass `skip_bad_rows`")
            window.bad += 1
            continue
        window.rows.append(index)
        window.ids.append(index if id_column is None else row_id)
        window.texts.append(text)
        if pair:
            window.seconds.append(second)
        if len(window.rows) == window_rows:
            window.end = consumed
            yield window
            window = new()
    window.end = consumed
    if window.rows or window.bad:
        yield window


class _Tokenizing:
    """Windows -> tokenized batches (and the window itself after its batches): what the background thread runs."""

    def __init__(self, tokenizer, engine, batch_size: int, sort: bool, truncate: bool, skip_bad_rows: bool,
                 source: str):
        self.tokenizer, self.batch_size, self.sort = tokenizer, batch_size, sort
        self.truncate, self.skip_bad_rows, self.source = truncate, skip_bad_rows, source
        self.max_length = engine.max_seq_length
        self.uses_token_types = engine.uses_token_types
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def __call__(self, windows: Iterable[_Window]) -> Iterator:
        for window in windows:
            yield from self._batches(window)
            yield window

    def _batches(self, window: _Window) -> Iterator[_Batch]:
        from ..data import tokenize, too_long_rows

        if not window.texts:
            return
        feeds = tokenize(self.tokenizer, window.texts, window.seconds, max_length=self.max_length,
                         uses_token_types=self.uses_token_types)
        lengths = feeds["attention_mask"].sum(1)
        full = np.flatnonzero(lengths >= self.max_length)  # only these can have been truncated
        if full.size:
            seconds = [window.seconds[i] for i in full] if window.seconds is not None else None
            long = full[too_long_rows(self.tokenizer, [window.texts[i] for i in full], seconds, self.max_length)]
            if long.size and self.truncate:
                window.truncated += int(long.size)
            elif long.size:
                if not self.skip_bad_rows:
                    raise DataError(f"{self.source}: row {window.rows[long[0]] + 1}: longer than {self.max_length} "
                                    "tokens; shorten it, allow truncation, or pass `skip_bad_rows`")
                keep = np.ones(len(window.rows), dtype=bool)
                keep[long] = False
                for name in ("rows", "ids", "texts", "seconds"):
                    values = getattr(window, name)
                    if values is not None:
                        setattr(window, name, [v for v, k in zip(values, keep) if k])
                window.bad += int(long.size)
                feeds = {name: value[keep] for name, value in feeds.items()}
                lengths = lengths[keep]
                if not window.rows:
                    return
        order = np.argsort(lengths, kind="stable") if self.sort else np.arange(len(lengths))
        for first in range(0, len(order), self.batch_size):
            positions = order[first:first + self.batch_size]
            width = int(lengths[positions].max())  # the batch alone is padded to its longest row
            cut = slice(-width, None) if self.left else slice(None, width)
            yield _Batch({name: value[positions][:, cut] for name, value in feeds.items()}, positions,
                         len(window.rows), window.rows[int(positions.min())])


def _in_background(items: Iterator, depth: int = QUEUE_DEPTH, name: str = "prumux-tokenize") -> Iterator:
    """Iterate `items` in a background thread, at most `depth` items ahead of the caller; items keep their order.
    An exception raised there is raised here; closing this iterator (or an exception here) stops the thread."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            put((False, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = waiting.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _scored(engine, items: Iterable, isolation: str) -> Iterator[tuple[_Window, np.ndarray]]:
    """Run the engine on each batch; yield (window, probabilities [rows, C] in the window's order)."""
    try:
        yield from _scored_items(engine, items, isolation)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _scored_items(engine, items, isolation):
    probabilities = None
    for item in items:
        if isinstance(item, _Window):
            yield item, (probabilities if probabilities is not None
                         else np.zeros((len(item.rows), len(engine.labels)), dtype=np.float64))
            probabilities = None
            continue
        if isolation == "shared":
            logits = engine.run_feeds(item.feeds)
        else:
            logits = each_alone(engine.run_feeds, item.feeds, engine.num_instances)
        bad = np.flatnonzero(~np.isfinite(logits).all(1))
        if bad.size:
            raise EngineError(f"the engine computed NaN or Inf logits for {bad.size} of the {len(logits)} rows of "
                              f"the batch from row {item.first_row + 1}; the engine is broken (an fp16 overflow?): "
                              "re-export it, as fp32 if it is fp16 (prumux-deploy export --precision fp32)")
        if probabilities is None:
            probabilities = np.empty((item.size, logits.shape[1]), dtype=np.float64)
        probabilities[item.positions] = softmax(logits.astype(np.float64))


def _check_options(isolation: str, batch_size: int, sort_window: int | None) -> int:
    from ..isolation import MODES

    if isolation not in MODES:
        raise EngineError(f"isolation {isolation!r} is not one of {', '.join(MODES)}")
    if int(batch_size) < 1:
        raise DataError(f"`batch_size` must be at least 1, got {batch_size}")
    sort_window = DEFAULT_SORT_WINDOW[isolation] if sort_window is None else int(sort_window)
    if sort_window < 0:
        raise DataError(f"`sort_window` must be 0 (off) or more batches, got {sort_window}")
    return sort_window


def _pipeline(engine, windows: Iterator[_Window], tokenizer, batch_size: int, isolation: str, sort_window: int,
              truncate: bool, skip_bad_rows: bool, source: str, pipeline: bool):
    tokenizing = _Tokenizing(tokenizer, engine, batch_size, sort_window > 0, truncate, skip_bad_rows, source)
    items = tokenizing(windows)
    return _scored(engine, _in_background(items) if pipeline else items, isolation)


def score_rows(engine, rows: Iterable, *, batch_size: int = DEFAULT_BATCH_SIZE, isolation: str = "shared",
               sort_window: int | None = None, truncate: bool = True, pipeline: bool = True, tokenizer=None,
               warn=None) -> Iterator[ScoredRows]:
    """Classify a stream of rows with `engine`, tokenizing ahead in a background thread; yields ScoredRows
    (consecutive, in input order, `batch_size` * max(1, sort_window) rows or fewer each) until `rows` ends.

    rows: texts (str), or (text, second) pairs for a pair engine (uses_token_types). batch_size: rows per engine
    call (in `request` isolation a call runs up to N times as many). isolation: as classify's ("shared": a
    batch's rows share mux groups N at a time in order; "request": each row answered as if alone). sort_window:
    batches per length-sorting window (default 0 in shared, 8 in request isolation; module docstring).
    pipeline=False tokenizes in the calling thread (same results). tokenizer: default the engine's own.
    Memory stays bounded: at most QUEUE_DEPTH tokenized batches and one window wait at a time.

    Raises EngineError for an empty text, a pair for a single-sentence engine (or the reverse), NaN logits;
    DataError for a row longer than the engine takes when truncate is False. `warn` receives the truncation
    notice once, at the end."""
    from ..data import load_tokenizer

    sort_window = _check_options(isolation, batch_size, sort_window)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(engine.dir)
    pair = engine.uses_token_types
    counted = {"rows": 0}

    def raw():
        for index, row in enumerate(rows):
            counted["rows"] = index + 1
            is_pair = isinstance(row, (tuple, list))
            if is_pair != pair:
                raise EngineError(f"row {index + 1}: " + ("this engine classifies sentence pairs: give (text, "
                                  "second) pairs" if pair else "this engine classifies single sentences; give "
                                                               "texts, not pairs"))
            text, second = (row[0], row[1]) if is_pair else (row, None)
            for value in (text, second) if pair else (text,):
                if not isinstance(value, str) or not value.strip():
                    raise EngineError(f"row {index + 1}: empty text; every text must contain some words")
            yield None, text, second

    windows = _windows(raw(), 0, batch_size * max(1, sort_window), "text", "second" if pair else None, None,
                       False, "rows")
    truncated = 0
    scored = _pipeline(engine, windows, tokenizer, batch_size, isolation, sort_window, truncate, False, "rows",
                       pipeline)
    with contextlib.closing(scored):  # stops the tokenizing thread when the caller stops early
        for window, probabilities in scored:
            truncated += window.truncated
            yield ScoredRows(window.rows[0], probabilities, engine.labels)
    if truncated and warn is not None:
        warn(f"warning: {truncated} of {counted['rows']} inputs are longer than {engine.max_seq_length} tokens and "
             "were truncated (--no-truncate, or truncate=False, refuses them instead)")


