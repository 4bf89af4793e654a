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
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prumux_deploy.atomic import atomic_file
from prumux_deploy.checkpoint import check_vocab
from prumux_deploy.data import Examples, load_examples, load_tokenizer, read_labels, resolve_task
from prumux_deploy.documents import dumps
from prumux_deploy.errors import PruMuxError


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


def load_task_data(args: TrainArgs, tokenizer_dir, num_instances: int, with_eval: bool = True, cfg=None):
    task = task_of(args, cfg)
    if cfg is not None and list(task.label_names) != [cfg.id2label[i] for i in range(cfg.num_labels)] \
            and task.custom:
        raise PruMuxError(f"the data's labels {list(task.label_names)} are not the model's "
                          f"{[cfg.id2label[i] for i in range(cfg.num_labels)]}; pass `labels` in the model's order")
    tokenizer = load_tokenizer(tokenizer_dir)
    if cfg is not None:
        check_vocab(tokenizer, cfg, tokenizer_dir)
    train = load_examples(task, args.data, args.train_split, args.max_train_samples, skip_bad_rows=True,
                          data_config=args.data_config)
    pair = train.text_b is not None
    train_b = Batches(tokenizer, train, args.batch_size, num_instances, args.max_seq_length, args.seed, pair)
    eval_b = None
    if with_eval:
        dev = load_examples(task, args.data, args.eval_split, args.max_eval_samples, skip_bad_rows=True,
                            data_config=args.data_config)
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


def run_options(args: TrainArgs, **stage_options) -> dict:
    """What a resumed run must share with the interrupted one: TrainArgs but MAY_CHANGE_ON_RESUME, plus the
    stage's own options (a teacher, the sparsity, ...); paths that exist as their real path."""
    options = {f.name: getattr(args, f.name) for f in fields(args) if f.name not in MAY_CHANGE_ON_RESUME}
    options.update(stage_options)
    for name in ("data", "teacher"):
        if isinstance(options.get(name), (str, os.PathLike)) and os.path.exists(options[name]):
            options[name] = os.path.realpath(options[name])
    return {k: (str(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v)
            for k, v in options.items()}


def _check_same_options(saved: dict, now: dict) -> None:
    def shown(value):
        return "none" if value is None else str(value)

    for name, value in now.items():
        if name in saved and saved[name] != value:
            raise PruMuxError(f"the interrupted run used `{name}` {shown(saved[name])}, this one {shown(value)}; "
                              "resume with the same options")


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
        raise PruMuxError(f"{path}: cannot be read ({str(e).strip().splitlines()[0][:160]}); the file is damaged: start "
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
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"stage": self.stage, "step": step,
                 "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
                 **({"options": self.options} if self.options is not None else {}),
                 **{name: obj.state_dict() for name, obj in objects.items()}}
        with atomic_file(self.file, force=True) as tmp:  # a kill mid-save keeps the previous state
            torch.save(state, tmp)

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
            _check_same_options(state["options"], options)
        for name, obj in objects.items():
            obj.load_state_dict(state[name])
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
    return tqdm(total=total, initial=start, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=disable)


def seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
