"""Auto-PruMUX measurements: the measurement CSV (read and checked, written) and its rows collected from the
files `prumux-deploy validate --report` and `bench --json` write. The columns are described in the package
docstring (prumux_deploy/auto/__init__.py).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_file
from ..documents import read_bench_result, read_json_object
from ..errors import PruMuxError

COLUMNS = ("task", "N", "sparsity", "accuracy", "throughput")
OPTIONAL_COLUMNS = ("flip_rate",)


@dataclass(frozen=True)
class Measurement:
    """One trained and measured configuration (one CSV row)."""

    task: str
    N: int
    sparsity: float
    accuracy: float | None  # None: a throughput-only row (a speed measurement of an untrained structure)
    throughput: float | None = None
    line: int | None = None  # CSV line, for error messages
    flip_rate: float | None = None  # percent of rows whose label changes with the partner (validate --partners)


# ---------------------------------------------------------------------------------------------- reading


def _number(path, line, column, text, *, integer=False):
    try:
        value = float(text)
    except ValueError:
        raise PruMuxError(f"{path}:{line}: column '{column}' must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise PruMuxError(f"{path}:{line}: column '{column}' must be finite, got {text!r}")
    if integer:
        if not value.is_integer():
            raise PruMuxError(f"{path}:{line}: column '{column}' must be a whole number, got {text!r}")
        return int(value)
    return value


def read_measurements(path: str | os.PathLike) -> list[Measurement]:
    """Read and check the measurement CSV; every problem is one PruMuxError naming the file and line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _parse(path, csv.reader(f))
    except FileNotFoundError:
        raise PruMuxError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PruMuxError(f"{path}: is a directory, expected a CSV file") from None
    except UnicodeDecodeError:
        raise PruMuxError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as e:
        raise PruMuxError(f"{path}: not a readable CSV ({e})") from None


