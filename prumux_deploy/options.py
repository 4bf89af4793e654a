"""Command-line options shared by several commands, and the one place numeric options get their ranges.

Every numeric option of every command uses one of these types (tests/test_options.py walks the command
tree and checks), so an out-of-range value is a one-line usage error with exit 2 before any work starts,
never a traceback deep inside, and never a silent fallback (a 0 that quietly meant "the default").
Floats must also be finite: click's FloatRange lets NaN through (every comparison with NaN is false).
"""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses NaN and infinities."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


COUNT = click.IntRange(min=1)                                    # sizes, lengths, steps, rows
SEED = click.IntRange(min=0)
COUNT_OR_ZERO = click.IntRange(min=0)                            # counts where 0 means "none"
FRACTION = FiniteFloatRange(min=0.0, max=1.0)                    # thresholds and shares in [0, 1]
FRACTION_BELOW_1 = FiniteFloatRange(min=0.0, max=1.0, max_open=True)  # sparsity, dropout: [0, 1)
OPEN_FRACTION = FiniteFloatRange(min=0.0, max=1.0, min_open=True, max_open=True)  # masking probability: (0, 1)
POSITIVE = FiniteFloatRange(min=0.0, min_open=True)              # learning rates, epochs, ratios
NON_NEGATIVE = FiniteFloatRange(min=0.0)                         # tolerances, budgets, optional epochs
OPSET = click.IntRange(min=18)                                   # the dynamo exporter writes opset 18 and later


def number_list(kind, low: float, high: float | None = None, high_open: bool = True):
    """A callback for comma-separated numbers, each in [low, high) (or [low, high] when not high_open)."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            numbers = [kind(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
        for n in numbers:
            too_high = high is not None and (n >= high if high_open else n > high)
            if not math.isfinite(n) or n < low or too_high:
                bound = f"[{low:g}, {high:g}{')' if high_open else ']'}" if high is not None else f">= {low:g}"
                raise click.BadParameter(f"{n:g} is not in {bound}")
        return numbers
    return parse


def label_list(ctx, param, value):
    """--labels a,b,c -> ["a", "b", "c"] (None when not given)."""
    if value is None:
        return None
    labels = [v.strip() for v in value.split(",") if v.strip()]
    if len(labels) < 2:
        raise click.BadParameter("give at least two comma-separated labels")
    return labels


# what --data takes, in every command that reads examples (data.load_examples resolves it)
DATA_FORMS = ("A GLUE TSV directory (e.g. ../shared/data/glue/SST-2), a save_to_disk directory, a .csv / .tsv / "
              ".jsonl / .parquet file or a directory of split files (train.*, validation.*), or a hub dataset name "
              "(see --data-config).")


def column_options(fn, new_model: bool = False):
    """--task custom: which columns hold the examples, and the labels. new_model: for `init`, which has neither
    a checkpoint nor data to take them from (so the text column and the labels are needed)."""
    text_default = "required" if new_model else "default: the checkpoint's"
    label_default = "default: 'label'" if new_model else "default: the checkpoint's, else 'label'"
    labels_default = ("required" if new_model else "default: the checkpoint's, or read from the training split, "
                      "sorted: numerically when all are numbers")
    options = [
        click.option("--text-column", default=None,
                     help=f"--task custom: the column holding each example's text [{text_default}]."),
        click.option("--text-pair-column", default=None,
                     help="--task custom: the column holding the second text of sentence-pair tasks."),
        click.option("--label-column", default=None,
                     help=f"--task custom: the column holding the label [{label_default}]."),
        click.option("--labels", callback=label_list, default=None, metavar="A,B,...",
                     help=f"--task custom: the labels in id order [{labels_default}]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def data_options(fn):
    """Where a command's examples come from (--data is the command's own) and the custom columns."""
    fn = column_options(fn)
    return click.option("--data-config", default=None,
                        help="Configuration of a hub dataset given as --data (e.g. sst2 for nyu-mll/glue).")(fn)


def force_option(replaced: str = "OUT if it exists"):
    """--force: replace an output that exists (outputs are written beside it and renamed into place, so without
    --force an existing one is never touched; see atomic.py)."""
    return click.option("--force", is_flag=True, help=f"Replace {replaced}.")


MUX_HELP = ("How a new model draws its instance vectors: 'gaussian' (DataMUX's random gains and signs), 'near_ones' "
            "(1 + 0.3 g: the encoder's basis nearly kept), 'binary' (random signs), 'partition' (each instance "
            "keeps its own share of the dims), 'ones' (N=1 only). Default: ones at N=1, else gaussian. A "
            "checkpoint keeps its own.")
