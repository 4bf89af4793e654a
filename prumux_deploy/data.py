"""Classification data: GLUE tasks and a user's own, from GLUE TSV directories or anything `datasets` reads.

A task is a GLUE task by name (its columns, labels and metrics are known) or `custom`: the user names the
text column, optionally a second text column (sentence pairs) and the label column, and gives the labels
or lets them be read from the training split (sorted: numerically when every label is a number). The
checkpoint records the custom columns and labels (config `task_columns`, `id2label`), so validate and
predict need no more than the checkpoint.

`--data` can be
    a GLUE TSV directory            train.tsv, dev.tsv (dev_matched.tsv for MNLI), as glue_data lays them out
    a `datasets` directory          what Dataset(Dict).save_to_disk writes (datasets.load_from_disk)
    a file                          .csv, .tsv, .jsonl / .json, .parquet: the file is the split asked for
    a directory of split files      train.csv, validation.csv (or dev.csv), test.csv, in any one of those formats
    a hub dataset name              e.g. nyu-mll/glue with --data-config sst2 (needs the network or the local
                                    cache; offline it fails in one line naming both and the forms above)
Rows keep their order (mux groups are consecutive rows, in validate as in training).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, first_line
from .resources import exception_chain


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
    hub_columns: tuple[str, str | None] | None = None  # text columns in `datasets` form, where they differ
    metric: str | None = None    # GLUE's metric besides accuracy: "f1" (QQP, MRPC) or "mcc" (CoLA)
    custom: bool = False

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def columns(self) -> dict:
        """What a checkpoint records for a custom task (config task_columns)."""
        return {"text": self.text_a, "text_pair": self.text_b, "label": self.label_column}

    def with_labels(self, labels) -> "Task":
        labels = tuple(str(v) for v in labels)
        return dataclasses.replace(self, label_values=labels, label_names=labels)


TASKS = {t.name: t for t in [
    Task("sst2", "sentence", None, "label", ("0", "1"), ("negative", "positive")),
    Task("cola", "sentence", None, "label", ("0", "1"), ("unacceptable", "acceptable"),
         column_names=("source", "label", "original_label", "sentence"), metric="mcc"),
    Task("qnli", "question", "sentence", "label", ("entailment", "not_entailment"),
         ("entailment", "not_entailment")),
    Task("rte", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
         ("entailment", "not_entailment")),
    Task("mnli", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
         ("entailment", "neutral", "contradiction"), dev_file="dev_matched.tsv",
         hub_columns=("premise", "hypothesis")),
    Task("qqp", "question1", "question2", "is_duplicate", ("0", "1"), ("not_duplicate", "duplicate"), metric="f1"),
    Task("mrpc", "#1 String", "#2 String", "Quality", ("0", "1"), ("not_equivalent", "equivalent"),
         hub_columns=("sentence1", "sentence2"), metric="f1"),
    Task("wnli", "sentence1", "sentence2", "label", ("0", "1"), ("not_entailment", "entailment")),
]}
CUSTOM = "custom"
DATA_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_NAMES = {"dev": ("dev", "validation", "validation_matched", "val"), "validation": ("validation", "dev", "val"),
               "train": ("train",), "test": ("test",)}


def task_is_pair(name: str | None, columns: dict | None = None) -> bool:
    """Whether a task (as a config records it: its name, and a custom task's columns) reads sentence pairs."""
    if name == CUSTOM:
        return bool((columns or {}).get("text_pair"))
    task = TASKS.get((name or "").lower().replace("-", ""))
    return bool(task and task.is_pair)


def custom_task(text_column: str, text_pair_column: str | None = None, label_column: str = "label",
                labels=()) -> Task:
    """A user's own task; `labels` may stay empty until they are read from the data (read_labels)."""
    if not text_column:
        raise DataError("`task` custom needs `text_column` (the column holding each example's text)")
    labels = tuple(str(v) for v in labels)
    if len(set(labels)) != len(labels):
        raise DataError(f"`labels` lists a label twice: {', '.join(labels)}")
    return Task(CUSTOM, text_column, text_pair_column or None, label_column or "label", labels, labels, custom=True)


def resolve_task(name: str | None, text_column=None, text_pair_column=None, label_column=None, labels=None,
                 config=None) -> Task:
    """The task of a command: --task (a GLUE name or custom) with its column options, else the checkpoint's
    (`config`: a PruMuxConfig). Column options override a custom checkpoint's columns."""
    name = name or (config.task if config is not None else None)
    if not name:
        raise DataError("no task: pass `task` (a GLUE task name, or custom with `text_column` and `label_column`)")
    if name.lower() != CUSTOM:
        if text_column or text_pair_column or label_column or labels:
            raise DataError(f"`text_column`, `text_pair_column`, `label_column` and `labels` apply to `task` custom; "
                            f"{name} has its own columns")
        return get_task(name)
    recorded = (config.task_columns or {}) if config is not None and config.task == CUSTOM else {}
    if labels is None and config is not None and config.task == CUSTOM:
        labels = [config.id2label[i] for i in range(config.num_labels)]
    return custom_task(text_column or recorded.get("text"), text_pair_column or recorded.get("text_pair"),
                       label_column or recorded.get("label", "label"), labels or ())


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}, or custom (your own columns)")
    return TASKS[key]