def _parse(path, reader) -> list[Measurement]:
    header = next(reader, None)
    if not header:
        raise PruMuxError(f"{path}: empty file, expected a header {','.join(COLUMNS)}")
    names = [h.strip() for h in header]
    for column in COLUMNS:
        if column not in names:
            raise PruMuxError(f"{path}:1: missing column '{column}' (the header needs {','.join(COLUMNS)})")
    index = {c: names.index(c) for c in COLUMNS}
    rows, seen = [], {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(names):
            raise PruMuxError(f"{path}:{line}: expected {len(names)} fields like the header, got {len(cells)}")
        get = {c: cells[i].strip() for c, i in index.items()}
        task = get["task"]
        if not task:
            raise PruMuxError(f"{path}:{line}: column 'task' is empty")
        n = _number(path, line, "N", get["N"], integer=True)
        s = _number(path, line, "sparsity", get["sparsity"])
        acc = _number(path, line, "accuracy", get["accuracy"]) if get["accuracy"] else None
        tp = _number(path, line, "throughput", get["throughput"]) if get["throughput"] else None
        if acc is None and tp is None:
            raise PruMuxError(f"{path}:{line}: accuracy and throughput are both empty; give at least one")
        if n < 1:
            raise PruMuxError(f"{path}:{line}: N must be >= 1, got {n}")
        if not 0 <= s < 1:
            raise PruMuxError(f"{path}:{line}: sparsity must be a fraction in [0, 1), got {get['sparsity']}")
        if acc is not None and not 0 <= acc <= 100:
            raise PruMuxError(f"{path}:{line}: accuracy must be in percent (0..100), got {get['accuracy']}")
        if tp is not None and tp <= 0:
            raise PruMuxError(f"{path}:{line}: throughput (speedup) must be > 0, got {get['throughput']}")
        key = (task, n, round(s, 9))
        if key in seen:
            raise PruMuxError(f"{path}:{line}: duplicate row for task {task}, N={n}, sparsity={s:g} "
                              f"(first on line {seen[key]})")
        seen[key] = line
        flips = cells[names.index("flip_rate")].strip() if "flip_rate" in names else ""
        flip_rate = _number(path, line, "flip_rate", flips) if flips else None
        if flip_rate is not None and not 0 <= flip_rate <= 100:
            raise PruMuxError(f"{path}:{line}: flip_rate must be in percent (0..100), got {flips}")
        rows.append(Measurement(task, n, s, acc, tp, line, flip_rate))
    if not rows:
        raise PruMuxError(f"{path}: no measurements after the header")
    # a budget is in accuracy points, so fractions (0.91 for 91%) would make every budget huge
    accuracies = [r.accuracy for r in rows if r.accuracy is not None]
    if accuracies and all(a <= 1 for a in accuracies):
        raise PruMuxError(f"{path}: every accuracy is <= 1; give accuracy in percent (91.2, not 0.912)")
    return rows


# ------------------------------------------------------------------------------------------- collecting

def collect_measurements(reports, bench=None, backend: str = "onnxruntime-opt",
                         sparsity_decimals: int = 2) -> list[Measurement]:
    """The measurement rows of trained checkpoints, from the files `prumux-deploy` writes about them.

    reports: paths of `validate --report` files, one per trained (N, s) point: the row's task, N and accuracy
    (the engine's, in percent). Sparsity is measured on the report's checkpoint (structure.inspect_path:
    removed share of the prunable encoder parameters), rounded to `sparsity_decimals` (the prune stage meets
    its target to within rounding, so s=0.6 models share one column of the grid). bench: path of a
    `bench --checkpoint ... --json` file; a row's throughput is the speedup over BERT-base of its checkpoint's
    `backend` row there (matched by path), empty when bench is None or has no such row. flip_rate: the
    report's partner flip rate in percent where it was run with --partners, else empty.
    Raises PruMuxError for unreadable files, a report that is not a validate report, two reports of the same
    (task, N, s), or a backend the bench file did not time."""
    from ..structure import inspect_path

    speedups = {}
    if bench is not None:
        rows = read_bench_result(bench)["rows"]
        timed = [r for r in rows if r.get("backend") == backend]
        if not timed:
            found = sorted({str(r.get("backend")) for r in rows})
            raise PruMuxError(f"{bench}: no {backend} rows (it timed {', '.join(found) or 'nothing'}); "
                              "choose one of those as `backend`")
        speedups = {Path(r["name"]).resolve(): r["speedup"] for r in timed}  # checkpoint rows: name = path
    measured, seen = [], {}
    for path in reports:
        report = read_json_object(path, "a --report file of `prumux-deploy validate`")
        try:
            checkpoint, task, N = report["checkpoint"], report["task"], int(report["num_instances"])
            accuracy = 100 * float(report["metrics"]["engine_accuracy"])
        except (KeyError, TypeError, ValueError):
            raise PruMuxError(f"{path}: not a validate report (needs checkpoint, task, num_instances and "
                              "metrics.engine_accuracy); write one with `prumux-deploy validate --report`") from None
        _, structure = inspect_path(checkpoint)
        sparsity = round(structure["sparsity"], sparsity_decimals)
        key = (task, N, sparsity)
        if key in seen:
            raise PruMuxError(f"{path}: task {task}, N={N}, sparsity {sparsity:g} again (also {seen[key]}); "
                              "give one report per trained point")
        seen[key] = path
        throughput = speedups.get(Path(checkpoint).resolve())
        partners = report.get("partners")
        flip_rate = 100 * float(partners["partner_flip_rate"]) if isinstance(partners, dict) else None
        measured.append(Measurement(task, N, sparsity, accuracy, throughput, flip_rate=flip_rate))
    return sorted(measured, key=lambda m: (m.task, m.N, m.sparsity))


def write_measurements(rows: list[Measurement], path, force: bool = False) -> Path:
    """Write rows as the measurement CSV (COLUMNS and flip_rate; empty cells for missing values), atomically."""
    import io

    def cell(value):
        return "" if value is None else f"{value:.6g}" if isinstance(value, float) else value

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # quotes a task name that holds a comma
    writer.writerow(COLUMNS + OPTIONAL_COLUMNS)
    writer.writerows([cell(getattr(r, c)) for c in COLUMNS + OPTIONAL_COLUMNS] for r in rows)
    return write_file(path, text.getvalue(), force)
