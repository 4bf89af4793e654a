"""Partner sensitivity: how much a row's answer depends on the rows it shares a mux group with.

A multiplexed engine mixes the N rows of a group into one sequence (DataMUX section 3), so the same row can
get another label next to another partner. We measure it by running every row of a data set in K random
groupings (each draw a seeded permutation of the rows; consecutive N rows form a group, so a row gets random
partners and a random slot) and once alone (its group filled with copies of itself: the answer request
isolation gives, prumux_deploy/isolation.py):

    partner_flip_rate    fraction of rows whose label is not the same in all K draws
    lone_flip_rate       fraction of rows whose label in some draw differs from their lone label
    accuracy_min/max     accuracy of each draw, lowest and highest (accuracy_lone: alone)
    margin_shift_mean/max  |m_draw - m_lone| in logits, mean and max over rows and draws, where m is the
                         logit of the row's lone label minus the largest other logit
    leakage_auc          how well the victim's answer predicts its partner's true label (the partner: the
                         next slot of its group, cyclically): ROC AUC of the shift of the victim's
                         log-probabilities (binary: of class 1; more classes: one-vs-rest per class, averaged).
                         0.5 is no leakage; far from 0.5 either way is leakage. None for N = 1.

N = 1 engines have no partners: every rate is 0 by construction (up to rounding of the batch shape).
"""

from __future__ import annotations

import numpy as np

DEFAULT_DRAWS = 8


def draw_orders(rows: int, draws: int, seed: int) -> list[np.ndarray]:
    """K seeded permutations of range(rows): the row order of each draw (groups are consecutive N rows)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(rows) for _ in range(draws)]


def next_slot_partner(order: np.ndarray, num_instances: int) -> np.ndarray:
    """partner[i] for every row i of a draw: the row in the next slot of i's group (cyclically); the last,
    partial group wraps inside itself, and a row alone in its group is its own partner."""
    rows = len(order)
    partner = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, num_instances):
        group = order[start:start + num_instances]
        partner[group] = np.roll(group, -1)
    return partner


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def margin(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    """logit of `label` minus the largest other logit, per row: [B, C], [B] -> [B]."""
    own = logits[np.arange(len(logits)), label]
    others = logits.astype(np.float64).copy()
    others[np.arange(len(logits)), label] = -np.inf
    return own - others.max(1)


def leakage_auc(shifts: np.ndarray, partner_labels: np.ndarray) -> float | None:
    """ROC AUC of victim log-probability shifts [M, C] for the partner's label [M]: class 1's shift for
    binary tasks, one-vs-rest per class (averaged over the classes present) for more. None when the
    partners' labels hold a single class."""
    from sklearn.metrics import roc_auc_score

    classes = np.unique(partner_labels)
    if len(classes) < 2:
        return None
    if shifts.shape[1] == 2:
        return float(roc_auc_score(partner_labels == 1, shifts[:, 1]))
    scores = [roc_auc_score(partner_labels == c, shifts[:, c]) for c in classes
              if 0 < (partner_labels == c).sum() < len(partner_labels)]
    return float(np.mean(scores))


def partner_sensitivity(run_rows, labels: np.ndarray, num_instances: int, draws: int = DEFAULT_DRAWS,
                        seed: int = 0) -> dict:
    """Measure partner sensitivity (see the module docstring).

    run_rows(order [M] int) -> logits [M, C]: the engine's logits for rows `order` of the data set run in
    that order (groups of N consecutive rows). labels: the rows' true labels [R]. Costs K + N passes over
    the data (the lone pass runs every row N times). Returns the figures above plus draws, seed, rows."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    labels = np.asarray(labels)
    rows, N = len(labels), num_instances
    lone = run_rows(np.repeat(np.arange(rows), N))[::N]             # [R, C]: each row with copies of itself
    lone_label = lone.argmax(1)
    lone_margin = margin(lone, lone_label)
    lone_logp = _log_softmax(lone)

    draw_labels, accuracies, shifts, logp_shifts, partner_labels = [], [], [], [], []
    for order in draw_orders(rows, draws, seed):
        logits = np.empty_like(lone)
        logits[order] = run_rows(order)                              # back in data-set order: [R, C]
        predicted = logits.argmax(1)
        draw_labels.append(predicted)
        accuracies.append(float((predicted == labels).mean()))
        shifts.append(np.abs(margin(logits, lone_label) - lone_margin))
        logp_shifts.append(_log_softmax(logits) - lone_logp)
        partner_labels.append(labels[next_slot_partner(order, N)])
    draw_labels = np.stack(draw_labels)                              # [K, R]
    shifts = np.concatenate(shifts)
    return {
        "draws": draws, "seed": seed, "rows": rows, "num_instances": N,
        "partner_flip_rate": float((draw_labels != draw_labels[0]).any(0).mean()),
        "lone_flip_rate": float((draw_labels != lone_label).any(0).mean()),
        "accuracy_min": min(accuracies), "accuracy_max": max(accuracies),
        "accuracy_lone": float((lone_label == labels).mean()),
        "margin_shift_mean": float(shifts.mean()), "margin_shift_max": float(shifts.max()),
        "leakage_auc": None if N == 1 else leakage_auc(np.concatenate(logp_shifts), np.concatenate(partner_labels)),
    }
