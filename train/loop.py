"""The pieces every training stage shares: shuffled multiplexed batches, evaluation, the JSON log, and
resumable training state (so an interrupted run loses at most --save-every steps). Under torchrun every
process calls these the same way; evaluation and teacher logits are split over the processes, and only
rank 0 writes (see distributed.py)."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
import inspect
import os
import random
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from prumux_deploy.atomic import atomic_file
from prumux_deploy.checkpoint import check_vocab
from prumux_deploy.data import (Examples, has_splits, load_examples, load_tokenizer, read_labels, resolve_task,
                                warn_skipped)
from prumux_deploy.documents import dumps
from prumux_deploy.errors import PruMuxError, first_line
from prumux_deploy.progress import progress_bar
from prumux_deploy.resources import refuse_full_disk, tensor_bytes


@dataclass
class TrainArgs:
    task: str = "sst2"
    data: str = "../shared/data/glue/SST-2"
    instances: int = 2
    epochs: float = 1.0
    batch_size: int = 32          # sentences per optimizer step over all processes (the global batch)
    lr: float = 5e-5
    dropout: float = 0.0          # BERT's dropout sites (model.set_dropout); training only
    demux: str | None = None      # demux kind of a new model, or switch a loaded one to it (None: keep)
    mux: str | None = None        # how a new model draws its instance vectors (model.instance_vectors)
    learn_mux: bool = False       # a new model trains its instance vectors (config.mux_learned)
    second_embedding_pass: bool = False  # a new model runs the mixed sequence through the embedding LayerNorm again
    demux_key_std: float | None = None   # a new model's demux keys ~ N(0, std) (None: the default 0.02)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 64
    max_seq_length_given: bool = True  # False: the default, shrunk to fit a smaller position table (stages)
    eval_every: int = 200
    save_every: int = 100
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "dev"
    data_config: str | None = None  # a hub dataset's configuration
    text_column: str | None = None  # task "custom": the data's columns and labels (data.resolve_task)
    text_pair_column: str | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    device: str = "auto"          # auto (CUDA when available), cpu, cuda
    precision: str = "fp32"       # fp32, bf16 or fp16 autocast (fp16 with a gradient scaler)
    grad_accum: int = 1           # micro-steps per optimizer step (the global batch is split into them)
    skip_bad_rows: bool = False   # drop (and count) unusable rows instead of refusing the data


class Batches:
    """Tokenised rows, shuffled anew each epoch by a seeded permutation, cut into batches whose size is a
    multiple of N (consecutive rows of a batch form the mux groups, so instances are grouped at random)."""

    def __init__(self, tokenizer, examples: Examples, batch_size: int, num_instances: int, max_len: int,
                 seed: int, uses_token_types: bool):
        enc = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_len,
                        return_token_type_ids=True)
        self.ids, self.types = enc["input_ids"], enc["token_type_ids"]
        self.labels = torch.as_tensor(examples.labels)
        self.pad_id = tokenizer.pad_token_id or 0
        self.batch_size = max(num_instances, batch_size - batch_size % num_instances)
        self.seed, self.uses_token_types = seed, uses_token_types
        self.steps_per_epoch = max(1, len(self.ids) // self.batch_size)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(self.seed * 1009 + epoch))
        rows = order[k * self.batch_size:(k + 1) * self.batch_size].tolist()
        return self.collate(rows)

    def collate(self, rows) -> dict[str, torch.Tensor]:
        S = max(len(self.ids[r]) for r in rows)
        ids = torch.full((len(rows), S), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(rows), S), dtype=torch.long)
        mask = torch.zeros((len(rows), S), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(self.ids[r])
            ids[i, :n] = torch.as_tensor(self.ids[r])
            types[i, :n] = torch.as_tensor(self.types[r])
            mask[i, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[rows], "rows": torch.as_tensor(rows),
               "position": torch.arange(len(rows))}  # place in the global batch (a process keeps a slice)
        if self.uses_token_types:
            out["token_type_ids"] = types
        return out

    def in_order(self, batch_size: int):
        for s in range(0, len(self.ids), batch_size):
            yield self.collate(list(range(s, min(s + batch_size, len(self.ids)))))


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.no_grad()
def evaluate(model, batches: Batches, masks=None, rt=None) -> float:
    """Accuracy over the eval rows in file order (consecutive rows are mux groups, as in validate). Under
    torchrun each process takes every K-th batch and the correct counts are summed."""
    from .distributed import current

    rt = rt or current()
    was_training = model.training
    model.eval()
    correct = 0
    for b, batch in enumerate(batches.in_order(32 * model.config.num_instances)):
        if b % rt.world_size != rt.rank:
            continue
        with rt.autocast():
            logits = model(**{k: v.to(rt.device) for k, v in model_inputs(batch).items()}, masks=masks)
        correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
    model.train(was_training)
    return float(rt.global_sum(correct)) / len(batches.ids)


@torch.no_grad()
def soft_targets(teacher, batches: Batches, batch_size: int = 256, rt=None) -> torch.Tensor:
    """The teacher's logits for every row of `batches`, in row order: [rows, C]. Computed once before
    training (the teacher is frozen), so distillation costs no teacher forward pass per step. Rows go
    through shortest first, so each batch pads to a length its rows share (SST-2 phrases are 3-60 tokens).
    Under torchrun the processes split the batches and share the result."""
    from .distributed import current

    rt = rt or current()
    teacher.eval()
    batch_size -= batch_size % teacher.config.num_instances
    by_length = sorted(range(len(batches.ids)), key=lambda r: len(batches.ids[r]))
    targets = torch.zeros(len(by_length), teacher.config.num_labels)
    bar = progress(len(by_length), 0, "teacher logits", unit="row", disable=not rt.is_main)
    for b, start in enumerate(range(0, len(by_length), batch_size)):
        rows = by_length[start:start + batch_size]
        if b % rt.world_size == rt.rank:
            with rt.autocast():
                inputs = {k: v.to(rt.device) for k, v in model_inputs(batches.collate(rows)).items()}
                targets[rows] = teacher(**inputs).float().cpu()
        bar.update(len(rows))
    bar.close()
    return rt.all_gather_rows(targets)


def task_of(args: TrainArgs, config=None):
    """The task a run trains on: --task and its columns, else the starting checkpoint's (`config`); a custom
    task without --labels reads them from the training split."""
    task = resolve_task(args.task, args.text_column, args.text_pair_column, args.label_column, args.labels, config)
    if task.custom and not task.label_names:
        task = read_labels(task, args.data, args.train_split, args.data_config)
    return task


def load_task_data(args: TrainArgs, tokenizer_dir, num_instances: int, with_eval: bool = True, cfg=None,
                   warn=None):
    """The task, the training batches and (with_eval) the evaluation batches. An unusable row (malformed, an
    empty text, an unknown label) is a DataError naming it, or with args.skip_bad_rows is dropped and counted;
    `warn` (None: silent) is told the counts, and that one data file without splits is both trained on and
    evaluated on. Raises PruMuxError for labels other than the model's and for fewer rows than one batch."""
    warn = warn or (lambda message: None)
    task = task_of(args, cfg)
    if cfg is not None and list(task.label_names) != [cfg.id2label[i] for i in range(cfg.num_labels)] \
            and task.custom:
        raise PruMuxError(f"the data's labels {list(task.label_names)} are not the model's "
                          f"{[cfg.id2label[i] for i in range(cfg.num_labels)]}; pass `labels` in the model's order")
    tokenizer = load_tokenizer(tokenizer_dir)
    if cfg is not None:
        check_vocab(tokenizer, cfg, tokenizer_dir)
    train = load_examples(task, args.data, args.train_split, args.max_train_samples,
                          skip_bad_rows=args.skip_bad_rows, data_config=args.data_config)
    warn_skipped(train, warn)
    pair = train.text_b is not None
    if len(train) < args.batch_size:  # every step is one whole batch: its mux groups and micro-batches are full
        raise PruMuxError(f"the training data has {len(train)} row{'' if len(train) == 1 else 's'}, fewer than one batch (`batch_size` "
                          f"{args.batch_size}); give a `batch_size` of at most {len(train)}, or more rows")
    train_b = Batches(tokenizer, train, args.batch_size, num_instances, args.max_seq_length, args.seed, pair)
    eval_b = None
    if with_eval:
        if not has_splits(args.data):
            warn(f"warning: {args.data} is one data file (or dataset) with no splits, so training and evaluation "
                 "both read all of it and the accuracy reported is on training rows; give a directory with train "
                 "and dev files for a held-out score")
        dev = load_examples(task, args.data, args.eval_split, args.max_eval_samples,
                            skip_bad_rows=args.skip_bad_rows, data_config=args.data_config)
        warn_skipped(dev, warn)
        eval_b = Batches(tokenizer, dev, args.batch_size, num_instances, args.max_seq_length, args.seed, pair)
    return task, train_b, eval_b


