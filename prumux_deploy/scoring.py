"""Scoring rows and files with an engine: text in, labels out, at engine speed and in bounded memory.

    score_rows(engine, rows)            iterator of ScoredRows (probabilities [k, C], input order) over an iterable
                                        of texts, or of (text, second) pairs for a pair engine: classify, streamed
    score_file(engine, input, output)   read a file, score every row, write one output row per input row
    EngineHandle(engine_dir, ...)       what worker processes (Ray Data, Dask) get instead of an Engine, which
                                        does not pickle: the engine opened once per process; a batch of rows
                                        in, the rows plus label and p_<label> out (README, Past one machine)

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

Inputs (score_file): every form `--data` reads, as a file: `.tsv` (tab-separated, no quoting, as GLUE writes it),
`.csv`, `.jsonl` / `.json` (JSON Lines: one object per line), `.parquet`, a `datasets` save_to_disk directory, a
directory of split files (test.csv, ...; `split`); and `.txt`, one text per line. Every one is streamed: text
files line by line, parquet by record batches (pyarrow iter_batches), save_to_disk datasets (memory-mapped Arrow)
a window at a time. The text column defaults to the engine's task column ('sentence' for SST-2; a custom task's
recorded column) or else 'text'. A row's id is its `id_column` value, or its 0-based row number.

Outputs, by suffix: `.jsonl`, `.csv` or `.parquet`; one row per input row (bad rows skipped with skip_bad_rows
excepted), in input order, with the columns

    id          the id_column's value, or the 0-based input row number (int)
    label       the most probable class's name
    p_<label>   one column per class, in the engine's label order: the softmax probability (float64)

(parquet: id is int64 for row numbers, the column's own type from parquet / save_to_disk inputs, and text from
the text formats). A bad row (no value, an empty or whitespace-only text, a value that is not text, a line
that is not UTF-8 or not a JSON object, a CSV record with the wrong number of fields) is a DataError naming the
input and its 1-based data row (headers and blank JSON lines are not rows; a .txt file's row is its line),
unless skip_bad_rows, which counts and skips it.

Interruption. Results are written to `.OUTPUT.partial/` beside the output, in part files of at most `flush_rows`
rows, with `progress.json` (rows done, the input's size and modification time, the engine, the options); the
output appears under its own name only when every row is written (the parts joined, renamed into place). An
interrupted run (Ctrl-C, a failure that is not a PruMuxError) keeps its partial directory, the rows it finished
saved; resume=True continues it at the next unscored row, so each row is written exactly once and the output is
what an uninterrupted run writes. A run killed outright loses the rows after its last saved part. A PruMuxError
(a bad row, a broken engine) removes the partial directory: no output is left.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import DataError, EngineError, PruMuxError
from .isolation import each_alone

DEFAULT_BATCH_SIZE = 256
DEFAULT_SORT_WINDOW = {"shared": 0, "request": 8}  # batches per sorting window; 0: no sorting
QUEUE_DEPTH = 2            # tokenized batches waiting for the engine
FLUSH_ROWS = 16384         # output rows held before they are written as one part file
OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
INPUT_FILES = {".txt": "txt", ".tsv": "csv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
INPUT_FORMS = ("a .txt file (one text per line), a .tsv / .csv / .jsonl / .parquet file, a directory of split files "
               "(test.csv, ...) or a save_to_disk directory")
PROGRESS_FORMAT = "prumux-predict-progress"
PROGRESS_VERSION = 1


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
        from .data import tokenize, too_long_rows

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
    from scipy.special import softmax

    try:
        yield from _scored_items(engine, items, isolation, softmax)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _scored_items(engine, items, isolation, softmax):
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
        probabilities[item.positions] = softmax(logits.astype(np.float64), axis=1)


def _check_options(isolation: str, batch_size: int, sort_window: int | None) -> int:
    from .isolation import MODES

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
    from .data import load_tokenizer

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
             "were truncated (with truncation off they are refused instead)")


# --- reading inputs --------------------------------------------------------------------------------

@dataclass
class InputFile:
    """An input opened for score_file: its form, the columns read, and a streaming row reader."""

    path: Path                  # as the caller named it
    source: str                 # the file or directory the rows come from (in messages)
    kind: str                   # txt, csv, jsonl, parquet or dataset
    file: Path | None           # the data file (None for a save_to_disk dataset)
    text_column: str | None     # None for .txt
    second_column: str | None
    id_column: str | None
    total: int | None           # rows, where known without reading them (parquet, save_to_disk)
    id_type: object = None      # pyarrow type of the id column (parquet, save_to_disk)
    dataset: object = None      # datasets.Dataset (save_to_disk)
    delimiter_options: dict | None = None

    def fingerprint(self) -> dict:
        """What identifies the input's content for resume: path, size and modification time of its files."""
        files = [self.file] if self.file is not None else sorted(p for p in Path(self.source).rglob("*") if p.is_file())
        stats = [f.stat() for f in files]
        return {"path": str(Path(self.source).resolve()), "bytes": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}

    def rows(self, start: int = 0) -> Iterator:
        """(id, text, second) per input row from row `start` (0-based) on, or a _BadRow; id MISSING without an
        id column, any value MISSING where the row lacks it."""
        return getattr(self, f"_rows_{self.kind}")(start)

    def _rows_txt(self, start):
        with open(self.file, "rb") as f:
            for line in itertools.islice(f, start, None):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield _BadRow(f"not valid UTF-8 (byte {e.start + 1})")
                    continue
                yield MISSING, text.rstrip("\n").rstrip("\r"), None

    def _rows_jsonl(self, start):
        wanted = (self.id_column, self.text_column, self.second_column)
        with open(self.file, "rb") as f:
            lines = (line for line in f if line.strip())
            for line in itertools.islice(lines, start, None):
                try:
                    row = json.loads(line)
                except UnicodeDecodeError as e:
                    yield _BadRow(f"not valid UTF-8 (byte {e.start + 1})")
                    continue
                except ValueError as e:
                    yield _BadRow(f"not valid JSON ({str(e).splitlines()[0][:80]})")
                    continue
                if not isinstance(row, dict):
                    yield _BadRow(f"not a JSON object ({type(row).__name__})")
                    continue
                yield tuple(MISSING if c is None else row.get(c, MISSING) for c in wanted)

    def _rows_csv(self, start):
        with open(self.file, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, **self.delimiter_options)
            header = next(reader, None) or []
            where = [None if c is None else header.index(c)
                     for c in (self.id_column, self.text_column, self.second_column)]
            records = (r for r in reader if r)  # blank lines carry no row
            try:
                for record in itertools.islice(records, start, None):
                    if len(record) != len(header):
                        yield _BadRow(f"{len(record)} fields, the header has {len(header)}")
                        continue
                    yield tuple(MISSING if k is None else record[k] for k in where)
            except csv.Error as e:
                raise DataError(f"{self.source}: line {reader.line_num}: {e}; fix the file") from None

    def _rows_parquet(self, start):
        import pyarrow.parquet as pq

        wanted = [c for c in (self.id_column, self.text_column, self.second_column) if c is not None]
        parquet = pq.ParquetFile(self.file)
        groups, skip = [], start
        for g in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(g).num_rows
            if skip >= rows and not groups:
                skip -= rows
                continue
            groups.append(g)
        if not groups:
            return
        for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, columns=wanted):
            if skip:
                cut = min(skip, batch.num_rows)
                batch, skip = batch.slice(cut), skip - cut
            yield from self._tuples({c: batch.column(c).to_pylist() for c in wanted}, batch.num_rows)

    def _rows_dataset(self, start):
        wanted = [c for c in (self.id_column, self.text_column, self.second_column) if c is not None]
        ds = self.dataset.select_columns(wanted)
        if start:
            ds = ds.select(range(start, len(ds)))
        for batch in ds.iter(batch_size=4096):
            yield from self._tuples(batch, len(batch[wanted[0]]))

    def _tuples(self, columns: dict, n: int):
        missing = [MISSING] * n
        yield from zip(*(missing if c is None else columns[c]
                         for c in (self.id_column, self.text_column, self.second_column)))


