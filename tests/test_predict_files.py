"""`predict --input FILE --output FILE` and prumux_deploy.scoring: every input and output form, the pipelined
tokenizer, bad rows, interruption and resume, and memory that stays flat as the input grows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SST2_ROWS, refused, run_cli as run

TEXTS = [s for s, _ in SST2_ROWS] + ['a "quoted" , witty film', "the movie was not what i like", "fun fun"]
LABELS = ["negative", "positive"]


def classified_in_batches(engine, texts, batch_size, second=None, isolation="shared"):
    """What the file path must give: classify on each batch of `batch_size` consecutive rows."""
    from prumux_deploy.engine import classify

    parts = []
    for k in range(0, len(texts), batch_size):
        chunk = second[k:k + batch_size] if second else None
        parts.append(classify(engine, texts[k:k + batch_size], chunk, isolation=isolation).probabilities)
    return np.concatenate(parts)


def read_output(path):
    """(ids, labels, probabilities [n, C]) of a scored file, whatever its form."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            row.update({k: float(v) for k, v in row.items() if k.startswith("p_")})
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    assert all(list(row)[:2] == ["id", "label"] for row in rows)
    return ([row["id"] for row in rows], [row["label"] for row in rows],
            np.array([[row[f"p_{label}"] for label in LABELS] for row in rows]))


def write_input(folder, form, texts, ids=None):
    """The texts (and an 'uid' column when ids are given) in one of the input forms; returns its path."""
    columns = {"sentence": texts, **({"uid": ids} if ids is not None else {})}
    if form == "txt":
        path = folder / "rows.txt"
        path.write_text("".join(t + "\n" for t in texts))
    elif form == "tsv":  # as GLUE writes it: tabs, no quoting (a quote is part of the text)
        path = folder / "rows.tsv"
        path.write_text("".join("\t".join(map(str, row)) + "\n" for row in [list(columns), *zip(*columns.values())]))
    elif form == "csv":
        path = folder / "rows.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))
    elif form == "jsonl":
        path = folder / "rows.jsonl"
        path.write_text("".join(json.dumps(dict(zip(columns, v))) + "\n" for v in zip(*columns.values())))
    elif form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "rows.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=5)  # several row groups
    elif form == "save_to_disk":
        import datasets

        path = folder / "saved"
        datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns)}).save_to_disk(str(path))
    else:
        raise ValueError(form)
    return path


@pytest.fixture(scope="module")
def engine(engine_dir):
    from prumux_deploy.engine import load_engine

    return load_engine(engine_dir)


@pytest.mark.parametrize("form", ["tsv", "csv", "jsonl", "parquet", "save_to_disk", "txt"])
def test_every_input_form_gives_classify_in_input_order(tmp_path, engine_dir, engine, form):
    path = write_input(tmp_path, form, TEXTS)
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "out.jsonl", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out.jsonl'}: {len(TEXTS)} rows" in result.output
    ids, labels, probabilities = read_output(tmp_path / "out.jsonl")
    expected = classified_in_batches(engine, TEXTS, 4)
    assert ids == list(range(len(TEXTS)))
    assert np.array_equal(probabilities, expected)  # bit for bit: same batches, same feeds
    assert labels == [LABELS[k] for k in expected.argmax(1)]
    assert not list(tmp_path.glob(".out.jsonl.*"))  # nothing left beside the output


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_output_forms_hold_the_same_rows(tmp_path, engine_dir, engine, suffix):
    path = write_input(tmp_path, "jsonl", TEXTS, ids=[f"r{i}" for i in range(len(TEXTS))])
    out = tmp_path / f"scores{suffix}"
    result = run("predict", engine_dir, "--input", path, "--output", out, "--id-column", "uid")
    assert result.exit_code == 0, result.output
    ids, labels, probabilities = read_output(out)
    expected = classified_in_batches(engine, TEXTS, 256)
    assert ids == [f"r{i}" for i in range(len(TEXTS))]
    assert np.array_equal(probabilities, expected) and labels == [LABELS[k] for k in expected.argmax(1)]


