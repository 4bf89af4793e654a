"""Auto-PruMUX models: the accuracy surface f_A of each task (AccuracySurface), the speedup model f_T
(SpeedupModel), the search over (N, s) within an accuracy budget (AutoModel.rank), and the model file (fit,
save_model, load_model). Their forms, and why the accuracy surface is bilinear in log N and s, are explained in
the package docstring (prumux_deploy/auto/__init__.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_file
from ..documents import dumps, read_versioned_json
from ..errors import PruMuxError
from .measurements import Measurement, read_measurements

MODEL_FORMAT = "prumux-auto-model"
MODEL_VERSION = 1
DEFAULT_N = (1, 2, 3, 4, 5, 6, 8, 10)
DEFAULT_S = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SPEEDUP_TERMS = ("1", "log N", "log 1/(1-s)", "log N * log 1/(1-s)")
_EPS = 1e-9                # float slack for "accuracy >= threshold" and for matching sparsities


@dataclass(frozen=True)
class Candidate:
    """A ranked configuration with its predictions."""

    N: int
    sparsity: float
    accuracy: float
    speedup: float
    trained: bool        # measured for this task (the accuracy is then the measured one)
    extrapolated: bool   # outside the task's measured range (the accuracy is a clamped guess)


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
