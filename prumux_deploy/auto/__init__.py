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

The package, one module per idea (each imports only the ones above it):

measurements
    The measurement CSV: Measurement, read_measurements, write_measurements, and collect_measurements
    (the rows of trained checkpoints, from `validate --report` and `bench --json` files).
models
    f_A and f_T and the search: AccuracySurface, SpeedupModel, AutoModel (rank, JSON), Candidate, fit,
    save_model, load_model.
evaluation
    How good the models are: loo_cv (the paper's M_A and M_T), compare_methods and method_of (the paper's
    Figure 3), top3_hits (its Table 3).
plots
    plot: heat maps of the fitted surfaces.
"""

from .evaluation import compare_methods, loo_cv, method_of, top3_hits
from .measurements import Measurement, collect_measurements, read_measurements, write_measurements
from .models import AccuracySurface, AutoModel, SpeedupModel, fit, load_model, save_model
from .plots import plot

__all__ = ["AccuracySurface", "AutoModel", "Measurement", "SpeedupModel", "collect_measurements", "compare_methods",
           "fit", "load_model", "loo_cv", "method_of", "plot", "read_measurements", "save_model", "top3_hits",
           "write_measurements"]
