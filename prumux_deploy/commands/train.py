"""`prumux-deploy train warmup | pretrain | finetune | prune | all`: the training stages (prumux_deploy/train/) on the
command line."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..checkpoint import resolve_base
from ..data import CORPUS_FORMS
from ..errors import PruMuxError
from ..options import (COUNT, DATA_FORMS, FRACTION, FRACTION_BELOW_1, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, SEED,
                       data_options, force_option)
from ._group import CommandGroup


EVALUATION_OPTIONS = ("max_eval_samples", "eval_split")  # what a stage without a held-out evaluation lacks


def common_options(fn, only: tuple[str, ...] | None = None, evaluates: bool = True):
    """Flags every stage takes (CPU budgets, data, logging and checkpointing); `only`: just these of them, by
    parameter name, without the data options (train pretrain reads a corpus, not a task's data). A stage that
    does not `evaluate` on held-out rows (warm-up, pre-training) lacks EVALUATION_OPTIONS, and its --eval-every
    only logs the training losses."""
    eval_every_help = ("Evaluate on --eval-split and log every K steps." if evaluates else
                       "Log the training losses every K steps (this stage has no held-out evaluation).")
    options = [
        click.option("--task", default="sst2", show_default=True,
                     help="GLUE task, or custom (your own columns and labels: --text-column, --label-column, ...)."),
        click.option("--data", default="../shared/data/glue/SST-2", show_default=True, help=DATA_FORMS),
        click.option("--instances", "-n", type=COUNT, default=2, show_default=True, help="N: sentences per forward pass."),
        click.option("--epochs", type=POSITIVE, default=1.0, show_default=True, help="Passes over the (subsampled) train split."),
        click.option("--batch-size", type=COUNT, default=32, show_default=True,
                     help="Sentences per optimizer step over all processes (the global batch; a multiple of "
                          "processes x --grad-accum x N)."),
        click.option("--grad-accum", default=1, show_default=True, type=COUNT,
                     help="Micro-batches per optimizer step: each process runs batch/(processes x K) rows at a "
                          "time, for large global batches on few devices."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when available), cpu, cuda or cuda:K. Under torchrun each process takes "
                          "cuda:LOCAL_RANK."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                     help="Autocast precision of forward passes (weights and optimizer state stay fp32); fp16 "
                          "adds a gradient scaler and needs CUDA."),
        click.option("--lr", type=POSITIVE, default=5e-5, show_default=True, help="Peak learning rate (linear warm-up and decay)."),
        click.option("--dropout", type=FRACTION_BELOW_1, default=0.0, show_default=True,
                     help="Dropout probability at BERT's dropout sites while training (0 = none)."),
        click.option("--max-train-samples", type=COUNT, default=None, help="Use only the first K train rows."),
        click.option("--max-eval-samples", type=COUNT, default=None, help="Evaluate on the first K dev rows."),
        click.option("--max-seq-length", type=COUNT, default=64, show_default=True, help="Truncate inputs to this many tokens."),
        click.option("--eval-every", type=COUNT, default=200, show_default=True, help=eval_every_help),
        click.option("--save-every", type=COUNT, default=100, show_default=True,
                     help="Save resumable state every K steps (an interruption loses at most K)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Seeds the data order, the new layers' initialisation and the instance vectors."),
        click.option("--train-split", default="train", show_default=True, help="The split trained on."),
        click.option("--eval-split", default="dev", show_default=True,
                     help="The split evaluated every --eval-every steps and at the end."),
        click.option("--skip-bad-rows", is_flag=True,
                     help="Skip (and count) unusable rows of the data (malformed, an empty text, an unknown label) "
                          "instead of refusing the data."),
        click.option("--resume", is_flag=True, help="Continue from OUT.run/ where an interrupted run stopped."),
        force_option(),
    ]
    for option in reversed(options):
        name = _option_name(option)
        if (only is None or name in only) and (evaluates or name not in EVALUATION_OPTIONS):
            fn = option(fn)
    if not evaluates:  # said in one line, not "No such option ... Did you mean --train-split?"
        for name in EVALUATION_OPTIONS:
            fn = click.option("--" + name.replace("_", "-"), hidden=True, expose_value=False,
                              callback=_no_evaluation)(fn)
    return data_options(fn) if only is None else fn


def _no_evaluation(ctx, param, value):
    if value is not None:
        raise click.UsageError(f"--{param.name.replace('_', '-')}: this stage evaluates nothing (it has no held-out "
                               "split to read); leave the option out", ctx)


def _option_name(decorator) -> str:
    """The parameter name a click.option decorator declares (what common_options' `only` lists)."""
    return decorator(lambda: None).__click_params__[0].name


def _args(kw):
    from ..train.loop import TrainArgs

    fields = ("task", "data", "instances", "epochs", "batch_size", "lr", "dropout", "max_train_samples",
              "max_eval_samples", "max_seq_length", "eval_every", "save_every", "seed", "train_split", "eval_split",
              "device", "precision", "grad_accum", "data_config", "text_column", "text_pair_column",
              "label_column", "labels", "skip_bad_rows")
    return _checked(TrainArgs(**{k: kw.pop(k) for k in fields if k in kw}, demux=kw.pop("demux", None),
                              mux=kw.pop("mux", None), learn_mux=kw.pop("learn_mux", False),
                              second_embedding_pass=kw.pop("second_embedding_pass", False),
                              demux_key_std=kw.pop("demux_key_std", None),
                              max_seq_length_given=_given("max_seq_length")))


def _given(parameter: str) -> bool:
    """The user gave this option (not its default): a default length shrinks to fit a model with a smaller
    position table, a given one is checked against it (train/stages.py _fit_length)."""
    source = click.get_current_context().get_parameter_source(parameter)
    return source is not click.core.ParameterSource.DEFAULT


def _checked(args):
    """What every stage's arguments must satisfy before any work."""
    if args.batch_size < args.instances:
        raise PruMuxError(f"--batch-size {args.batch_size} is smaller than N={args.instances}")
    return args


def prune_options(fn):
    options = [
        click.option("--sparsity", "-s", type=FRACTION_BELOW_1, default=0.0,
                     help="Target fraction of prunable encoder parameters removed: in (0, 1), required for `train "
                          "prune`; for `train all`, 0 (the default there) skips pruning."),
        click.option("--reg-lr", type=POSITIVE, default=0.01, show_default=True, help="Learning rate of gates and multipliers."),
        click.option("--ramp", type=FRACTION, default=0.5, show_default=True,
                     help="Fraction of pruning steps over which the target rises linearly from 0."),
        click.option("--final-epochs", type=NON_NEGATIVE, default=0.5, show_default=True,
                     help="Fine-tuning epochs with the final masks fixed."),
        click.option("--no-hidden-pruning", is_flag=True, help="Keep every hidden dim."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def demux_option(fn):
    """--mux and --demux: the multiplexer and read-out of a new model."""
    from ..model import INSTANCE_VECTOR_INITS, NEW_MODEL_DEMUX_KINDS

    from ..options import MUX_HELP

    fn = click.option("--second-embedding-pass", is_flag=True,
                      help="A new model adds the position and token-type rows to the mixed sequence and runs the "
                           "embedding LayerNorm again after multiplexing (upstream's MUX-PLMs forward).")(fn)
    fn = click.option("--demux-key-std", type=POSITIVE, default=None,
                      help="A new model draws its demux keys from N(0, STD) (upstream: 1).  [default: 0.02]")(fn)
    fn = click.option("--learn-mux", is_flag=True,
                      help="A new model trains its instance vectors with the encoder (DataMUX keeps them fixed); "
                           "the engine holds the trained values.")(fn)
    fn = click.option("--mux", type=click.Choice(INSTANCE_VECTOR_INITS), default=None, help=MUX_HELP)(fn)
    return click.option("--demux", type=click.Choice(NEW_MODEL_DEMUX_KINDS), default=None,
                        help="Demux read-out of a new model, or switch the starting checkpoint's between key_cls "
                             "and key_pool (they share weights): 'key_cls' reads [CLS], 'key_pool' averages over "
                             "each instance's tokens, 'index_pos' is MUX-PLMs' RSA demux. "
                             "Default: the checkpoint's, or 'key_cls' for a new model.")(fn)


def _prune_args(kw):
    from ..train.stages import PruneArgs

    return PruneArgs(sparsity=kw.pop("sparsity"), reg_lr=kw.pop("reg_lr"), warmup_frac=kw.pop("ramp"),
                     final_epochs=kw.pop("final_epochs"), prune_hidden=not kw.pop("no_hidden_pruning"))


def _echo(msg):
    click.echo(msg, err=True)


@click.group(cls=CommandGroup)
def train():
    """Train PruMUX models: warm-up, pre-train (MLM), fine-tune, prune (CoFi), or all in order.

    Each stage writes a checkpoint directory (the contract `export` reads), OUT/train_log.jsonl, and
    keeps resumable state in OUT.run/.
    """


@train.command("warmup")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--base", default="minilm", show_default=True, help="BERT directory, 'minilm', or a checkpoint.")
@click.option("--teacher", default=None,
              help="Also match this unmultiplexed encoder's per-token states for every instance (contextual "
                   "warm-up): 'minilm', a BERT directory, or an N=1 checkpoint.")
@click.option("--context-weight", type=NON_NEGATIVE, default=1.0, show_default=True,
              help="With --teacher: the weight of the contextual loss beside the retrieval loss (weight 1).")
@demux_option
@functools.partial(common_options, evaluates=False)
def warmup_cmd(out, base, teacher, context_weight, resume, force, **kw):
    """Token-retrieval warm-up of the multiplexer and demultiplexer (plus contextual distillation with
    --teacher).

    At every position of the multiplexed sequence the demultiplexer, given one instance's key (drawn at
    random per position), predicts that instance's token through a decoder tied to the word embeddings
    (DataMUX's retrieval task). It teaches the model to keep the N sentences apart before `train finetune
    --init OUT` learns the task. With --teacher, the loss adds (times --context-weight) the relative squared error between
    each instance's demux features and the teacher's final states for that sentence alone. Labels are not
    used, so there is no evaluation: --eval-every logs the training losses."""
    from ..train.stages import warmup

    if teacher is None and _given("context_weight"):
        raise PruMuxError("--context-weight weighs the contextual loss, which needs --teacher; give a --teacher or "
                          "leave --context-weight out")
    warmup(resolve_base(base), out, _args(kw), resume=resume, force=force, log=_echo,
           teacher_dir=None if teacher is None else resolve_base(teacher), context_weight=context_weight)


def _runtime_options(fn):
    """The batch, device and checkpointing flags pretrain shares with the other stages."""
    return common_options(fn, only=("batch_size", "grad_accum", "device", "precision", "dropout", "eval_every",
                                    "save_every", "seed", "resume", "force"), evaluates=False)


@train.command("pretrain")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--corpus", required=True, help=f"Unlabelled text: {CORPUS_FORMS[0].upper()}{CORPUS_FORMS[1:]}. "
                                              "Streamed and tokenized as training goes; read in order (shuffle a "
                                              "corpus whose order is correlated beforehand).")
@click.option("--text-column", default="text", show_default=True,
              help="The column holding the text (.txt files: each line is 'text').")
@click.option("--split", default="train", show_default=True,
              help="The split of a save_to_disk DatasetDict or hub dataset (in a directory of files: the files "
                   "named after it, when some are).")
@click.option("--corpus-config", default=None, help="Configuration of a hub dataset given as --corpus "
                                                    "(e.g. 20231101.en for wikimedia/wikipedia).")
@click.option("--line-by-line", is_flag=True,
              help="One text per row ([CLS] text [SEP], truncated), for sentence-per-line corpora. Default: texts "
                   "concatenated and cut into full rows of --max-seq-length (upstream's packing).")
@click.option("--base", default=None,
              help="BERT directory or 'minilm' for a new model [default: minilm, unless --init].")
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Checkpoint to start from instead: a `train warmup` output (the usual start) or an earlier "
                   "`train pretrain` output (its MLM head too).")
@click.option("--mlm-head", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Take the MLM head from this BertForMaskedLM directory or pre-trained checkpoint [default: the "
                   "start's own, else a new head].")
@click.option("--instances", "-n", type=COUNT, default=2, show_default=True, help="N: sentences per forward pass.")
@click.option("--steps", type=COUNT, default=10000, show_default=True,
              help="Optimizer steps (the corpus is re-read from its start as needed; upstream ran 1,000,000).")
@click.option("--lr", type=POSITIVE, default=1e-4, show_default=True,
              help="Peak learning rate (linear warm-up over 6% of the steps, then linear decay; upstream: 1e-4).")
@click.option("--max-seq-length", type=COUNT, default=128, show_default=True, help="Tokens per row.")
@click.option("--mlm-probability", type=OPEN_FRACTION, default=0.15, show_default=True,
              help="Fraction of tokens masked (of those, 80% become [MASK], 10% a random token, 10% stay).")
@click.option("--mlm-weight", type=NON_NEGATIVE, default=0.9, show_default=True,
              help="Weight of the MLM loss (upstream's task_loss_coeff).")
@click.option("--retrieval-weight", type=NON_NEGATIVE, default=0.1, show_default=True,
              help="Weight of the auxiliary token-retrieval loss (upstream's retrieval_loss_coeff; 0 turns it off).")
@demux_option
@_runtime_options
def pretrain_cmd(out, corpus, text_column, split, corpus_config, line_by_line, base, init, mlm_head, instances,
                 steps, lr, max_seq_length, mlm_probability, mlm_weight, retrieval_weight, demux, mux, learn_mux,
                 second_embedding_pass, demux_key_std, resume, force, **kw):
    """Multiplexed pre-training: masked language modelling through the multiplexer (MUX-PLMs), on any corpus.

    Start from a warm-up checkpoint (--init) or a BERT (--base); OUT is a checkpoint that `train finetune --init`
    and `train all --init` take. Same devices, precisions and torchrun data parallelism as the other stages."""
    from ..train.corpus import CorpusArgs
    from ..train.loop import TrainArgs
    from ..train.stages import PretrainArgs, pretrain

    if base is not None and init is not None:
        raise PruMuxError("give `base` (a BERT for a new model) or `init` (a checkpoint), not both")
    args = _checked(TrainArgs(task=None, data=None, instances=instances, epochs=0.0, lr=lr, demux=demux, mux=mux,
                              learn_mux=learn_mux, second_embedding_pass=second_embedding_pass,
                              demux_key_std=demux_key_std,
                              max_seq_length=max_seq_length, max_seq_length_given=_given("max_seq_length"), **kw))
    source = init if init is not None else resolve_base(base or "minilm")
    pretrain(source, out, args,
             CorpusArgs(corpus=corpus, text_column=text_column, split=split, config=corpus_config,
                        line_by_line=line_by_line),
             PretrainArgs(steps=steps, mlm_probability=mlm_probability, mlm_weight=mlm_weight,
                          retrieval_weight=retrieval_weight, mlm_head=None if mlm_head is None else str(mlm_head)),
             resume=resume, force=force, log=_echo)


@train.command("finetune")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--init", "init", default="minilm", show_default=True,
              help="Checkpoint to start from (e.g. the warm-up output), a BERT directory, or 'minilm'.")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Also distil from this fine-tuned checkpoint's predictions (e.g. the N=1 model; same tokenizer).")
@click.option("--hidden-distill", "hidden_distill", type=NON_NEGATIVE, default=0.0, show_default=True,
              help="Weight of per-layer hidden-state distillation from --teacher (then an N=1 checkpoint of the "
                   "same depth): a training-only readout of each layer's multiplexed state per instance learns to "
                   "match the teacher's state of that sentence alone. 0 turns it off.")
@click.option("--keep-best", is_flag=True,
              help="Write the weights of the evaluation (every --eval-every steps) with the best --eval-split "
                   "accuracy instead of the last step's, as upstream's fine-tuning does. A selection on that split: "
                   "its accuracy there is then optimistic.")
@click.option("--retrieval-weight", "retrieval_weight", type=NON_NEGATIVE, default=0.0, show_default=True,
              help="Weight of the warm-up's token retrieval kept as an auxiliary loss on the same multiplexed "
                   "batches (upstream's retrieval_loss_coeff, 0.1 there). 0 turns it off.")
@demux_option
@common_options
def finetune_cmd(out, init, teacher, hidden_distill, keep_best, retrieval_weight, resume, force, **kw):
    """GLUE fine-tuning of the multiplexed model (cross-entropy on every instance, plus distillation from
    --teacher when given)."""
    from ..train.stages import finetune

    finetune(resolve_base(init), out, _args(kw), resume=resume, force=force, log=_echo, teacher_dir=teacher,
             hidden_distill=hidden_distill, keep_best=keep_best, retrieval_weight=retrieval_weight)


@train.command("prune")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--teacher", required=True, type=click.Path(path_type=Path),
              help="The fine-tuned checkpoint of the same N (also the student's starting point).")
@prune_options
@common_options
def prune_cmd(out, teacher, resume, force, **kw):
    """CoFi structured pruning with distillation, then fine-tuning with the masks fixed."""
    from ..train.stages import prune

    prune_args = _prune_args(kw)
    prune(teacher, out, _args(kw), prune_args, resume=resume, force=force, log=_echo)


@train.command("all")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--base", default="minilm", show_default=True, help="BERT directory or 'minilm'.")
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Start from this checkpoint instead of --base and skip the warm-up: a `train pretrain` or "
                   "`train warmup` output.")
