"""`prumux-deploy predict`: classify texts, or score a file, with an engine (the work is in engine.classify and
scoring.score_file)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ..documents import dumps
from ..errors import PruMuxError
from ..options import force_option

# options that only the file form (--input) takes: name -> the value that means "not given"
_FILE_ONLY = {"output": None, "text_column": None, "second_column": None, "id_column": None, "split": None,
              "batch_size": None, "sort_window": None, "skip_bad_rows": False, "resume": False, "progress": None}
# options that only the TEXTS form takes: name -> (the value that means "not given", what --input does instead)
_TEXTS_ONLY = {"second": ((), "name the second column with `second_column`"),
               "as_json": (False, "the output's suffix chooses its form"),
               "ids_out": (None, "token ids are not written")}


@click.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--second", multiple=True, help="Second sentence for pair tasks, once per TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--no-truncate", is_flag=True,
              help="Refuse texts longer than the engine's maximum length (with --input: they are bad rows).")
@click.option("--ids-out", type=click.Path(path_type=Path), default=None,
              help="Also write the token ids (one padded row per line) for examples/cpp/prumux_infer.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Score a file instead of TEXTS: .txt (one text per line), .tsv, .csv, .jsonl, .parquet, a directory "
                   "of split files or a save_to_disk directory; streamed in bounded memory. Needs --output.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Where --input's scores go: .jsonl, .csv or .parquet, one row per input row in input order with "
                   "columns id, label and p_<label> per class. Written beside it and renamed into place when complete.")
@click.option("--text-column", default=None,
              help="--input's text column (default: the engine's task column, e.g. 'sentence' for SST-2, else 'text').")
@click.option("--second-column", default=None, help="--input's second-text column, for pair engines.")
@click.option("--id-column", default=None,
              help="--input's column written as each row's id (default: the 0-based row number).")
@click.option("--split", default=None,
              help="Which split of a save_to_disk or split-file directory (default: its only one, else test).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Rows per engine call with --input  [default: 256]")
@click.option("--sort-window", type=click.IntRange(min=0), default=None,
              help="With --input: sort rows by token length within windows of this many batches, less padding, "
                   "output order unchanged; 0: off. Default 8 with --isolation request (answers unchanged), 0 with "
                   "shared, where sorting changes which rows share a mux group.")
@click.option("--skip-bad-rows", is_flag=True,
              help="With --input: count and skip rows with no, empty or non-text values instead of failing.")
@click.option("--resume", is_flag=True,
              help="With --input: continue an interrupted run of --output where it stopped (same input and options).")
@click.option("--progress/--no-progress", default=None,
              help="With --input: a progress bar with rows/s on stderr  [default: when stderr is a terminal]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the engine runs.")
@click.option("--isolation", type=click.Choice(["shared", "request"]), default="shared", show_default=True,
              help="shared: the TEXTS of this call (with --input: the rows of a batch) share mux groups (N at a time), "
                   "so a text's answer can change with its neighbours; request: each text is a request of its own, "
                   "answered exactly as if it were given alone (up to N times the compute).")
@force_option("--ids-out or --output if it exists (with --input: also start over from an interrupted run)")
@click.pass_context
def predict(ctx, engine_dir, texts, second, as_json, no_truncate, ids_out, input_path, output, text_column,
            second_column, id_column, split, batch_size, sort_window, skip_bad_rows, resume, progress, device,
            isolation, force):
    """Classify TEXTS with an engine and print each label with its probability, or score a file:
    `predict ENGINE --input rows.tsv --output scores.jsonl`.

    By default the texts of one call form one request and share mux groups; --isolation request answers
    each text independently of the others."""
    given = dict(output=output, text_column=text_column, second_column=second_column, id_column=id_column,
                 split=split, batch_size=batch_size, sort_window=sort_window, skip_bad_rows=skip_bad_rows,
                 resume=resume, progress=progress, second=second, as_json=as_json, ids_out=ids_out)
    if input_path is not None:
        if texts:
            raise PruMuxError("give TEXTS or `input_path`, not both")
        if output is None:
            raise PruMuxError("`input_path` needs `output`: the .jsonl, .csv or .parquet file to write")
        extra = [(name, instead) for name, (unset, instead) in _TEXTS_ONLY.items() if given[name] != unset]
        if extra:
            raise PruMuxError(f"`{extra[0][0]}` applies to TEXTS; with `input_path` {extra[0][1]}")
        return _score_file(ctx, engine_dir, input_path, output, text_column, second_column, id_column, split,
                           batch_size, sort_window, skip_bad_rows, resume, progress, device, isolation, no_truncate,
                           force)
    if not texts and output is not None:
        raise PruMuxError("`output` needs `input_path`: the file of texts to score")
    if not texts:
        raise PruMuxError("nothing to classify: give TEXTS, or a file with `input_path` and `output`")
    extra = [name for name, unset in _FILE_ONLY.items() if given[name] != unset]
    if extra:
        raise PruMuxError(f"`{extra[0]}` applies to `input_path` (scoring a file); drop it to classify TEXTS")
    _classify_texts(engine_dir, texts, second, as_json, no_truncate, ids_out, device, isolation, force)


def _warn(message: str) -> None:
    click.echo(message if message.startswith("warning:") else f"warning: {message}", err=True)


def _classify_texts(engine_dir, texts, second, as_json, no_truncate, ids_out, device, isolation, force):
    from ..atomic import check_file_target, write_file
    from ..engine import classify, load_engine

    if ids_out:
        check_file_target(ids_out, force)
    engine = load_engine(engine_dir, device=device, warn=_warn)
    result = classify(engine, list(texts), list(second), truncate=not no_truncate,
                      warn=lambda msg: click.echo(msg, err=True), isolation=isolation)
    if ids_out:
        write_file(ids_out, "".join(" ".join(map(str, row)) + "\n" for row in result.feeds["input_ids"]), force)
    for text, p, (label, score) in zip(texts, result.probabilities, result.best()):
        if as_json:
            click.echo(dumps({"text": text, "label": label, "score": score,
                              "scores": {name: float(q) for name, q in zip(result.labels, p)}}))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            click.echo(f"{label:<14} {score:.3f}  {shown}")


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a batch system's time limit) stops a file run as Ctrl-C does: its finished rows are kept for
    --resume."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _score_file(ctx, engine_dir, input_path, output, text_column, second_column, id_column, split, batch_size,
                sort_window, skip_bad_rows, resume, progress, device, isolation, no_truncate, force):
    from ..atomic import check_file_target
    from ..engine import load_engine
    from ..scoring import DEFAULT_BATCH_SIZE, partial_dir, read_progress, score_file

    check_file_target(output, force)  # before the engine or the input is read
    engine = load_engine(engine_dir, device=device, warn=_warn)
    try:
        with _terminate_as_interrupt():
            summary = score_file(engine, input_path, output, text_column=text_column, second_column=second_column,
                                 id_column=id_column, split=split, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                 isolation=isolation, sort_window=sort_window, skip_bad_rows=skip_bad_rows,
                                 truncate=not no_truncate, resume=resume, force=force, progress=progress,
                                 device=device, warn=_warn)
    except KeyboardInterrupt:
        record = read_progress(output) or {}
        click.echo(f"interrupted: {output} was not written; {record.get('rows_done', 0)} input rows are done and kept "
                   f"in {partial_dir(output)}: rerun with --resume to continue", err=True)
        ctx.exit(130)
    rate = (summary.rows_read - summary.resumed_at) / max(summary.seconds, 1e-9)
    notes = [f"{summary.bad_rows} bad rows skipped"] if skip_bad_rows else []
    if summary.resumed_at:
        notes.append(f"resumed after input row {summary.resumed_at}")
    click.echo(f"wrote {output}: {summary.rows_written} row{'' if summary.rows_written == 1 else 's'} in {summary.seconds:.1f} s ({rate:,.0f} rows/s)"
               + "".join(f"; {note}" for note in notes))
