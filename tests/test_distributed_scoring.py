"""Past one machine: scoring a dataset with Ray Data on a local Ray cluster (two worker processes, one engine each,
through prumux_deploy.scoring.EngineHandle), checked bit for bit against `predict --input ... --output`; and an
Engine that refuses to be pickled in one line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import WORDS, run_cli

from prumux_deploy.errors import DataError, EngineError
from prumux_deploy.scoring import EngineHandle, score_rows

pytestmark = pytest.mark.filterwarnings(r"ignore::Warning:ray\..*")  # Ray's own deprecations

ROWS = 3000
PROBABILITIES = ["p_negative", "p_positive"]   # the tiny SST-2 engine's classes


def texts(n: int = ROWS, seed: int = 0, words: int = 14) -> list[str]:
    """n sentences of 1 to `words` of the tiny vocabulary's words (14: at most 16 tokens, none truncated)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, words + 1)))) for _ in range(n)]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The same rows twice: one parquet file (`sentence`) for predict, and shards of 333 rows (`id`, `sentence`:
    odd, so shards cut mux groups and batches anywhere) for the cluster."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("distributed")
    sentences = texts()
    pq.write_table(pa.table({"sentence": sentences}), root / "rows.parquet", row_group_size=700)
    (root / "shards").mkdir()
    for k, start in enumerate(range(0, ROWS, 333)):
        part = slice(start, start + 333)
        pq.write_table(pa.table({"id": np.arange(ROWS)[part], "sentence": sentences[part]}),
                       root / "shards" / f"part-{k:05d}.parquet")
    return root


def predicted(engine_dir, rows: Path, isolation: str):
    """`prumux-deploy predict ENGINE --input rows.parquet --output ...` read back: the reference."""
    import pyarrow.parquet as pq

    output = rows / f"predict-{isolation}.parquet"
    result = run_cli("predict", engine_dir, "--input", rows / "rows.parquet", "--output", output,
                     "--isolation", isolation, "--no-progress", "--force")
    assert result.exit_code == 0, result.output
    table = pq.read_table(output)
    assert table.column_names == ["id", "label", *PROBABILITIES]
    return table.to_pandas()


def counting_handle():
    """EngineHandle, logging to a file each engine load and each batch with the worker's pid. Defined in a function
    so that Ray pickles the class by value (a worker cannot import this test module)."""

    class CountingHandle(EngineHandle):
        def __init__(self, engine_dir, log, **options):
            super().__init__(engine_dir, **options)
            self.log = log

        def load(self):
            with open(self.log, "a") as f:
                f.write(f"load {os.getpid()}\n")
            return super().load()

        def __call__(self, batch):
            with open(self.log, "a") as f:
                f.write(f"batch {os.getpid()} {len(batch['sentence'])}\n")
            return super().__call__(batch)

    return CountingHandle


def worker_log(log: Path) -> tuple[dict, dict]:
    """({pid: engine loads}, {pid: rows scored}) from a counting handle's log."""
    loads, scored = {}, {}
    for line in log.read_text().splitlines():
        kind, pid, *n = line.split()
        if kind == "load":
            loads[pid] = loads.get(pid, 0) + 1
        else:
            scored[pid] = scored.get(pid, 0) + int(n[0])
    return loads, scored


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster (the driver plus worker processes on this machine), preserving row order."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'prumux-deploy[distributed]' "
                                            "(the dev extra has it)")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'prumux-deploy[distributed]'")
    saved = {name: os.environ.get(name) for name in ("RAY_USAGE_STATS_ENABLED",)}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"   # no usage report from a test
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_request_isolation_on_two_workers_is_predict_bit_for_bit(cluster, engine_dir, rows, tmp_path):
    """isolation="request": every row is answered as if alone, so however Ray cuts the rows into blocks and
    batches (333-row shards, blocks of 300, batches of 200, engine calls of 64) and whichever worker scores
    them, each probability is predict --isolation request's, bit for bit, in input order; each worker opened
    the engine once."""
    ray = cluster
    log = tmp_path / "workers.log"
    scored = (ray.data.read_parquet(str(rows / "shards"))
              .repartition(target_num_rows_per_block=300)
              .map_batches(counting_handle(), fn_constructor_args=(str(engine_dir), str(log)),
                           fn_constructor_kwargs={"isolation": "request", "batch_size": 64, "threads": 1},
                           compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=200)
              .to_pandas())
    want = predicted(engine_dir, rows, "request")
    assert list(scored.columns) == ["id", "sentence", "label", *PROBABILITIES]
    assert scored["id"].tolist() == list(range(ROWS))          # every row once, in input order
    assert scored["sentence"].tolist() == texts()
    assert scored["label"].tolist() == want["label"].tolist()
    for column in PROBABILITIES:
        np.testing.assert_array_equal(scored[column].to_numpy(np.float64), want[column].to_numpy(np.float64))
    loads, done = worker_log(log)
    assert len(done) >= 2, f"the rows were scored in {len(done)} worker process(es): {done}"
    assert sum(done.values()) == ROWS
    assert set(loads) == set(done) and set(loads.values()) == {1}, loads   # one engine per worker, loaded once


