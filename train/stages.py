"""The training stages: warm-up, pre-training (MLM through the multiplexer), fine-tune, prune, and warm-up /
fine-tune / prune in order.

Each stage reads a checkpoint (or a BERT base for the first), trains, and writes a checkpoint directory
of the contract in prumux_deploy/checkpoint.py to OUT, with OUT/train_log.jsonl (one JSON record per
evaluation, kept while training in OUT.run/log.jsonl) and OUT.run/train_state.pt for --resume.

Every stage runs on --device with --precision autocast, and unchanged under torchrun (distributed.py):
the trainable modules of a stage and its loss on one micro-batch form one `Objective` module, which
DistributedDataParallel wraps, so every parameter a loss reaches has its gradient averaged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from prumux_deploy.atomic import atomic_dir, check_target
from prumux_deploy.checkpoint import (check_vocab, create_model, load_checkpoint, read_config, resolve_base,
                                      write_checkpoint)
from prumux_deploy.data import load_tokenizer
from prumux_deploy.errors import PruMuxError
from prumux_deploy.compact import compact
from prumux_deploy.structure import describe

from .distributed import Runtime, runtime
from .gates import CoFiGates, lagrangian_term
from .loop import (RunState, TrainArgs, evaluate, holds_run_lock, load_task_data, model_inputs,
                   names_written_outputs, progress, run_dir, run_options, seed_everything, soft_targets, task_of)
from .corpus import CorpusArgs, CorpusStream, mask_tokens, masking_generator
from .losses import (ContextHead, LayerAlignment, LayerReadout, MLMHead, contextual_distillation_loss,
                     hidden_state_distillation, prediction_distillation,
                     pretraining_losses, pretraining_totals, read_bert_mlm_head, retrieval_from_encoder_output,
                     retrieval_loss, StepChoices)


def _linear_schedule(optimizer, total_steps: int, warmup_frac: float = 0.06):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Objective(torch.nn.Module):
    """A stage's trainable modules and its loss on one micro-batch, as one module (what DDP wraps):
    forward(part) -> (loss, {name: float} to log)."""

    def __init__(self, loss_fn, **modules):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)
        self.loss_fn = loss_fn

    def forward(self, part):
        return self.loss_fn(part)


def _step(rt: Runtime, objective, batch: dict, args: TrainArgs, optimizers, schedules, scaler) -> dict:
    """One optimisation step on a global batch: this process's rows in --grad-accum micro-batches, forward
    under autocast, backward (scaled for fp16; DDP averages the gradients on the last micro-batch), step
    every optimizer, advance the LR schedules. Returns the losses averaged over micro-batches and processes."""
    for opt in optimizers:
        opt.zero_grad()
    parts = rt.shard(batch, args.grad_accum)
    records = []
    for m, part in enumerate(parts):
        with rt.no_sync(objective, last_micro_step=m == len(parts) - 1):
            with rt.autocast():
                loss, record = objective(part)
            scaler.scale(loss / len(parts)).backward()
        records.append(record)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for schedule in schedules:
        schedule.step()
    keys = list(records[0])
    means = rt.global_sum([sum(r[k] for r in records) / len(records) for k in keys]) / rt.world_size
    return dict(zip(keys, means.tolist()))


def _runtime(args: TrainArgs, log=print) -> Runtime:
    rt = runtime(args.device, args.precision)
    if args.grad_accum < 1:
        raise PruMuxError(f"`grad_accum` must be at least 1, got {args.grad_accum}")
    unit = rt.world_size * args.grad_accum * args.instances  # every micro-batch holds whole mux groups
    if args.batch_size < unit:
        raise PruMuxError(f"`batch_size` {args.batch_size} is smaller than processes x `grad_accum` x N = "
                          f"{rt.world_size} x {args.grad_accum} x {args.instances} = {unit}")
    if args.batch_size % unit:  # rounded down to whole micro-batches, and said: the run must not differ silently
        rounded = args.batch_size - args.batch_size % unit
        if rt.is_main:
            log(f"note: --batch-size {args.batch_size} rounded down to {rounded}, a multiple of processes x "
                f"--grad-accum x N = {unit} (every micro-batch holds whole mux groups)")
        args.batch_size = rounded
    return rt


def _total_steps(args: TrainArgs, batches) -> int:
    return max(1, int(math.ceil(args.epochs * batches.steps_per_epoch)))


def _is_checkpoint(source: Path) -> bool:
    return (source / "config.json").is_file() and '"prumux-checkpoint"' in (source / "config.json").read_text()


def _base_positions(base: Path) -> int:
    import json

    try:
        return int(json.loads((base / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1 << 30  # create_model reports an unreadable base in its own words


def _fit_length(args: TrainArgs, positions: int, source):
    """A --max-seq-length beyond the model's position table is refused; the default (64) shrinks to fit a
    smaller table (args.max_seq_length_given, set by the command line, tells which it is)."""
    if args.max_seq_length <= positions:
        return
    if args.max_seq_length_given:
        raise PruMuxError(f"`max_seq_length` {args.max_seq_length} exceeds {source}'s position table "
                          f"({positions} positions); use at most {positions}")
    args.max_seq_length = positions


def _start_model(source, args: TrainArgs, device=None) -> torch.nn.Module:
    """A checkpoint directory (config.json with our format) or a BERT base directory / 'minilm'."""
    source = Path(source)
    if _is_checkpoint(source):
        model = load_checkpoint(source)
        if model.config.num_instances != args.instances:
            raise PruMuxError(f"{source} has N={model.config.num_instances}, but `instances` is {args.instances}")
        _check_mux_choice(model, args, source)
        if args.demux:
            model.set_demux_kind(args.demux)
        _fit_length(args, model.config.max_position_embeddings, source)
        if model.config.task is None and args.task:  # a pre-trained checkpoint has no task yet: it takes this one
            _adopt_task(model, task_of(args), args.seed)
    else:
        if not (source / "config.json").is_file():
            raise PruMuxError(f"{source}: no config.json, so neither a checkpoint nor a BERT directory; give a "
                              "checkpoint (what train or init writes), a local BERT directory, or 'minilm'")
        task = task_of(args)
        _fit_length(args, _base_positions(source), source)
        model = create_model(source, num_instances=args.instances, num_labels=len(task.label_names),
                             seed=args.seed, id2label=task.id2label, task=task.name,
                             max_seq_length=args.max_seq_length, demux_kind=args.demux or "key_cls",
                             task_columns=task.columns if task.custom else None, mux_init=args.mux,
                             mux_learned=args.learn_mux)
        _new_model_plumbing(model, args)
    model.set_dropout(args.dropout)
    return model.to(device or "cpu")


MUX_LR_SCALE = 100.0  # learned instance vectors (entries ~1) move at 100x the encoder's rate, without decay


def param_groups(model, lr: float, *extra: torch.nn.Module) -> list[dict]:
    """AdamW parameter groups of a model (and the extra modules trained with it): learned instance vectors
    (config.mux_learned) get lr * MUX_LR_SCALE and no weight decay, so that a stage of a few hundred steps
    can move them by O(1) (at the encoder's rate Adam moves each entry by at most about lr per step)."""
    learned = getattr(getattr(model, "config", None), "mux_learned", False)
    vectors = [model.mux.vectors] if learned else []
    rest = [p for p in model.parameters() if all(p is not v for v in vectors)]
    rest += [p for module in extra for p in module.parameters()]
    groups = [{"params": rest}]
    if vectors:
        groups.append({"params": vectors, "lr": lr * MUX_LR_SCALE, "weight_decay": 0.0})
    return groups


def _new_model_plumbing(model, args: TrainArgs):
    """Upstream's forward and initialisation choices for a new model (MUX-PLMs / DataMUX code; issue 35 measures
    each): the second embedding pass (position and token-type rows added to the mixed sequence, LayerNorm again:
    model.Embeddings.second_pass) and demux keys drawn from N(0, std) (upstream: std 1; here 0.02 by default)."""
    if args.second_embedding_pass:
        model.config.second_embedding_pass = True
    keys = getattr(model.demux, "keys", None)
    if args.demux_key_std is not None and keys is not None:
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            keys.copy_(torch.randn(keys.shape, generator=gen) * args.demux_key_std)
    return model


def _check_mux_choice(model, args: TrainArgs, source):
    """--mux draws a new model's instance vectors; a checkpoint's were trained with its encoder and stay."""
    if args.second_embedding_pass and not model.config.second_embedding_pass:
        raise PruMuxError(f"{source} runs one embedding pass; --second-embedding-pass applies to new models only "
                          "(start from a BERT directory or 'minilm'), or drop it")
    if args.demux_key_std is not None:
        raise PruMuxError(f"{source} has trained demux keys; --demux-key-std applies to new models only (start from "
                          "a BERT directory or 'minilm'), or drop it")
    if args.learn_mux and not model.config.mux_learned:
        raise PruMuxError(f"{source} has fixed instance vectors; --learn-mux applies to new models only (start "
                          f"from a BERT directory or 'minilm'), or drop it")
    if args.mux is None:
        return
    has = model.config.mux_init or ("ones" if model.config.num_instances == 1 else "gaussian")
    if args.mux != has:
        raise PruMuxError(f"{source} already has {has} instance vectors; --mux {args.mux} applies to new models "
                          f"only (start from a BERT directory or 'minilm'), or drop --mux")


def _adopt_task(model, task, seed: int):
    """Give a task-less checkpoint (what `train pretrain` writes) the task a stage trains it on: its labels and
    columns, and a fresh classifier when the label count differs (the pre-trained one was never trained)."""
    cfg = model.config
    if len(task.label_names) != cfg.num_labels:
        torch.manual_seed(seed)
        old = model.demux.classifier
        model.demux.classifier = torch.nn.Linear(old.in_features, len(task.label_names)).to(old.weight.device)
    cfg.num_labels, cfg.id2label, cfg.task = len(task.label_names), task.id2label, task.name
    cfg.task_columns = task.columns if task.custom else None


def _train(run: RunState, args: TrainArgs, resume: bool, objects: dict, total: int, step_fn, eval_fn,
           desc: str, rt: Runtime, fresh_log: bool = True, options: dict | None = None, **start_record):
    """The loop every stage shares: resume, step, log/evaluate every --eval-every, save every --save-every
    and at the end (so resuming a finished phase is a no-op). Every process runs it; rank 0 writes.
    options: the stage's own options besides `args`, which a resumed run must share with the interrupted one
    (loop.run_options; compared before anything is restored or logged)."""
    run.options = run_options(args, **(options or {}))
    step = run.load(objects, run.options) if resume else 0
    stage_options = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in (options or {}).items()}
    run.start(args, resume, fresh_log, processes=rt.world_size, options=stage_options, **start_record)
    bar = progress(total, step, desc, disable=not rt.is_main)
    last, evaluated = {}, {}  # the step's losses; the last evaluation's results (the bar shows both)
    while step < total:
        last = step_fn(step)
        step += 1
        bar.set_postfix({k: f"{v:.3g}" for k, v in {**last, **evaluated}.items()}, refresh=False)  # shown by update
        bar.update(1)
        if step % args.eval_every == 0 or step == total:
            evaluated = eval_fn()
            run.log({"event": "eval", "step": step, **last, **evaluated})
        if step % args.save_every == 0 or step == total:
            run.save(step, objects)
    bar.close()
    return last