@dataclass
class Examples:
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray  # [n] int64 label ids
    source: str         # the file, directory or hub name the rows came from
    skipped: int = 0  # bad rows dropped (--skip-bad-rows)

    def __len__(self):
        return len(self.text_a)


def split_file(task: Task, data_dir, split: str) -> Path:
    data_dir = Path(data_dir)
    name = task.dev_file if split == "dev" else f"{split}.tsv"
    file = data_dir / name
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such directory; `data` must be a GLUE task directory "
                        f"holding {name}")
    if not file.is_file():
        raise DataError(f"{file}: missing; choose a `split` whose TSV exists in {data_dir}")
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
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(header)}); {_glue_columns_fix(task)}")
    value_to_id = {v: i for i, v in enumerate(task.label_values)}
    columns: dict[str, list[str]] = {c: [] for c in text_cols}
    labels: list[int] = []
    bad: list[tuple[int, str]] = []
    unknown: list = []  # the labels of the rows bad for their label alone
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
            unknown.append(label)
            continue
        for c in text_cols:
            columns[c].append(row[c])
        labels.append(value_to_id[label])
    _refuse_another_tasks_labels(file, task, bad, labels, unknown)
    if bad and not skip_bad_rows:
        lineno, reason = bad[0]
        more = f" ({len(bad)} bad rows in all)" if len(bad) > 1 else ""
        raise DataError(f"{file}:{lineno}: {reason}{more}; fix the file or pass `skip_bad_rows`")
    return columns, labels, len(bad)


def _refuse_another_tasks_labels(source, task: Task, bad: list, labels: list, unknown: list) -> None:
    """Every row has a label the task does not know (QNLI's 'entailment' read as SST-2): the data is another
    task's, which neither fixing rows nor skipping them would mend. Custom tasks name their labels themselves.
    bad: every bad row; labels: the good rows' labels; unknown: the labels of the rows bad for their label."""
    if task.custom or labels or len(bad) < 3 or len(unknown) != len(bad):
        return  # (one or two rows with a stray label are bad rows, not evidence of another task)
    first = repr(unknown[0])
    raise DataError(f"{source}: none of its {len(bad)} rows has a label of {task.name} "
                    f"({', '.join(map(str, task.label_values))}; the first row has {first}): this looks like another "
                    f"task's data; give the {task.name} data, or the task of this data with `task`")


def is_glue_tsv_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("train.tsv", "dev.tsv", "dev_matched.tsv", "test.tsv"))


