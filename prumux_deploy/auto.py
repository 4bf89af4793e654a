"""Auto-PruMUX: predict accuracy and speedup of (N, s) configurations and pick the fastest within a budget.

PruMUX (arXiv 2305.14706) has two knobs, the multiplexing width N and the pruning sparsity s. Training
every combination is expensive, so Auto-PruMUX fits two cheap models on the configurations that were
trained and measured, and searches the rest:

accuracy, f_A(task, N, s)
    Piecewise bilinear interpolation over the task's measured grid (the sorted unique N values and the
    sorted unique sparsities of that task), in the coordinates log N and s. It is exact at measured points
    and bilinear in those coordinates inside each cell. Why log N: accuracy falls most from N=1 to N=2 and
    less with each further instance, so a straight line in log N (the speedup model's coordinate, below)
    follows it where one in N overshoots; on the trained SST-2 grid (docs/results.md) leave-one-out puts
    11 of 15 points within 1.5 with log N against 8 with N. log 1/(1-s) for s did not help there.

    * Missing cells (a grid point that was not measured) are filled before interpolating, from the
      measured cells of the same N row and the same s column only. Each of the two lines gives one
      estimate: (1) linear interpolation between the nearest measured cells on both sides; else
      (2) linear extrapolation from the two nearest measured cells on one side, but only up to one
      step (their spacing, in log N or s) beyond them; else (3) the nearest measured value.
      The estimates of the best kind available are averaged ((1) beats (2) beats (3)) and clipped to
      [0, 100]. A surface that is bilinear in (log N, s) is reproduced exactly by (1) and (2),
      so leaving one point of such a surface out (leave-one-out CV) costs nothing unless the hole sits
      more than one step beyond the measured points in both directions; (3) keeps sparse or scattered
      measurements from running away.
    * Outside the grid the query is clamped to the grid's edge: N above the largest measured N gets the
      accuracy at the largest N (same for s, and below the smallest). This is optimistic when accuracy
      falls with N and s, so `AutoModel.rank` only considers default candidates inside each task's
      measured range (explicit candidates outside it are marked as extrapolated).
    * Baseline accuracy of a task: its accuracy at N=1, s=0 when measured, else the best accuracy
      measured for it (the most conservative reading of "no accuracy loss").

speedup, f_T(N, s)
    Throughput is a property of the architecture, not of the task, so (like the paper, which fits on
    QQP) one task's measured speedups are fitted and used for every task. The form is

        log(speedup) = a + b*log(N) + c*log(1/(1-s)) + d*log(N)*log(1/(1-s))

    by least squares in log space. Multiplexing ideally gives speedup N and pruning a fraction s of the
    FLOPs ideally gives 1/(1-s), so b and c are the "efficiency exponents" of each knob (1 = ideal) and d
    captures how they interact (mux/demux overhead weighs more once the encoder is small). Errors are
    relative, which is what least squares in log space minimises. With too few points (or points that
    do not vary in N or in s) terms are dropped from the right, keeping only terms the data determines.
    The model is parametric and is evaluated anywhere, extrapolating beyond the measured range.

objective
    speedup * 1[predicted accuracy >= baseline - budget]; `AutoModel.rank` returns the best candidates.

The measurement CSV has columns task,N,sparsity,accuracy,throughput (extra columns are ignored):
accuracy in percent, sparsity as a fraction in [0, 1), throughput = speedup over BERT-base (empty where
not measured). An optional flip_rate column carries partner sensitivity (`validate --partners`: percent of
rows whose label changes with their mux partner), so a choice of (N, s) shows stability beside accuracy
and speed; the models here do not use it.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_file, check_file_target, write_file
from .documents import dumps, read_bench_result, read_json_object, read_versioned_json
from .errors import PruMuxError

COLUMNS = ("task", "N", "sparsity", "accuracy", "throughput")
OPTIONAL_COLUMNS = ("flip_rate",)
MODEL_FORMAT = "prumux-auto-model"
MODEL_VERSION = 1
DEFAULT_N = (1, 2, 3, 4, 5, 6, 8, 10)
DEFAULT_S = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SPEEDUP_TERMS = ("1", "log N", "log 1/(1-s)", "log N * log 1/(1-s)")
METHODS = ("PruMUX", "CoFi", "DataMUX")  # the paper's Figure 3 compares these three
ACCURACY_TOLERANCE = 1.5   # M_A: |predicted - measured| accuracy within 1.5 points (paper, Table 1)
SPEEDUP_TOLERANCE = 0.2    # M_T: predicted speedup within 20% of the measured one
_EPS = 1e-9                # float slack for "accuracy >= threshold" and for matching sparsities


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


@dataclass(frozen=True)
class Candidate:
    """A ranked configuration with its predictions."""

    N: int
    sparsity: float
    accuracy: float
    speedup: float
    trained: bool        # measured for this task (the accuracy is then the measured one)
    extrapolated: bool   # outside the task's measured range (the accuracy is a clamped guess)


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
    from .structure import inspect_path

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


# --------------------------------------------------------------------------------------- accuracy model


def _coordinates(N, s):
    """(log N, s): the accuracy surface is bilinear in these (see the module docstring for why log N)."""
    return np.log(np.asarray(N, dtype=float)), np.asarray(s, dtype=float)


def _locate(grid: np.ndarray, v: np.ndarray):
    """Cell index and position in it for each value of v (already clamped into the grid)."""
    if len(grid) == 1:
        zero = np.zeros(v.shape, dtype=int)
        return zero, zero, np.zeros(v.shape)
    i = np.clip(np.searchsorted(grid, v, side="right") - 1, 0, len(grid) - 2)
    return i, i + 1, (v - grid[i]) / (grid[i + 1] - grid[i])


def _fill_one(values: np.ndarray, xs, ys, i: int, j: int) -> float:
    """Estimate the missing cell (i, j) from the measured cells of its column (along x) and row (along y).

    Each axis gives one estimate with a rank: 0 interpolated between the nearest measured cells on both
    sides, 1 extrapolated linearly from the two nearest on one side, at most their spacing away,
    2 the nearest measured value. The best-ranked estimates are averaged.
    """
    estimates = []
    for grid, line, k in ((xs, values[:, j], i), (ys, values[i, :], j)):
        have = np.flatnonzero(~np.isnan(line))  # never empty: every grid row and column holds a measurement
        below, above = have[have < k], have[have > k]
        if len(below) and len(above):
            a, b, rank = below[-1], above[0], 0
        else:
            side = below[::-1] if len(below) else above  # nearest first
            a, b = side[0], (side[1] if len(side) > 1 else None)
            # a straight line is trusted one step beyond the points that define it; further out a
            # trend from two close points (or noise between them) would run away, so hold the value
            rank = 1 if b is not None and abs(grid[k] - grid[a]) <= abs(grid[a] - grid[b]) + _EPS else 2
        if rank == 2:
            estimates.append((2, line[a]))
        else:
            t = (grid[k] - grid[a]) / (grid[b] - grid[a])
            estimates.append((rank, (1 - t) * line[a] + t * line[b]))
    best = min(r for r, _ in estimates)
    return float(np.clip(np.mean([v for r, v in estimates if r == best]), 0.0, 100.0))


@dataclass(eq=False)
class AccuracySurface:
    """f_A for one task: piecewise bilinear in (log N, s) over its grid, holes filled, clamped outside."""

    points: list[tuple[int, float, float]]  # (N, s, accuracy), the measured configurations
    Ns: np.ndarray = field(init=False, repr=False)
    ss: np.ndarray = field(init=False, repr=False)
    grid: np.ndarray = field(init=False, repr=False)      # filled, [len(Ns), len(ss)]
    measured: np.ndarray = field(init=False, repr=False)  # bool mask of measured cells

    def __post_init__(self):
        if not self.points:
            raise PruMuxError("an accuracy surface needs at least one measured point")
        self.points = sorted((int(n), float(s), float(a)) for n, s, a in self.points)
        keys = [(n, round(s, 9)) for n, s, _ in self.points]
        if len(set(keys)) != len(keys):
            raise PruMuxError("an accuracy surface got two values for the same (N, sparsity)")
        self.Ns = np.unique([float(p[0]) for p in self.points])
        self.ss = np.unique([p[1] for p in self.points])
        raw = np.full((len(self.Ns), len(self.ss)), np.nan)
        for n, s, a in self.points:
            raw[np.searchsorted(self.Ns, n), np.searchsorted(self.ss, s)] = a
        self.measured = ~np.isnan(raw)
        self.grid = raw.copy()
        for i, j in zip(*np.nonzero(~self.measured)):
            self.grid[i, j] = _fill_one(raw, *_coordinates(self.Ns, self.ss), i, j)  # from measured cells only

    @property
    def baseline(self) -> float:
        for n, s, a in self.points:
            if n == 1 and s == 0:
                return a
        return max(a for _, _, a in self.points)

    def contains(self, N, s) -> bool:
        return bool(self.Ns[0] - _EPS <= N <= self.Ns[-1] + _EPS and self.ss[0] - _EPS <= s <= self.ss[-1] + _EPS)

    def __call__(self, N, s):
        n = np.clip(np.asarray(N, dtype=float), self.Ns[0], self.Ns[-1])
        s = np.clip(np.asarray(s, dtype=float), self.ss[0], self.ss[-1])
        n, s = np.broadcast_arrays(n, s)
        (x_grid, y_grid), (x, y) = _coordinates(self.Ns, self.ss), _coordinates(n, s)
        i0, i1, tn = _locate(x_grid, x)
        j0, j1, ts = _locate(y_grid, y)
        g = self.grid
        out = ((1 - tn) * (1 - ts) * g[i0, j0] + tn * (1 - ts) * g[i1, j0]
               + (1 - tn) * ts * g[i0, j1] + tn * ts * g[i1, j1])
        return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------- speedup model


def _design(N, s) -> np.ndarray:
    log_n = np.log(np.asarray(N, dtype=float))
    log_p = -np.log1p(-np.asarray(s, dtype=float))  # log 1/(1-s)
    log_n, log_p = np.broadcast_arrays(log_n, log_p)
    return np.stack([np.ones_like(log_n), log_n, log_p, log_n * log_p], axis=-1)


@dataclass
class SpeedupModel:
    """f_T: log(speedup) linear in [1, log N, log 1/(1-s), their product]; unused terms have coefficient 0."""

    coef: list[float]
    terms: list[str]
    task: str
    points: list[tuple[int, float, float]]  # (N, s, speedup) it was fitted on
    rmse_log: float = 0.0

    @classmethod
    def fit(cls, points, task: str) -> "SpeedupModel":
        if not points:
            raise PruMuxError(f"task {task} has no throughput measurements to fit the speedup model on")
        points = sorted((int(n), float(s), float(t)) for n, s, t in points)
        X = _design([p[0] for p in points], [p[1] for p in points])
        y = np.log([p[2] for p in points])
        # take terms in order while each adds information; never more terms than points
        used = []
        for k in range(len(SPEEDUP_TERMS)):
            if len(used) == len(points):
                break
            if np.linalg.matrix_rank(X[:, used + [k]]) > len(used):
                used.append(k)
        beta = np.linalg.lstsq(X[:, used], y, rcond=None)[0]
        coef = np.zeros(len(SPEEDUP_TERMS))
        coef[used] = beta
        rmse = float(np.sqrt(np.mean((X @ coef - y) ** 2)))
        return cls([float(c) for c in coef], [SPEEDUP_TERMS[k] for k in used], task, points, rmse)

    def __call__(self, N, s):
        out = np.exp(_design(N, s) @ np.asarray(self.coef))
        return float(out) if out.ndim == 0 else out


# -------------------------------------------------------------------------------------------- the model


def _fastest_first(c: Candidate):
    """Rank key: highest predicted speedup, then highest predicted accuracy, then smaller N and s."""
    return (-c.speedup, -c.accuracy, c.N, c.sparsity)


def _check_query(N, s):
    if np.any(np.asarray(N) < 1):
        raise PruMuxError(f"N must be >= 1, got {N}")
    if np.any(np.asarray(s) < 0) or np.any(np.asarray(s) >= 1):
        raise PruMuxError(f"sparsity must be in [0, 1), got {s}")


@dataclass
class AutoModel:
    """Per-task accuracy surfaces plus one shared speedup model."""

    accuracy: dict[str, AccuracySurface]
    speedup: SpeedupModel

    @property
    def tasks(self) -> list[str]:
        return sorted(self.accuracy)

    def surface(self, task: str) -> AccuracySurface:
        if task not in self.accuracy:
            raise PruMuxError(f"unknown task {task!r}; this model knows {', '.join(self.tasks)}")
        return self.accuracy[task]

    def baseline(self, task: str) -> float:
        return self.surface(task).baseline

    def predict_accuracy(self, task: str, N, s):
        _check_query(N, s)
        return self.surface(task)(N, s)

    def predict_speedup(self, N, s):
        _check_query(N, s)
        return self.speedup(N, s)

    def default_candidates(self, task: str) -> list[tuple[int, float]]:
        """The default search grid inside the task's measured range, plus every trained point."""
        surface = self.surface(task)
        grid = [(n, s) for n in DEFAULT_N for s in DEFAULT_S if surface.contains(n, s)]
        return grid + [(n, s) for n, s, _ in surface.points]

    def rank(self, task: str, budget: float, top: int = 3, candidates=None) -> list[Candidate]:
        """The `top` fastest candidates whose predicted accuracy is >= baseline - budget (may be empty)."""
        if budget < 0 or not math.isfinite(budget):
            raise PruMuxError(f"the accuracy budget must be >= 0 points, got {budget}")
        if top < 1:
            raise PruMuxError(f"`top` must be >= 1, got {top}")
        surface = self.surface(task)
        candidates = self.default_candidates(task) if candidates is None else list(candidates)
        unique = {}
        for n, s in candidates:
            unique.setdefault((int(n), round(float(s), 9)), (int(n), float(s)))
        if not unique:
            return []
        ns = np.array([c[0] for c in unique.values()])
        ss = np.array([c[1] for c in unique.values()])
        acc = np.atleast_1d(self.predict_accuracy(task, ns, ss))
        speed = np.atleast_1d(self.predict_speedup(ns, ss))
        trained = {(n, round(s, 9)) for n, s, _ in surface.points}
        threshold = surface.baseline - budget
        found = [Candidate(int(n), float(s), float(a), float(t), (int(n), round(float(s), 9)) in trained,
                           not surface.contains(n, s))
                 for n, s, a, t in zip(ns, ss, acc, speed) if a >= threshold - _EPS]
        return sorted(found, key=_fastest_first)[:top]

    # ----------------------------------------------------------------------------------- serialisation

    def to_json(self) -> str:
        data = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "speedup": {"form": "log(speedup) = c0 + c1*log N + c2*log 1/(1-s) + c3*log N*log 1/(1-s)",
                        "coef": self.speedup.coef, "terms": self.speedup.terms, "task": self.speedup.task,
                        "rmse_log": self.speedup.rmse_log,
                        "points": [list(p) for p in self.speedup.points]},
            "tasks": {t: {"baseline": self.accuracy[t].baseline,
                          "points": [list(p) for p in self.accuracy[t].points]} for t in self.tasks},
        }
        return dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "AutoModel":
        data = read_versioned_json(source, text, PruMuxError, what="an Auto-PruMUX model", kind=MODEL_FORMAT,
                                   version=MODEL_VERSION, version_key="version",
                                   fix_kind="make one with `prumux-deploy auto fit`", fix_version="refit it")
        try:
            sp = data["speedup"]
            if len(sp["coef"]) != len(SPEEDUP_TERMS):
                raise ValueError(f"speedup.coef needs {len(SPEEDUP_TERMS)} numbers")
            speedup = SpeedupModel([float(c) for c in sp["coef"]], list(sp["terms"]), str(sp["task"]),
                                   [(int(n), float(s), float(t)) for n, s, t in sp["points"]],
                                   float(sp.get("rmse_log", 0.0)))
            accuracy = {str(t): AccuracySurface([(int(n), float(s), float(a)) for n, s, a in v["points"]])
                        for t, v in data["tasks"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise PruMuxError(f"{source}: damaged Auto-PruMUX model ({type(e).__name__}: {e}); refit it") from None
        if not accuracy:
            raise PruMuxError(f"{source}: the model has no tasks; refit it")
        return cls(accuracy, speedup)


def _pick_throughput_task(rows: list[Measurement], throughput_task: str | None) -> str:
    counts = {}
    for r in rows:
        if r.throughput is not None:
            counts[r.task] = counts.get(r.task, 0) + 1
    if throughput_task is not None:
        if not counts.get(throughput_task):
            have = ", ".join(f"{t} ({c})" for t, c in sorted(counts.items())) or "none"
            raise PruMuxError(f"`throughput_task` {throughput_task} has no throughput measurements "
                              f"(tasks with some: {have})")
        return throughput_task
    if not counts:
        raise PruMuxError("no row has a throughput (speedup) value; measure at least one task")
    return min(counts, key=lambda t: (-counts[t], t))  # most measurements, then alphabetical


def fit(rows, throughput_task: str | None = None) -> AutoModel:
    """Fit the accuracy surfaces (every task) and the speedup model (one task) on measurements or a CSV path."""
    if isinstance(rows, (str, os.PathLike)):
        rows = read_measurements(rows)
    rows = list(rows)
    if not rows:
        raise PruMuxError("no measurements to fit on")
    task = _pick_throughput_task(rows, throughput_task)
    by_task = {}
    for r in rows:
        if r.accuracy is not None:
            by_task.setdefault(r.task, []).append((r.N, r.sparsity, r.accuracy))
    accuracy = {t: AccuracySurface(p) for t, p in by_task.items()}
    speedup = SpeedupModel.fit([(r.N, r.sparsity, r.throughput) for r in rows
                                if r.task == task and r.throughput is not None], task)
    return AutoModel(accuracy, speedup)


def save_model(model: AutoModel, path: str | os.PathLike, force: bool = False) -> Path:
    """Write the model as JSON, atomically; an existing file is replaced only with force."""
    return write_file(path, model.to_json(), force)


def load_model(path: str | os.PathLike) -> AutoModel:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PruMuxError(f"{path}: no such file (make one with `prumux-deploy auto fit`)") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise PruMuxError(f"{path}: not an Auto-PruMUX model file") from None
    return AutoModel.from_json(text, source=str(path))


# ------------------------------------------------------------------------------------ cross-validation


def loo_cv(rows, throughput_task: str | None = None) -> dict:
    """Leave-one-out CV: refit without each measured point and predict it (the paper's M_A and M_T).

    Accuracy: every point of a task with at least two points. Speedup: every row with a throughput; the
    speedup model is refitted on the throughput task without that row (rows of other tasks were never
    in its training set). A point that cannot be predicted (nothing left to fit on) is not counted.
    """
    if isinstance(rows, (str, os.PathLike)):
        rows = read_measurements(rows)
    rows = list(rows)
    tp_task = _pick_throughput_task(rows, throughput_task)
    tp_rows = [r for r in rows if r.task == tp_task and r.throughput is not None]
    full_speedup = SpeedupModel.fit([(r.N, r.sparsity, r.throughput) for r in tp_rows], tp_task)
    points = []
    for r in rows:
        same = [q for q in rows if q.task == r.task and q is not r and q.accuracy is not None]
        acc = (AccuracySurface([(q.N, q.sparsity, q.accuracy) for q in same])(r.N, r.sparsity)
               if same and r.accuracy is not None else None)
        speed = None
        if r.throughput is not None:
            if r.task == tp_task:
                rest = [q for q in tp_rows if q is not r]
                if rest:
                    speed = SpeedupModel.fit([(q.N, q.sparsity, q.throughput) for q in rest], tp_task)(r.N, r.sparsity)
            else:
                speed = full_speedup(r.N, r.sparsity)
        points.append({"task": r.task, "N": r.N, "sparsity": r.sparsity,
                       "accuracy": r.accuracy, "predicted_accuracy": acc,
                       "accuracy_ok": None if acc is None else bool(abs(acc - r.accuracy) <= ACCURACY_TOLERANCE + _EPS),
                       "throughput": r.throughput, "predicted_speedup": speed,
                       "speedup_ok": None if speed is None else
                       bool(abs(speed - r.throughput) <= SPEEDUP_TOLERANCE * r.throughput + _EPS)})

    def summary(group):
        acc = [p["accuracy_ok"] for p in group if p["accuracy_ok"] is not None]
        spd = [p["speedup_ok"] for p in group if p["speedup_ok"] is not None]
        return {"n_accuracy": len(acc), "M_A": sum(acc) / len(acc) if acc else None,
                "n_speedup": len(spd), "M_T": sum(spd) / len(spd) if spd else None}

    tasks = sorted({r.task for r in rows})
    return {"throughput_task": tp_task, "accuracy_tolerance": ACCURACY_TOLERANCE,
            "speedup_tolerance": SPEEDUP_TOLERANCE,
            "tasks": {t: summary([p for p in points if p["task"] == t]) for t in tasks},
            "all": summary(points), "points": points}


def method_of(N: int, sparsity: float) -> str:
    """Which of the paper's methods an (N, s) point belongs to: "PruMUX" (N > 1, s > 0), "CoFi" (pruning
    alone: N = 1, s > 0), "DataMUX" (multiplexing alone: N > 1, s = 0) or "baseline" (N = 1, s = 0)."""
    if N > 1:
        return "PruMUX" if sparsity > 0 else "DataMUX"
    return "CoFi" if sparsity > 0 else "baseline"


def compare_methods(rows, task: str | None = None, step: float = 0.5, depth: float = 10.0) -> dict:
    """The paper's Figure 3 comparison on measured points: for accuracy thresholds from the task's N=1, s=0
    accuracy down in `step`-point steps (to `depth` points below), the fastest measured configuration of
    each method whose accuracy reaches the threshold: PruMUX (N > 1 and s > 0), CoFi alone (N = 1, s > 0)
    and DataMUX alone (N > 1, s = 0). "Fastest" is the throughput column. None where a method has no point
    that accurate."""
    if isinstance(rows, (str, os.PathLike)):
        rows = read_measurements(rows)
    rows = [r for r in rows if r.accuracy is not None and r.throughput is not None]
    task = task or _pick_throughput_task(rows, None)
    rows = [r for r in rows if r.task == task]
    base = next((r for r in rows if r.N == 1 and r.sparsity == 0), None)
    if base is None:
        raise PruMuxError(f"{task}: the comparison needs the N=1, s=0 point (its accuracy is the first threshold)")
    table = []
    for k in range(int(round(depth / step)) + 1):
        threshold = base.accuracy - k * step
        entry = {"threshold": threshold}
        for name in METHODS:
            ok = [r for r in rows if method_of(r.N, r.sparsity) == name and r.accuracy >= threshold - _EPS]
            best = max(ok, key=lambda r: r.throughput, default=None)
            entry[name] = None if best is None else {"N": best.N, "sparsity": best.sparsity,
                                                    "accuracy": best.accuracy, "throughput": best.throughput}
        table.append(entry)
    return {"task": task, "baseline": {"accuracy": base.accuracy, "throughput": base.throughput}, "thresholds": table}


def _held_out_guess(r: Measurement, loo_point: dict) -> Candidate | None:
    """The candidate Auto-PruMUX would have seen for r before r was trained: its leave-one-out predictions.
    N=1, s=0 is the exception: it defines the budget, so it is always trained and keeps its measurements."""
    if method_of(r.N, r.sparsity) == "baseline":
        return Candidate(r.N, r.sparsity, r.accuracy, r.throughput, True, False)
    acc, speed = loo_point["predicted_accuracy"], loo_point["predicted_speedup"]
    return None if acc is None or speed is None else Candidate(r.N, r.sparsity, acc, speed, False, False)


def top3_hits(rows, throughput_task: str | None = None, budgets=None, top: int = 3,
              held_out: bool = False) -> dict:
    """The paper's Table 3 check: for each accuracy budget, is the truly best measured configuration
    (fastest measured throughput with measured accuracy >= baseline - budget) among the `top` that
    Auto-PruMUX ranks first among the measured configurations?

    held_out=False ranks with the models fitted on every point, so measured accuracies are reproduced and
    only the speedup model can miss. held_out=True ranks each configuration by its leave-one-out
    predictions (`loo_cv`: accuracy and speedup predicted with that configuration's own measurement left
    out), which asks whether Auto-PruMUX would have pointed at it before it was trained. The baseline's
    (N=1, s=0) accuracy is the measured one in both: it is always trained, since it defines the budget.
    A task without an N=1, s=0 point takes its best accuracy as the baseline (AccuracySurface.baseline)."""
    if isinstance(rows, (str, os.PathLike)):
        rows = read_measurements(rows)
    model = fit(rows, throughput_task)
    loo = {}
    if held_out:
        loo = {(p["task"], p["N"], round(p["sparsity"], 9)): p for p in loo_cv(rows, throughput_task)["points"]}
    budgets = [b / 2 for b in range(21)] if budgets is None else budgets
    out = {}
    for task in model.tasks:
        measured = [r for r in rows if r.task == task and r.accuracy is not None and r.throughput is not None]
        baseline = model.baseline(task)
        if held_out:  # the same guesses for every budget
            guesses = [_held_out_guess(r, loo[(task, r.N, round(r.sparsity, 9))]) for r in measured]
        entries = []
        for b in budgets:
            ok = [r for r in measured if r.accuracy >= baseline - b - _EPS]
            if not ok:
                continue
            best = max(ok, key=lambda r: r.throughput)
            if held_out:
                found = [c for c in guesses if c is not None and c.accuracy >= baseline - b - _EPS]
                ranked = sorted(found, key=_fastest_first)[:top]
            else:
                ranked = model.rank(task, b, top=top, candidates=[(r.N, r.sparsity) for r in measured])
            hit = any(c.N == best.N and abs(c.sparsity - best.sparsity) < 1e-6 for c in ranked)
            entries.append({"budget": b, "best": [best.N, best.sparsity], "top": [[c.N, c.sparsity] for c in ranked],
                            "hit": hit})
        out[task] = {"budgets": entries, "hit_rate": (sum(e["hit"] for e in entries) / len(entries)) if entries else None}
    return out


# ----------------------------------------------------------------------------------------------- plot


def plot(model: AutoModel, path: str | os.PathLike, force: bool = False) -> Path:
    """Draw each task's accuracy surface and the speedup surface (heat maps, measured points marked)."""
    try:
        import matplotlib
    except ImportError:
        raise PruMuxError("auto plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    path = check_file_target(path, force)  # refuse before drawing
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in plt.figure().canvas.get_supported_filetypes():
        plt.close("all")
        raise PruMuxError(f"{path}: matplotlib cannot write .{fmt} files; use .png, .pdf or .svg")
    plt.close("all")

    panels = len(model.tasks) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, task in zip(axes, model.tasks):
        surface = model.accuracy[task]
        n_lo, n_hi = surface.Ns[0], surface.Ns[-1]
        s_lo, s_hi = surface.ss[0], surface.ss[-1]
        n_hi, s_hi = (n_hi if n_hi > n_lo else n_lo + 1), (s_hi if s_hi > s_lo else min(s_lo + 0.1, 0.99))
        n, s = np.meshgrid(np.linspace(n_lo, n_hi, 80), np.linspace(s_lo, s_hi, 80))
        mesh = ax.contourf(n, s, surface(n, s), levels=20, cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="accuracy (%)")
        pts = np.array(surface.points)
        ax.scatter(pts[:, 0], pts[:, 1], c="white", edgecolors="black", s=18, clip_on=False, zorder=3)
        ax.set(title=f"{task}: accuracy (baseline {surface.baseline:.1f})", xlabel="N", ylabel="sparsity s")
    ax = axes[len(model.tasks)]
    pts = np.array(model.speedup.points)
    n_hi = max(max(DEFAULT_N), pts[:, 0].max())
    n, s = np.meshgrid(np.linspace(1, n_hi, 80), np.linspace(0, max(DEFAULT_S), 80))
    mesh = ax.contourf(n, s, np.log10(model.speedup(n, s)), levels=20, cmap="magma")
    fig.colorbar(mesh, ax=ax, label="log10 speedup")
    ax.scatter(pts[:, 0], pts[:, 1], c="white", edgecolors="black", s=18, clip_on=False, zorder=3)
    ax.set(title=f"speedup over BERT-base (fit on {model.speedup.task})", xlabel="N", ylabel="sparsity s")
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.tight_layout()

    try:
        with atomic_file(path, force) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    return path