def test_shared_isolation_is_predict_bit_for_bit_when_batches_align(cluster, engine_dir, rows, tmp_path):
    """isolation="shared" (predict's default): rows share mux groups with their neighbours in a batch, so the
    answers are predict's where the batches start at the same rows: blocks of 512 rows, batches of 512, engine
    calls of 256 (predict's batch size). The recipe of the README: parquet shards in, parquet shards out,
    joined back by id."""
    import pyarrow.parquet as pq

    ray = cluster
    log, out = tmp_path / "workers.log", tmp_path / "scores"
    (ray.data.read_parquet(str(rows / "shards"))
     .repartition(target_num_rows_per_block=512)
     .map_batches(counting_handle(), fn_constructor_args=(str(engine_dir), str(log)),
                  fn_constructor_kwargs={"threads": 1}, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                  batch_size=512)
     .write_parquet(str(out)))
    scored = pq.read_table(out).sort_by("id").to_pandas()
    want = predicted(engine_dir, rows, "shared")
    assert scored["id"].tolist() == list(range(ROWS))
    assert scored["label"].tolist() == want["label"].tolist()
    for column in PROBABILITIES:
        np.testing.assert_array_equal(scored[column].to_numpy(np.float64), want[column].to_numpy(np.float64))
    loads, done = worker_log(log)
    assert len(done) >= 2 and set(loads) == set(done) and set(loads.values()) == {1}, (loads, done)


def test_an_engine_refuses_to_be_pickled_in_one_line(engine_dir):
    from prumux_deploy.engine import load_engine

    engine = load_engine(engine_dir)
    with pytest.raises(EngineError) as raised:
        pickle.dumps(engine)
    message = str(raised.value)
    assert "\n" not in message and "cannot be pickled" in message and "EngineHandle" in message


def test_a_handle_pickles_as_its_settings_and_scores_every_batch_form(engine_dir):
    """The handle ships as a few hundred bytes (no engine in it), opens the engine once per process, and gives
    score_rows' probabilities for a pandas DataFrame, a dict of numpy columns and a pyarrow Table alike, the input
    columns first and order kept."""
    import pandas as pd
    import pyarrow as pa

    handle = EngineHandle(engine_dir, isolation="request", batch_size=3)
    sent = pickle.dumps(handle)
    assert len(sent) < 1000
    copy = pickle.loads(sent)
    assert copy.engine is handle.engine                # one engine per process, whatever the handle
    sentences = texts(10, seed=1)
    want = np.concatenate([s.probabilities for s in score_rows(handle.engine, sentences, batch_size=3,
                                                               isolation="request")])
    frame = copy(pd.DataFrame({"sentence": sentences, "n": range(10)}, index=range(100, 110)))
    assert list(frame.columns) == ["sentence", "n", "label", *PROBABILITIES]
    assert list(frame.index) == list(range(100, 110))
    columns = copy({"sentence": np.array(sentences)})
    table = copy(pa.table({"sentence": sentences})).to_pydict()
    for got in (frame, columns, table):
        np.testing.assert_array_equal(np.column_stack([np.asarray(got[c], dtype=np.float64) for c in PROBABILITIES]),
                                      want)
        assert list(got["label"]) == [handle.engine.labels[k] for k in want.argmax(1)]
    empty = copy({"sentence": np.array([], dtype=str)})
    assert len(empty["label"]) == 0 and empty["p_negative"].dtype == np.float64


def test_a_handle_scores_sentence_pairs_from_the_task_columns(pair_engine_dir):
    """A pair engine (QNLI) reads its task's two columns, question and sentence, as score_rows' pairs."""
    handle = EngineHandle(pair_engine_dir)
    first, second = texts(7, seed=2, words=6), texts(7, seed=3, words=6)
    got = handle({"question": np.array(first), "sentence": np.array(second)})
    want = np.concatenate([s.probabilities for s in score_rows(handle.engine, list(zip(first, second)))])
    names = [f"p_{label}" for label in handle.engine.labels]
    np.testing.assert_array_equal(np.column_stack([got[c] for c in names]), want)
    with pytest.raises(DataError, match="no column 'sentence'"):
        handle({"question": np.array(first)})


@pytest.mark.parametrize("batch, message", [
    ({"text2": ["good"]}, "no column 'sentence' (columns: text2); name the right one with `text_column`"),
    ({"sentence": ["good", None]}, "row 2 of the batch (2 rows): no value in 'sentence'"),
    ({"sentence": ["good", "  "]}, "row 2 of the batch (2 rows): empty 'sentence'"),
    ({"sentence": ["good"], "label": [1]}, "the rows already have a column 'label', which scoring adds"),
    (["good"], "cannot score a list: give a pandas DataFrame, a dict of columns"),
])
def test_a_bad_batch_is_one_line(engine_dir, batch, message):
    with pytest.raises(DataError) as raised:
        EngineHandle(engine_dir)(batch)
    assert message in str(raised.value) and "\n" not in str(raised.value)