def load_examples(task: Task, data, split: str = "dev", limit: int | None = None, skip_bad_rows: bool = False,
                  data_config: str | None = None) -> Examples:
    """One split of a task, in row order (mux groups are consecutive rows). `data`: see the module docstring.
    `skipped` counts bad rows dropped with skip_bad_rows; every other bad row is a DataError naming the
    file and row, and the fix."""
    import datasets

    path = Path(data)
    if is_glue_tsv_dir(path) and not task.custom and data_config is None:
        file = split_file(task, path, split)
        columns, labels, skipped = _read_rows(file, task, skip_bad_rows)
        if not labels:
            raise DataError(f"{file}: no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
        ds = datasets.Dataset.from_dict({**columns, "label": labels})
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return Examples(list(ds[task.text_a]), list(ds[task.text_b]) if task.text_b else None,
                        np.asarray(list(ds["label"]), dtype=np.int64), str(file), skipped)
    ds, source = open_split(data, split, data_config, limit)
    return _examples_from_dataset(ds, task, source, skip_bad_rows)


def _data_files(directory: Path) -> dict[str, list[str]]:
    """Split-named data files in a directory: {split: [file]} for one file format."""
    found: dict[str, dict[str, str]] = {}
    for file in sorted(directory.iterdir()):
        fmt = DATA_FILE_FORMATS.get(file.suffix.lower())
        if fmt and file.is_file():
            found.setdefault(file.suffix.lower(), {})[file.stem] = str(file)
    if len(found) > 1:
        raise DataError(f"{directory}: data files of several formats ({', '.join(sorted(found))}); keep one format "
                        "per directory")
    return next(iter(found.values()), {})


def _pick_split(available, split: str, where: str) -> str:
    for name in SPLIT_NAMES.get(split, (split,)):
        if name in available:
            return name
    raise DataError(f"{where}: no {split!r} split (it has {', '.join(sorted(available)) or 'none'}); choose a "
                    f"`split` it has, or name the files train.*, validation.* (or dev.*), test.*")


def _reader_options(suffix: str) -> dict:
    # TSV as GLUE writes it: tab-separated, no quoting (a quote is part of the text)
    return {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}


def _is_hub_name(data) -> bool:
    """owner/name, not a path: what `data` and `corpus` read from the Hugging Face hub."""
    text = str(data)
    return "/" in text and not text.startswith((".", "/")) and not Path(text).suffix


def _quiet_datasets():
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to read file" lines: ours say more
    datasets.disable_progress_bars()


def has_splits(data) -> bool:
    """Whether `data` has splits to choose from; a single data file and a save_to_disk Dataset (not a
    DatasetDict) are read whole, whatever `split` says."""
    path = Path(data)
    single_dataset = (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file()
    return not (path.is_file() or single_dataset)


def unused_split_warning(data, split: str | None) -> str | None:
    """The warning for a `split` given with data that has none to choose from (has_splits), else None."""
    if split is None or has_splits(data):
        return None
    return f"warning: --split {split} does not apply to a single data file or dataset; all of {data} is read"


def warn_skipped(examples: Examples, warn) -> None:
    """Tell `warn` how many bad rows load_examples(skip_bad_rows=True) dropped, if any."""
    if examples.skipped:
        warn(f"warning: skipped {examples.skipped} bad rows of {examples.source}")


def _saved_split(path: Path, split: str):
    """The `split` of a `datasets` save_to_disk directory (a Dataset, or a DatasetDict's split), or None when
    `path` is not one."""
    import datasets

    if not (path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())):
        return None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[_pick_split(loaded.keys(), split, str(path))]
    return loaded


def open_split(data, split: str, data_config: str | None = None, limit: int | None = None):
    """(datasets.Dataset, source name) of one split, through `datasets` (see the module docstring)."""
    path = Path(data)
    _quiet_datasets()
    file = path if path.is_file() else None  # the one file read, where it is known (for a decoding error)
    try:
        if (saved := _saved_split(path, split)) is not None:
            ds, source = saved, str(path)
        elif path.is_dir():
            files = _data_files(path)
            if not files:
                raise DataError(f"{path}: no data here; `data` takes a GLUE TSV directory, a save_to_disk directory, "
                                "split files (train.csv, validation.csv, ... or .tsv .jsonl .parquet) or such a file")
            name = _pick_split(files, split, str(path))
            file = Path(files[name])
            ds, source = _load_file(file), files[name]
        elif path.is_file():
            ds, source = _load_file(path), str(path)
        elif _is_hub_name(data):
            ds, source = _load_hub(str(data), data_config, split, limit), f"{data}" + (f" ({data_config})" if data_config else "")
        else:
            where = "" if path.is_absolute() else f" (looked for from {os.getcwd()})"  # the default is relative
            raise DataError(f"{data}: no such file or directory{where}; `data` takes a GLUE TSV directory, a "
                            "save_to_disk directory, a .csv/.tsv/.jsonl/.parquet file or a directory of them, or a hub "
                            "dataset name")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow / pandas / datasets parse errors: one line naming the source
        if "corresponds to no data" in str(e):  # a header and no rows
            raise DataError(f"{data}: no usable rows; the split is empty") from None
        cache = _cache_failure(e)
        if cache:
            raise DataError(cache) from None
        where = first_undecodable_line(file) if file is not None and _undecodable(e) else None
        if where:
            raise DataError(where) from None
        unreadable = _unreadable(e, data)
        if unreadable:
            raise DataError(unreadable) from None
        raise DataError(f"{data}: cannot be read as a dataset ({type(e).__name__}: "
                        f"{first_line(e, 200)}); check its format") from None
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return ds, source


def first_undecodable_line(file, limit_bytes: int = 1 << 30) -> str | None:
    """Where a text data file stops being UTF-8, as "FILE:LINE: not valid UTF-8 (byte 0xE9 at byte K of the
    line)", or None when its first `limit_bytes` decode. For the one line a Latin-1 (or binary) file gets instead
    of the UnicodeDecodeError that pyarrow, pandas and `datasets` wrap in their own errors."""
    try:
        with open(file, "rb") as f:
            read = 0
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    return (f"{file}:{number}: not valid UTF-8 (byte 0x{line[e.start]:02X} at byte {e.start + 1} of "
                            "the line); re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
                read += len(line)
                if read > limit_bytes:
                    return None
    except OSError:
        return None
    return None


def _unreadable(error: BaseException, data) -> str | None:
    """One line for a data file the operating system will not let us read (no permission, an I/O error), which
    the libraries pass on inside their own errors: the file and the fix, not its format."""
    import errno

    fixes = {errno.EACCES: "make it readable (chmod a+r) or run as a user who may read it",
             errno.EPERM: "make it readable (chmod a+r) or run as a user who may read it",
             errno.EIO: "the disk or network file system failed; copy the file elsewhere and retry"}
    for e in exception_chain(error):
        if isinstance(e, OSError) and e.errno is not None:
            return (f"{e.filename or data}: cannot be read ({e.strerror}); "
                    f"{fixes.get(e.errno, 'check the file and retry')}")
    return None


def _undecodable(error: BaseException) -> bool:
    """A UnicodeDecodeError anywhere in the error's chain (the libraries wrap it)."""
    return any(isinstance(e, UnicodeDecodeError) for e in exception_chain(error))


def _cache_failure(error: Exception) -> str | None:
    """One line for an OS error inside the Hugging Face datasets cache (unwritable, missing, full), which
    `datasets` raises while it reads any data file: the cache is the problem, not the data."""
    import errno

    import datasets

    if not isinstance(error, OSError):
        return None
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    where = Path(str(getattr(error, "filename", "") or ""))
    if not (where == cache or cache in where.parents or where in cache.parents):
        return None
    why = {errno.ENOSPC: "its file system is full", errno.EACCES: "it is not writable here",
           errno.EROFS: "it is on a read-only file system"}.get(error.errno, error.strerror or type(error).__name__)
    return (f"the Hugging Face datasets cache {cache} cannot be used: {why} ({where}); set HF_DATASETS_CACHE "
            "(or HF_HOME) to a writable directory with free space")


def _load_file(file: Path):
    import datasets

    fmt = DATA_FILE_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise DataError(f"{file}: unknown data format; use .csv, .tsv, .jsonl (or .json), .parquet")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file; a data file needs a header (or JSON objects) and at least one row")
    if fmt == "csv":
        _check_header(file)
    return datasets.load_dataset(fmt, data_files=str(file), split="train", **_reader_options(file.suffix.lower()))


def _check_header(file: Path) -> None:
    """A CSV / TSV header naming a column twice is refused: the reader would rename the second ('label.1')
    and a command would silently read the first."""
    import csv

    with open(file, newline="", encoding="utf-8", errors="replace") as f:
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
        header = next(csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else
                                 csv.QUOTE_MINIMAL), [])
    seen = {}
    for position, name in enumerate(header, 1):
        if name in seen:
            raise DataError(f"{file}: the header names column {name!r} twice (columns {seen[name]} and {position}); "
                            "rename or drop one, so it is clear which one is read")
        seen[name] = position


def _load_hub(name: str, config: str | None, split: str, limit: int | None):
    """A dataset from the Hugging Face hub (or its local cache); offline without a cached copy it fails in
    one line. With --limit only the first rows are streamed."""
    import datasets

    try:
        split_name = _hub_split(name, config, split)
        if limit is not None:
            return datasets.Dataset.from_list(list(datasets.load_dataset(name, config, split=split_name,
                                                                           streaming=True).take(limit)))
        return datasets.load_dataset(name, config, split=split_name)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - connection errors, missing configs, offline mode
        cache = datasets.config.HF_DATASETS_CACHE
        raise DataError(f"hub dataset {name}{f' ({config})' if config else ''} cannot be loaded here "
                        f"({type(e).__name__}: {first_line(e, 120)}); "
                        f"without network only a copy in the local cache ({cache}) works. Elsewhere, save it "
                        "with save_to_disk or to .parquet/.jsonl/.csv files and pass those to `data`") from None


def _label_lookup(task: Task, feature) -> dict:
    """Label as found in the data -> label id. Strings match the label values or names; ints of a
    ClassLabel column are read through its names; other ints match the labels written as numbers, and for
    GLUE tasks are label ids."""
    lookup = {}
    for i, (value, name) in enumerate(zip(task.label_values, task.label_names)):
        lookup[value] = lookup[name] = i
    names = getattr(feature, "names", None)
    if names:
        for k, n in enumerate(names):
            if n in lookup:
                lookup[k] = lookup[n]
    for i, value in enumerate(task.label_values):
        if value.lstrip("-").isdigit():
            lookup.setdefault(int(value), i)
    if not task.custom:  # GLUE in `datasets` form stores label ids, in our order
        for i in range(len(task.label_values)):
            lookup.setdefault(i, i)
    return lookup


def _columns(task: Task, columns) -> tuple[str, str | None, str]:
    """The task's text and label columns in this dataset: a GLUE task in its `datasets` form (nyu-mll/glue)
    has other text column names for some tasks and always calls the label "label"."""
    if task.custom or (task.text_a in columns and task.label_column in columns):
        return task.text_a, task.text_b, task.label_column
    return (*(task.hub_columns or (task.text_a, task.text_b)), "label")


def _glue_columns_fix(task: Task) -> str:
    """What to do when a GLUE task's data lacks one of its columns."""
    wanted = ", ".join(c for c in (task.text_a, task.text_b, task.label_column) if c)
    return (f"{task.name} reads the columns {wanted}; rename the data's columns to those (for a task of your own, "
            "train with `task` custom and `text_column`)")


def _examples_from_dataset(ds, task: Task, source: str, skip_bad_rows: bool) -> Examples:
    text_a, text_b, label_column = _columns(task, ds.column_names)
    for col in [text_a] + ([text_b] if text_b else []) + [label_column]:
        if col not in ds.column_names:
            flag = {text_a: "`text_column`", text_b: "`text_pair_column`", label_column: "`label_column`"}[col]
            fix = f"name the right one with {flag}" if task.custom else _glue_columns_fix(task)
            raise DataError(f"{source}: no column {col!r} (columns: {', '.join(ds.column_names)}); {fix}")
    lookup = _label_lookup(task, ds.features.get(label_column))
    a, b, labels, bad, unknown = [], [] if text_b else None, [], [], []
    rows = zip(ds[text_a], ds[text_b] if text_b else [None] * len(ds), ds[label_column])
    for row, (ta, tb, label) in enumerate(rows, start=1):
        empty = [c for c, t in ((text_a, ta), (text_b, tb)) if c and (not isinstance(t, str) or not t.strip())]
        if empty:
            bad.append((row, f"empty {empty[0]!r}"))
            continue
        key = label.strip() if isinstance(label, str) else label
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        if key not in lookup:
            bad.append((row, f"label {label!r} is not one of {', '.join(task.label_names)}"))
            unknown.append(label)
            continue
        a.append(ta)
        if b is not None:
            b.append(tb)
        labels.append(lookup[key])
    _refuse_another_tasks_labels(source, task, bad, labels, unknown)
    if bad and not skip_bad_rows:
        row, reason = bad[0]
        more = f" ({len(bad)} bad rows in all)" if len(bad) > 1 else ""
        fix = " or give every label with `labels`" if task.custom and "label" in reason else ""
        raise DataError(f"{source}: row {row}: {reason}{more}; fix the data{fix} or pass `skip_bad_rows`")
    if not labels:
        raise DataError(f"{source}: no usable rows" + (f" ({len(bad)} bad rows skipped)" if bad else "") +
                        "; the split is empty")
    return Examples(a, b, np.asarray(labels, dtype=np.int64), source, len(bad))


def read_labels(task: Task, data, split: str = "train", data_config: str | None = None) -> Task:
    """A custom task with its labels read from a split, in a stable order: numeric when every label is a
    number, else sorted as text (ClassLabel columns keep their own order)."""
    if task.label_names:
        return task
    ds, source = open_split(data, split, data_config)
    if task.label_column not in ds.column_names:
        raise DataError(f"{source}: no column {task.label_column!r} (columns: {', '.join(ds.column_names)}); name "
                        "the right one with `label_column`")
    names = getattr(ds.features.get(task.label_column), "names", None)
    if names:
        return task.with_labels(names)
    values = {v.strip() if isinstance(v, str) else v for v in ds[task.label_column] if v is not None and v != ""}
    values = {int(v) if isinstance(v, float) and v.is_integer() else v for v in values}
    if not values:
        raise DataError(f"{source}: the label column {task.label_column!r} is empty; give the labels with `labels`")
    if all(isinstance(v, int) or (isinstance(v, str) and v.lstrip("-").isdigit()) for v in values):
        ordered = sorted(values, key=lambda v: int(v))
    else:
        ordered = sorted(values, key=str)
    if len(ordered) < 2:
        raise DataError(f"{source}: the labels hold one value ({ordered[0]!r}); a classifier needs two or more")
    return task.with_labels(ordered)


# --- pre-training corpora (train pretrain) ---------------------------------------------------------

CORPUS_FILE_FORMATS = {".txt": "text", **DATA_FILE_FORMATS}  # .txt: one document per line, column "text"
CORPUS_FORMS = ("a .txt file (one document per line), a .jsonl / .json / .parquet / .csv / .tsv file or a "
                "directory of such files, a save_to_disk directory, or a hub dataset name")


def open_corpus(source, split: str = "train", config: str | None = None):
    """(datasets.IterableDataset, source name) of an unlabelled corpus, streamed: nothing is loaded whole, so a
    corpus larger than memory is read as training goes (train/corpus.py tokenizes it on the fly).

    source: a file (.txt: one document per line in column "text"; .jsonl/.json/.parquet/.csv/.tsv), a directory
    of such files (every file of its one format, in name order; only those named after `split`, e.g.
    train-00000-of-00041.parquet, when some are), a save_to_disk directory (a DatasetDict: its `split`), or a
    hub dataset name (streamed; without network, the copy in the local `datasets` cache). The iterable supports
    state_dict() / load_state_dict(), which --resume uses to continue at the exact row.
    Raises DataError (one line: the source, the problem, the fix) for a missing, empty or unreadable source."""
    import datasets

    path = Path(source)
    _quiet_datasets()
    try:
        if (saved := _saved_split(path, split)) is not None:
            return saved.to_iterable_dataset(), str(path)
        if path.is_dir() or path.is_file():
            files, fmt = _corpus_files(path, split)
            return datasets.load_dataset(fmt, data_files=files, split="train", streaming=True,
                                         **_reader_options(Path(files[0]).suffix.lower())), str(path)
        if _is_hub_name(source):
            return _stream_hub(str(source), config, split), str(source) + (f" ({config})" if config else "")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow / datasets parse errors: one line naming the source
        raise DataError(f"{source}: cannot be read as a corpus ({type(e).__name__}: {first_line(e, 200)}); check its "
                        "format") from None
    raise DataError(f"{source}: no such file or directory; `corpus` takes {CORPUS_FORMS}")


def _corpus_files(path: Path, split: str) -> tuple[list[str], str]:
    """The data files of a corpus file or directory, and their `datasets` builder name."""
    if path.is_file():
        fmt = CORPUS_FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: unknown corpus format; use {', '.join(CORPUS_FILE_FORMATS)}")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file; a corpus needs at least one line of text")
        return [str(path)], fmt
    by_suffix: dict[str, list[Path]] = {}
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix.lower() in CORPUS_FILE_FORMATS and file.stat().st_size > 0:
            by_suffix.setdefault(file.suffix.lower(), []).append(file)
    if not by_suffix:
        raise DataError(f"{path}: no corpus files here; `corpus` takes {CORPUS_FORMS}")
    if len(by_suffix) > 1:
        raise DataError(f"{path}: corpus files of several formats ({', '.join(sorted(by_suffix))}); keep one format "
                        "per directory")
    suffix, files = next(iter(by_suffix.items()))
    named = [f for f in files if f.stem == split or f.name.startswith((f"{split}-", f"{split}_", f"{split}."))]
    return [str(f) for f in named or files], CORPUS_FILE_FORMATS[suffix]


