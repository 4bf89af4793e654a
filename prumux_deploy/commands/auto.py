"""`prumux-deploy auto collect | fit | predict | cv | compare | plot`: the Auto-PruMUX commands (prumux_deploy/auto/)."""

from __future__ import annotations

from pathlib import Path

import click

from ..documents import dumps
from ..errors import PruMuxError
from ..options import COUNT, NON_NEGATIVE, POSITIVE, force_option
from ._group import CommandGroup


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


@click.group("auto", cls=CommandGroup)
def auto():
    """Auto-PruMUX: predict accuracy and speedup of (N, sparsity) configurations and pick the fastest one
    within an accuracy budget.

    \b
    The CSV has columns task,N,sparsity,accuracy,throughput (accuracy in percent, sparsity in [0, 1),
    throughput = speedup over BERT-base, empty where not measured).

    \b
      prumux-deploy auto collect runs/*/report.json --bench bench.json -o measurements.csv
      prumux-deploy auto cv measurements.csv
      prumux-deploy auto fit measurements.csv -o auto.json
      prumux-deploy auto predict auto.json --task sst2 --budget 3
    """


@auto.command("fit")
@click.argument("csv_path", metavar="CSV", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Where to write the model JSON.")
@click.option("--throughput-task", default=None,
              help="Task whose speedups fit the (task-independent) speedup model "
                   "[default: the task with the most throughput measurements].")
@force_option("the --out file if it exists")
def fit_cmd(csv_path, out, throughput_task, force):
    """Fit the accuracy surfaces and the speedup model on the measurements in CSV and save them to --out."""
    from ..atomic import check_file_target
    from ..auto import fit, read_measurements, save_model

    check_file_target(out, force)  # refuse before reading and fitting
    rows = read_measurements(csv_path)
    model = fit(rows, throughput_task=throughput_task)
    save_model(model, out, force=force)
    sp = model.speedup
    click.echo(f"wrote {out}: {len(model.tasks)} task(s) ({', '.join(model.tasks)}), {len(rows)} points; "
               f"speedup model on {sp.task} ({len(sp.points)} points, terms {', '.join(sp.terms)}, "
               f"rms log error {sp.rmse_log:.3f})")


@auto.command("predict")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--task", required=True, help="Task to choose a configuration for.")
@click.option("--budget", type=NON_NEGATIVE, default=3.0, show_default=True,
              help="Accepted accuracy loss in points below the task's baseline (N=1, s=0).")
@click.option("--top", type=COUNT, default=3, show_default=True, help="How many configurations to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict_cmd(model_path, task, budget, top, as_json):
    """Rank (N, sparsity) configurations of TASK by predicted speedup within the accuracy budget."""
    from dataclasses import asdict

    from ..auto import load_model

    model = load_model(model_path)
    found = model.rank(task, budget, top=top)
    baseline = model.baseline(task)
    if not found:
        raise PruMuxError(f"no configuration of {task} is predicted to reach accuracy >= "
                          f"{baseline - budget:.2f}; raise --budget")
    if as_json:
        click.echo(dumps({"task": task, "baseline": baseline, "budget": budget,
                               "threshold": baseline - budget, "speedup_task": model.speedup.task,
                               "candidates": [asdict(c) for c in found]}, indent=2))
        return
    click.echo(f"{task}: baseline accuracy {baseline:.2f}, budget {budget:g} -> accuracy >= "
               f"{baseline - budget:.2f}; speedup model fitted on {model.speedup.task}")
    click.echo(f"{'rank':>4}  {'N':>3}  {'s':>5}  {'accuracy':>8}  {'speedup':>8}  trained")
    for k, c in enumerate(found, 1):
        click.echo(f"{k:>4}  {c.N:>3}  {c.sparsity:>5.2f}  {c.accuracy:>8.2f}  {c.speedup:>7.2f}x  "
                   f"{'yes' if c.trained else 'no'}")


@auto.command("collect")
@click.argument("reports", metavar="REPORT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--bench", "bench_json", type=click.Path(path_type=Path), default=None,
              help="The --json file of `prumux-deploy bench --checkpoint ...` over the same checkpoints: each row's "
                   "throughput is its checkpoint's speedup over BERT-base there [default: no throughput column].")
@click.option("--backend", default="onnxruntime-opt", show_default=True,
              help="Which of the bench file's backends gives the throughput.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Where to write the CSV.")
@force_option("--out if it exists")
def collect_cmd(reports, bench_json, backend, out, force):
    """Write the measurement CSV of trained checkpoints: one row per REPORT (a `validate --report` file).

    Task, N and accuracy (the engine's, percent) come from the report; sparsity is measured on the report's
    checkpoint, to 0.01; throughput from --bench.

    \b
      prumux-deploy auto collect runs/*/report.json --bench bench.json -o measurements.csv
    """
    from ..atomic import check_file_target
    from ..auto import collect_measurements, write_measurements

    check_file_target(out, force)
    rows = collect_measurements(reports, bench_json, backend)
    write_measurements(rows, out, force)
    with_throughput = sum(r.throughput is not None for r in rows)
    click.echo(f"wrote {out}: {len(rows)} rows ({', '.join(sorted({r.task for r in rows}))}), "
               f"{with_throughput} with throughput")


@auto.command("cv")
@click.argument("csv_path", metavar="CSV", type=click.Path(path_type=Path))
@click.option("--throughput-task", default=None,
              help="Task whose speedups fit the speedup model [default: the task with the most measurements].")
@click.option("--json", "as_json", is_flag=True, help="Print the full result (every point) as JSON.")
def cv_cmd(csv_path, throughput_task, as_json):
    """Leave-one-out cross-validation of both models on CSV: M_A (accuracy within 1.5 points) and
    M_T (speedup within 20%) per task, as in the PruMUX paper's Table 1."""
    from ..auto import loo_cv

    result = loo_cv(csv_path, throughput_task=throughput_task)
    if as_json:
        click.echo(dumps(result, indent=2))
        return
    click.echo(f"leave-one-out: accuracy within {result['accuracy_tolerance']:g} points (M_A), speedup within "
               f"{result['speedup_tolerance']:.0%} (M_T); speedup model fitted on {result['throughput_task']}")
    click.echo(f"{'task':<12} {'points':>6} {'M_A':>6} {'points':>6} {'M_T':>6}")
    rows = list(result["tasks"].items()) + [("all", result["all"])]
    for name, r in rows:
        click.echo(f"{name:<12} {r['n_accuracy']:>6} {_fmt(r['M_A'], '6.3f'):>6} "
                   f"{r['n_speedup']:>6} {_fmt(r['M_T'], '6.3f'):>6}")


@auto.command("compare")
@click.argument("csv_path", metavar="CSV", type=click.Path(path_type=Path))
@click.option("--task", default=None, help="Task to compare on [default: the task with the most measurements].")
@click.option("--step", type=POSITIVE, default=0.5, show_default=True, help="Threshold step, in accuracy points.")
@click.option("--depth", type=POSITIVE, default=10.0, show_default=True,
              help="How far below the N=1, s=0 accuracy the thresholds go, in points.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with both top-3 checks) instead of tables.")
def compare_cmd(csv_path, task, step, depth, as_json):
    """PruMUX against CoFi alone and DataMUX alone on measured points (the paper's Figure 3), and whether
    Auto-PruMUX's top 3 holds the truly best configuration for the same budgets (0, --step, ..., --depth
    points; the paper's Table 3 uses 0, 0.5, ..., 10), with the models fitted on every point and with each
    point predicted with its own measurement left out.

    For each accuracy threshold (the N=1, s=0 accuracy, then lower by --step), the fastest measured point of
    each method that reaches it: PruMUX (N>1, s>0), CoFi (N=1, s>0), DataMUX (N>1, s=0)."""
    from ..auto import compare_methods, read_measurements, top3_hits

    rows = read_measurements(csv_path)
    result = compare_methods(rows, task, step, depth)
    budgets = [k * step for k in range(len(result["thresholds"]))]  # 0, step, ..., depth: as the thresholds
    hits, held_out = top3_hits(rows, budgets=budgets), top3_hits(rows, budgets=budgets, held_out=True)
    if as_json:
        click.echo(dumps({**result, "top3": hits, "top3_held_out": held_out}, indent=2))
        return

    def cell(e):
        return "-" if e is None else f"{e['throughput']:.1f} (N={e['N']}, s={e['sparsity']:g}, {e['accuracy']:.2f})"

    click.echo(f"{result['task']}: fastest measured point reaching each accuracy (throughput, config, accuracy); "
               f"N=1 s=0: {result['baseline']['accuracy']:.2f} at {result['baseline']['throughput']:.1f}")
    click.echo(f"{'threshold':>9}  {'PruMUX':<30} {'CoFi only':<30} {'DataMUX only':<30}")
    for e in result["thresholds"]:
        click.echo(f"{e['threshold']:>9.2f}  {cell(e['PruMUX']):<30} {cell(e['CoFi']):<30} {cell(e['DataMUX']):<30}")
    for t, h in hits.items():
        n = len(h["budgets"])
        click.echo(f"{t}: the truly best measured point is in Auto-PruMUX's top 3 for "
                   f"{sum(e['hit'] for e in h['budgets'])} of {n} budgets ({budgets[0]:g} to {budgets[-1]:g} points) "
                   f"fitted on every point;\n"
                   f"{t}: for {sum(e['hit'] for e in held_out[t]['budgets'])} of {n} ranked by leave-one-out "
                   f"predictions (each point's own measurement held out)")


@auto.command("plot")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Image to write (.png, .pdf, .svg).")
@force_option("the --out file if it exists")
def plot_cmd(model_path, out, force):
    """Plot each task's predicted accuracy surface and the speedup surface of MODEL (needs matplotlib)."""
    from ..atomic import check_file_target
    from ..auto import load_model, plot

    check_file_target(out, force)  # refuse before reading the model
    plot(load_model(model_path), out, force=force)
    click.echo(f"wrote {out}")