class _Trained:
    """What a single-model stage trains: the objects its run state saves and restores, its optimizers and LR
    schedules (stepped together by _step), and its modules by name (one Objective, which DDP wraps)."""

    def __init__(self, model, optimizer, schedule):
        self.objects = {"model": model, "optimizer": optimizer, "schedule": schedule}
        self.optimizers, self.schedules, self.modules = [optimizer], [schedule], {"model": model}

    def add_fresh(self, name: str, module, state_names: tuple[str, str, str], lr: float, total: int) -> None:
        """A freshly initialised module trained beside the model, with its own AdamW at 10x `lr`: at an encoder's
        fine-tuning rate new layers would take thousands of steps to move. state_names: the run state's names of
        the module, its optimizer and its schedule."""
        optimizer = torch.optim.AdamW(module.parameters(), lr=10 * lr, weight_decay=0.01)
        schedule = _linear_schedule(optimizer, total)
        self.objects.update(zip(state_names, (module, optimizer, schedule)))
        self.optimizers.append(optimizer)
        self.schedules.append(schedule)
        self.modules[name] = module


def _single_model_stage(source, out, args: TrainArgs, force: bool, stage: str, with_eval: bool = True, log=print):
    """What warm-up and fine-tuning both set up: the runtime, the model on its device, its data, AdamW with
    the linear schedule, and the run state beside OUT. Refuses an existing OUT before any work."""
    check_target(out, force)
    rt = _runtime(args, log)
    seed_everything(args.seed)
    model = _start_model(source, args, rt.device).train()
    _, batches, dev = load_task_data(args, model.tokenizer_dir, args.instances, with_eval=with_eval, cfg=model.config,
                                     warn=log if rt.is_main else None)
    total = _total_steps(args, batches)
    optimizer = torch.optim.AdamW(param_groups(model, args.lr), lr=args.lr, weight_decay=0.01)
    schedule = _linear_schedule(optimizer, total)
    run = RunState(run_dir(out), stage, main=rt.is_main)
    return rt, model, batches, dev, total, optimizer, schedule, run