def _engine_columns(engine) -> tuple[list[str], list[str]]:
    """Candidate text and second-text column names for an engine's task, most likely first: a GLUE task's own
    columns (and their `datasets` names), a custom task's recorded columns, then 'text' (and 'text_pair')."""
    from .data import CUSTOM, TASKS

    try:
        config = json.loads((Path(engine.dir) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        config = {}
    task = str(config.get("task") or "").lower().replace("-", "")
    first, second = [], []
    if task == CUSTOM:
        columns = config.get("task_columns") or {}
        first += [columns["text"]] if columns.get("text") else []
        second += [columns["text_pair"]] if columns.get("text_pair") else []
    elif task in TASKS:
        spec = TASKS[task]
        first.append(spec.text_a)
        second += [spec.text_b] if spec.text_b else []
        if spec.hub_columns:
            first.append(spec.hub_columns[0])
            second += [spec.hub_columns[1]] if spec.hub_columns[1] else []
    return first + ["text"], second + ["text_pair"]


def _pick(columns: list[str], given: str | None, candidates: list[str], flag: str, source: str) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(f"{source}: no column {given!r} (columns: {', '.join(columns)}); name the right one with "
                            f"`{flag}`")
        return given
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"{source}: no column {candidates[0]!r} (columns: {', '.join(map(str, columns))}); name the "
                    f"right one with `{flag}`")


def _jsonl_columns(file: Path) -> list[str]:
    """The keys of the first JSON object in a JSON Lines file (what the columns are checked against)."""
    with open(file, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            if line.lstrip().startswith(b"["):
                raise DataError(f"{file}: a JSON array; write it as JSON Lines (one object per line, .jsonl)")
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                return list(row)
    raise DataError(f"{file}: no JSON object in it; JSON Lines hold one object per line")


def open_input(path, engine, text_column: str | None = None, second_column: str | None = None,
               id_column: str | None = None, split: str | None = None) -> InputFile:
    """Open `path` (module docstring: the input forms) for scoring with `engine`: its form, and the columns
    read, checked against the ones it has. split: which split of a save_to_disk DatasetDict or a directory of
    split files (default: its only split, else 'test'). Raises DataError (one line: the input, the problem, the
    fix) for a missing or empty input, an unknown format, a missing column, a .txt input to a pair engine."""
    from .data import _check_header, _data_files, _reader_options

    path = Path(path)
    pair = engine.uses_token_types
    if second_column is not None and not pair:
        raise DataError("this engine classifies single sentences; drop `second_column`")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _open_dataset(path, engine, text_column, second_column, id_column, split)
        files = _data_files(path)
        if not files:
            raise DataError(f"{path}: no data files here; `input_path` takes {INPUT_FORMS}")
        path = Path(files[_choose_split(files, split, str(path))])
    elif not path.is_file():
        raise DataError(f"{path}: no such file or directory; `input_path` takes {INPUT_FORMS}")
    kind = INPUT_FILES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown input format; use {', '.join(INPUT_FILES)}, or a save_to_disk directory")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file; give an input with at least one row")
    text_candidates, second_candidates = _engine_columns(engine)
    source = str(path)
    if kind == "txt":
        if pair:
            raise DataError(f"{path}: a .txt file holds one text per line, and this engine classifies sentence pairs; "
                            "give a .tsv / .csv / .jsonl / .parquet file with both columns")
        if text_column or id_column:
            raise DataError(f"{path}: a .txt file has no columns (one text per line); drop `text_column` and "
                            "`id_column`")
        return InputFile(path, source, kind, path, None, None, None, None)
    options = None
    id_type = None
    total = None
    if kind == "csv":
        _check_header(path)  # a column named twice: which one is read would be a guess
        options = _reader_options(path.suffix.lower())
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            columns = next(csv.reader(f, **options), None) or []
    elif kind == "jsonl":
        columns = _jsonl_columns(path)
    else:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - pyarrow's errors: one line naming the file
            raise DataError(f"{path}: cannot be read as parquet ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''}); check the file") from None
        schema = parquet.schema_arrow
        columns, total = list(schema.names), parquet.metadata.num_rows
        if id_column in columns:
            id_type = schema.field(id_column).type
    text = _pick(columns, text_column, text_candidates, "text_column", source)
    second = _pick(columns, second_column, second_candidates, "second_column", source) if pair else None
    ident = _pick(columns, id_column, [id_column], "id_column", source) if id_column is not None else None
    return InputFile(path, source, kind, path, text, second, ident, total, id_type, delimiter_options=options)


def _choose_split(available, split: str | None, where: str) -> str:
    from .data import _pick_split

    available = list(available)
    if split is None and len(available) == 1:
        return available[0]
    return _pick_split(available, split or "test", where)


def _open_dataset(path: Path, engine, text_column, second_column, id_column, split) -> InputFile:
    import datasets

    from .data import _quiet_datasets

    _quiet_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot be read as a save_to_disk dataset ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''}); check the directory") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[_choose_split(ds.keys(), split, str(path))]
    text_candidates, second_candidates = _engine_columns(engine)
    source, columns = str(path), list(ds.column_names)
    text = _pick(columns, text_column, text_candidates, "text_column", source)
    second = _pick(columns, second_column, second_candidates, "second_column", source) if engine.uses_token_types \
        else None
    ident = _pick(columns, id_column, [id_column], "id_column", source) if id_column is not None else None
    id_type = ds.data.schema.field(ident).type if ident else None
    return InputFile(path, source, "dataset", None, text, second, ident, len(ds), id_type, dataset=ds)


