"""`prumux-deploy init | import | compact | inspect`: make, import, fold and look inside checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..documents import dumps
from ..errors import PruMuxError
from ..model import INSTANCE_VECTOR_INITS, NEW_MODEL_DEMUX_KINDS
from ..options import COUNT, FRACTION_BELOW_1, MUX_HELP, SEED, column_options, force_option


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--base", default="minilm", show_default=True,
              help="Local BERT directory (config.json + weights + tokenizer), or 'minilm' for the offline "
                   "all-MiniLM-L6-v2 package.")
@click.option("--instances", "-n", type=COUNT, default=2, show_default=True, help="N: sentences multiplexed per forward pass.")
@click.option("--task", default=None,
              help="GLUE task (sets labels and whether token_type_ids are used), or custom with --labels and "
                   "--text-column (and --text-pair-column for sentence pairs) [default: none: labels LABEL_0, "
                   "LABEL_1, ... (see --num-labels), which `train --task` replaces].")
@functools.partial(column_options, new_model=True)
@click.option("--num-labels", type=COUNT, default=None, help="Number of classes (default: the task's, else 2).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the mux vectors and the new demux weights.")
@click.option("--max-seq-length", type=COUNT, default=None,
              help="Longest input the engine expects, in tokens [default: 128, or the base model's position "
                   "table where smaller; a longer one is refused].")
@click.option("--demux", type=click.Choice(NEW_MODEL_DEMUX_KINDS), default="key_cls", show_default=True,
              help="Demux read-out: 'key_cls' reads [key_i ; h_CLS] (formerly called 'index'); 'key_pool' "
                   "averages [key_i ; h_t] features over instance i's own tokens; 'index_pos' is MUX-PLMs' "
                   "RSA demux with its upstream topology (3 demux layers).")
@click.option("--mux", type=click.Choice(INSTANCE_VECTOR_INITS), default=None, help=MUX_HELP)
@click.option("--random-prune", type=FRACTION_BELOW_1, default=None, metavar="S",
              help="Attach random CoFi-like masks removing fraction S of the encoder (a demo / speed-study "
                   "stand-in for a trained pruned model).")
@force_option()
def init(out, base, instances, task, text_column, text_pair_column, label_column, labels, num_labels, seed,
         max_seq_length, demux, mux, random_prune, force):
    """Create an untrained PruMUX checkpoint in OUT from a BERT encoder."""
    from ..atomic import check_target
    from ..checkpoint import create_model, resolve_base, save_checkpoint
    from ..data import resolve_task

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
    model = create_model(resolve_base(base), num_instances=instances, num_labels=num_labels or 2, seed=seed,
                         id2label=id2label, task=task, max_seq_length=max_seq_length, demux_kind=demux,
                         mux_init=mux,
                         task_columns=t.columns if t is not None and t.custom else None)
    if random_prune is not None:
        from ..generate import cofi_like_structure, masks_for_structure

        heads, ffn = cofi_like_structure(model.config, random_prune, seed=seed)
        model.set_masks(masks_for_structure(model.config, heads, ffn, seed=seed, fractional=True))
    save_checkpoint(model, out, force=force)
    click.echo(f"wrote {out} (N={instances}, {model.config.num_hidden_layers} layers, "
               f"H={model.config.hidden_size}, labels {list(model.config.id2label.values())})")


@click.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Choice(["compact", "masked"]), default="compact", show_default=True,
              help="PruMUX stage-1 runs only: 'compact' reproduces what upstream's evaluation reports (its own "
                   "fold and cut, quirks included); 'masked' reproduces the masked model training optimised "
                   "(through our exact compaction). See docs/upstream.md.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer directory (vocab.txt ...) when SRC has none (MUX-PLMs hub checkpoints). Default: "
                   "SRC, or the parent of a best/ directory.")
@click.option("--max-seq-length", type=COUNT, default=None,
              help="Longest input; multiplexed upstream models attend to padding up to exactly this length, so it "
                   "is part of the model [default: 128, upstream's evaluation length].")
@click.option("--mask-padding", is_flag=True,
              help="Multiplexed models: mask padding instead of attending to it up to the fixed length (faster on "
                   "short inputs, changes the logits; measure with validate, see docs/upstream.md).")
@force_option()
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
    from ..upstream import import_checkpoint, summary

    model = import_checkpoint(src, out, reference=reference, tokenizer=tokenizer, max_seq_length=max_seq_length,
                              mask_padding=mask_padding, force=force)
    click.echo(f"imported {summary(model)}; wrote {out}")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--fp16", is_flag=True, help="Store the compact weights in float16 (half the size).")
@force_option()
def compact(checkpoint, out, fp16, force):
    """Fold the masks of CHECKPOINT and write the smaller dense model to OUT."""
    import torch

    from ..atomic import check_target
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..compact import compact as fold
    from ..structure import describe

    check_target(out, force)
    if Path(out).exists() and Path(out).resolve() == Path(checkpoint).resolve():
        raise PruMuxError(f"{out} is CHECKPOINT itself; write the compact model to another directory (the masked "
                          "one is what training and validation read, and --fp16 is lossy)")
    masked = load_checkpoint(checkpoint)
    model = fold(masked)
    save_checkpoint(model, out, force=force, dtype=torch.float16 if fp16 else None)
    info = describe(model, masked)
    click.echo(f"wrote {out}: params {info['params_total_before']:,} -> {info['params_total']:,}, "
               f"encoder sparsity {info['sparsity']:.1%}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the structure as JSON.")
def inspect(path, as_json):
    """Show the per-layer structure of a checkpoint or an engine directory."""
    from ..structure import format_table, inspect_path

    header, info = inspect_path(path)
    if as_json:
        click.echo(dumps(info, indent=2))
    else:
        click.echo(header)
        click.echo(format_table(info))
