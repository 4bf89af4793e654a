"""`prumux-deploy predict`: classify texts with an engine."""

from __future__ import annotations

from pathlib import Path

import click

from ..documents import dumps
from ..options import force_option


@click.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--second", multiple=True, help="Second sentence for pair tasks, once per TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--no-truncate", is_flag=True, help="Refuse texts longer than the engine's maximum length.")
@click.option("--ids-out", type=click.Path(path_type=Path), default=None,
              help="Also write the token ids (one padded row per line) for examples/cpp/prumux_infer.")
@click.option("--isolation", type=click.Choice(["shared", "request"]), default="shared", show_default=True,
              help="shared: the TEXTS of this call share mux groups (N at a time), so a text's answer can change "
                   "with its neighbours; request: each text is a request of its own, answered exactly as if "
                   "it were given alone (up to N times the compute).")
@force_option("--ids-out if it exists")
def predict(engine_dir, texts, second, as_json, no_truncate, ids_out, isolation, force):
    """Classify TEXTS with an engine and print each label with its probability.

    By default the texts of one call form one request and share mux groups; --isolation request answers
    each text independently of the others."""
    from ..atomic import check_file_target, write_file
    from ..engine import classify, load_engine

    if ids_out:
        check_file_target(ids_out, force)
    engine = load_engine(engine_dir, warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    result = classify(engine, list(texts), list(second), truncate=not no_truncate,
                      warn=lambda msg: click.echo(msg, err=True), isolation=isolation)
    if ids_out:
        write_file(ids_out, "".join(" ".join(map(str, row)) + "\n" for row in result.feeds["input_ids"]), force)
    for text, p, (label, score) in zip(texts, result.probabilities, result.best()):
        if as_json:
            click.echo(dumps({"text": text, "label": label, "score": score,
                              "scores": {name: float(q) for name, q in zip(result.labels, p)}}))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            click.echo(f"{label:<14} {score:.3f}  {shown}")