# --- 1. warm-up: token retrieval ---------------------------------------------------------------

@names_written_outputs(lambda arguments: [arguments["out"]])
@holds_run_lock
def warmup(base, out, args: TrainArgs, resume: bool = False, force: bool = False, log=print, teacher_dir=None,
           context_weight: float = 1.0):
    """Train mux/demux (and the encoder) to retrieve each instance's tokens from the mixed sequence. With
    `teacher_dir` (an unmultiplexed encoder: a BERT directory or an N=1 checkpoint), also to
    reproduce the teacher's contextual state of every instance's every token (contextual_distillation_loss),
    weighted by `context_weight`.

    base/init/teacher_dir: a checkpoint directory, or a BERT directory for a new model (resolve_base turns
    "minilm" into one). out: the checkpoint directory to write (refused if it exists, unless force). args: the
    data, batch (sentences per optimizer step over all processes), learning rate, epochs, device and precision
    (loop.TrainArgs). resume: continue from out.run/train_state.pt. log: receives progress lines.

    Returns the trained model; writes `out` (a checkpoint) and out/train_log.jsonl. Raises PruMuxError for
    unusable arguments or data (before training), CheckpointError for an unreadable start."""
    check_target(out, force)
    rt, model, batches, _, total, optimizer, schedule, run = _single_model_stage(base, out, args, force, "warmup",
                                                                                 with_eval=False, log=log)
    _check_can_retrieve(model, base, "warm up an unpruned key_cls, key_pool or index_pos model")
    teacher = None if teacher_dir is None else _contextual_teacher(teacher_dir, args, rt.device)
    parts = _Trained(model, optimizer, schedule)
    if teacher is not None:
        _check_same_tokenizer(teacher, model, f"`teacher` {teacher_dir}")
        head = ContextHead(model.config.hidden_size, teacher.config.hidden_size).to(rt.device)
        parts.add_fresh("head", head, ("context_head", "opt_head", "schedule_head"), args.lr, total)
    choices = StepChoices(args.instances, args.seed)

    def loss_fn(part):
        retrieval = retrieval_loss(model, part["input_ids"], part["attention_mask"], choices.of(part), rt)
        if teacher is None:
            return retrieval, {"loss": retrieval.item()}
        context = contextual_distillation_loss(model, teacher, head, part["input_ids"], part["attention_mask"], rt)
        loss = retrieval + context_weight * context
        return loss, {"loss": loss.item(), "retrieval": retrieval.item(), "context": context.item()}

    objective, scaler = rt.wrap(Objective(loss_fn, **parts.modules)), rt.grad_scaler()

    def step_fn(step):
        batch = batches.batch(step)
        choices.draw(batch["input_ids"], step)
        return _step(rt, objective, batch, args, parts.optimizers, parts.schedules, scaler)

    last = _train(run, args, resume, parts.objects, total, step_fn, lambda: {}, "warmup", rt,
                  options={"base": base, "teacher": None if teacher_dir is None else str(teacher_dir),
                           "context_weight": context_weight})
    _save(model, out, run, force, rt)
    context = f", contextual error {last['context']:.3f}" if "context" in last else ""
    if rt.is_main:
        log(f"warmup: {total} steps, final retrieval loss "
            f"{last.get('retrieval', last.get('loss', float('nan'))):.3f}{context}; wrote {out}")
    return model


def _check_can_retrieve(model, source, fix: str, purpose: str = "retrieve tokens") -> None:
    """Token retrieval needs a per-instance token demux (not the N=1 pooler head) whose features (width
    hidden_size) fit the decoder tied to the word embeddings (width embedding_dim, narrower once hidden dims
    are pruned). PruMuxError naming `source` and `fix` otherwise."""
    cfg = model.config
    if not hasattr(model.demux, "instance_features"):
        raise PruMuxError(f"{source}: its {cfg.demux_kind} read-out has no per-instance token demux to {purpose} "
                          f"through; {fix}")
    if cfg.embedding_dim != cfg.hidden_size:
        raise PruMuxError(f"{source}: its hidden dims are pruned ({cfg.embedding_dim} of {cfg.hidden_size}), so "
                          f"the token decoder tied to the word embeddings does not fit the demux; {fix}")


# --- 1b. pre-train: masked language modelling through the multiplexer (MUX-PLMs) ------------------

MLM_HEAD_FILE = "mlm_head.safetensors"  # beside a pre-trained checkpoint's weights, for the next pre-training run


@dataclass
class PretrainArgs:
    steps: int = 1000                # optimizer steps (a streamed corpus has no epochs; it is re-read as needed)
    mlm_probability: float = 0.15    # upstream run_pretraining.py --mlm_probability
    mlm_weight: float = 0.9          # upstream --task_loss_coeff (the MLM loss)
    retrieval_weight: float = 0.1    # upstream --retrieval_loss_coeff
    mlm_head: str | None = None      # where the MLM head comes from, if not the start (see _mlm_head)


