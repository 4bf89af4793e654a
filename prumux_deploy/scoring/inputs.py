"""Reading score_file's inputs: every form `--data` reads, streamed.

Inputs (score_file): every form `--data` reads, as a file: `.tsv` (tab-separated, no quoting, as GLUE writes it),
`.csv`, `.jsonl` / `.json` (JSON Lines: one object per line), `.parquet`, a `datasets` save_to_disk directory, a
directory of split files (test.csv, ...; `split`); and `.txt`, one text per line. Every one is streamed: text
files line by line, parquet by record batches (pyarrow iter_batches), save_to_disk datasets (memory-mapped Arrow)
a window at a time. The text column defaults to the engine's task column ('sentence' for SST-2; a custom task's
recorded column) or else 'text'. A row's id is its `id_column` value, or its 0-based row number.

"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


from ..errors import DataError, first_line
from .pipeline import MISSING, _BadRow

INPUT_FILES = {".txt": "txt", ".tsv": "csv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
INPUT_FORMS = ("a .txt file (one text per line), a .tsv / .csv / .jsonl / .parquet file, a directory of split files "
               "(test.csv, ...) or a save_to_disk directory")


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
    unread_pair_column: str | None = None  # a second-text column a single-sentence engine does not read

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
                    yield _BadRow(f"not valid JSON ({first_line(e, 80)})")
                    continue
                if not isinstance(row, dict):
                    yield _BadRow(f"not a JSON object ({type(row).__name__})")
                    continue
                yield tuple(MISSING if c is None else row.get(c, MISSING) for c in wanted)

    def _rows_csv(self, start):
        with open(self.file, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, strict=True, **self.delimiter_options)  # strict: a quote never closed is an error
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
                if "unexpected end of data" in str(e):  # not one field swallowing every line after its quote
                    raise DataError(f"{self.source}: the file ends inside a quoted field (a \" is opened and never "
                                    "closed); close the quote, or double a quote that is part of the text "
                                    "(\"\")") from None
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
    from ..data import CUSTOM, TASKS

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
    headerless = ("; the first line is read as the header: add a header line, or give one text per line in a .txt "
                  "file") if source.endswith((".csv", ".tsv")) else ""  # (a file without one shows its first row)
    raise DataError(f"{source}: no column {candidates[0]!r} (columns: {', '.join(map(str, columns))}); name the "
                    f"right one with `{flag}`{headerless}")


def _jsonl_columns(file: Path) -> list[str]:
    """The keys of the first JSON object in a JSON Lines file (what the columns are checked against)."""
    undecodable, first_broken = False, None  # first_broken: (line number, why) of the first line that is not JSON
    with open(file, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith(b"["):
                raise DataError(f"{file}: a JSON array; write it as JSON Lines (one object per line, .jsonl)")
            try:
                row = json.loads(line)
            except ValueError as e:
                undecodable = undecodable or isinstance(e, UnicodeDecodeError)
                first_broken = first_broken or (number, getattr(e, "msg", str(e)))
                continue
            if isinstance(row, dict):
                return list(row)
    if undecodable:  # e.g. a Latin-1 file: that is the problem, not a missing object
        from ..data import first_undecodable_line

        raise DataError(first_undecodable_line(file) or f"{file}: not valid UTF-8; re-save the file as UTF-8")
    if first_broken:
        raise DataError(f"{file}:{first_broken[0]}: not valid JSON ({first_broken[1]}), and no line before it holds "
                        "an object; JSON Lines hold one object per line")
    raise DataError(f"{file}: no JSON object in it; JSON Lines hold one object per line")


def open_input(path, engine, text_column: str | None = None, second_column: str | None = None,
               id_column: str | None = None, split: str | None = None) -> InputFile:
    """Open `path` (module docstring: the input forms) for scoring with `engine`: its form, and the columns
    read, checked against the ones it has. split: which split of a save_to_disk DatasetDict or a directory of
    split files (default: its only split, else 'test'). Raises DataError (one line: the input, the problem, the
    fix) for a missing or empty input, an unknown format, a missing column, a .txt input to a pair engine."""
    from ..data import _check_header, _data_files, _reader_options

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
                            f"{first_line(e, 160)}); check the file") from None
        schema = parquet.schema_arrow
        columns, total = list(schema.names), parquet.metadata.num_rows
        if id_column in columns:
            id_type = schema.field(id_column).type
    text = _pick(columns, text_column, text_candidates, "text_column", source)
    second = _pick(columns, second_column, second_candidates, "second_column", source) if pair else None
    ident = _pick(columns, id_column, [id_column], "id_column", source) if id_column is not None else None
    return InputFile(path, source, kind, path, text, second, ident, total, id_type, delimiter_options=options,
                     unread_pair_column=_unread_pair_column(columns, text, pair))


def _choose_split(available, split: str | None, where: str) -> str:
    from ..data import _pick_split

    available = list(available)
    if split is None and len(available) == 1:
        return available[0]
    return _pick_split(available, split or "test", where)


def _open_dataset(path: Path, engine, text_column, second_column, id_column, split) -> InputFile:
    import datasets

    from ..data import _quiet_datasets

    _quiet_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot be read as a save_to_disk dataset ({type(e).__name__}: "
                        f"{first_line(e, 160)}); check the directory") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[_choose_split(ds.keys(), split, str(path))]
    text_candidates, second_candidates = _engine_columns(engine)
    source, columns = str(path), list(ds.column_names)
    text = _pick(columns, text_column, text_candidates, "text_column", source)
    second = _pick(columns, second_column, second_candidates, "second_column", source) if engine.uses_token_types \
        else None
    ident = _pick(columns, id_column, [id_column], "id_column", source) if id_column is not None else None
    id_type = ds.data.schema.field(ident).type if ident else None
    return InputFile(path, source, "dataset", None, text, second, ident, len(ds), id_type, dataset=ds,
                     unread_pair_column=_unread_pair_column(columns, text, engine.uses_token_types))


# Second-text columns of the pair tasks (GLUE's, and transformers' text_pair) that are never a single-sentence
# task's text: an input that has one next to a single-sentence engine is probably meant for a pair engine.
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis")


def _unread_pair_column(columns: list[str], text: str | None, pair: bool) -> str | None:
    return None if pair else next((c for c in PAIR_COLUMNS if c in columns and c != text), None)