@click.option("--warmup-epochs", type=NON_NEGATIVE, default=0.5, show_default=True, help="Epochs of retrieval warm-up (0 skips it).")
@click.option("--prune-epochs", default=None, type=POSITIVE, help="Epochs of pruning (default: --epochs).")
@click.option("--warmup-teacher", default=None,
              help="Contextual warm-up: also match this unmultiplexed encoder's per-token states ('minilm', a "
                   "BERT directory, or an N=1 checkpoint).")
@click.option("--finetune-teacher", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Distil the fine-tune from this checkpoint's predictions (e.g. the N=1 model).")
@prune_options
@demux_option
@common_options
def all_cmd(out, base, init, warmup_epochs, prune_epochs, warmup_teacher, finetune_teacher, resume, force, **kw):
    """warm-up -> fine-tune -> prune; writes OUT/warmup, OUT/finetune, OUT/pruned (s=0 stops after fine-tune).
    With --init the fine-tune starts from that checkpoint (no warm-up)."""
    from ..train.stages import PipelineArgs, train_all

    prune_args = _prune_args(kw)
    pipeline = PipelineArgs(warmup_epochs=warmup_epochs, prune_epochs=prune_epochs, warmup_teacher=warmup_teacher,
                            finetune_teacher=finetune_teacher)
    start = init if init is not None else resolve_base(base)
    train_all(start, out, _args(kw), prune_args, pipeline, from_checkpoint=init is not None, resume=resume,
              force=force, log=_echo)