@names_written_outputs(lambda arguments: [arguments["out"]])
@holds_run_lock
def pretrain(source, out, args: TrainArgs, corpus: CorpusArgs, pargs: PretrainArgs, resume: bool = False,
             force: bool = False, log=print):
    """Multiplexed masked language modelling (MUX-PLMs' pre-training, PruMUX phase 2): BERT's masking of the
    corpus rows, N rows per mux group, and at every masked token of every instance the demultiplexed state
    predicts the original token through BERT's MLM head tied to the word embeddings; plus the warm-up's token
    retrieval as an auxiliary loss, weighted as upstream (losses.pretraining_losses):
        loss = mlm_weight * mlm + retrieval_weight * retrieval       (upstream defaults 0.9, 0.1)

    source: a checkpoint (usually `train warmup`'s output), or a BERT directory for a new model (resolve_base
    turns "minilm" into one). out: the checkpoint directory to write (refused if it exists, unless force): a
    task-less checkpoint that `train finetune --init` and `train all --init` take (they give it their task's
    labels), with the MLM head beside it (mlm_head.safetensors) for a later pre-training run. args: batch
    (rows per optimizer step over all processes), learning rate, sequence length, device, precision,
    --grad-accum (loop.TrainArgs; its task and data are unused). corpus: where the text is and how rows are
    made (corpus.CorpusArgs). pargs: steps, masking rate, loss weights, the head's source (PretrainArgs).
    resume: continue from out.run/train_state.pt, at the exact row of the corpus.

    Returns the model; writes `out` and out/train_log.jsonl (the step's losses and their means since the last
    line, every --eval-every). Raises PruMuxError before training for unusable arguments, a pruned start, a
    corpus without the text column or without text (DataError)."""
    check_target(out, force)
    for name, value in (("mlm_weight", pargs.mlm_weight), ("retrieval_weight", pargs.retrieval_weight)):
        if value < 0:
            raise PruMuxError(f"`{name}` must not be negative, got {value}")
    if pargs.mlm_weight == 0 and pargs.retrieval_weight == 0:
        raise PruMuxError("`mlm_weight` and `retrieval_weight` are both 0, so nothing would be trained; give "
                          "either a positive weight")
    if not 0 < pargs.mlm_probability < 1:
        raise PruMuxError(f"`mlm_probability` must be in (0, 1), got {pargs.mlm_probability}")
    rt = _runtime(args, log)
    seed_everything(args.seed)
    model = _pretrain_start_model(source, args, rt.device)
    tokenizer = load_tokenizer(model.tokenizer_dir)
    check_vocab(tokenizer, model.config, model.tokenizer_dir)
    if tokenizer.mask_token_id is None:
        raise PruMuxError(f"{model.tokenizer_dir}: the tokenizer has no [MASK] token; masked language modelling "
                          "needs one (a BERT tokenizer)")
    head, head_from = _mlm_head(model, Path(source), pargs.mlm_head, rt.device)
    stream = CorpusStream(corpus, tokenizer, args.batch_size, args.max_seq_length, rt)
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, head), lr=args.lr, weight_decay=0.01)
    schedule = _linear_schedule(optimizer, pargs.steps)
    run = RunState(run_dir(out), "pretrain", main=rt.is_main)
    choices, step_data, interval = StepChoices(args.instances, args.seed), {}, []  # totals; losses since last log

    def loss_fn(part):
        mlm, retrieval = pretraining_losses(model, head, part["input_ids"], part["attention_mask"], part["labels"],
                                            choices.of(part), step_data["totals"], args.grad_accum, rt)
        loss = pargs.mlm_weight * mlm + pargs.retrieval_weight * retrieval
        return loss, {"loss": loss.item(), "mlm": mlm.item(), "retrieval": retrieval.item()}

    objective, scaler = rt.wrap(Objective(loss_fn, model=model, head=head)), rt.grad_scaler()

    def step_fn(step):
        batch = stream.batch(step)
        inputs, labels = mask_tokens(batch, tokenizer, pargs.mlm_probability, masking_generator(args.seed, step))
        choice = choices.draw(inputs, step)
        step_data["totals"] = pretraining_totals(labels, batch["attention_mask"], choice, args.instances)
        record = _step(rt, objective, {**batch, "input_ids": inputs, "labels": labels}, args, [optimizer],
                       [schedule], scaler)
        interval.append(record)
        return record

    def interval_means():
        means = {f"mean_{k}": sum(r[k] for r in interval) / len(interval) for k in ("mlm", "retrieval") if interval}
        interval.clear()
        return means

    objects = {"model": model, "head": head, "optimizer": optimizer, "schedule": schedule, "corpus": stream}
    last = _train(run, args, resume, objects, pargs.steps, step_fn, interval_means, "pretrain", rt,
                  options={**dataclasses.asdict(pargs), "text_column": corpus.text_column, "split": corpus.split,
                           "corpus_config": corpus.config, "line_by_line": corpus.line_by_line,
                           **_start_option(source)},
                  corpus=dataclasses.asdict(corpus), pretrain=dataclasses.asdict(pargs), mlm_head_from=head_from)
    cfg = model.config  # task-less: the fine-tune gives it its task (_adopt_task)
    cfg.task, cfg.task_columns, cfg.id2label = None, None, {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
    _save(model, out, run, force, rt, extra_tensors={MLM_HEAD_FILE: head.state_dict()})
    if rt.is_main:
        # (no losses when a resume found the steps done: interrupted while OUT was being written)
        losses = f", final MLM loss {last['mlm']:.3f}, retrieval {last['retrieval']:.3f}" if last else ""
        log(f"pretrain: {pargs.steps} steps on {stream.source} (pass {stream.epoch + 1} over it){losses}; wrote {out}")
    return model


def _start_option(source) -> dict:
    """pretrain's start as the option the user gave: --init (a checkpoint) or --base (a BERT), the other none, so
    that a resume from the other kind of start is compared too."""
    checkpoint = _is_checkpoint(Path(source))
    return {"init": source if checkpoint else None, "base": None if checkpoint else source}


def _pretrain_start_model(source, args: TrainArgs, device):
    """The model pre-training starts from: a checkpoint as the other stages load it, or a new N-instance model
    on a BERT directory. Refuses pruned models and read-outs without a per-token demux."""
    source = Path(source)
    if _is_checkpoint(source):
        model = _start_model(source, args, device)  # args.task is None: the checkpoint keeps its own
    else:
        _fit_length(args, _base_positions(source), source)
        model = create_model(source, num_instances=args.instances, seed=args.seed, task=None,
                             max_seq_length=args.max_seq_length, demux_kind=args.demux or "key_cls",
                             mux_init=args.mux, mux_learned=args.learn_mux)
        model = _new_model_plumbing(model, args).to(device)
        model.set_dropout(args.dropout)
    if model.masks or model.config.is_compact:
        raise PruMuxError(f"{source} is pruned; pre-train an unpruned model (CoFi pruning comes after fine-tuning)")
    _check_can_retrieve(model, source, "start from a key_cls, key_pool or index_pos model",
                        purpose="predict masked tokens")
    return model.train()


def _mlm_head(model, source: Path, mlm_head: str | None, device):
    """BERT's MLM head for the model, and where it came from: `mlm_head` (a BertForMaskedLM directory or a
    pre-trained checkpoint) when given; else the start's own (a pre-trained checkpoint's mlm_head.safetensors,
    or a BertForMaskedLM base's cls.predictions); else a new one (BERT's initialisation; MiniLM has none)."""
    from safetensors.torch import load_file

    cfg = model.config
    head = MLMHead(cfg.hidden_size, model.embeddings.word.weight.shape[1], cfg.vocab_size, cfg.layer_norm_eps)
    where = Path(mlm_head) if mlm_head is not None else source
    if (where / MLM_HEAD_FILE).is_file():
        weights = load_file(str(where / MLM_HEAD_FILE))
    elif not _is_checkpoint(where) and (where / "config.json").is_file():
        weights = read_bert_mlm_head(where)
    else:
        weights = None
    if weights is None and mlm_head is not None:
        raise PruMuxError(f"`mlm_head` {mlm_head} has no MLM head (neither {MLM_HEAD_FILE} nor BertForMaskedLM's "
                          "cls.predictions weights); give such a directory, or leave `mlm_head` out for a new head")
    if weights is None:
        return head.to(device), "new"
    try:
        head.load_state_dict(weights)
    except RuntimeError as e:
        raise PruMuxError(f"{where}: its MLM head does not fit this model ({str(e).splitlines()[-1].strip()}); give "
                          "the head of the same base encoder") from None
    return head.to(device), str(where)


# --- 2. fine-tune: GLUE classification over multiplexed groups --------------------------------

@names_written_outputs(lambda arguments: [arguments["out"]])
@holds_run_lock
def finetune(init, out, args: TrainArgs, resume: bool = False, force: bool = False, log=print,
             teacher_dir=None, temperature: float = 2.0, hidden_distill: float = 0.0, keep_best: bool = False,
             retrieval_weight: float = 0.0):
    """Cross-entropy on every instance of randomly formed mux groups. With `teacher_dir` (any fine-tuned
    checkpoint of the task, usually the N=1 model), plus distillation from its predictions on the same
    sentences (KL at `temperature`). On SST-2 N=2 it made learning faster, not the end result better
    (docs/results.md). With `hidden_distill` > 0 (the teacher then unmultiplexed, N = 1, with as many layers),
    plus that weight times per-layer hidden-state distillation (losses.hidden_state_distillation): a
    training-only readout of every layer's multiplexed state per instance should equal the teacher's state of
    that sentence alone. With `keep_best`, `out` holds the weights of the evaluation (every --eval-every steps)
    with the best accuracy on the evaluation split, as upstream's fine-tuning keeps (load_best_model_at_end):
    a selection on that split, so its accuracy there is optimistic. With `retrieval_weight` > 0, plus that weight
    times the warm-up's token retrieval on the same multiplexed sequences (losses.retrieval_from_encoder_output,
    one encoder pass for both), as upstream keeps it during fine-tuning (its retrieval_loss_coeff, 0.1).

    base/init/teacher_dir: a checkpoint directory, or a BERT directory for a new model (resolve_base turns
    "minilm" into one). out: the checkpoint directory to write (refused if it exists, unless force). args: the
    data, batch (sentences per optimizer step over all processes), learning rate, epochs, device and precision
    (loop.TrainArgs). resume: continue from out.run/train_state.pt. log: receives progress lines.

    Returns (model, dev accuracy as a fraction: the kept weights'); writes `out` and out/train_log.jsonl (dev
    accuracy at every evaluation).
    Raises PruMuxError for unusable arguments or data (before training)."""
    if hidden_distill < 0:
        raise PruMuxError(f"`hidden_distill` {hidden_distill} is negative; give a weight >= 0 (0 turns it off)")
    if hidden_distill > 0 and teacher_dir is None:
        raise PruMuxError(f"`hidden_distill` {hidden_distill} needs a `teacher` (an N=1 checkpoint of the same "
                          "depth); give one, or set the weight to 0")
    if retrieval_weight < 0:
        raise PruMuxError(f"`retrieval_weight` {retrieval_weight} is negative; give a weight >= 0 (0 turns it off)")
    rt, model, batches, dev, total, optimizer, schedule, run = _single_model_stage(init, out, args, force,
                                                                                   "finetune", log=log)
    if retrieval_weight > 0:
        _check_can_retrieve(model, init, "set `retrieval_weight` to 0, or start from an unpruned key_cls, key_pool "
                                          "or index_pos model")
    targets, teacher = None, None
    if teacher_dir is not None:
        teacher = _distillation_teacher(teacher_dir, model, rt.device).eval()
    readout = _layer_readout(teacher, model, teacher_dir, rt.device) if hidden_distill > 0 else None
    if teacher is not None:
        targets = soft_targets(teacher, batches, rt=rt).to(rt.device)
    parts = _Trained(model, optimizer, schedule)
    if readout is not None:
        parts.add_fresh("readout", readout, ("layer_readout", "opt_readout", "schedule_readout"), args.lr, total)

    choices = StepChoices(args.instances, args.seed)

    def loss_fn(part):
        inputs = model_inputs(part)
        hidden = [] if readout is not None or retrieval_weight > 0 else None
        logits = model(**inputs, hidden_states=hidden).float()
        ce = torch.nn.functional.cross_entropy(logits, part["labels"])
        if targets is None and retrieval_weight == 0:
            return ce, {"loss": ce.item()}
        loss, record = ce, {"ce": ce.item()}
        if retrieval_weight > 0:
            retrieval = retrieval_from_encoder_output(model, hidden[-1], inputs["input_ids"],
                                                      inputs["attention_mask"], choices.of(part), rt)
            loss, record = loss + retrieval_weight * retrieval, dict(record, retrieval=retrieval.item())
        if targets is None:
            return loss, {"loss": loss.item(), **record}
        kd = prediction_distillation(logits, targets[part["rows"]], temperature)
        loss, record = loss + kd, dict(record, kd=kd.item())
        if readout is not None:
            with torch.no_grad():
                teacher_hidden = []
                teacher.encode(inputs["input_ids"], inputs["attention_mask"], hidden_states=teacher_hidden)
            hd = hidden_state_distillation(readout, hidden, teacher_hidden, inputs["attention_mask"], rt)
            loss, record = loss + hidden_distill * hd, dict(record, hidden=hd.item())
        return loss, {"loss": loss.item(), **record}

    best, done = _BestWeights(run, keep_best, resume), {"steps": 0}
    objective, scaler = rt.wrap(Objective(loss_fn, **parts.modules)), rt.grad_scaler()

    def step_fn(step):
        done["steps"] = step + 1
        batch = batches.batch(step)
        if retrieval_weight > 0:
            choices.draw(batch["input_ids"], step)
        return _step(rt, objective, batch, args, parts.optimizers, parts.schedules, scaler)

    def eval_fn():
        accuracy = evaluate(model, dev, rt=rt)
        best.offer(model, accuracy, done["steps"])
        return {"accuracy": accuracy}

    _train(run, args, resume, parts.objects, total, step_fn, eval_fn, "finetune", rt,
           options={"init": init, "teacher": None if teacher_dir is None else str(teacher_dir),
                    "temperature": temperature, "hidden_distill": hidden_distill, "keep_best": keep_best,
                    "retrieval_weight": retrieval_weight})
    accuracy = best.restore(model, evaluate(model, dev, rt=rt))
    _save(model, out, run, force, rt)
    if rt.is_main:
        kept = f" (the best evaluation's weights, step {best.step})" if best.restored else ""
        log(f"finetune: {total} steps, {args.eval_split} accuracy {accuracy:.2%}{kept}; wrote {out}")
    return model, accuracy


class _BestWeights:
    """finetune's keep_best: the weights of the best evaluation so far, in OUT.run/best.safetensors (written
    atomically, with the accuracy and step in its metadata), so that a resumed run keeps the best of the
    interrupted one. Disabled: does nothing."""

    def __init__(self, run: RunState, enabled: bool, resume: bool):
        from safetensors import safe_open

        self.run, self.enabled, self.file = run, enabled, run.out / "best.safetensors"
        self.accuracy, self.step, self.restored = -1.0, None, False
        if enabled and resume and self.file.is_file():
            with safe_open(str(self.file), "pt") as f:
                meta = f.metadata() or {}
            self.accuracy, self.step = float(meta.get("accuracy", -1.0)), meta.get("step")
        elif run.main and self.file.exists():  # a fresh run: an older run's best is not this one's
            self.file.unlink()

    def offer(self, model, accuracy: float, step: int) -> None:
        if not self.enabled or accuracy <= self.accuracy:
            return
        self.accuracy, self.step = accuracy, str(step)
        if self.run.main:
            from safetensors.torch import save_file

            tmp = self.file.with_name(self.file.name + ".tmp")
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"accuracy": repr(accuracy), "step": self.step})
            os.replace(tmp, self.file)

    def restore(self, model, last_accuracy: float) -> float:
        """Load the best weights into `model` when they beat the last step's; returns the kept accuracy."""
        if not self.enabled or self.accuracy <= last_accuracy or not self.file.is_file():
            return last_accuracy
        from safetensors.torch import load_file

        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in load_file(str(self.file)).items()})
        self.restored = True
        return self.accuracy


