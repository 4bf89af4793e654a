"""GLUE tasks from their TSV directories (the standard glue_data layout), read with `datasets`."""

from __future__ import annotations

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
    skipped: int = 0  # bad rows dropped (--skip-bad-rows)

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


def _read_rows(file: Path, task: Task, skip_bad_rows: bool) -> tuple[dict[str, list[str]], list[int], int]:
    """Parse a GLUE TSV line by line (tab-separated, no quoting, as GLUE writes them).

    Returns the needed columns, label ids, and how many bad rows were skipped. A bad row (not UTF-8,
    wrong number of fields, empty text, unknown label) is an error naming file and line unless
    `skip_bad_rows`."""
    raw = file.read_bytes()
    if not raw.strip():
        raise DataError(f"{file}: empty file; a GLUE TSV needs a header and at least one row")
    lines = raw.split(b"\n")
    if task.column_names:
        header, first = list(task.column_names), 0
    else:
        try:
            header = lines[0].decode("utf-8").rstrip("\r").split("\t")
        except UnicodeDecodeError:
            raise DataError(f"{file}:1: header is not valid UTF-8") from None
        first = 1
    text_cols = [task.text_a] + ([task.text_b] if task.text_b else [])
    for col in text_cols + [task.label_column]:
        if col not in header:
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(header)}); "
                            f"is this the {task.name} task directory?")
    value_to_id = {v: i for i, v in enumerate(task.label_values)}
    columns: dict[str, list[str]] = {c: [] for c in text_cols}
    labels: list[int] = []
    bad: list[tuple[int, str]] = []
    for lineno, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue  # blank lines (a trailing newline) carry no row
        try:
            fields = line.decode("utf-8").rstrip("\r").split("\t")
        except UnicodeDecodeError as e:
            bad.append((lineno, f"not valid UTF-8 (byte {e.start})"))
            continue
        if len(fields) != len(header):
            bad.append((lineno, f"{len(fields)} fields, the header has {len(header)}"))
            continue
        row = dict(zip(header, fields))
        empty = [c for c in text_cols if not row[c].strip()]
        if empty:
            bad.append((lineno, f"empty {empty[0]!r}"))
            continue
        label = row[task.label_column].strip()
        if label not in value_to_id:
            bad.append((lineno, f"label {label!r} is not one of {', '.join(task.label_values)}"))
            continue
        for c in text_cols:
            columns[c].append(row[c])
        labels.append(value_to_id[label])
    if bad and not skip_bad_rows:
        lineno, reason = bad[0]
        more = f" ({len(bad)} bad rows in all)" if len(bad) > 1 else ""
        raise DataError(f"{file}:{lineno}: {reason}{more}; fix the file or pass --skip-bad-rows")
    return columns, labels, len(bad)


def load_examples(task: Task, data_dir, split: str = "dev", limit: int | None = None,
                  skip_bad_rows: bool = False) -> Examples:
    """Read one split of a GLUE task into a `datasets.Dataset`; rows keep their file order (mux groups
    are consecutive rows). `skipped` counts bad rows dropped with skip_bad_rows."""
    import datasets

    file = split_file(task, data_dir, split)
    columns, labels, skipped = _read_rows(file, task, skip_bad_rows)
    if not labels:
        raise DataError(f"{file}: no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    ds = datasets.Dataset.from_dict({**columns, "label": labels})
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return Examples(list(ds[task.text_a]), list(ds[task.text_b]) if task.text_b else None,
                    np.asarray(list(ds["label"]), dtype=np.int64), file, skipped)


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


def too_long_rows(tokenizer, text_a, text_b=None, max_length: int = 128) -> list[int]:
    """Indices of rows whose tokens (special tokens included) exceed max_length."""
    enc = tokenizer(list(text_a), list(text_b) if text_b is not None else None, truncation=False,
                    add_special_tokens=True, return_attention_mask=False, return_token_type_ids=False,
                    verbose=False)
    return [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_length]


def check_lengths(tokenizer, text_a, text_b, max_length: int, truncate: bool, warn) -> int:
    """Warn about (or, with truncate=False, refuse) rows longer than the engine takes; returns the count."""
    long_rows = too_long_rows(tokenizer, text_a, text_b, max_length)
    if long_rows and not truncate:
        raise DataError(f"{len(long_rows)} of {len(text_a)} inputs are longer than {max_length} tokens "
                        f"(first: row {long_rows[0] + 1}); shorten them or drop --no-truncate")
    if long_rows:
        warn(f"warning: {len(long_rows)} of {len(text_a)} inputs are longer than {max_length} tokens and "
             "were truncated (--no-truncate refuses them instead)")
    return len(long_rows)
