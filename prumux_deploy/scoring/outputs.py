"""Writing score_file's outputs, and the partial directory an interrupted run resumes from.

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

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .pipeline import _Window

OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
PROGRESS_FORMAT = "prumux-predict-progress"
PROGRESS_VERSION = 1


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
        from ..atomic import atomic_file

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
        from ..engine_dir import read_manifest

        manifest = read_manifest(engine.dir)
    return {"dir": str(Path(engine.dir).resolve()), "sha256": manifest.get("engine", {}).get("sha256")}

