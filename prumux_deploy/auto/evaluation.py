"""Auto-PruMUX evaluation: leave-one-out cross-validation of the models (the paper's M_A and M_T), the
paper's Figure 3 comparison of PruMUX with CoFi and DataMUX alone on measured points, and its Table 3 check of
whether the truly best configuration is among Auto-PruMUX's top 3.
"""

from __future__ import annotations

import os

from ..errors import PruMuxError
from .measurements import Measurement, read_measurements
from .models import _EPS, AccuracySurface, Candidate, SpeedupModel, _fastest_first, _pick_throughput_task, fit

METHODS = ("PruMUX", "CoFi", "DataMUX")  # the paper's Figure 3 compares these three
ACCURACY_TOLERANCE = 1.5   # M_A: |predicted - measured| accuracy within 1.5 points (paper, Table 1)
SPEEDUP_TOLERANCE = 0.2    # M_T: predicted speedup within 20% of the measured one


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
