"""`prumux-deploy validate`: an engine against its PyTorch checkpoint on task data, the release gate."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..compare import describe_defaults
from ..errors import PruMuxError
from ..options import COUNT, COUNT_OR_ZERO, DATA_FORMS, FRACTION, NON_NEGATIVE, POSITIVE, SEED, data_options, force_option
from ..partners import DEFAULT_DRAWS


@click.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="The checkpoint the engine was exported from (the PyTorch reference).")
@click.option("--task", default=None,
              help="GLUE task (sst2, qnli, mnli, qqp, rte, mrpc, cola, wnli) or custom [default: the checkpoint's].")
@click.option("--data", required=True, help=DATA_FORMS)
@data_options
@click.option("--split", default="dev", show_default=True, help="Which split to read: dev (also found as validation), train, test.")
@click.option("--limit", type=COUNT, default=None, help="Use only the first K examples.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the JSON report here (also when a check fails).")
@force_option("--report if it exists")
@click.option("--min-accuracy", type=FRACTION, default=None, help="Fail if engine accuracy is below A (0..1).")
@click.option("--max-accuracy-drop", type=FRACTION, default=None,
              help=f"Fail if PyTorch accuracy minus engine accuracy exceeds D (0..1) [default: "
                   f"{describe_defaults('max_accuracy_drop')}].")
@click.option("--min-agreement", type=FRACTION, default=None,
              help=f"Fail if fewer than this fraction of predictions agree [default: {describe_defaults('min_agreement')}].")
@click.option("--max-logit-error", type=NON_NEGATIVE, default=None,
              help=f"Fail if any logit differs by more than this [default: {describe_defaults('max_logit_error')}].")
@click.option("--throughput", is_flag=True,
              help="Also time engine vs PyTorch eager on the same device at sequence 128, or the engine's maximum "
                   "length when shorter (batch 32*N on the CPU, 128*N on a GPU as in the paper), and end to end "
                   "from text.")
@click.option("--min-speedup", type=POSITIVE, default=None, metavar="X",
              help="Fail if engine samples/s / PyTorch fp32 eager samples/s (same device, same run) is below X; "
                   "implies --throughput.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the PyTorch reference and the engine run: cuda uses ONNX Runtime's CUDA provider "
                   "(onnxruntime-gpu) or TensorRT, with inputs staged on the GPU for timing.")
@click.option("--tf32", is_flag=True,
              help="--device cuda: run fp32 MatMuls of both sides in TF32 (PyTorch's cuBLAS matmuls, ONNX Runtime's "
                   "use_tf32; a TensorRT engine must be exported with --tf32) and compare with the TF32 tolerance "
                   "(5e-2). Without it both sides run full fp32; the report says which arithmetic each side used.")
@click.option("--batch-size", type=COUNT, default=None,
              help="Rows per batch (default 32*N; throughput on cuda defaults to 128*N).")
@click.option("--no-truncate", is_flag=True, help="Refuse inputs longer than the engine's maximum length "
                                                   "instead of truncating them with a warning.")
@click.option("--skip-bad-rows", is_flag=True, help="Skip (and count) unusable rows (malformed, an empty "
                                                     "text, an unknown label) instead of failing.")
@click.option("--partners", type=COUNT_OR_ZERO, default=0, show_default=True, metavar="K",
              help="Also run every row with K random partner draws (seeded) and alone, and report partner "
                   "sensitivity: the fraction of rows whose label changes with the partner, accuracy over the "
                   "draws, margin shift and partner-label leakage AUC (0 = today's grouping only).")
@click.option("--partner-seed", type=SEED, default=0, show_default=True, help="Seed of the partner draws.")
@click.option("--max-flip-rate", type=FRACTION, default=None, metavar="X",
              help="Fail if more than this fraction of rows (0..1) change label with their partner; implies "
                   f"--partners {DEFAULT_DRAWS} when --partners is not given.")
def validate(engine_dir, checkpoint, task, data, data_config, text_column, text_pair_column, label_column, labels,
             split, limit, report, force, min_accuracy, max_accuracy_drop, min_agreement, max_logit_error,
             throughput, min_speedup, device, tf32, batch_size, no_truncate, skip_bad_rows, partners, partner_seed,
             max_flip_rate):
    """Check ENGINE_DIR against its PyTorch checkpoint on task data; exit 1 if any threshold fails.

    Reports accuracy, prediction agreement and logit error for engine and PyTorch, plus the task's metric
    (F1 for QQP and MRPC, Matthews correlation for CoLA, macro-F1 for custom tasks). With --partners, also
    how much a row's answer depends on the rows it shares a mux group with (gate it with --max-flip-rate)."""
    from ..atomic import check_file_target
    from ..data import unused_split_warning
    from ..validate import Thresholds, ValidateOptions, format_report, run_validation, write_report

    if labels is not None:
        raise PruMuxError("--labels applies where a model is made (init, train); validate reads the checkpoint's")
    if max_flip_rate is not None and partners == 0 and click.get_current_context().get_parameter_source(
            "partners") is not click.core.ParameterSource.DEFAULT:
        raise PruMuxError("--max-flip-rate gates partner draws, and --partners 0 asks for none; give --partners K "
                          f"(K >= 1) or leave it out for {DEFAULT_DRAWS}")
    split_given = click.get_current_context().get_parameter_source("split") is not click.core.ParameterSource.DEFAULT
    split_warning = unused_split_warning(data, split if split_given else None)
    if split_warning:
        click.echo(split_warning, err=True)
    if report:
        check_file_target(report, force)  # refuse before minutes of validation
    thresholds = Thresholds.for_engine(engine_dir, tf32=tf32, min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop,
                                       min_agreement=min_agreement, max_logit_error=max_logit_error,
                                       min_speedup=min_speedup, max_flip_rate=max_flip_rate)
    options = ValidateOptions(split=split, limit=limit, thresholds=thresholds, with_throughput=throughput,
                              batch_size=batch_size, truncate=not no_truncate, skip_bad_rows=skip_bad_rows,
                              device=device, data_config=data_config, partners=partners, partner_seed=partner_seed,
                              columns={"text": text_column, "text_pair": text_pair_column, "label": label_column},
                              tf32=tf32)
    result = run_validation(engine_dir, checkpoint, task, data, options, warn=lambda msg: click.echo(msg, err=True))
    click.echo(format_report(result))
    if report:
        write_report(result, report, force)
        click.echo(f"report: {report}")
    sys.exit(0 if result["passed"] else 1)
