"""Task metrics: accuracy everywhere, GLUE's own metric where it has one, macro-F1 for custom tasks.

GLUE (Wang et al. 2019, the benchmark's definitions): F1 of the positive class (label 1: duplicate /
equivalent) for QQP and MRPC, Matthews correlation for CoLA. Computed with scikit-learn.
"""

from __future__ import annotations

import numpy as np

from .data import Task


def metric_names(task: Task) -> list[str]:
    if task.custom:
        return ["accuracy", "macro_f1"]
    return ["accuracy"] + {"f1": ["f1"], "mcc": ["matthews_corr"]}.get(task.metric, [])


def task_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """predictions, labels: [n] int label ids -> {metric name: value in [0, 1] (MCC in [-1, 1])}."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(labels, predictions))}
    names = metric_names(task)
    if "f1" in names:
        out["f1"] = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))
    if "matthews_corr" in names:
        out["matthews_corr"] = float(matthews_corrcoef(labels, predictions))
    if "macro_f1" in names:
        out["macro_f1"] = float(f1_score(labels, predictions, labels=list(range(len(task.label_names))),
                                         average="macro", zero_division=0))
    return out
