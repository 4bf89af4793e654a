"""Engine logits against PyTorch's: the tolerances per precision, and the one comparison every check uses.

Like Polygraphy's comparators: explicit tolerances, one result object, a pass/fail per check. `export`
compares on generated inputs (parity) and refuses an engine past `max_logit_error`; `validate` compares
on task data and turns every field into a check; `bench` spot-checks the inputs it times.

Tolerances (absolute logit difference; prediction agreement and accuracy drop as fractions):
    fp32  1e-4, 99% agreement: an fp32 engine computes what PyTorch does, up to rounding (measured: at
          most 7.2e-6 on the trained models, 2.6e-6 on the upstream fixtures)
    fp16  5e-2, 99%: half-precision activations
    int8  1.0, 97%: quantized weights and activations; the accuracy on task data is what must hold
    bf16  1e-1, 98%: OpenVINO's bf16 inference precision on an fp32 graph (8-bit mantissas; measured
          1e-2..2e-2 on the shipped example and the CoFi s95 shape)
and at most 1 point of accuracy drop for every precision.

TF32 (`--tf32` on a GPU, an explicit opt-in: fp32 engines are built and run without it by default) has its
own tolerance, `TF32_TOLERANCE`: TF32 rounds MatMul inputs to 10-bit mantissas (fp16's) and accumulates in
fp32, so it costs at most what fp16 activations cost and takes fp16's bound, 5e-2 and 99%. That bound is
reasoned, not measured: no GPU has run these comparisons yet (docs/benchmarks.md, GPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ParityError


@dataclass(frozen=True)
class Tolerance:
    max_logit_error: float      # max |engine - PyTorch| over all logits
    min_agreement: float        # fraction of rows whose predicted label is the same
    max_accuracy_drop: float    # PyTorch accuracy - engine accuracy, fraction


TOLERANCES = {
    "fp32": Tolerance(max_logit_error=1e-4, min_agreement=0.99, max_accuracy_drop=0.01),
    "fp16": Tolerance(max_logit_error=5e-2, min_agreement=0.99, max_accuracy_drop=0.01),
    "int8": Tolerance(max_logit_error=1.0, min_agreement=0.97, max_accuracy_drop=0.01),
    "bf16": Tolerance(max_logit_error=1e-1, min_agreement=0.98, max_accuracy_drop=0.01),
}
PRECISIONS = tuple(TOLERANCES)


TF32_TOLERANCE = Tolerance(max_logit_error=5e-2, min_agreement=0.99, max_accuracy_drop=0.01)


def tolerance_for(precision: str, tf32: bool = False) -> Tolerance:
    """The tolerance of an engine of `precision`; with tf32 (either side's fp32 MatMuls in TF32), the looser
    of that and TF32_TOLERANCE in every field."""
    base = TOLERANCES.get(precision, TOLERANCES["fp32"])
    if not tf32:
        return base
    return Tolerance(max_logit_error=max(base.max_logit_error, TF32_TOLERANCE.max_logit_error),
                     min_agreement=min(base.min_agreement, TF32_TOLERANCE.min_agreement),
                     max_accuracy_drop=max(base.max_accuracy_drop, TF32_TOLERANCE.max_accuracy_drop))


def describe_defaults(field: str) -> str:
    """'1e-4 fp32, 5e-2 fp16, 1.0 int8' for a Tolerance field: what --help texts show ('0.01 at every
    precision' when they are all the same)."""
    def fmt(v):
        return f"{v:g}" if field != "max_logit_error" or v >= 1 else f"{v:.0e}".replace("e-0", "e-")
    values = {p: fmt(getattr(t, field)) for p, t in TOLERANCES.items()}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values()))} at every precision"
    return ", ".join(f"{value} {p}" for p, value in values.items())


@dataclass
class Comparison:
    """Engine logits against reference logits, [rows, labels] each."""

    rows: int
    max_abs_error: float     # NaN when either side holds a non-finite value
    mean_abs_error: float
    agreement: float         # fraction of rows with the same argmax
    non_finite_engine: int   # rows of the engine with a NaN or Inf logit
    non_finite_reference: int

    @property
    def finite(self) -> bool:
        return self.non_finite_engine == 0 and self.non_finite_reference == 0

    def within(self, max_logit_error: float) -> bool:
        return self.finite and self.max_abs_error <= max_logit_error  # NaN never passes

    def to_dict(self) -> dict:
        return asdict(self)


def compare_logits(got: np.ndarray, want: np.ndarray) -> Comparison:
    """Compare two logit arrays of the same shape; ParityError when the shapes differ."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise ParityError(f"engine returned logits of shape {list(got.shape)}, expected {list(want.shape)}")
    rows = got.shape[0]
    if rows == 0:
        return Comparison(0, 0.0, 0.0, 1.0, 0, 0)
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return Comparison(rows=rows, max_abs_error=float(err.max()), mean_abs_error=float(err.mean()),
                      agreement=float((got.argmax(1) == want.argmax(1)).mean()),
                      non_finite_engine=int((~np.isfinite(got).all(1)).sum()),
                      non_finite_reference=int((~np.isfinite(want).all(1)).sum()))


def merge(parts: list[Comparison]) -> Comparison:
    """One comparison over several batches (rows weighted)."""
    rows = sum(p.rows for p in parts)
    if rows == 0:
        return Comparison(0, 0.0, 0.0, 1.0, 0, 0)
    return Comparison(rows=rows, max_abs_error=float(np.max([p.max_abs_error for p in parts])),  # NaN stays NaN
                      mean_abs_error=sum(p.mean_abs_error * p.rows for p in parts) / rows,
                      agreement=sum(p.agreement * p.rows for p in parts) / rows,
                      non_finite_engine=sum(p.non_finite_engine for p in parts),
                      non_finite_reference=sum(p.non_finite_reference for p in parts))
