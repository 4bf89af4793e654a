"""Scoring in worker processes (Ray Data, Dask, multiprocessing), where an Engine cannot go.

See EngineHandle, and the README's section Past one machine.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import DataError, EngineError
from .inputs import _engine_columns, _pick
from .pipeline import DEFAULT_BATCH_SIZE, _check_options, _text_problem, score_rows


# --- scoring in worker processes: Ray Data, Dask, multiprocessing ----------------------------------------------

_OPENED: dict = {}                  # (pid, engine dir, device, runtime, threads, tf32) -> (Engine, tokenizer)
_OPENING = threading.Lock()         # one load at a time in a process: threads of one worker share its engine


def output_columns(labels) -> list[str]:
    """The columns a scored row gains, in order: `label`, then `p_<label>` per class in the engine's label order
    (what `predict --output` writes after `id`)."""
    return ["label", *[f"p_{label}" for label in labels]]


class EngineHandle:
    """An engine directory and how to score with it, to ship to worker processes where an Engine cannot go (an
    ONNX Runtime session does not pickle). It pickles as these settings; in each worker process the engine and
    its tokenizer are opened on first use and kept for every later batch and every handle with the same
    settings (one engine per process, whatever the number of batches or tasks).

        handle = EngineHandle("/abs/engine", isolation="request", batch_size=256, threads=2)
        handle(batch) -> the batch's rows, in order, plus `label` and `p_<label>` per class

    batch: a pandas DataFrame (Dask's map_partitions, Ray's batch_format="pandas"), a dict of columns (Ray
    Data's default: {name: numpy array}) or a pyarrow Table; the result has the same type, the input columns
    unchanged and the new ones appended (float64 probabilities, the label as text). As a class,
    `ds.map_batches(EngineHandle, fn_constructor_args=(engine_dir,), compute=ray.data.ActorPoolStrategy(size=K),
    ...)` gives Ray Data K worker processes with one engine each (README, Past one machine).

    engine_dir: made absolute here, so give it as the workers see it (a shared or copied path). device: "cpu"
    or "cuda" (one GPU per worker: give each worker one, e.g. Ray's num_gpus=1, and the engine runs on the one
    it sees). isolation, batch_size, sort_window, truncate: as score_rows: "request" answers every row exactly
    as classifying it alone, bit for bit, however the rows are split into batches and across workers (equal to
    `predict --isolation request`); in "shared" a row shares its mux group with its neighbours in the batch, so
    answers equal `predict`'s only where the batches start at the same rows (a batch of b rows, handle
    batch_size dividing b, cut at multiples of b from the input's first row). threads: ONNX Runtime's (or
    OpenVINO's) intra-op threads per engine (default: every core, each worker's engine competing for all of
    them; give the cores per worker; not for TensorRT plans). runtime, tf32: as load_engine. text_column /
    second_column: default the engine's task columns, then 'text' (and 'text_pair'), as score_file.

    Raises DataError (one line) for a missing text column, a row without text (its row in the batch), an
    input that already has one of the output columns; EngineError as load_engine and score_rows."""

    def __init__(self, engine_dir, *, device: str = "cpu", isolation: str = "shared",
                 batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None, sort_window: int | None = None,
                 truncate: bool = True, text_column: str | None = None, second_column: str | None = None,
                 runtime: str | None = None, tf32: bool = False):
        _check_options(isolation, batch_size, sort_window)
        if threads is not None and int(threads) < 1:
            raise EngineError(f"`threads` must be at least 1 (or None: every core), got {threads}")
        if device not in ("cpu", "cuda"):
            raise EngineError(f"`device` {device!r}: choose cpu or cuda")
        self.engine_dir = str(Path(engine_dir).resolve())
        self.device, self.isolation, self.batch_size = device, isolation, int(batch_size)
        self.threads = None if threads is None else int(threads)
        self.sort_window, self.truncate = sort_window, bool(truncate)
        self.text_column, self.second_column = text_column, second_column
        self.runtime, self.tf32 = runtime, bool(tf32)

    def __repr__(self) -> str:
        return (f"EngineHandle({self.engine_dir!r}, device={self.device!r}, isolation={self.isolation!r}, "
                f"batch_size={self.batch_size}, threads={self.threads})")

    # --- the engine, once per process -----------------------------------------------------------------------
    def load(self):
        """Open the engine and its tokenizer: (Engine, tokenizer). What `opened` calls once per process."""
        from ..data import load_tokenizer
        from ..engine import load_engine

        options = {} if self.threads is None else {"threads": self.threads}
        engine = load_engine(self.engine_dir, device=self.device, runtime=self.runtime, tf32=self.tf32, **options)
        return engine, load_tokenizer(engine.dir)

    def opened(self):
        """(Engine, tokenizer) of this process, opened on the first call (a forked child opens its own)."""
        key = (os.getpid(), self.engine_dir, self.device, self.runtime, self.threads, self.tf32)
        found = _OPENED.get(key)
        if found is None:
            with _OPENING:
                found = _OPENED.get(key)
                if found is None:
                    found = _OPENED[key] = self.load()
        return found

    @property
    def engine(self):
        return self.opened()[0]

    # --- scoring ---------------------------------------------------------------------------------------------
    def __call__(self, batch):
        columns, rows, rebuild = _batch_columns(batch)
        engine, tokenizer = self.opened()
        labels = engine.labels
        names = output_columns(labels)
        clash = [name for name in names if name in columns]
        if clash:
            raise DataError(f"the rows already have a column {clash[0]!r}, which scoring adds; drop or rename it "
                            "before scoring (or read only the text columns)")
        text_column, second_column = self._text_columns(engine, list(columns))
        texts = _batch_texts(columns[text_column], text_column)
        seconds = _batch_texts(columns[second_column], second_column) if second_column else None
        probabilities = self.score(texts, seconds, engine, tokenizer)
        best = probabilities.argmax(1)
        added = {"label": np.array([labels[k] for k in best.tolist()], dtype=object)}
        for j, name in enumerate(names[1:]):
            added[name] = np.ascontiguousarray(probabilities[:, j])
        return rebuild(added)

    def score(self, texts: list, seconds: list | None = None, engine=None, tokenizer=None) -> np.ndarray:
        """Probabilities [len(texts), C] (float64, input order) of texts (and their second sentences)."""
        if engine is None:
            engine, tokenizer = self.opened()
        if not texts:
            return np.zeros((0, len(engine.labels)), dtype=np.float64)
        rows = texts if seconds is None else list(zip(texts, seconds))
        parts = [scored.probabilities for scored in
                 score_rows(engine, rows, batch_size=self.batch_size, isolation=self.isolation,
                            sort_window=self.sort_window, truncate=self.truncate, tokenizer=tokenizer,
                            warn=_warning)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _text_columns(self, engine, columns: list[str]) -> tuple[str, str | None]:
        pair = engine.uses_token_types
        if self.second_column is not None and not pair:
            raise DataError("this engine classifies single sentences; drop `second_column`")
        first, second = _engine_columns(engine)
        source = "the batch"
        text = _pick(columns, self.text_column, first, "text_column", source)
        return text, (_pick(columns, self.second_column, second, "second_column", source) if pair else None)


def _warning(message: str) -> None:
    import warnings

    warnings.warn(message.removeprefix("warning: "), stacklevel=3)


def _batch_columns(batch):
    """(columns {name: values}, rows, rebuild): rebuild(added {name: numpy array}) -> the batch's own type with
    the added columns after its own."""
    try:
        import pandas as pd
    except ImportError:  # pandas is optional: dict and pyarrow batches need none
        pd = None
    if pd is not None and isinstance(batch, pd.DataFrame):
        def frame(added):
            out = batch.copy(deep=False)
            for name, values in added.items():
                out[name] = values
            return out

        return {str(c): batch[c] for c in batch.columns}, len(batch), frame
    if isinstance(batch, dict):
        columns = dict(batch)
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise DataError(f"the batch's columns have different lengths ({sorted(sizes)}); give one value per row "
                            "in every column")
        return columns, sizes.pop() if sizes else 0, lambda added: {**columns, **added}
    try:
        import pyarrow as pa
    except ImportError:
        pa = None
    if pa is not None and isinstance(batch, pa.Table):
        def table(added):
            out = batch
            for name, values in added.items():
                out = out.append_column(name, pa.array(values, type=pa.string() if name == "label" else pa.float64()))
            return out

        return {name: batch.column(name) for name in batch.column_names}, batch.num_rows, table
    raise DataError(f"cannot score a {type(batch).__name__}: give a pandas DataFrame, a dict of columns "
                    "({name: values}) or a pyarrow Table")


def _batch_texts(values, column: str) -> list:
    """The column's values as Python objects, each checked to be a text (DataError naming the batch row)."""
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    values = [v if isinstance(v, str) or not _missing_value(v) else None for v in values]
    for index, value in enumerate(values):
        problem = _text_problem(value, column)
        if problem:
            raise DataError(f"row {index + 1} of the batch ({len(values)} rows): {problem}; drop or fix such rows "
                            "before scoring")
    return values


def _missing_value(value) -> bool:
    """None, NaN (pandas' missing value in an object column) or pandas.NA."""
    return value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NAType"