# --- writing outputs -------------------------------------------------------------------------------

class _Format:
    """One output format: rows -> a payload held in memory, payloads -> a part file, parts -> the output."""

    suffix = ""

    def __init__(self, labels: list[str], id_type=None):
        self.labels = list(labels)

    def header(self) -> str:
        return ""

    def write_part(self, path: Path, payloads: list, first: bool) -> None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            if first:
                f.write(self.header())
            for payload in payloads:
                f.write(payload)

    def join(self, parts: list[Path], target: Path) -> None:
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)


class _JsonLines(_Format):
    suffix = ".jsonl"

    def __init__(self, labels, id_type=None):
        super().__init__(labels)
        self.label_json = [json.dumps(label, ensure_ascii=False) for label in labels]
        self.keys = [json.dumps(f"p_{label}", ensure_ascii=False) for label in labels]

    def encode(self, ids: list, best: np.ndarray, probabilities: np.ndarray, numbered: bool) -> str:
        keys, names = self.keys, self.label_json
        lines = []
        for row_id, k, p in zip(ids, best.tolist(), probabilities.tolist()):
            shown = str(row_id) if numbered else json.dumps(row_id, ensure_ascii=False, default=str)
            scores = ", ".join(f"{key}: {q!r}" for key, q in zip(keys, p))
            lines.append(f'{{"id": {shown}, "label": {names[k]}, {scores}}}\n')
        return "".join(lines)