def _hub_split(name: str, config: str | None, split: str, check: bool = True) -> str:
    """The hub dataset's own name for `split` (dev -> validation, as SPLIT_NAMES maps it) where its builder
    lists its splits (online, or from the local cache); `split` as given where nothing can be listed. check:
    also for a split with no other names (refusing one the dataset lacks); without it such a split is taken
    as given, sparing the builder's look-up (offline, its retries cost about 20 s)."""
    import datasets

    if not check and len(SPLIT_NAMES.get(split, (split,))) == 1:
        return split
    try:
        splits = datasets.load_dataset_builder(name, config).info.splits
    except Exception:  # noqa: BLE001 - offline with nothing cached: loading will say so in one line
        return split
    return _pick_split(splits, split, name) if splits else split


def _stream_hub(name: str, config: str | None, split: str):
    """A hub dataset streamed; where streaming fails (no network), the copy in the local cache, read lazily."""
    import datasets

    split = _hub_split(name, config, split, check=False)
    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception:  # noqa: BLE001 - offline or unreachable: try the cache
        pass
    try:
        return datasets.load_dataset(name, config, split=split).to_iterable_dataset()
    except Exception as e:  # noqa: BLE001
        cache = datasets.config.HF_DATASETS_CACHE
        raise DataError(f"hub dataset {name}{f' ({config})' if config else ''} cannot be streamed or read from the "
                        f"local cache ({cache}) here ({type(e).__name__}: "
                        f"{first_line(e, 120)}); without network save it "
                        "elsewhere with save_to_disk or as .parquet/.jsonl/.txt files and pass those to "
                        "`corpus`") from None


