"""score_file: a file in, a file out, one output row per input row.

Reads with inputs.py, scores with pipeline.py, writes and resumes with outputs.py.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from ..data import unused_split_warning
from ..errors import DataError, PruMuxError
from .inputs import open_input
from .outputs import (FORMATS, OUTPUT_FORMATS, PROGRESS_FORMAT, PROGRESS_VERSION, _differs, _engine_record,
                      _PartialRun, _Saved, partial_dir, read_progress)
from .pipeline import DEFAULT_BATCH_SIZE, ScoreSummary, _check_options, _pipeline, _windows

FLUSH_ROWS = 16384         # output rows held before they are written as one part file


def score_file(engine, input, output, *, text_column: str | None = None, second_column: str | None = None,
               id_column: str | None = None, split: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               isolation: str = "shared", sort_window: int | None = None, skip_bad_rows: bool = False,
               truncate: bool = True, resume: bool = False, force: bool = False, pipeline: bool = True,
               progress: bool | None = None, device: str | None = None, tokenizer=None, warn=None,
               flush_rows: int = FLUSH_ROWS) -> ScoreSummary:
    """Classify every row of `input` with `engine` and write `output` (.jsonl, .csv or .parquet): one row per
    input row, in input order, with id, label and p_<label> per class (outputs.py), streamed in bounded
    memory whatever the input's size.

    input: a path in one of the forms inputs.py lists; text_column / second_column (pair engines) /
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
    from ..atomic import check_file_target

    started = time.perf_counter()
    warn = warn or (lambda message: None)
    sort_window = _check_options(isolation, batch_size, sort_window)
    output = Path(output)
    fmt_class = FORMATS.get(output.suffix.lower())
    if fmt_class is None:
        raise DataError(f"{output}: unknown output format {output.suffix or '(no suffix)'!r}; name the output "
                        f"{', '.join(OUTPUT_FORMATS)}")
    check_file_target(output, force)
    if Path(input).exists() and output.exists() and output.samefile(input):
        raise DataError(f"{output}: the output is the input file, which writing the scores would destroy; write "
                        "them to another file")
    split_warning = unused_split_warning(input, split)
    if split_warning:
        warn(split_warning)
    source = open_input(input, engine, text_column, second_column, id_column, split)
    if source.unread_pair_column:
        warn(f"warning: {source.source} has a second-text column `{source.unread_pair_column}`, and this engine "
             f"classifies single sentences: only `{source.text_column}` is scored; use a sentence-pair engine for "
             "pairs")
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
             "(--no-truncate, or truncate=False, makes them bad rows instead)")
    return ScoreSummary(output, saved.rows_done, saved.rows_written, saved.bad_rows, saved.truncated, resumed_at,
                        time.perf_counter() - started)


def _engine_tokenizer(engine):
    from ..data import load_tokenizer

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