def _distillation_teacher(teacher_dir, student, device):
    """A checkpoint whose predictions the student can learn from: same labels, same tokenizer."""
    teacher = load_checkpoint(teacher_dir).to(device)  # only ever run under no_grad (soft_targets)
    if teacher.config.num_labels != student.config.num_labels:
        raise PruMuxError(f"`teacher` {teacher_dir} predicts {teacher.config.num_labels} labels, the student "
                          f"{student.config.num_labels}; give a teacher fine-tuned on the same task")
    _check_same_tokenizer(teacher, student, f"`teacher` {teacher_dir}")
    return teacher


def _layer_readout(teacher, student, teacher_dir, device) -> LayerReadout:
    """The readouts hidden-state distillation trains, after checking that the teacher's layers can be matched
    one to one with the student's (same depth, unmultiplexed)."""
    t, s = teacher.config, student.config
    if t.num_instances != 1:
        raise PruMuxError(f"`teacher` {teacher_dir} is multiplexed (N={t.num_instances}); hidden-state "
                          "distillation needs an unmultiplexed (N=1) teacher")
    if t.num_hidden_layers != s.num_hidden_layers:
        raise PruMuxError(f"`teacher` {teacher_dir} has {t.num_hidden_layers} layers, the student "
                          f"{s.num_hidden_layers}; hidden-state distillation matches layer l to layer l, so give "
                          "a teacher of the same depth")
    return LayerReadout(s.num_hidden_layers, s.num_instances, s.model_dim, t.model_dim).to(device)


