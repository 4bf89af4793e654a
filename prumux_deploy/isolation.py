"""Request isolation: which rows share a mux group.

A multiplexed engine encodes each group of N consecutive rows together (DataMUX, Murahari et al. 2022,
section 3), so a row's logits depend on the other rows of its group. Two ways to group a batch:

    shared    rows are grouped as they arrive: the rows of different requests may share a group, and a
              request's answer then changes with (and carries a trace of) other requests' content.
    request   every request is padded to a whole number of groups by repeating its own last row (what the
              engine graph does for a partial last group), so no group ever holds rows of two requests and
              a request's answer depends on its own rows only.

    requests  [r0 rows, r1 rows, ...] -> rows [B'] (indices into the concatenated requests; B' = sum of each
              request rounded up to a multiple of N in request mode, B in shared mode) and real [B'] (True
              where the row is a request's own row, False for a fill row whose logits are dropped).

This file needs numpy only: `prumux-deploy triton --isolation request` copies it beside the Triton
Python-backend model that applies it (export/triton_isolation_model.py), where prumux_deploy is not installed.
"""

from __future__ import annotations

import numpy as np

MODES = ("shared", "request")


def check_mode(isolation: str) -> str:
    if isolation not in MODES:
        raise ValueError(f"isolation must be one of {', '.join(MODES)}, got {isolation!r}")
    return isolation


def group_rows(sizes, num_instances: int, isolation: str = "request") -> tuple[np.ndarray, np.ndarray]:
    """Row order for requests of `sizes` rows each (concatenated in that order): (rows [B'], real [B']).

    shared: rows = 0..B-1 (the engine fills the last group itself). request: each request of k rows becomes
    k rounded up to a multiple of N, the extra rows repeating its own last row. Empty requests take no rows.
    Raises ValueError for an unknown mode, N < 1 or a negative size."""
    check_mode(isolation)
    if num_instances < 1:
        raise ValueError(f"num_instances must be at least 1, got {num_instances}")
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"request sizes must be >= 0, got {sizes}")
    total = sum(sizes)
    if isolation == "shared" or num_instances == 1:
        return np.arange(total, dtype=np.int64), np.ones(total, dtype=bool)
    rows, real, start = [], [], 0
    for size in sizes:
        if size:
            padded = -(-size // num_instances) * num_instances
            rows.append(start + np.minimum(np.arange(padded), size - 1))
            real.append(np.arange(padded) < size)
        start += size
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(rows).astype(np.int64), np.concatenate(real)


def run_isolated(run, feeds: dict, sizes, num_instances: int, isolation: str = "request") -> np.ndarray:
    """Run `run(feeds) -> logits [B', C]` on the concatenated requests' `feeds` ({name: [B, S]}) grouped by
    `isolation`; returns the logits of the B real rows in request order, [B, C]."""
    rows, real = group_rows(sizes, num_instances, isolation)
    logits = run({name: value[rows] for name, value in feeds.items()})
    return logits[real]


def each_alone(run, feeds: dict, num_instances: int) -> np.ndarray:
    """Every row as a request of its own, exactly as classifying it alone: its mux group filled with copies of
    itself (run_isolated), at its own length (the right padding a lone call would not have is cut; a runtime's
    rounding may depend on the padded length, OpenVINO's does). Rows of one length run together.
    run(feeds) -> logits; feeds {name: [B, S]} -> logits [B, C]."""
    lengths = feeds["attention_mask"].sum(1)
    logits = None
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        part = {name: value[rows, :length] for name, value in feeds.items()}
        out = run_isolated(run, part, [1] * len(rows), num_instances, "request")
        if logits is None:
            logits = np.empty((len(lengths), out.shape[1]), dtype=out.dtype)
        logits[rows] = out
    return logits if logits is not None else run(feeds)


def split_requests(values: np.ndarray, sizes) -> list[np.ndarray]:
    """[B, ...] -> one array per request, [size_i, ...] each."""
    return np.split(values, np.cumsum([int(s) for s in sizes])[:-1]) if len(sizes) else []