def test_parquet_ids_keep_their_type(tmp_path, engine_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_input(tmp_path, "parquet", TEXTS, ids=list(range(100, 100 + len(TEXTS))))
    for args, kind in (((), pa.int64()), (("--id-column", "uid"), pa.int64())):
        out = tmp_path / f"out{len(args)}.parquet"
        assert run("predict", engine_dir, "--input", path, "--output", out, *args).exit_code == 0
        table = pq.read_table(out)
        assert table.schema.field("id").type == kind and table.column_names == ["id", "label", *[
            f"p_{label}" for label in LABELS]]
    assert pq.read_table(tmp_path / "out2.parquet").column("id").to_pylist()[:2] == [100, 101]


def test_pipelined_tokenizer_is_bit_identical_to_the_plain_path(engine):
    from prumux_deploy.engine import classify
    from prumux_deploy.scoring import score_rows

    texts = TEXTS * 3
    for isolation, sort_window in (("shared", 0), ("request", 0), ("request", 2), ("shared", 2)):
        runs = [np.concatenate([s.probabilities for s in score_rows(engine, texts, batch_size=4, isolation=isolation,
                                                                     sort_window=sort_window, pipeline=pipeline)])
                for pipeline in (True, False)]
        assert np.array_equal(runs[0], runs[1]), (isolation, sort_window)
        if isolation == "request":  # sorting or not, each row is what classifying it alone gives
            alone = np.concatenate([classify(engine, [t], isolation="request").probabilities for t in texts])
            assert np.array_equal(runs[0], alone), sort_window
        elif sort_window == 0:
            assert np.array_equal(runs[0], classified_in_batches(engine, texts, 4))
    starts = [s.start for s in score_rows(engine, texts, batch_size=4)]
    assert starts == list(range(0, len(texts), 4))


def test_stopping_early_stops_the_tokenizing_thread(engine):
    import threading

    from prumux_deploy.scoring import score_rows

    rows = score_rows(engine, (TEXTS[i % len(TEXTS)] for i in range(10_000)), batch_size=2)
    first = next(rows)
    assert first.start == 0 and first.probabilities.shape == (2, 2) and first.best()[0][0] in LABELS
    rows.close()
    assert not [t for t in threading.enumerate() if t.name == "prumux-tokenize"]


def test_request_isolation_file_rows_are_each_alone(tmp_path, engine_dir, engine):
    from prumux_deploy.engine import classify

    path = write_input(tmp_path, "txt", TEXTS)
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "o.csv", "--isolation", "request",
                 "--batch-size", 3)
    assert result.exit_code == 0, result.output
    _, _, probabilities = read_output(tmp_path / "o.csv")
    alone = np.concatenate([classify(engine, [t], isolation="request").probabilities for t in TEXTS])
    assert np.array_equal(probabilities, alone)