def _check_same_tokenizer(teacher, student, what: str):
    if load_tokenizer(teacher.tokenizer_dir).get_vocab() != load_tokenizer(student.tokenizer_dir).get_vocab():
        raise PruMuxError(f"{what} has a different tokenizer from the student; give a teacher trained from the "
                          f"same base encoder")


def _contextual_teacher(source, args: TrainArgs, device):
    """The unmultiplexed encoder whose per-token states the contextual warm-up matches (frozen, no dropout)."""
    if _is_checkpoint(Path(source)) and (n := read_config(source).num_instances) != 1:
        raise PruMuxError(f"`teacher` {source} is multiplexed (N={n}); give an unmultiplexed (N=1) encoder")
    as_teacher = dataclasses.replace(args, instances=1, demux=None, mux=None, learn_mux=False, dropout=0.0,
                                     second_embedding_pass=False, demux_key_std=None)
    teacher = _start_model(source, as_teacher, device).eval()
    if teacher.masks or teacher.config.is_compact:
        raise PruMuxError(f"`teacher` {source}: give an unpruned encoder or checkpoint, not a pruned one")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# --- 3. prune: CoFi with distillation, then a fine-tune with the masks fixed -----------------------

@dataclass
class PruneArgs:
    sparsity: float = 0.6
    reg_lr: float = 0.01             # learning rate of the gates and (ascending) of the multipliers
    warmup_frac: float = 0.5         # fraction of pruning steps over which the target ramps from 0
    final_epochs: float = 0.5        # fine-tuning with the deterministic masks fixed
    distill_temperature: float = 2.0
    layer_distill_weight: float = 1.0
    prune_hidden: bool = True


