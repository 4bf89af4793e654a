"""Scoring rows and files with an engine: text in, labels out, at engine speed and in bounded memory.

    score_rows(engine, rows)            iterator of ScoredRows (probabilities [k, C], input order) over an iterable
                                        of texts, or of (text, second) pairs for a pair engine: classify, streamed
    score_file(engine, input, output)   read a file, score every row, write one output row per input row
    EngineHandle(engine_dir, ...)       what worker processes (Ray Data, Dask) get instead of an Engine, which
                                        does not pickle: the engine opened once per process; a batch of rows
                                        in, the rows plus label and p_<label> out (README, Past one machine)

The modules: pipeline.py (score_rows: the background tokenizer, windows, batches), inputs.py (open_input: the
input forms), outputs.py (the output formats and the partial directory of an interrupted run), files.py
(score_file) and workers.py (EngineHandle).
"""

from .files import FLUSH_ROWS, score_file
from .inputs import INPUT_FILES, INPUT_FORMS, InputFile, open_input
from .outputs import OUTPUT_FORMATS, partial_dir, read_progress
from .pipeline import DEFAULT_BATCH_SIZE, DEFAULT_SORT_WINDOW, QUEUE_DEPTH, ScoredRows, ScoreSummary, score_rows
from .workers import EngineHandle, output_columns

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_SORT_WINDOW", "EngineHandle", "FLUSH_ROWS", "INPUT_FILES", "INPUT_FORMS",
           "InputFile", "OUTPUT_FORMATS", "QUEUE_DEPTH", "ScoreSummary", "ScoredRows", "open_input", "output_columns",
           "partial_dir", "read_progress", "score_file", "score_rows"]