def test_pair_engine_reads_both_columns(tmp_path, pair_engine_dir):
    from prumux_deploy.engine import classify, load_engine

    engine = load_engine(pair_engine_dir)
    questions = ["what is good", "who was the film", "why not", "how is the plot"]
    sentences = ["a good film", "the film is a movie", "not very good", "the plot was awful"]
    path = tmp_path / "pairs.tsv"
    path.write_text("question\tsentence\n" + "".join(f"{q}\t{s}\n" for q, s in zip(questions, sentences)))
    result = run("predict", pair_engine_dir, "--input", path, "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    expected = classify(engine, questions, sentences).probabilities
    assert np.array_equal([[r[f"p_{name}"] for name in engine.labels] for r in rows], expected)
    refused(run("predict", pair_engine_dir, "--input", path, "--output", tmp_path / "p.jsonl", "--second-column",
                "nope"), 2, "no column 'nope' (columns: question, sentence); name the right one with --second-column")
    (tmp_path / "pairs.txt").write_text("what is good\n")
    refused(run("predict", pair_engine_dir, "--input", tmp_path / "pairs.txt", "--output", tmp_path / "p.jsonl"), 2,
            "classifies sentence pairs")


def test_pair_data_to_a_single_sentence_engine_is_scored_on_its_text_column_with_a_warning(tmp_path, engine_dir):
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\na good film\tthe film is good\nawful\tnot good\n")
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "o.jsonl", "--text-column",
                 "sentence1")
    assert result.exit_code == 0, result.output
    assert (f"warning: {path} has a second-text column `sentence2`, and this engine classifies single sentences: "
            "only `sentence1` is scored; use a sentence-pair engine for pairs") in result.output
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
    plain = tmp_path / "plain.tsv"  # no second-text column: no warning
    plain.write_text("sentence\tlabel\na good film\t1\n")
    result = run("predict", engine_dir, "--input", plain, "--output", tmp_path / "p.jsonl")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_the_input_is_never_the_output_and_a_split_of_one_file_is_named(tmp_path, engine_dir):
    """--force replaces an earlier output, never the data being scored; --split on one file reads all of it, said."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"sentence": "a good film"}\n{"sentence": "awful"}\n')
    for given in (path, tmp_path / "." / "rows.jsonl"):
        refused(run("predict", engine_dir, "--input", path, "--output", given, "--force"), 2,
                f"{given}: the output is the input file, which writing the scores would destroy; write them to "
                "another file")
    assert path.read_text() == '{"sentence": "a good film"}\n{"sentence": "awful"}\n'
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "o.jsonl", "--split", "train")
    assert result.exit_code == 0, result.output
    assert (f"warning: --split train does not apply to a single data file or dataset; all of {path} is read"
            in result.output)
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "p.jsonl")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


@pytest.mark.parametrize("form, content, message", [
    ("tsv", "sentence\tlabel\ngood\t1\nbad\t0\n \t1\nfun\t1\n", "row 3: empty 'sentence'"),
    ("jsonl", '{"sentence": "good"}\n{"sentence": 7}\n', "row 2: 'sentence' is not text (int 7)"),
    ("jsonl", '{"sentence": "good"}\n\n{"text": "good"}\n', "row 2: no value in 'sentence'"),
    ("txt", "good\n\nfun\n", "row 2: empty line"),
    ("csv", "sentence,label\ngood,1\nbad,0,extra\n", "row 2: 3 fields, the header has 2"),
])
def test_bad_row_fails_in_one_line_and_leaves_nothing(tmp_path, engine_dir, form, content, message):
    path = tmp_path / f"rows.{form}"
    path.write_text(content)
    out = tmp_path / "o.jsonl"
    line = refused(run("predict", engine_dir, "--input", path, "--output", out), 2, message)
    assert line == f"error: {path}: {message}; fix the data or pass --skip-bad-rows"
    assert list(tmp_path.iterdir()) == [path]  # no output, no partial directory


def test_skip_bad_rows_counts_and_skips(tmp_path, engine_dir, engine):
    texts = ["good", "", "fun film", "  ", "bad"] + TEXTS
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in texts) + '{"other": 1}\n[1, 2]\n')
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "o.jsonl", "--skip-bad-rows",
                 "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "4 bad rows skipped" in result.output
    ids, _, probabilities = read_output(tmp_path / "o.jsonl")
    good = [i for i, t in enumerate(texts) if t.strip()]
    assert ids == good
    assert np.array_equal(probabilities, classified_in_batches(engine, [texts[i] for i in good], 4))


def test_too_long_rows_are_truncated_or_bad(tmp_path, engine_dir):
    long = " ".join(["good"] * 40)  # more than the tiny engine's 16 tokens
    path = tmp_path / "rows.txt"
    path.write_text(f"fun\n{long}\nbad\n")
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "a.jsonl")
    assert result.exit_code == 0 and ("1 rows are longer than 16 tokens and were truncated (--no-truncate, or "
                                      "truncate=False, makes them bad rows instead)") in result.output
    refused(run("predict", engine_dir, "--input", path, "--output", tmp_path / "b.jsonl", "--no-truncate"), 2,
            "row 2: longer than 16 tokens")
    result = run("predict", engine_dir, "--input", path, "--output", tmp_path / "c.jsonl", "--no-truncate",
                 "--skip-bad-rows")
    assert result.exit_code == 0 and "1 bad rows skipped" in result.output
    assert read_output(tmp_path / "c.jsonl")[0] == [0, 2]


def interrupting(monkeypatch, at_call: int, log: list):
    """Make the engine `predict` loads raise KeyboardInterrupt on its `at_call`-th run; `log` receives the size of
    every batch the engine answers."""
    import prumux_deploy.engine as engine_module

    real_load = engine_module.load_engine

    def load(*args, **kwargs):
        engine = real_load(*args, **kwargs)
        real_run, calls = engine.run_feeds, [0]

        def run_feeds(feeds):
            calls[0] += 1
            if calls[0] == at_call:
                raise KeyboardInterrupt
            log.append(len(feeds["input_ids"]))
            return real_run(feeds)

        engine.run_feeds = run_feeds
        return engine

    monkeypatch.setattr(engine_module, "load_engine", load)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_interrupted_run_leaves_nothing_and_resume_scores_each_row_once(tmp_path, monkeypatch, engine_dir, suffix):
    texts = [f"{t} {k}" for k in range(3) for t in TEXTS]
    path = write_input(tmp_path, "tsv", texts)
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert run("predict", engine_dir, "--input", path, "--output", whole, "--batch-size", 4).exit_code == 0

    first, second = [], []
    interrupting(monkeypatch, 3, first)
    result = run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4)
    assert result.exit_code == 130, result.output
    assert "rerun with --resume to continue" in result.output and "8 input rows are done" in result.output
    assert not out.exists() and first == [4, 4]
    assert (tmp_path / f".{out.name}.partial" / "progress.json").is_file()
    refused(run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4), 2,
            "an interrupted run of it is kept")

    monkeypatch.undo()
    interrupting(monkeypatch, 0, second)  # counts, never interrupts
    result = run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4, "--resume")
    assert result.exit_code == 0, result.output
    assert sum(first) + sum(second) == len(texts)  # every row went through the engine exactly once
    assert read_output(out)[0] == list(range(len(texts)))
    if suffix == ".jsonl":
        assert out.read_bytes() == whole.read_bytes()
    else:
        assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
                   for a, b in zip(read_output(out), read_output(whole)))
    assert not (tmp_path / f".{out.name}.partial").exists()


def test_resume_is_refused_when_the_input_or_options_differ(tmp_path, monkeypatch, engine_dir):
    path = write_input(tmp_path, "txt", TEXTS * 2)
    out = tmp_path / "out.csv"
    interrupting(monkeypatch, 2, [])
    assert run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4).exit_code == 130
    line = refused(run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 3, "--resume"), 2,
                   "cannot resume")
    assert line == (f"error: cannot resume {out}: --batch-size was 4 then, 3 now; rerun with the interrupted run's "
                    "input and options, or start over with --force (without --resume)")
    refused(run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4, "--resume",
                "--isolation", "request"), 2, "--isolation was 'shared' then, 'request' now")
    with open(path, "a") as f:
        f.write("one more row\n")
    refused(run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4, "--resume"), 2,
            "changed since")
    assert (tmp_path / ".out.csv.partial").is_dir() and not out.exists()
    monkeypatch.undo()
    result = run("predict", engine_dir, "--input", path, "--output", out, "--batch-size", 4, "--force")
    assert result.exit_code == 0, result.output
    assert len(read_output(out)[0]) == 2 * len(TEXTS) + 1 and not (tmp_path / ".out.csv.partial").exists()


def test_api_resume_joins_many_parts(tmp_path, engine):
    """score_file with small part files: an interruption keeps the finished windows, resume joins every part."""
    from prumux_deploy.scoring import score_file

    texts = [f"{t} {k}" for k in range(4) for t in TEXTS]
    path = write_input(tmp_path, "parquet", texts)
    score_file(engine, path, tmp_path / "whole.parquet", batch_size=2, flush_rows=5)
    real, calls = engine.run_feeds, [0]

    def run_feeds(feeds):
        calls[0] += 1
        if calls[0] == 9:
            raise RuntimeError("disk went away")
        return real(feeds)

    engine.run_feeds = run_feeds
    try:
        with pytest.raises(RuntimeError):
            score_file(engine, path, tmp_path / "out.parquet", batch_size=2, flush_rows=5)
    finally:
        del engine.run_feeds
    progress = json.loads((tmp_path / ".out.parquet.partial" / "progress.json").read_text())
    assert progress["rows_done"] == 16 and len(progress["parts"]) == 3
    summary = score_file(engine, path, tmp_path / "out.parquet", batch_size=2, flush_rows=5, resume=True)
    assert summary.resumed_at == 16 and summary.rows_written == len(texts)
    a, b = read_output(tmp_path / "out.parquet"), read_output(tmp_path / "whole.parquet")
    assert a[0] == b[0] == list(range(len(texts))) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_file_form_refusals(tmp_path, engine_dir):
    path = write_input(tmp_path, "txt", TEXTS)
    (tmp_path / "exists.jsonl").write_text("")
    refused(run("predict", engine_dir, "--input", path, "--output", tmp_path / "exists.jsonl"), 2,
            "already exists; pass --force")
    refused(run("predict", engine_dir, "fine", "--input", path, "--output", tmp_path / "o.jsonl"), 2,
            "give TEXTS or --input, not both")
    refused(run("predict", engine_dir, "--input", path), 2, "--input needs --output")
    refused(run("predict", engine_dir, "fine", "--skip-bad-rows"), 2, "--skip-bad-rows applies to --input")
    refused(run("predict", engine_dir), 2, "nothing to classify")
    refused(run("predict", engine_dir, "--input", path, "--output", tmp_path / "o.txt"), 2, "unknown output format")
    refused(run("predict", engine_dir, "--input", tmp_path / "none.tsv", "--output", tmp_path / "o.jsonl"), 2,
            "no such file or directory")
    refused(run("predict", engine_dir, "--input", write_input(tmp_path, "csv", TEXTS), "--output",
                tmp_path / "o.jsonl", "--text-column", "body"), 2,
            "no column 'body' (columns: sentence); name the right one with --text-column")
    refused(run("predict", engine_dir, "--output", tmp_path / "o.jsonl"), 2, "--output needs --input: the file of "
                                                                             "texts to score")
    (tmp_path / "noheader.tsv").write_text("a gorgeous film\ndull and tedious\n")  # texts, but no header line
    refused(run("predict", engine_dir, "--input", tmp_path / "noheader.tsv", "--output", tmp_path / "o.jsonl"), 2,
            "no column 'sentence' (columns: a gorgeous film); name the right one with --text-column; the first line "
            "is read as the header: add a header line, or give one text per line in a .txt file")
    (tmp_path / "open.csv").write_text('sentence\n"a film\ngood\n')  # was: one row, "a film\ngood\n"
    refused(run("predict", engine_dir, "--input", tmp_path / "open.csv", "--output", tmp_path / "o.jsonl"), 2,
            f"{tmp_path / 'open.csv'}: the file ends inside a quoted field (a \" is opened and never closed); close "
            'the quote, or double a quote that is part of the text ("")')
    (tmp_path / "broken.jsonl").write_text('\n{"sentence": "ok"\n')  # no closing brace
    refused(run("predict", engine_dir, "--input", tmp_path / "broken.jsonl", "--output", tmp_path / "o.jsonl"), 2,
            f"{tmp_path / 'broken.jsonl'}:2: not valid JSON (Expecting ',' delimiter), and no line before it holds an "
            "object; JSON Lines hold one object per line")
    refused(run("export", engine_dir, tmp_path / "e2"), 2,  # an engine where a checkpoint goes
            f"{engine_dir} is an engine directory (manifest.json), not a checkpoint; give the checkpoint it was "
            "exported from (the directory with model.safetensors)")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.txt").exists()


MEMORY_PROBE = r"""
import sys, threading, time
from pathlib import Path
import numpy as np
from prumux_deploy.engine import load_engine
from prumux_deploy.scoring import score_file