class Lagrangian(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lambda_1 = torch.nn.Parameter(torch.zeros(()))
        self.lambda_2 = torch.nn.Parameter(torch.zeros(()))


@names_written_outputs(lambda arguments: [arguments["out"]])
@holds_run_lock
def prune(teacher_dir, out, args: TrainArgs, prune_args: PruneArgs, resume: bool = False, force: bool = False,
          log=print):
    """Learn L0 gates towards the target sparsity while distilling from the fine-tuned teacher (same N),
    then fine-tune with the deterministic masks; writes a masked checkpoint (fractional kept scales).

    base/init/teacher_dir: a checkpoint directory, or a BERT directory for a new model (resolve_base turns
    "minilm" into one). out: the checkpoint directory to write (refused if it exists, unless force). args: the
    data, batch (sentences per optimizer step over all processes), learning rate, epochs, device and precision
    (loop.TrainArgs). resume: continue from out.run/train_state.pt. log: receives progress lines.
    prune_args: the target sparsity (a fraction of the prunable encoder parameters, in (0, 1)), the gates'
    learning rate, the ramp of the target and the epochs with fixed masks (PruneArgs).

    Returns (student, dev accuracy, actual sparsity), fractions; writes `out` and out/train_log.jsonl.
    Raises PruMuxError for a sparsity outside (0, 1) or a pruned or compact teacher (before training)."""
    if not 0 < prune_args.sparsity < 1:
        raise PruMuxError(f"`sparsity` must be in (0, 1), got {prune_args.sparsity}")
    check_target(out, force)
    rt = _runtime(args, log)
    seed_everything(args.seed)
    teacher = _start_model(teacher_dir, args, rt.device).eval()
    if teacher.masks or teacher.config.is_compact:
        raise PruMuxError(f"{teacher_dir}: the teacher must be an unpruned fine-tuned checkpoint")
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()  # with _start_model's --dropout; the teacher only runs in eval
    for p in student.parameters():
        p.requires_grad_(True)
    student.tokenizer_dir = teacher.tokenizer_dir
    cfg = student.config
    _, batches, dev = load_task_data(args, student.tokenizer_dir, args.instances, cfg=cfg,
                                     warn=log if rt.is_main else None)
    total = _total_steps(args, batches)
    final_total = int(math.ceil(prune_args.final_epochs * batches.steps_per_epoch))
    ramp = max(1, int(total * prune_args.warmup_frac))

    gates = CoFiGates(cfg, prune_hidden=prune_args.prune_hidden).to(rt.device)
    align = LayerAlignment(cfg.hidden_size, cfg.num_hidden_layers).to(rt.device)
    lagrange = Lagrangian().to(rt.device)
    opt_model = torch.optim.AdamW(param_groups(student, args.lr, align), lr=args.lr,
                                  weight_decay=0.01)
    opt_gates = torch.optim.AdamW(gates.parameters(), lr=prune_args.reg_lr, weight_decay=0.0)
    opt_lagrange = torch.optim.AdamW(lagrange.parameters(), lr=prune_args.reg_lr, weight_decay=0.0,
                                     maximize=True)
    schedule = _linear_schedule(opt_model, total)
    run = RunState(run_dir(out), "prune", main=rt.is_main)
    phase = {"final": False, "step": 0}
    T = prune_args.distill_temperature

    def target_at(step):
        return prune_args.sparsity * min(1.0, step / ramp)

    def loss_fn(part):
        inputs = model_inputs(part)
        if phase["final"]:  # the masks are fixed: CE + prediction distillation
            with torch.no_grad():
                t_logits = teacher(**inputs)
            logits = student(**inputs).float()
            ce = torch.nn.functional.cross_entropy(logits, part["labels"])
            loss = ce + prediction_distillation(logits, t_logits.float(), T)
            return loss, {"loss": loss.item(), "ce": ce.item()}
        masks = gates.sample()
        s_hidden, t_hidden = [], []
        with torch.no_grad():
            t_logits = teacher(**inputs, hidden_states=t_hidden)
        s_logits = student(**inputs, masks=masks, hidden_states=s_hidden)
        _, mask, _ = student.prepare_inputs(part["input_ids"], part["attention_mask"])  # as the model pads it
        group_mask = mask.view(-1, cfg.num_instances, mask.shape[1]).amax(1)
        kd = prediction_distillation(s_logits.float(), t_logits.float(), T)
        layer = align(s_hidden, t_hidden, group_mask, rt)
        expected = gates.expected_sparsity()
        target = target_at(phase["step"])
        lag = lagrangian_term(expected, target, lagrange.lambda_1, lagrange.lambda_2)
        loss = kd + prune_args.layer_distill_weight * layer + lag
        return loss, {"loss": loss.item(), "kd": kd.item(), "layer": layer.item(), "lagrangian": lag.item(),
                      "expected_sparsity": expected.item(), "target": target,
                      "lambda_1": lagrange.lambda_1.item(), "lambda_2": lagrange.lambda_2.item()}

    objective = rt.wrap(Objective(loss_fn, student=student, gates=gates, align=align, lagrange=lagrange))
    scaler = rt.grad_scaler()

    def prune_step(step):
        phase["step"] = step
        out = _step(rt, objective, batches.batch(step), args, [opt_model, opt_gates, opt_lagrange], [schedule],
                    scaler)
        phase["step"] = step + 1
        return out

    def prune_eval():
        masks = gates.deterministic(target=target_at(phase["step"]))
        return {"accuracy": evaluate(student, dev, masks=masks, rt=rt), "actual_sparsity": _actual(student, masks)}

    objects = {"student": student, "gates": gates, "align": align, "lagrange": lagrange, "opt_model": opt_model,
               "opt_gates": opt_gates, "opt_lagrange": opt_lagrange, "schedule": schedule}
    _train(run, args, resume, objects, total, prune_step, prune_eval, "prune", rt,
           options={**dataclasses.asdict(prune_args), "teacher": teacher_dir})

    # final fine-tune with the deterministic masks fixed (CE + prediction distillation), sized to the target
    student.set_masks(gates.deterministic(target=prune_args.sparsity))
    phase["final"] = True
    opt_final = torch.optim.AdamW(param_groups(student, args.lr), lr=args.lr, weight_decay=0.01)
    final_schedule = _linear_schedule(opt_final, max(1, final_total))
    final_run = RunState(run_dir(out), "prune-final", state_file="final_state.pt", main=rt.is_main)
    if final_total:
        _train(final_run, copy.copy(args), resume and final_run.file.is_file(),
               {"student": student, "opt_final": opt_final, "schedule": final_schedule}, final_total,
               lambda step: _step(rt, objective, batches.batch(total + step), args, [opt_final], [final_schedule],
                                  scaler),
               lambda: {"accuracy": evaluate(student, dev, rt=rt)}, "prune-final", rt, fresh_log=False,
               options={**dataclasses.asdict(prune_args), "teacher": teacher_dir})
    accuracy = evaluate(student, dev, rt=rt)
    actual = _actual(student, student.masks)
    run.log({"event": "done", "accuracy": accuracy, "actual_sparsity": actual,
             "expected_sparsity": gates.expected_sparsity().item(), "target": prune_args.sparsity})
    _save(student, out, run, force, rt)
    if rt.is_main:
        log(f"prune: target {prune_args.sparsity:.0%}, actual sparsity {actual:.1%}, {args.eval_split} accuracy "
            f"{accuracy:.2%}; wrote {out}")
    return student, accuracy, actual


def _save(model, out, run: RunState, force: bool, rt: Runtime, extra_tensors: dict | None = None):
    """The checkpoint with the stage's JSON log in it (train_log.jsonl), published by one rename: both are
    complete in the temporary directory first, so an interruption leaves OUT absent (or the previous one) or
    whole, never a checkpoint with a missing or truncated log. Written by rank 0 while the others wait (the
    next stage of `train all` reads it)."""
    if rt.is_main:
        with atomic_dir(out, force=force) as tmp:
            write_checkpoint(model.eval(), tmp, out, extra_tensors=extra_tensors)
            if run.log_file.is_file():
                shutil.copyfile(run.log_file, tmp / "train_log.jsonl")
    rt.barrier()


def _actual(model, masks) -> float:
    """Fraction of prunable encoder parameters the compacted model no longer has."""
    probe = copy.copy(model)
    probe.masks = {k: v.detach() for k, v in masks.items()}
    with torch.no_grad():
        return describe(compact(probe), model)["sparsity"]


@dataclass
class PipelineArgs:
    """What `train all` adds to each stage's TrainArgs and PruneArgs."""

    warmup_epochs: float = 0.5          # retrieval warm-up (0 skips it; so do N=1 and a start checkpoint)
    prune_epochs: float | None = None   # pruning epochs (None: the fine-tune's --epochs)
    warmup_teacher: str | None = None   # contextual warm-up: an unmultiplexed encoder ('minilm', BERT dir, N=1)
    finetune_teacher: str | None = None  # distil the fine-tune from this checkpoint's predictions


def _pipeline_outputs(arguments) -> list[Path]:
    """What train_all may write, its result last."""
    out = Path(arguments["out"])
    return [out / "warmup", out / "finetune"] + ([out / "pruned"] if arguments["prune_args"].sparsity > 0 else [])


@names_written_outputs(_pipeline_outputs)
def train_all(start, out, args: TrainArgs, prune_args: PruneArgs, pipeline: PipelineArgs = PipelineArgs(),
              from_checkpoint: bool = False, resume: bool = False, force: bool = False, log=print) -> Path:
    """warm-up -> fine-tune -> prune (the PruMUX recipe in one call): writes OUT/warmup, OUT/finetune and,
    for a sparsity above 0, OUT/pruned; returns the last checkpoint written. `start` is a BERT directory, or
    with from_checkpoint a checkpoint to fine-tune from directly (a `train pretrain` or `train warmup`
    output: no warm-up). With resume, stages whose output is complete are skipped and the interrupted one
    continues; the stages after it start afresh. A stage's errors about its `teacher` name the pipeline's field
    (`warmup_teacher`, `finetune_teacher`)."""
    out = Path(out)

    def resumes(stage_out: Path) -> bool:  # a stage interrupted before its first save, or not reached, starts
        return resume and (run_dir(stage_out) / "train_state.pt").is_file()

    if not from_checkpoint and pipeline.warmup_epochs > 0 and args.instances > 1:
        if not (resume and (out / "warmup" / "config.json").is_file()):
            with _stage_parameter("teacher", "warmup_teacher"):
                warmup(start, out / "warmup", dataclasses.replace(args, epochs=pipeline.warmup_epochs),
                       resume=resumes(out / "warmup"), force=force, log=log,
                       teacher_dir=None if pipeline.warmup_teacher is None else resolve_base(pipeline.warmup_teacher))
        start = out / "warmup"
    if not (resume and (out / "finetune" / "config.json").is_file()):
        with _stage_parameter("teacher", "finetune_teacher"):
            finetune(start, out / "finetune", args, resume=resumes(out / "finetune"), force=force, log=log,
                     teacher_dir=pipeline.finetune_teacher)
    if prune_args.sparsity <= 0:
        return out / "finetune"
    epochs = pipeline.prune_epochs if pipeline.prune_epochs is not None else args.epochs
    prune(out / "finetune", out / "pruned", dataclasses.replace(args, epochs=epochs), prune_args,
          resume=resumes(out / "pruned"), force=force, log=log)
    return out / "pruned"


@contextlib.contextmanager
def _stage_parameter(parameter: str, field: str):
    """Errors of one stage of train_all in its own terms: the stage's `teacher` is `warmup_teacher` or
    `finetune_teacher` there."""
    try:
        yield
    except PruMuxError as e:
        e.args = (str(e).replace(f"`{parameter}`", f"`{field}`"),)
        raise
