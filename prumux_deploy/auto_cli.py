"""`prumux-deploy auto ...`: the Auto-PruMUX commands (fit, predict, cv, plot).

The group is registered on the main CLI with `main.add_command(auto)`; errors are PruMuxError, which the
main group prints as one line with a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path

import click

from .documents import dumps
from .errors import PruMuxError
from .options import COUNT, NON_NEGATIVE


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


@click.group("auto")
def auto():
    """Auto-PruMUX: predict accuracy and speedup of (N, sparsity) configurations and pick the fastest one
    within an accuracy budget.

    \b
    The CSV has columns task,N,sparsity,accuracy,throughput (accuracy in percent, sparsity in [0, 1),
    throughput = speedup over BERT-base, empty where not measured).

    \b
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
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def fit_cmd(csv_path, out, throughput_task, force):
    """Fit the accuracy surfaces and the speedup model on the measurements in CSV and save them to OUT."""
    from .auto import fit, read_measurements, save_model

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

    from .auto import load_model

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


@auto.command("cv")
@click.argument("csv_path", metavar="CSV", type=click.Path(path_type=Path))
@click.option("--throughput-task", default=None,
              help="Task whose speedups fit the speedup model [default: the task with the most measurements].")
@click.option("--json", "as_json", is_flag=True, help="Print the full result (every point) as JSON.")
def cv_cmd(csv_path, throughput_task, as_json):
    """Leave-one-out cross-validation of both models on CSV: M_A (accuracy within 1.5 points) and
    M_T (speedup within 20%) per task, as in the PruMUX paper's Table 1."""
    from .auto import loo_cv

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


@auto.command("plot")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Image to write (.png, .pdf, .svg).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def plot_cmd(model_path, out, force):
    """Plot each task's predicted accuracy surface and the speedup surface of MODEL (needs matplotlib)."""
    from .auto import load_model, plot

    plot(load_model(model_path), out, force=force)
    click.echo(f"wrote {out}")