class FastTokenizer:  # the real tokenizer runs ~50k rows/s here; this test is about the reader, queue and writer
    padding_side = "right"
    def __call__(self, a, b=None, **kwargs):
        ids = np.ones((len(a), 4), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": ids, "token_type_ids": np.zeros_like(ids)}

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

engine_dir, folder, rows = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
engine = load_engine(engine_dir)
engine.run_feeds = lambda feeds: np.zeros((len(feeds["input_ids"]), 2), dtype=np.float32)
(folder / f"warm{rows}.txt").write_text("good film\n" * 1000)
score_file(engine, folder / f"warm{rows}.txt", folder / f"warm{rows}.jsonl", tokenizer=FastTokenizer(), progress=False)
path = folder / f"rows{rows}.txt"
path.write_text("a good film\n" * rows)
base, peak, stop = rss(), [0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
try:
    summary = score_file(engine, path, folder / f"out{rows}.jsonl", tokenizer=FastTokenizer(), progress=False)
finally:
    stop.set()
    sampler.join()
print(summary.rows_written, max(peak[0], rss()) - base)
"""


def test_memory_stays_flat_as_the_input_grows(tmp_path, engine_dir):
    growth = {}
    for rows in (10_000, 1_000_000):
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(engine_dir), str(tmp_path), str(rows)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        written, growth[rows] = map(int, done.stdout.split())
        assert written == rows
        assert sum(1 for _ in open(tmp_path / f"out{rows}.jsonl")) == rows
    mb = 1 << 20
    # holding the 1M rows' results would take >100 MB; streaming stays at a few MB whatever the size
    assert growth[1_000_000] < 48 * mb, growth
    assert growth[1_000_000] <= 2 * growth[10_000] + 16 * mb, growth
