"""GLUE tasks from their TSV directories (the standard glue_data layout), read with `datasets`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError


@dataclass(frozen=True)
class Task:
    name: str
    text_a: str
    text_b: str | None           # None for single-sentence tasks
    label_column: str
    label_values: tuple[str, ...]  # values as written in the TSV, in label-id order
    label_names: tuple[str, ...]   # what users see
    column_names: tuple[str, ...] | None = None  # for header-less files (CoLA)
    dev_file: str = "dev.tsv"

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


TASKS = {t.name: t for t in [
    Task("sst2", "sentence", None, "label", ("0", "1"), ("negative", "positive")),
    Task("cola", "sentence", None, "label", ("0", "1"), ("unacceptable", "acceptable"),
         column_names=("source", "label", "original_label", "sentence")),
    Task("qnli", "question", "sentence", "label", ("entailment", "not_entailment"),
         ("entailment", "not_entailment")),
    Task("rte", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
         ("entailment", "not_entailment")),
    Task("mnli", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
         ("entailment", "neutral", "contradiction"), dev_file="dev_matched.tsv"),
    Task("qqp", "question1", "question2", "is_duplicate", ("0", "1"), ("not_duplicate", "duplicate")),
    Task("mrpc", "#1 String", "#2 String", "Quality", ("0", "1"), ("not_equivalent", "equivalent")),
    Task("wnli", "sentence1", "sentence2", "label", ("0", "1"), ("not_entailment", "entailment")),
]}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class Examples:
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray  # [n] int64 label ids
    source: Path

    def __len__(self):
        return len(self.text_a)


def split_file(task: Task, data_dir, split: str) -> Path:
    data_dir = Path(data_dir)
    name = task.dev_file if split == "dev" else f"{split}.tsv"
    file = data_dir / name
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such directory; --data must be a GLUE task directory "
                        f"holding {name}")
    if not file.is_file():
        raise DataError(f"{file}: missing; choose a --split whose TSV exists in {data_dir}")
    return file


def load_examples(task: Task, data_dir, split: str = "dev", limit: int | None = None) -> Examples:
    """Read one split of a GLUE task; rows keep their file order (mux groups are consecutive rows)."""
    import datasets

    file = split_file(task, data_dir, split)
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file")
    kwargs = dict(sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False)
    if task.column_names:
        kwargs.update(header=None, column_names=list(task.column_names))
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset("csv", data_files={split: str(file)}, split=split, **kwargs)
    except Exception as e:  # pandas/arrow parse errors arrive wrapped in datasets' own exceptions
        cause = e.__cause__ or e
        raise DataError(f"{file}: cannot be parsed as a GLUE TSV ({str(cause).splitlines()[0]})") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    needed = [task.text_a, task.label_column] + ([task.text_b] if task.text_b else [])
    for col in needed:
        if col not in ds.column_names:
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(ds.column_names)}); "
                            f"is this the {task.name} task directory?")
    value_to_id = {v: i for i, v in enumerate(task.label_values)}
    labels = []
    for row, value in enumerate(ds[task.label_column]):
        key = str(value).strip()
        if key not in value_to_id:
            raise DataError(f"{file}:{row + 2}: label {key!r} is not one of {', '.join(task.label_values)}")
        labels.append(value_to_id[key])
    text_a = [str(t) for t in ds[task.text_a]]
    text_b = [str(t) for t in ds[task.text_b]] if task.text_b else None
    return Examples(text_a, text_b, np.asarray(labels, dtype=np.int64), file)


def load_tokenizer(path):
    """The tokenizer saved beside a checkpoint or engine (no hub access)."""
    from transformers import AutoTokenizer

    from .checkpoint import has_tokenizer

    if path is None or not has_tokenizer(path):
        raise DataError(f"{path}: no tokenizer files (vocab.txt / tokenizer.json); this model was built "
                        "from a bare config, so it cannot read text. Use a checkpoint made from a BERT "
                        "directory (prumux-deploy init --base DIR)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer, text_a, text_b=None, max_length: int = 128, pad_to_max: bool = False,
             with_token_types: bool = False) -> dict[str, np.ndarray]:
    """Token ids as int64 numpy arrays [batch, sequence], padded to the longest row or to max_length."""
    enc = tokenizer(list(text_a), list(text_b) if text_b is not None else None, truncation=True,
                    max_length=max_length, padding="max_length" if pad_to_max else "longest",
                    return_tensors="np", return_token_type_ids=True)
    out = {"input_ids": enc["input_ids"].astype(np.int64),
           "attention_mask": enc["attention_mask"].astype(np.int64)}
    if with_token_types:
        out["token_type_ids"] = enc["token_type_ids"].astype(np.int64)
    return out