class _Csv(_Format):
    suffix = ".csv"

    def header(self) -> str:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(["id", "label", *[f"p_{label}" for label in self.labels]])
        return text.getvalue()

    def encode(self, ids: list, best: np.ndarray, probabilities: np.ndarray, numbered: bool) -> str:
        text = io.StringIO()
        labels = self.labels
        csv.writer(text, lineterminator="\n").writerows(
            [row_id, labels[k], *map(repr, p)] for row_id, k, p in zip(ids, best.tolist(), probabilities.tolist()))
        return text.getvalue()


class _Parquet(_Format):
    suffix = ".parquet"

    def __init__(self, labels, id_type=None):
        super().__init__(labels)
        self.id_type = id_type

    def encode(self, ids: list, best: np.ndarray, probabilities: np.ndarray, numbered: bool):
        import pyarrow as pa

        if numbered:
            id_array = pa.array(ids, type=pa.int64())
        elif self.id_type is not None:
            id_array = pa.array(ids, type=self.id_type)
        else:
            id_array = pa.array([v if isinstance(v, str) else json.dumps(v, default=str) for v in ids],
                                type=pa.string())
        columns = {"id": id_array, "label": pa.array([self.labels[k] for k in best.tolist()], type=pa.string())}
        for j, label in enumerate(self.labels):
            columns[f"p_{label}"] = pa.array(probabilities[:, j], type=pa.float64())
        return pa.table(columns)

    def write_part(self, path: Path, payloads: list, first: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.concat_tables(payloads), path)

    def join(self, parts: list[Path], target: Path) -> None:
        import pyarrow.parquet as pq

        writer = None
        try:
            for part in parts:
                parquet = pq.ParquetFile(part)
                for g in range(parquet.metadata.num_row_groups):
                    table = parquet.read_row_group(g)
                    if writer is None:
                        writer = pq.ParquetWriter(target, table.schema)
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


FORMATS = {f.suffix: f for f in (_JsonLines, _Csv, _Parquet)}


def partial_dir(output) -> Path:
    """Where an unfinished score_file run of `output` keeps its parts and progress record."""
    output = Path(output)
    return output.parent / f".{output.name}.partial"