def run_dir(out) -> Path:
    """Where a stage writing checkpoint `out` keeps its resumable state and log while it runs: OUT.run."""
    return Path(str(out) + ".run")


# --- one run at a time in OUT.run ------------------------------------------------------------------

LOCK_FILE = "lock"  # OUT.run/lock: flock'ed by the run using OUT.run, holding its pid


class RunLock:
    """An exclusive, non-blocking flock on OUT.run/lock for as long as one training run uses OUT.run: a second
    run with the same OUT is refused in one line instead of interleaving its state and log with the first's.
    The kernel drops the lock when the holder dies, so a killed run never leaves OUT.run locked."""

    def __init__(self, run_path):
        self.dir = Path(run_path)
        self.file = self.dir / LOCK_FILE
        self.fd: int | None = None
        self.made: list[Path] = []  # the directories acquire created (OUT.run, missing parents), deepest first

    def acquire(self) -> "RunLock":
        missing = self.dir
        while not os.path.lexists(missing) and missing.parent != missing:
            self.made.append(missing)
            missing = missing.parent
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self._remove_made()
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise PruMuxError(f"{self.file}: cannot be locked ({e.strerror}); choose another `out`") from None
                raise PruMuxError(f"{self.dir} is in use by another run (pid {holder}); wait for it or choose "
                                  "another `out`") from None
            try:  # the holder we raced may have removed its file: hold the one on disk, or try again
                if os.fstat(fd).st_ino == os.stat(self.file).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.file)  # while still held, so no one locks the file being removed
        os.close(self.fd)
        self.fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        """Remove the directories made for the lock that the run left empty (it was refused before writing)."""
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []


_stage_locks: contextvars.ContextVar[dict | None] = contextvars.ContextVar("prumux_run_locks", default=None)


def holds_run_lock(stage):
    """Decorator of a training stage: the OUT.run lock its RunState takes (rank 0, when the stage makes it, after
    its arguments, model and data were checked) is held until the stage returns or raises."""
    @functools.wraps(stage)
    def run(*args, **kwargs):
        outer = _stage_locks.get()
        locks = {} if outer is None else outer
        token = _stage_locks.set(locks)
        try:
            return stage(*args, **kwargs)
        finally:
            _stage_locks.reset(token)
            if outer is None:
                for lock in locks.values():
                    lock.release()
    return run


# --- what an interruption leaves written --------------------------------------------------------------

class InterruptedAfterWriting(PruMuxError, KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP after a stage's output was renamed into place: the line every other
    interruption gets ("no output was written") would be false, so this one names what was written (the CLI
    prints a PruMuxError's message). Still a KeyboardInterrupt, for Python callers that stop on one."""

    exit_code = 130  # as every interruption


_outputs_watched: contextvars.ContextVar[bool] = contextvars.ContextVar("prumux_outputs_watched", default=False)


def names_written_outputs(outputs):
    """Decorator of a training stage (and `train all`): `outputs(arguments)` lists the directories a call with
    these arguments (by name) may write, the last being its result. A KeyboardInterrupt (the CLI's Ctrl-C,
    SIGTERM and SIGHUP) raised after one of them was published becomes InterruptedAfterWriting, naming it. Each
    output is published by one rename, so one written by this call is one whose (device, inode) changed: it is
    complete. The outermost decorated call decides (`train all` for its stages)."""
    def decorate(stage):
        signature = inspect.signature(stage)

        @functools.wraps(stage)
        def run(*args, **kwargs):
            if _outputs_watched.get():
                return stage(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            paths = [Path(path) for path in outputs(bound.arguments)]
            before = {path: _identity(path) for path in paths}
            token = _outputs_watched.set(True)
            try:
                return stage(*args, **kwargs)
            except KeyboardInterrupt:
                written = [path for path in paths if _identity(path) not in (None, before[path])]
                if not written:
                    raise  # the CLI's "interrupted; no output was written" is true
                raise InterruptedAfterWriting(_interrupted_after(written, paths[-1])) from None
            finally:
                _outputs_watched.reset(token)
        return run
    return decorate


def _identity(path: Path):
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _interrupted_after(written: list[Path], result: Path) -> str:
    names = " and ".join(str(path) for path in written)
    if result in written:
        return f"interrupted after {names} had been written (complete); nothing else was left to do"
    return (f"interrupted after {names} had been written (complete); the later stages did not run: continue with "
            "`resume`")


def _lock_run(path: Path) -> None:
    locks = _stage_locks.get()
    key = os.path.realpath(path)
    if locks is not None and key not in locks:
        locks[key] = RunLock(path).acquire()


# --- resuming with the same options --------------------------------------------------------------

# TrainArgs that may change between an interrupted run and its resumption: where and how fast it runs, how often
# it logs and saves, what it evaluates on; every other field (and each stage's own options) must be the same
MAY_CHANGE_ON_RESUME = {"device", "precision", "grad_accum", "eval_every", "save_every", "max_eval_samples",
                        "eval_split", "max_seq_length_given"}


# stage options that name a model (the one a stage starts from, a teacher): saved as model_identity, so that a
# resume against another model, or against one changed since, is refused by name before any tensor is loaded
MODEL_OPTIONS = ("base", "init", "teacher")


def run_options(args: TrainArgs, **stage_options) -> dict:
    """What a resumed run must share with the interrupted one: TrainArgs but MAY_CHANGE_ON_RESUME, plus the
    stage's own options (the model it starts from, a teacher, the sparsity, ...); the data's path as its real
    path, a model (MODEL_OPTIONS) as its model_identity."""
    options = {f.name: getattr(args, f.name) for f in fields(args) if f.name not in MAY_CHANGE_ON_RESUME}
    options.update(stage_options)
    if isinstance(options.get("data"), (str, os.PathLike)) and os.path.exists(options["data"]):
        options["data"] = os.path.realpath(options["data"])
    for name in MODEL_OPTIONS:
        if isinstance(options.get(name), (str, os.PathLike)) and os.path.isdir(options[name]):
            options[name] = model_identity(options[name])
    return {k: (str(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v)
            for k, v in options.items()}


def model_identity(folder) -> dict:
    """Which model a directory holds: its real path; a fingerprint, the sha256 of its config.json (a checkpoint's
    lists its weights' sha256, so it covers them) and, for a BERT base, whose config.json does not, of its weight
    files (a second or so for BERT-base, once per run); and its shape in words ("N=2, 6 layers, hidden 384")."""
    import hashlib
    import json

    from prumux_deploy.documents import sha256_file

    folder = Path(folder)
    digest = hashlib.sha256()
    config = {}
    try:
        raw = (folder / "config.json").read_bytes()
        digest.update(raw)
        config = json.loads(raw)
        if not (isinstance(config, dict) and config.get("format") == "prumux-checkpoint"):
            for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
                digest.update(f"{weights.name}:{sha256_file(weights)};".encode())
    except (OSError, ValueError):
        pass  # described by its path alone; the stage that loaded it has reported anything unreadable
    return {"path": os.path.realpath(folder), "fingerprint": digest.hexdigest(), "about": _shape_in_words(config)}


def _shape_in_words(config) -> str:
    """"N=2, 6 layers, hidden 384" for a checkpoint's config.json, "BERT, 6 layers, hidden 384" for a base's."""
    if not isinstance(config, dict) or not config:
        return ""
    kind = f"N={config.get('num_instances', '?')}" if config.get("format") == "prumux-checkpoint" else "BERT"
    return f"{kind}, {config.get('num_hidden_layers', '?')} layers, hidden {config.get('hidden_size', '?')}"


def _shown_model(value) -> str:
    """A saved or current MODEL_OPTIONS value in a message: `runs/a (N=2, 6 layers, hidden 384)`, or `none`."""
    if value is None:
        return "none"
    if not isinstance(value, dict):  # a state of an earlier version kept a teacher's real path only
        return _shown_path(value)
    about = f" ({value['about']})" if value.get("about") else ""
    return f"{_shown_path(value.get('path'))}{about}"


def _shown_path(path) -> str:
    """A path relative to the working directory when it lies below it (as the user typed it, mostly)."""
    relative = os.path.relpath(str(path))
    return str(path) if relative.startswith("..") else relative


def _check_same_model(name: str, saved, now, run_path: Path) -> None:
    """One MODEL_OPTIONS entry: the same model when the fingerprints agree (a copy or a moved directory is the
    same model); a state of an earlier version recorded a teacher's path only, compared as a path."""
    saved_path = saved.get("path") if isinstance(saved, dict) else saved
    now_path = now.get("path") if isinstance(now, dict) else now
    if isinstance(saved, dict) and isinstance(now, dict):
        if saved.get("fingerprint") == now.get("fingerprint"):
            return
    elif saved_path == now_path:
        return
    fix = f"resume with the interrupted run's `{name}`, or delete {run_path} to start the stage over"
    if saved_path is not None and saved_path == now_path:
        raise PruMuxError(f"{run_path} was started with `{name}` {_shown_model(saved)}, which has changed since "
                          f"(now {now.get('about') or 'other files'}); {fix}")
    raise PruMuxError(f"{run_path} was started with `{name}` {_shown_model(saved)}; this run's `{name}` is "
                      f"{_shown_model(now)}; {fix}")


def _check_same_options(saved: dict, now: dict, run_path: Path) -> None:
    def shown(value):
        return "none" if value is None else str(value)

    for name in MODEL_OPTIONS:  # first: another model explains any other difference in shape
        if name in saved and name in now:
            _check_same_model(name, saved[name], now[name], run_path)
    for name, value in now.items():
        if name in saved and name not in MODEL_OPTIONS and saved[name] != value:
            raise PruMuxError(f"the interrupted run used `{name}` {shown(saved[name])}, this one {shown(value)}; "
                              "resume with the same options")


def _refuse_other_model(file: Path, run_path: Path, what: str):
    raise PruMuxError(f"{file}: {what}; it was saved by a run of another model: resume with the interrupted "
                      f"run's options, or delete {run_path} to start the stage over") from None


def _check_fits(file: Path, run_path: Path, name: str, saved, obj) -> None:
    """Refuse, in one line naming the first tensor that differs, a saved part that does not fit this run's
    object (another model's state: other shapes, other layers), before anything is restored."""
    if saved is None:
        _refuse_other_model(file, run_path, f"holds no {name}, which this run trains")
    if not isinstance(obj, torch.nn.Module):
        return  # optimizers, schedules, the corpus: their load_state_dict errors are caught in load
    if not isinstance(saved, dict):
        _refuse_other_model(file, run_path, f"its {name} is a {type(saved).__name__}, not tensors")
    mine = obj.state_dict()
    for key, tensor in mine.items():
        if key not in saved:
            _refuse_other_model(file, run_path, f"its {name} has no {key}, which this run's has")
        theirs = saved[key]
        if not isinstance(theirs, torch.Tensor) or theirs.shape != tensor.shape:
            shape = list(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__
            _refuse_other_model(file, run_path, f"its {name}'s {key} has shape {shape}, this run's "
                                                f"{list(tensor.shape)}")
    extra = [key for key in saved if key not in mine]
    if extra:
        _refuse_other_model(file, run_path, f"its {name} has {extra[0]}, which this run's has not")


def _numpy_rng_state() -> dict:
    """numpy's global RNG state as tensors and plain values (its key array as an int64 tensor), so the whole
    train state loads with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _load_tensors_only(path: Path) -> dict:
    """A train state as tensors and plain values only (torch.load with weights_only=True: nothing in the file can
    run code, since OUT.run may come from someone else). Raises PruMuxError (one line) for a file holding other
    objects (a planted pickle, or a state written before 2026-12-04, with numpy arrays in it) or a damaged one."""
    import pickle

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if named is None:
            raise PruMuxError(f"{path}: cannot be read as a train state (not a file torch.save wrote); the file is "
                              "damaged: start the stage again without `resume`") from None
        raise PruMuxError(f"{path}: holds objects other than tensors and plain values ({named.group(1)}); refusing to "
                          "unpickle it. Start the stage again without `resume` (a state from an older prumux-deploy "
                          "cannot be resumed either)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise PruMuxError(f"{path}: cannot be read ({first_line(e, 160)}); the file is damaged: start "
                          "the stage again without `resume`") from None
    if not isinstance(state, dict):
        raise PruMuxError(f"{path}: not a train state (a {type(state).__name__}); start the stage again without `resume`")
    return state


class RunState:
    """OUT.run/train_state.pt (atomic) and OUT.run/log.jsonl for one stage. Every process resumes from the same
    state; only the main process (rank 0) writes."""

    def __init__(self, out: Path, stage: str, state_file: str = "train_state.pt", main: bool = True):
        self.out, self.stage, self.main = Path(out), stage, main
        self.file = self.out / state_file
        self.log_file = self.out / "log.jsonl"
        self.options: dict | None = None  # run_options of this run: saved with the state, compared on resume
        if main:
            _lock_run(self.out)  # inside a stage (holds_run_lock): refused while another run uses OUT.run

    def save(self, step: int, objects: dict):
        if not self.main:
            return
        state = {"stage": self.stage, "step": step,
                 "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
                 **({"options": self.options} if self.options is not None else {}),
                 **{name: obj.state_dict() for name, obj in objects.items()}}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.file, force=True) as tmp:  # a kill or a full disk mid-save keeps the previous state
                with open(tmp, "wb") as f:  # through a Python file, torch's failure carries the OSError (ENOSPC)
                    torch.save(state, f)
                    f.flush()
                    os.fsync(f.fileno())  # a late write error (quota, NFS) is found here, before the rename
        except Exception as e:  # torch's "[enforce fail at inline_container.cc:672] . unexpected pos ..." on a
            # full disk (or quota) as one line: the file, the file system to free, the space the state needs
            rerun = "rerun with `resume` (the state saved before is intact)" if self.file.is_file() else "rerun"
            refuse_full_disk(e, self.file, need=tensor_bytes(state), rerun=rerun)
            raise

    def load(self, objects: dict, options: dict | None = None) -> int:
        """Restore `objects` and the RNGs from the saved state; returns its step. `options` (run_options): refused
        in one line, before anything is restored, when the interrupted run's differ (states saved before
        2026-12-05 record none and are not checked)."""
        if not self.file.is_file():
            raise PruMuxError(f"{self.file}: nothing to resume; run the stage without `resume` first")
        state = _load_tensors_only(self.file)
        if state.get("stage") != self.stage:
            raise PruMuxError(f"{self.file}: holds a {state.get('stage')!r} run, not {self.stage!r}")
        if options is not None and isinstance(state.get("options"), dict):
            _check_same_options(state["options"], options, self.out)
        for name, obj in objects.items():  # every part checked before any is restored
            _check_fits(self.file, self.out, name, state.get(name), obj)
        for name, obj in objects.items():
            try:
                obj.load_state_dict(state[name])
            except (KeyError, ValueError, RuntimeError, TypeError) as e:  # an optimizer's or schedule's groups
                _refuse_other_model(self.file, self.out, f"its {name} does not fit this run's "
                                                         f"({first_line(e)})")
        torch.set_rng_state(state["rng"]["torch"])
        numpy_state = state["rng"]["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached"]))
        random.setstate(state["rng"]["python"])
        return int(state["step"])

    def log(self, record: dict):
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as f:
            f.write(dumps({"stage": self.stage, **record}) + "\n")

    def start(self, args: TrainArgs, resume: bool, fresh_log: bool = True, processes: int = 1, **record):
        """Begin the log (a fresh one unless resuming); `record`: more of the run's settings for its start line."""
        if self.main and fresh_log and not resume and self.log_file.exists():
            self.log_file.unlink()
        self.log({"event": "start", "resume": resume, "processes": processes, "args": asdict(args), **record})


def progress(total: int, start: int, desc: str, unit: str = "step", disable: bool = False):
    return progress_bar(total=total, initial=start, desc=desc, unit=unit, disable=disable)


def seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
