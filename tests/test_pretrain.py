"""`train pretrain`: multiplexed masked language modelling on corpora of every form, on tiny models."""

from __future__ import annotations

import json
import random

import pytest
import torch

from prumux_deploy import load_checkpoint
from prumux_deploy.data import load_tokenizer, open_corpus
from prumux_deploy.errors import DataError
from prumux_deploy.train import loop
from prumux_deploy.train.corpus import CorpusArgs, CorpusStream, mask_tokens, masking_generator
from prumux_deploy.train.distributed import Runtime
from prumux_deploy.train.loop import TrainArgs
from prumux_deploy.train.losses import MLMHead, read_bert_mlm_head
from prumux_deploy.train.stages import PretrainArgs, pretrain

from conftest import WORDS, refused, run_cli
from test_distributed import max_weight_difference, run_processes

CPU = Runtime(torch.device("cpu"))


def sentences(count: int, seed: int = 0) -> list[str]:
    """Short sentences over the tiny vocabulary, with structure to learn (a word is often repeated)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        w = rng.sample(WORDS, 3)
        out.append(f"the {w[0]} {w[1]} {w[0]} and {w[2]} {w[2]}")
    return out


@pytest.fixture
def corpus_txt(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(sentences(60)) + "\n\n   \n")  # blank and whitespace lines are skipped
    return path


def pretrain_cli(out, corpus, *extra):
    return ["train", "pretrain", out, "--corpus", corpus, "--instances", 2, "--batch-size", 8, "--lr", "2e-3",
            "--max-seq-length", 12, "--eval-every", 10, "--save-every", 5, "--device", "cpu", *extra]


def stream(source, batch_size=4, max_len=12, line_by_line=False, rt=CPU, tokenizer=None, **corpus):
    return CorpusStream(CorpusArgs(corpus=str(source), line_by_line=line_by_line, **corpus), tokenizer,
                        batch_size, max_len, rt)


# --- the objective -----------------------------------------------------------------------------------------

def test_pretraining_lowers_the_mlm_loss_and_fine_tuning_takes_the_checkpoint(tmp_path, bert_dir, glue_dir,
                                                                              corpus_txt):
    result = run_cli(*pretrain_cli(tmp_path / "pre", corpus_txt, "--base", bert_dir, "--steps", 60))
    assert result.exit_code == 0, result.output
    records = [json.loads(l) for l in (tmp_path / "pre" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert evals[-1]["mean_mlm"] < 0.75 * evals[0]["mean_mlm"]  # ln(120) = 4.8 nats at chance
    assert all(r["loss"] == pytest.approx(0.9 * r["mlm"] + 0.1 * r["retrieval"], rel=1e-5) for r in evals)
    start = records[0]
    assert start["corpus"]["corpus"] == str(corpus_txt) and start["pretrain"]["mlm_probability"] == 0.15
    assert start["mlm_head_from"] == "new"  # the tiny BERT is a BertModel: no head to take

    model = load_checkpoint(tmp_path / "pre")
    assert model.config.task is None and model.config.num_instances == 2
    config = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert "mlm_head.safetensors" in config["files"]  # checksummed with the weights
    # fine-tuning and `train all` take it and give it their task
    result = run_cli("train", "finetune", tmp_path / "ft", "--init", tmp_path / "pre", "--data", glue_dir,
                     "--instances", 2, "--batch-size", 8, "--max-seq-length", 12, "--device", "cpu")
    assert result.exit_code == 0, result.output
    tuned = load_checkpoint(tmp_path / "ft")
    assert tuned.config.task == "sst2" and tuned.config.id2label == {0: "negative", 1: "positive"}
    assert torch.equal(tuned.mux.vectors, model.mux.vectors)
    result = run_cli("train", "all", tmp_path / "all", "--init", tmp_path / "pre", "--data", glue_dir,
                     "--instances", 2, "--batch-size", 8, "--max-seq-length", 12, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["finetune", "finetune.run"]  # no warm-up


def test_a_second_run_continues_with_the_first_runs_mlm_head(tmp_path, bert_dir, corpus_txt):
    assert run_cli(*pretrain_cli(tmp_path / "one", corpus_txt, "--base", bert_dir, "--steps", 3)).exit_code == 0
    result = run_cli(*pretrain_cli(tmp_path / "two", corpus_txt, "--init", tmp_path / "one", "--steps", 2))
    assert result.exit_code == 0, result.output
    start = json.loads((tmp_path / "two" / "train_log.jsonl").read_text().splitlines()[0])
    assert start["mlm_head_from"] == str(tmp_path / "one")
    refused(run_cli(*pretrain_cli(tmp_path / "three", corpus_txt, "--init", tmp_path / "one", "--steps", 1,
                                  "--mlm-head", bert_dir)), 2, f"--mlm-head {bert_dir} has no MLM head")
    refused(run_cli(*pretrain_cli(tmp_path / "three", corpus_txt, "--init", tmp_path / "one", "--base", bert_dir,
                                  "--steps", 1)), 2, "give --base (a BERT for a new model) or --init")
    assert not (tmp_path / "three").exists()


def test_a_pretrained_checkpoint_takes_a_task_with_more_labels(tmp_path, bert_dir, corpus_txt):
    assert run_cli(*pretrain_cli(tmp_path / "pre", corpus_txt, "--base", bert_dir, "--steps", 2)).exit_code == 0
    data = tmp_path / "intents"
    data.mkdir()
    rows = [("good film", "praise"), ("bad plot", "complaint"), ("what a movie", "question")] * 6
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "intent": l}) + "\n" for t, l in rows))
    result = run_cli("train", "finetune", tmp_path / "ft", "--init", tmp_path / "pre", "--task", "custom", "--data",
                     data, "--text-column", "text", "--label-column", "intent", "--instances", 2, "--batch-size", 6,
                     "--max-seq-length", 12, "--device", "cpu")
    assert result.exit_code == 0, result.output
    tuned = load_checkpoint(tmp_path / "ft")
    assert tuned.config.task == "custom" and tuned.config.num_labels == 3
    assert tuned.config.id2label == {0: "complaint", 1: "praise", 2: "question"}
    assert tuned.demux.classifier.out_features == 3
    pre = load_checkpoint(tmp_path / "pre")
    assert pre.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # the pre-trained checkpoint itself is task-less


def test_the_mlm_head_is_bert_for_masked_lms(tmp_path):
    """A BertForMaskedLM base's head is read and computes what Hugging Face's prediction head computes."""
    from transformers import BertForMaskedLM

    from conftest import tiny_bert_config

    torch.manual_seed(0)
    bert = BertForMaskedLM(tiny_bert_config()).eval()
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()  # not the zeros it starts with, so the test sees it
    bert.save_pretrained(str(tmp_path / "mlm"))
    weights = read_bert_mlm_head(tmp_path / "mlm")
    head = MLMHead(32, 32, 120)
    head.load_state_dict(weights)
    features = torch.randn(5, 32)
    with torch.no_grad():
        want = bert.cls(features)
        got = head(features, bert.bert.embeddings.word_embeddings.weight)
    assert torch.allclose(got, want, atol=1e-5)
    from transformers import BertModel

    BertModel(tiny_bert_config()).save_pretrained(str(tmp_path / "plain"))
    assert read_bert_mlm_head(tmp_path / "plain") is None


def test_masking_follows_berts_rates_and_spares_special_tokens_and_padding(bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    ids = torch.randint(10, 120, (400, 50))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask = torch.ones_like(ids)
    mask[:200, 30:] = 0  # padding
    ids[:200, 30:] = tokenizer.pad_token_id
    batch = {"input_ids": ids, "attention_mask": mask}
    inputs, labels = mask_tokens(batch, tokenizer, 0.15, masking_generator(0, 7))
    chosen = labels != -100
    eligible = (mask == 1) & (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
    assert not (chosen & ~eligible).any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.01)
    as_mask = (inputs == tokenizer.mask_token_id) & chosen
    kept = (inputs == ids) & chosen
    assert as_mask.sum() / chosen.sum() == pytest.approx(0.8, abs=0.03)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1 + 0.1 / 120, abs=0.03)  # 10% kept, plus random hits
    assert torch.equal(inputs[~chosen], ids[~chosen])
    again, _ = mask_tokens(batch, tokenizer, 0.15, masking_generator(0, 7))
    other, _ = mask_tokens(batch, tokenizer, 0.15, masking_generator(0, 8))
    assert torch.equal(again, inputs) and not torch.equal(other, inputs)


# --- the stream: rows, resume, processes -------------------------------------------------------------------

def test_rows_are_texts_line_by_line_or_packed_and_wrap_around(tmp_path, bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    texts = ["good film", "a very lovely plot", "bad", "great fun and witty and gorgeous too"]
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    lines = stream(tmp_path / "c.txt", batch_size=3, max_len=6, line_by_line=True, tokenizer=tokenizer)
    first, second = lines.batch(0), lines.batch(1)
    decoded = [tokenizer.decode(r[m.bool()]) for r, m in zip(first["input_ids"], first["attention_mask"])]
    assert decoded == ["[CLS] good film [SEP]", "[CLS] a very lovely plot [SEP]", "[CLS] bad [SEP]"]
    decoded = [tokenizer.decode(r[m.bool()]) for r, m in zip(second["input_ids"], second["attention_mask"])]
    assert decoded == ["[CLS] great fun and witty [SEP]", "[CLS] good film [SEP]",  # truncated; the next epoch
                       "[CLS] a very lovely plot [SEP]"]
    assert lines.epoch == 1
    packed = stream(tmp_path / "c.txt", batch_size=2, max_len=6, tokenizer=tokenizer)
    rows = [tokenizer.decode(r) for r in packed.batch(0)["input_ids"]]
    assert rows == ["[CLS] good film [SEP] a very", "[CLS] lovely plot [SEP] bad [SEP]"]
    assert packed.batch(1)["attention_mask"].all()  # packed rows are full: no padding


def test_resume_continues_the_stream_at_the_exact_row(tmp_path, bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    (tmp_path / "c.txt").write_text("\n".join(sentences(23)) + "\n")  # 23 texts: epochs end mid-block
    for line_by_line in (True, False):
        straight = stream(tmp_path / "c.txt", batch_size=4, max_len=9, line_by_line=line_by_line, tokenizer=tokenizer)
        want = [straight.batch(s)["input_ids"] for s in range(15)]
        first = stream(tmp_path / "c.txt", batch_size=4, max_len=9, line_by_line=line_by_line, tokenizer=tokenizer)
        got = [first.batch(s)["input_ids"] for s in range(6)]
        state = first.state_dict()
        resumed = stream(tmp_path / "c.txt", batch_size=4, max_len=9, line_by_line=line_by_line, tokenizer=tokenizer)
        resumed.load_state_dict(state)
        got += [resumed.batch(s)["input_ids"] for s in range(6, 15)]
        assert all(torch.equal(a, b) for a, b in zip(want, got)), line_by_line
        assert straight.epoch == resumed.epoch >= 1
    changed = stream(tmp_path / "c.txt", batch_size=8, max_len=9, tokenizer=tokenizer)
    with pytest.raises(DataError, match="the interrupted run used `batch_size` 4, this one 8"):
        changed.load_state_dict(state)


def test_an_interrupted_pretraining_resumes_bit_for_bit(tmp_path, bert_dir, corpus_txt, monkeypatch):
    args = TrainArgs(task=None, data=None, instances=2, batch_size=8, lr=2e-3, max_seq_length=12, eval_every=4,
                     save_every=3, device="cpu")
    corpus, pargs = CorpusArgs(corpus=str(corpus_txt)), PretrainArgs(steps=12)
    pretrain(bert_dir, tmp_path / "straight", args, corpus, pargs, log=lambda m: None)
    original = loop.RunState.save

    def save_then_die(self, step, objects):
        original(self, step, objects)
        if step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.RunState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(bert_dir, tmp_path / "resumed", args, corpus, pargs, log=lambda m: None)
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(loop.RunState, "save", original)
    pretrain(bert_dir, tmp_path / "resumed", args, corpus, pargs, resume=True, log=lambda m: None)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_two_processes_equal_one(tmp_path, bert_dir, corpus_txt):
    """2 gloo processes, each tokenizing half of every block and training on half of every batch, take the
    steps one process takes (packed rows, so every row mixes texts that different processes tokenized), with
    and without gradient accumulation."""
    runs = {}
    for name, nproc, extra in (("p1", 1, []), ("p2", 2, []), ("p2a2", 2, ["--grad-accum", 2])):
        runs[name] = run_processes(nproc, *pretrain_cli(tmp_path / name, corpus_txt, "--base", bert_dir,
                                                        "--steps", 8, *extra))
    assert max_weight_difference(tmp_path / "p1", tmp_path / "p2") <= 1e-4
    assert max_weight_difference(tmp_path / "p1", tmp_path / "p2a2") <= 1e-4
    assert runs["p2"].stderr.count("; wrote ") == runs["p1"].stderr.count("; wrote ") == 1
    records = [json.loads(l) for l in (tmp_path / "p2" / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["processes"] == 2


# --- corpora as users keep them ----------------------------------------------------------------------------

def _save_forms(tmp_path, texts):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    forms = {}
    forms["txt"] = tmp_path / "c.txt"
    forms["txt"].write_text("\n".join(texts) + "\n")
    forms["jsonl"] = tmp_path / "c.jsonl"
    forms["jsonl"].write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)))
    forms["parquet"] = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": texts}), forms["parquet"])
    forms["tsv"] = tmp_path / "c.tsv"
    forms["tsv"].write_text("body\tlabel\n" + "".join(f"{t}\t0\n" for t in texts))
    forms["csv"] = tmp_path / "c.csv"
    forms["csv"].write_text("body,label\n" + "".join(f'"{t}",0\n' for t in texts))
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"body": texts[:2]}), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"body": texts[2:]}), shards / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"body": ["held out"]}), shards / "validation-00000-of-00001.parquet")
    forms["shards"] = shards
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "saved"))
    forms["saved"] = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": texts}),
                          "test": datasets.Dataset.from_dict({"body": ["held out"]})}
                         ).save_to_disk(str(tmp_path / "dd"))
    forms["dict"] = tmp_path / "dd"
    return forms


def test_every_corpus_form_streams_the_same_rows(tmp_path, bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    texts = ["good film", "a very lovely plot", "bad", "great fun"]
    forms = _save_forms(tmp_path, texts)
    want = stream(forms["txt"], line_by_line=True, tokenizer=tokenizer).batch(0)["input_ids"]
    for name, source in forms.items():
        column = "text" if name == "txt" else "body"
        got = stream(source, line_by_line=True, tokenizer=tokenizer, text_column=column).batch(0)["input_ids"]
        assert torch.equal(got, want), name
        ds, _ = open_corpus(source)
        assert type(ds).__name__ == "IterableDataset", name  # streamed, never loaded whole


def test_hub_corpus_is_streamed_or_read_from_the_cache_offline(monkeypatch, bert_dir):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False, **kw):
        calls.append((name, config, split, streaming))
        if streaming:
            raise ConnectionError("offline")
        return datasets.Dataset.from_dict({"text": ["good film", "bad"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds, source = open_corpus("someone/corpus", "train", "en")
    assert calls == [("someone/corpus", "en", "train", True), ("someone/corpus", "en", "train", False)]
    assert [r["text"] for r in ds] == ["good film", "bad"] and source == "someone/corpus (en)"


def test_unusable_corpora_are_one_line(tmp_path, bert_dir, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def pre(corpus, *extra):
        return run_cli(*pretrain_cli(tmp_path / "out", corpus, "--base", bert_dir, "--steps", 2, *extra))

    (tmp_path / "c.jsonl").write_text('{"body": "good film"}\n')
    refused(pre(tmp_path / "c.jsonl"), 2, f"{tmp_path / 'c.jsonl'}: no column 'text' (columns: body); name the one "
                                          "holding the text with --text-column")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "c.parquet")
    refused(pre(tmp_path / "c.parquet", "--text-column", "sentence"), 2, "no column 'sentence' (columns: body)")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    refused(pre(tmp_path / "blank.txt"), 2, "holds no text (every row is empty)")
    (tmp_path / "empty.txt").write_text("")
    refused(pre(tmp_path / "empty.txt"), 2, "empty file; a corpus needs at least one line of text")
    (tmp_path / "nums.jsonl").write_text('{"text": 3}\n')
    refused(pre(tmp_path / "nums.jsonl"), 2, "column 'text' holds int values, not text")
    refused(pre(tmp_path / "missing.txt"), 2, "missing.txt: no such file or directory; --corpus takes")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # offline, as HF_HUB_OFFLINE=1 at start-up
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    refused(pre("nobody/no-such-corpus"), 2, "hub dataset nobody/no-such-corpus cannot be streamed or read from the "
                                             "local cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.run").exists()


def test_arguments_that_would_train_nothing_or_differ_silently(tmp_path, bert_dir, corpus_txt):
    def pre(out, *extra):
        return run_cli(*pretrain_cli(tmp_path / out, corpus_txt, "--base", bert_dir, "--steps", 1, *extra))

    refused(pre("w", "--mlm-weight", 0, "--retrieval-weight", 0), 2,
            "--mlm-weight and --retrieval-weight are both 0, so nothing would be trained")
    refused(pre("p", "--mlm-probability", 1), 2, "1.0 is not in the range 0.0<x<1.0")
    refused(pre("p", "--mlm-probability", 0), 2, "0.0 is not in the range 0.0<x<1.0")
    assert not any((tmp_path / n).exists() for n in ("w", "p"))
    done = pre("b", "--batch-size", 9)  # N=2: rounded to 8, and said
    assert done.exit_code == 0, done.output
    assert ("note: --batch-size 9 rounded down to 8, a multiple of processes x --grad-accum x N = 2 (every "
            "micro-batch holds whole mux groups)") in done.output
    assert "rounded down" not in pre("c").output  # 8 already is one


def test_a_hub_corpus_split_takes_the_hubs_own_name(monkeypatch):
    """--split dev of a hub corpus whose builder lists a "validation" split streams that one."""
    import datasets

    calls = []

    class Builder:
        class info:
            splits = {"train": None, "validation": None}

    def fake_load_dataset(name, config=None, split=None, streaming=False, **kw):
        calls.append((split, streaming))
        return datasets.Dataset.from_dict({"text": ["good film"]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset_builder", lambda name, config=None: Builder)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds, _ = open_corpus("someone/corpus", "dev")
    assert calls == [("validation", True)] and [r["text"] for r in ds] == ["good film"]
    Builder.info.splits = {"train": None}
    with pytest.raises(DataError, match=r"someone/corpus: no 'dev' split \(it has train\)"):
        open_corpus("someone/corpus", "dev")