def read_progress(output) -> dict | None:
    """The progress record of an interrupted score_file run of `output` (rows_done, rows_written, bad_rows,
    input, options, ...), or None when there is none."""
    try:
        return json.loads((partial_dir(output) / "progress.json").read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Saved:
    """What the part files on disk hold (and what progress.json says)."""

    rows_done: int = 0
    rows_written: int = 0
    bad_rows: int = 0
    truncated: int = 0
    parts: tuple = ()          # ((file name, output rows), ...)


@dataclass(frozen=True)
class _State:
    """Saved parts plus scored windows not yet written. Replaced whole, in one assignment, so an interruption
    anywhere leaves it consistent (either a window or a part is in it, or not)."""

    saved: _Saved
    pending: tuple = ()        # ((payload, input rows, output rows, bad rows, truncated), ...)

    @property
    def pending_rows(self) -> int:
        return sum(p[2] for p in self.pending)

    @property
    def rows_done(self) -> int:
        return self.saved.rows_done + sum(p[1] for p in self.pending)

    @property
    def bad_rows(self) -> int:
        return self.saved.bad_rows + sum(p[3] for p in self.pending)


class _PartialRun:
    """The partial directory of one output: part files, progress.json, and the final join."""

    def __init__(self, output: Path, fmt: _Format, record: dict, saved: _Saved, flush_rows: int):
        self.output, self.dir, self.fmt, self.record = output, partial_dir(output), fmt, record
        self.state = _State(saved)
        self.flush_rows = flush_rows

    def add(self, window: _Window, probabilities: np.ndarray, numbered: bool) -> None:
        payload = (self.fmt.encode(window.ids, probabilities.argmax(1), probabilities, numbered)
                   if window.rows else None)
        start = self.state.rows_done
        entry = (payload, window.end - start, len(window.rows), window.bad, window.truncated)
        self.state = replace(self.state, pending=self.state.pending + (entry,))
        if self.state.pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the pending windows as the next part file and record it."""
        state = self.state
        if not state.pending:
            return
        saved = state.saved
        rows = sum(p[2] for p in state.pending)
        parts = saved.parts
        if rows:
            name = f"part-{len(parts):05d}{self.fmt.suffix}"
            tmp = self.dir / f".{name}.tmp"
            self.fmt.write_part(tmp, [p[0] for p in state.pending if p[0] is not None], first=not parts)
            os.replace(tmp, self.dir / name)
            parts = parts + ((name, rows),)
        saved = _Saved(saved.rows_done + sum(p[1] for p in state.pending), saved.rows_written + rows,
                       saved.bad_rows + sum(p[3] for p in state.pending),
                       saved.truncated + sum(p[4] for p in state.pending), parts)
        self.state = _State(saved)
        self.write_progress()

    def write_progress(self) -> None:
        saved = self.state.saved
        record = {**self.record, "rows_done": saved.rows_done, "rows_written": saved.rows_written,
                  "bad_rows": saved.bad_rows, "truncated": saved.truncated, "parts": [list(p) for p in saved.parts]}
        tmp = self.dir / ".progress.json.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, self.dir / "progress.json")

    def tidy(self) -> None:
        """Remove files the progress record does not list (a part written as the run was stopped)."""
        listed = {name for name, _ in self.state.saved.parts} | {"progress.json"}
        for path in self.dir.iterdir():
            if path.name not in listed:
                path.unlink()

    def save(self) -> None:
        """After an interruption: keep every scored window (written as a part), so resume starts after them."""
        self.tidy()
        self.flush()
        self.write_progress()

    def finish(self) -> None:
        """Write what is pending, join the parts under the output's name, remove the partial directory."""
        from .atomic import atomic_file

        self.flush()
        parts = [self.dir / name for name, _ in self.state.saved.parts]
        if len(parts) == 1:
            os.replace(parts[0], self.output)
        else:
            with atomic_file(self.output, force=True) as tmp:
                self.fmt.join(parts, tmp)
        shutil.rmtree(self.dir, ignore_errors=True)


def _differs(old: dict, new: dict) -> str | None:
    """Why a progress record's run is not the run asked for now (None when it is)."""
    if old.get("format") != PROGRESS_FORMAT or old.get("version") != PROGRESS_VERSION:
        return "its progress record is not one this version writes"
    if old.get("input", {}).get("path") != new["input"]["path"]:
        return f"it read {old.get('input', {}).get('path')}, not {new['input']['path']}"
    if old.get("input") != new["input"]:
        return f"the input {new['input']['path']} changed since (its size or modification time differs)"
    if old.get("engine", {}).get("sha256") != new["engine"]["sha256"]:
        return "it ran another engine (its model file's sha256 differs)"
    for name, value in new["options"].items():
        before = old.get("options", {}).get(name)
        if before != value:
            return f"`{name}` was {before!r} then, {value!r} now"
    return None


def _engine_record(engine) -> dict:
    manifest = getattr(engine, "manifest", None)
    if manifest is None:
        from .engine_dir import read_manifest

        manifest = read_manifest(engine.dir)
    return {"dir": str(Path(engine.dir).resolve()), "sha256": manifest.get("engine", {}).get("sha256")}


def score_file(engine, input, output, *, text_column: str | None = None, second_column: str | None = None,
               id_column: str | None = None, split: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               isolation: str = "shared", sort_window: int | None = None, skip_bad_rows: bool = False,
               truncate: bool = True, resume: bool = False, force: bool = False, pipeline: bool = True,
               progress: bool | None = None, device: str | None = None, tokenizer=None, warn=None,
               flush_rows: int = FLUSH_ROWS) -> ScoreSummary:
    """Classify every row of `input` with `engine` and write `output` (.jsonl, .csv or .parquet): one row per
    input row, in input order, with id, label and p_<label> per class (module docstring), streamed in bounded
    memory whatever the input's size.

    input: a path in one of the forms of the module docstring; text_column / second_column (pair engines) /
    id_column: the columns read (defaults: the engine's task columns, then 'text'; the 0-based row number as id);
    split: for a directory of splits. batch_size, isolation, sort_window, pipeline, tokenizer: as score_rows.
    skip_bad_rows: count and skip bad rows instead of failing at the first. truncate=False: a row longer than
    the engine takes is a bad row. force: replace an existing output, or start over from an interrupted run's
    partial directory. resume: continue an interrupted run (refused in one line when the input, the engine or
    an option differs; without one to continue, start from the first row). device: recorded with the options
    (the engine is already open on it). progress: a tqdm bar with rows/s on stderr (None: when stderr is a
    terminal). warn: receives notices (truncation, nothing to resume). flush_rows: output rows per part file.

    Returns a ScoreSummary. Raises DataError / EngineError (PruMuxError: one line; nothing is left at the output
    or in its partial directory) for a bad input, column, row or engine, and PruMuxError for an output that
    exists (without force), cannot be written, or has an interrupted run (without resume or force). Any other
    exception, KeyboardInterrupt included, keeps the partial directory for resume=True and propagates."""
    from .atomic import check_file_target

    started = time.perf_counter()
    warn = warn or (lambda message: None)
    sort_window = _check_options(isolation, batch_size, sort_window)
    output = Path(output)
    fmt_class = FORMATS.get(output.suffix.lower())
    if fmt_class is None:
        raise DataError(f"{output}: unknown output format {output.suffix or '(no suffix)'!r}; name the output "
                        f"{', '.join(OUTPUT_FORMATS)}")
    check_file_target(output, force)
    source = open_input(input, engine, text_column, second_column, id_column, split)
    tokenizer = tokenizer if tokenizer is not None else _engine_tokenizer(engine)
    record = {"format": PROGRESS_FORMAT, "version": PROGRESS_VERSION, "input": source.fingerprint(),
              "engine": _engine_record(engine),
              "options": {"output_format": output.suffix.lower(), "text_column": source.text_column,
                          "second_column": source.second_column, "id_column": source.id_column, "split": split,
                          "batch_size": int(batch_size), "isolation": isolation, "sort_window": sort_window,
                          "skip_bad_rows": bool(skip_bad_rows), "no_truncate": not truncate, "device": device}}
    saved = _resume_point(output, record, resume, force, warn)
    resumed_at = saved.rows_done
    fmt = fmt_class(engine.labels, source.id_type)
    run = _PartialRun(output, fmt, record, saved, max(1, int(flush_rows)))
    if not saved.rows_done and not saved.parts:
        run.dir.mkdir(parents=True, exist_ok=True)
        run.write_progress()
    windows = _windows(source.rows(saved.rows_done), saved.rows_done, batch_size * max(1, sort_window),
                       source.text_column, source.second_column, source.id_column, skip_bad_rows, source.source)
    bar = _progress_bar(progress, source.total, saved.rows_done)
    try:
        scored = _pipeline(engine, windows, tokenizer, batch_size, isolation, sort_window, truncate,
                           skip_bad_rows, source.source, pipeline)
        with bar, contextlib.closing(scored):
            for window, probabilities in scored:
                before = run.state.rows_done
                run.add(window, probabilities, source.id_column is None)
                bar.update(window.end - before)
        run.flush()
        if not run.state.saved.rows_written:
            skipped = run.state.saved.bad_rows
            raise DataError(f"{source.source}: no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else "")
                            + "; give an input with at least one good row")
        run.finish()
    except PruMuxError:
        shutil.rmtree(run.dir, ignore_errors=True)
        raise
    except BaseException:
        try:
            run.save()
        except Exception:  # noqa: BLE001 - the disk that failed the run may fail this too: keep the last record
            pass
        raise
    saved = run.state.saved
    if saved.truncated:
        warn(f"warning: {saved.truncated} rows are longer than {engine.max_seq_length} tokens and were truncated "
             "(with truncation off they are bad rows instead)")
    return ScoreSummary(output, saved.rows_done, saved.rows_written, saved.bad_rows, saved.truncated, resumed_at,
                        time.perf_counter() - started)


def _engine_tokenizer(engine):
    from .data import load_tokenizer

    return load_tokenizer(engine.dir)


def _resume_point(output: Path, record: dict, resume: bool, force: bool, warn) -> _Saved:
    """Where this run starts: after an interrupted run's saved parts (resume), or at row 0."""
    folder = partial_dir(output)
    if not folder.exists():
        if resume:
            warn(f"nothing to resume for {output} (no {folder.name}); scoring from the first row")
        return _Saved()
    old = read_progress(output)
    if not resume:
        if not force:
            done = f" ({old.get('rows_done', 0)} rows done)" if old else ""
            raise PruMuxError(f"{output}: an interrupted run of it is kept in {folder}{done}; pass `resume` to "
                              "continue it, or `force` to start over")
        shutil.rmtree(folder)
        return _Saved()
    if old is None:
        raise PruMuxError(f"cannot resume {output}: {folder} has no readable progress.json; start over with `force` "
                          "(without `resume`)")
    why = _differs(old, record)
    if why:
        raise PruMuxError(f"cannot resume {output}: {why}; rerun with the interrupted run's input and options, or "
                          "start over with `force` (without `resume`)")
    parts = tuple((str(name), int(rows)) for name, rows in old.get("parts", []))
    lost = [name for name, _ in parts if not (folder / name).is_file()]
    if lost:
        raise PruMuxError(f"cannot resume {output}: {folder / lost[0]} is missing; start over with `force` "
                          "(without `resume`)")
    saved = _Saved(int(old.get("rows_done", 0)), int(old.get("rows_written", 0)), int(old.get("bad_rows", 0)),
                   int(old.get("truncated", 0)), parts)
    listed = {name for name, _ in parts} | {"progress.json"}
    for path in folder.iterdir():
        if path.name not in listed:
            path.unlink()
    return saved


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress_bar(progress: bool | None, total: int | None, initial: int):
    if progress is False:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=" rows", unit_scale=True, file=sys.stderr, desc="scoring",
                disable=None if progress is None else False, mininterval=0.5, dynamic_ncols=True)