# --- tokenizer files -----------------------------------------------------------------------------

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def has_tokenizer(path) -> bool:
    """Whether directory `path` holds a Hugging Face tokenizer (any of TOKENIZER_FILES)."""
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def copy_tokenizer(src, dst) -> bool:
    """Copy the tokenizer files of directory `src` into directory `dst`; False when `src` has none."""
    copied = False
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied = True
    return copied


def load_tokenizer(path):
    """The tokenizer saved beside a checkpoint or engine (no hub access)."""
    from transformers import AutoTokenizer

    if path is None or not has_tokenizer(path):
        raise DataError(f"{path}: no tokenizer files (vocab.txt / tokenizer.json); this model was built "
                        "from a bare config, so it cannot read text. Use a checkpoint made from a BERT "
                        "directory (its tokenizer travels with the model)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer, text_a, text_b=None, max_length: int = 128, pad_to_max: bool = False,
             uses_token_types: bool = False) -> dict[str, np.ndarray]:
    """Token ids as int64 numpy arrays [batch, sequence], padded to the longest row or to max_length."""
    enc = tokenizer(list(text_a), list(text_b) if text_b is not None else None, truncation=True,
                    max_length=max_length, padding="max_length" if pad_to_max else "longest",
                    return_tensors="np", return_token_type_ids=True)
    out = {"input_ids": enc["input_ids"].astype(np.int64),
           "attention_mask": enc["attention_mask"].astype(np.int64)}
    if uses_token_types:
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
                        f"(first: row {long_rows[0] + 1}); shorten them, or allow truncation (drop --no-truncate; "
                        "truncate=True in Python)")
    if long_rows:
        warn(f"warning: {len(long_rows)} of {len(text_a)} inputs are longer than {max_length} tokens and "
             "were truncated (--no-truncate, or truncate=False, refuses them instead)")
    return len(long_rows)