# --- scoring in worker processes: Ray Data, Dask, multiprocessing ----------------------------------------------

_OPENED: dict = {}                  # (pid, engine dir, device, runtime, threads, tf32) -> (Engine, tokenizer)
_OPENING = threading.Lock()         # one load at a time in a process: threads of one worker share its engine


def output_columns(labels) -> list[str]:
    """The columns a scored row gains, in order: `label`, then `p_<label>` per class in the engine's label order
    (what `predict --output` writes after `id`)."""
    return ["label", *[f"p_{label}" for label in labels]]


class EngineHandle:
    """An engine directory and how to score with it, to ship to worker processes where an Engine cannot go (an
    ONNX Runtime session does not pickle). It pickles as these settings; in each worker process the engine and
    its tokenizer are opened on first use and kept for every later batch and every handle with the same
    settings (one engine per process, whatever the number of batches or tasks).

        handle = EngineHandle("/abs/engine", isolation="request", batch_size=256, threads=2)
        handle(batch) -> the batch's rows, in order, plus `label` and `p_<label>` per class

    batch: a pandas DataFrame (Dask's map_partitions, Ray's batch_format="pandas"), a dict of columns (Ray
    Data's default: {name: numpy array}) or a pyarrow Table; the result has the same type, the input columns
    unchanged and the new ones appended (float64 probabilities, the label as text). As a class,
    `ds.map_batches(EngineHandle, fn_constructor_args=(engine_dir,), compute=ray.data.ActorPoolStrategy(size=K),
    ...)` gives Ray Data K worker processes with one engine each (README, Past one machine).

    engine_dir: made absolute here, so give it as the workers see it (a shared or copied path). device: "cpu"
    or "cuda" (one GPU per worker: give each worker one, e.g. Ray's num_gpus=1, and the engine runs on the one
    it sees). isolation, batch_size, sort_window, truncate: as score_rows: "request" answers every row exactly
    as classifying it alone, bit for bit, however the rows are split into batches and across workers (equal to
    `predict --isolation request`); in "shared" a row shares its mux group with its neighbours in the batch, so
    answers equal `predict`'s only where the batches start at the same rows (a batch of b rows, handle
    batch_size dividing b, cut at multiples of b from the input's first row). threads: ONNX Runtime's (or
    OpenVINO's) intra-op threads per engine (default: every core, each worker's engine competing for all of
    them; give the cores per worker; not for TensorRT plans). runtime, tf32: as load_engine. text_column /
    second_column: default the engine's task columns, then 'text' (and 'text_pair'), as score_file.

    Raises DataError (one line) for a missing text column, a row without text (its row in the batch), an
    input that already has one of the output columns; EngineError as load_engine and score_rows."""

    def __init__(self, engine_dir, *, device: str = "cpu", isolation: str = "shared",
                 batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None, sort_window: int | None = None,
                 truncate: bool = True, text_column: str | None = None, second_column: str | None = None,
                 runtime: str | None = None, tf32: bool = False):
        _check_options(isolation, batch_size, sort_window)
        if threads is not None and int(threads) < 1:
            raise EngineError(f"`threads` must be at least 1 (or None: every core), got {threads}")
        if device not in ("cpu", "cuda"):
            raise EngineError(f"`device` {device!r}: choose cpu or cuda")
        self.engine_dir = str(Path(engine_dir).resolve())
        self.device, self.isolation, self.batch_size = device, isolation, int(batch_size)
        self.threads = None if threads is None else int(threads)
        self.sort_window, self.truncate = sort_window, bool(truncate)
        self.text_column, self.second_column = text_column, second_column
        self.runtime, self.tf32 = runtime, bool(tf32)

    def __repr__(self) -> str:
        return (f"EngineHandle({self.engine_dir!r}, device={self.device!r}, isolation={self.isolation!r}, "
                f"batch_size={self.batch_size}, threads={self.threads})")

    # --- the engine, once per process -----------------------------------------------------------------------
    def load(self):
        """Open the engine and its tokenizer: (Engine, tokenizer). What `opened` calls once per process."""
        from .data import load_tokenizer
        from .engine import load_engine

        options = {} if self.threads is None else {"threads": self.threads}
        engine = load_engine(self.engine_dir, device=self.device, runtime=self.runtime, tf32=self.tf32, **options)
        return engine, load_tokenizer(engine.dir)

    def opened(self):
        """(Engine, tokenizer) of this process, opened on the first call (a forked child opens its own)."""
        key = (os.getpid(), self.engine_dir, self.device, self.runtime, self.threads, self.tf32)
        found = _OPENED.get(key)
        if found is None:
            with _OPENING:
                found = _OPENED.get(key)
                if found is None:
                    found = _OPENED[key] = self.load()
        return found

    @property
    def engine(self):
        return self.opened()[0]

    # --- scoring ---------------------------------------------------------------------------------------------
    def __call__(self, batch):
        columns, rows, rebuild = _batch_columns(batch)
        engine, tokenizer = self.opened()
        labels = engine.labels
        names = output_columns(labels)
        clash = [name for name in names if name in columns]
        if clash:
            raise DataError(f"the rows already have a column {clash[0]!r}, which scoring adds; drop or rename it "
                            "before scoring (or read only the text columns)")
        text_column, second_column = self._text_columns(engine, list(columns))
        texts = _batch_texts(columns[text_column], text_column)
        seconds = _batch_texts(columns[second_column], second_column) if second_column else None
        probabilities = self.score(texts, seconds, engine, tokenizer)
        best = probabilities.argmax(1)
        added = {"label": np.array([labels[k] for k in best.tolist()], dtype=object)}
        for j, name in enumerate(names[1:]):
            added[name] = np.ascontiguousarray(probabilities[:, j])
        return rebuild(added)

    def score(self, texts: list, seconds: list | None = None, engine=None, tokenizer=None) -> np.ndarray:
        """Probabilities [len(texts), C] (float64, input order) of texts (and their second sentences)."""
        if engine is None:
            engine, tokenizer = self.opened()
        if not texts:
            return np.zeros((0, len(engine.labels)), dtype=np.float64)
        rows = texts if seconds is None else list(zip(texts, seconds))
        parts = [scored.probabilities for scored in
                 score_rows(engine, rows, batch_size=self.batch_size, isolation=self.isolation,
                            sort_window=self.sort_window, truncate=self.truncate, tokenizer=tokenizer,
                            warn=_warning)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _text_columns(self, engine, columns: list[str]) -> tuple[str, str | None]:
        pair = engine.uses_token_types
        if self.second_column is not None and not pair:
            raise DataError("this engine classifies single sentences; drop `second_column`")
        first, second = _engine_columns(engine)
        source = "the batch"
        text = _pick(columns, self.text_column, first, "text_column", source)
        return text, (_pick(columns, self.second_column, second, "second_column", source) if pair else None)


def _warning(message: str) -> None:
    import warnings

    warnings.warn(message.removeprefix("warning: "), stacklevel=3)


def _batch_columns(batch):
    """(columns {name: values}, rows, rebuild): rebuild(added {name: numpy array}) -> the batch's own type with
    the added columns after its own."""
    try:
        import pandas as pd
    except ImportError:  # pandas is optional: dict and pyarrow batches need none
        pd = None
    if pd is not None and isinstance(batch, pd.DataFrame):
        def frame(added):
            out = batch.copy(deep=False)
            for name, values in added.items():
                out[name] = values
            return out

        return {str(c): batch[c] for c in batch.columns}, len(batch), frame
    if isinstance(batch, dict):
        columns = dict(batch)
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise DataError(f"the batch's columns have different lengths ({sorted(sizes)}); give one value per row "
                            "in every column")
        return columns, sizes.pop() if sizes else 0, lambda added: {**columns, **added}
    try:
        import pyarrow as pa
    except ImportError:
        pa = None
    if pa is not None and isinstance(batch, pa.Table):
        def table(added):
            out = batch
            for name, values in added.items():
                out = out.append_column(name, pa.array(values, type=pa.string() if name == "label" else pa.float64()))
            return out

        return {name: batch.column(name) for name in batch.column_names}, batch.num_rows, table
    raise DataError(f"cannot score a {type(batch).__name__}: give a pandas DataFrame, a dict of columns "
                    "({name: values}) or a pyarrow Table")


def _batch_texts(values, column: str) -> list:
    """The column's values as Python objects, each checked to be a text (DataError naming the batch row)."""
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    values = [v if isinstance(v, str) or not _missing_value(v) else None for v in values]
    for index, value in enumerate(values):
        problem = _text_problem(value, column)
        if problem:
            raise DataError(f"row {index + 1} of the batch ({len(values)} rows): {problem}; drop or fix such rows "
                            "before scoring")
    return values


def _missing_value(value) -> bool:
    """None, NaN (pandas' missing value in an object column) or pandas.NA."""
    return value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NAType"
