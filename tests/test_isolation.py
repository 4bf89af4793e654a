"""Partner sensitivity (validate --partners, --max-flip-rate) and request isolation (classify, predict,
the Triton front's grouping), plus the shell kinds of issue 25: a closed pipe, a length beyond the base."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from prumux_deploy import create_model, save_checkpoint
from prumux_deploy.data import load_tokenizer, tokenize
from prumux_deploy.engine import classify, load_engine
from prumux_deploy.errors import CheckpointError
from prumux_deploy.export import triton as tx
from prumux_deploy.export.pipeline import export_checkpoint
from prumux_deploy.isolation import group_rows, run_isolated, split_requests
from prumux_deploy.partners import next_slot_partner, partner_sensitivity

from conftest import refused, run_cli, spine_masks

TEXTS = ["a gorgeous , witty film", "dull and tedious", "the plot was awful", "zebra unknownword",
         "what a film !", "fine"]


def test_group_rows_pads_each_request_with_its_own_last_row():
    rows, real = group_rows([1, 3, 0, 2], 2, "request")
    assert rows.tolist() == [0, 0, 1, 2, 3, 3, 4, 5]
    assert real.tolist() == [True, False, True, True, True, False, True, True]
    rows, real = group_rows([1, 3, 2], 3, "request")
    assert rows.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 5] and real.sum() == 6
    rows, real = group_rows([1, 3, 2], 2, "shared")
    assert rows.tolist() == [0, 1, 2, 3, 4, 5] and real.all()
    assert group_rows([5], 1, "request")[0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="isolation must be one of shared, request"):
        group_rows([1], 2, "private")
    parts = split_requests(np.arange(6), [1, 3, 2])
    assert [p.tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]


def test_next_slot_partner_is_the_next_row_of_the_group():
    order = np.array([4, 0, 3, 1, 2])
    assert next_slot_partner(order, 2).tolist() == [4, 3, 2, 1, 0]  # 4<->0, 3<->1, 2 alone with itself


@pytest.fixture(scope="module")
def n1_engine(tmp_path_factory, bert_dir):
    model = create_model(bert_dir, num_instances=1, num_labels=2, seed=5, task="sst2",
                         id2label={0: "negative", 1: "positive"}, max_seq_length=16)
    model.set_masks(spine_masks(5))
    root = tmp_path_factory.mktemp("n1")
    save_checkpoint(model, root / "ckpt")
    export_checkpoint(root / "ckpt", root / "engine", log=lambda m: None)
    return root


@pytest.fixture(scope="module")
def partner_dependent(tmp_path_factory, bert_dir):
    """An N=2 model built to depend on its partner: the key_pool demux reads the mixed token states over the
    instance's own tokens (which hold the partner's tokens too) and has no biases, so the logits come from
    the mixed content alone (a random model's [CLS] read-out and biases otherwise fix most labels)."""
    import torch

    model = create_model(bert_dir, num_instances=2, num_labels=2, seed=1, task="sst2",
                         id2label={0: "negative", 1: "positive"}, max_seq_length=16, demux_kind="key_pool")
    with torch.no_grad():
        for name, p in model.demux.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    root = tmp_path_factory.mktemp("partner")
    save_checkpoint(model, root / "ckpt")
    export_checkpoint(root / "ckpt", root / "engine", log=lambda m: None)
    return root


def test_classify_request_isolation_is_the_lone_answer_bit_for_bit(engine_dir):
    engine = load_engine(engine_dir)
    isolated = classify(engine, TEXTS, isolation="request").probabilities
    shared = classify(engine, TEXTS).probabilities
    for text, row in zip(TEXTS, isolated):
        assert np.array_equal(row, classify(engine, [text]).probabilities[0]), text
    assert not np.array_equal(isolated, shared)  # the tiny N=2 engine does depend on its partner
    with pytest.raises(Exception, match="isolation 'x' is not one of shared, request"):
        classify(engine, TEXTS, isolation="x")


def test_predict_isolation_request_matches_lone_predict(engine_dir):
    def scores(*args):
        result = run_cli("predict", engine_dir, *args, "--json")
        assert result.exit_code == 0, result.output
        return [json.loads(line)["scores"] for line in result.output.splitlines() if line.startswith("{")]

    together = scores(*TEXTS[:3], "--isolation", "request")
    assert together == [scores(text)[0] for text in TEXTS[:3]]
    assert scores(*TEXTS[:3]) != together


def test_triton_front_answers_each_request_as_alone(engine_dir):
    """The shipped Python-backend front (export/triton_isolation_model.py) on concatenated requests of
    mixed sizes and lengths: each answer equals the engine on that request alone, bit for bit; chunks
    never exceed the engine's max batch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("front", tx.__file__.replace("triton.py",
                                                                               "triton_isolation_model.py"))
    front = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(front)
    engine = load_engine(engine_dir)
    tokenizer = load_tokenizer(engine_dir)
    requests = [tokenize(tokenizer, TEXTS[i:i + k], max_length=16) for i, k in ((0, 1), (1, 3), (2, 2), (0, 5))]
    batches = []

    def run(feeds):
        batches.append(len(feeds["input_ids"]))
        return engine.run_feeds(feeds)

    answers = front.answer_requests(requests, run, 2, max_rows=6)
    assert batches == [6, 2, 6]  # padded 2 + 4, then 2 (2 + 6 > 6: split at a request boundary), then 6
    assert all(b % 2 == 0 for b in batches)
    for feeds, answer in zip(requests, answers):
        assert np.array_equal(answer, engine.run_feeds(feeds))
    assert list(front.chunks_of_requests([2, 4, 2, 6], 6)) == [[0, 1], [2], [3]]


def test_run_isolated_in_shared_mode_is_one_plain_run(engine_dir):
    engine = load_engine(engine_dir)
    feeds = tokenize(load_tokenizer(engine_dir), TEXTS, max_length=16)
    assert np.array_equal(run_isolated(engine.run_feeds, feeds, [2, 4], 2, "shared"), engine.run_feeds(feeds))


def test_triton_request_isolation_layout(engine_dir, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = tx.write_triton_repository(engine_dir, tmp_path / "repo", "m")  # request isolation is the default
    front = text_format.Parse((path / "config.pbtxt").read_text(), mc.ModelConfig())
    engine = text_format.Parse((tmp_path / "repo" / "m_engine" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert front.backend == "python" and front.max_batch_size == 64 and engine.platform == "onnxruntime_onnx"
    assert {k: v.string_value for k, v in front.parameters.items()} == {
        "engine_model": "m_engine", "num_instances": "2", "max_batch_size": "64"}
    assert [i.name for i in front.input] == [i.name for i in engine.input]
    assert sorted(p.name for p in (path / "1").iterdir()) == ["isolation.py", "model.py"]
    assert (tmp_path / "repo" / "m_engine" / "1" / "model.onnx").is_file()
    shared = tx.write_triton_repository(engine_dir, tmp_path / "shared", "m", isolation="shared")
    assert (shared / "1" / "model.onnx").is_file() and not (tmp_path / "shared" / "m_engine").exists()
    result = run_cli("triton", engine_dir, tmp_path / "r2", "--name", "m", "--isolation", "private")
    assert result.exit_code == 2 and "'private' is not one of 'shared', 'request'" in result.output


def test_partner_sensitivity_of_a_model_that_ignores_its_partner_is_zero():
    """A stand-in engine whose logits depend on the row only: nothing flips, no shift, AUC 0.5-ish."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 2))
    labels = rng.integers(0, 2, 40)
    figures = partner_sensitivity(lambda order: table[order], labels, 2, draws=4, seed=1)
    assert figures["partner_flip_rate"] == 0 and figures["lone_flip_rate"] == 0
    assert figures["margin_shift_max"] == 0 and figures["accuracy_min"] == figures["accuracy_max"]
    assert figures["leakage_auc"] == 0.5  # every shift is 0: no ranking at all


def test_partner_sensitivity_reads_a_partner_that_leaks():
    """A stand-in N=2 engine adding the partner's label to the victim's class-1 logit: flips where the
    margin is small, and the partner's label is fully readable (AUC 1)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    base = np.stack([np.zeros(60), rng.normal(scale=0.2, size=60)], 1)

    def run(order):
        partner = np.empty_like(order)
        for s in range(0, len(order), 2):
            group = order[s:s + 2]
            partner[s:s + 2] = np.roll(group, -1)
        out = base[order].copy()
        out[:, 1] += np.where(labels[partner] == 1, 0.5, -0.5)
        return out

    figures = partner_sensitivity(run, labels, 2, draws=6, seed=0)
    assert figures["partner_flip_rate"] > 0.3
    # the lone answer carries the row's own label (its partner is itself), so the shift is partner - own:
    # far from 0.5, not 1
    assert figures["leakage_auc"] > 0.85
    assert figures["margin_shift_max"] == pytest.approx(1.0)  # own +-0.5 replaced by the partner's -+0.5


def test_validate_partners_and_the_flip_rate_gate(partner_dependent, n1_engine, sst2_dir, tmp_path):
    engine_dir, masked_checkpoint = partner_dependent / "engine", partner_dependent / "ckpt"
    report = tmp_path / "r.json"
    result = run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", sst2_dir,
                     "--partners", 6, "--report", report)
    assert result.exit_code == 0, result.output
    partners = json.loads(report.read_text())["partners"]
    assert partners["draws"] == 6 and partners["rows"] == 11 and partners["num_instances"] == 2
    assert partners["partner_flip_rate"] > 0 and partners["margin_shift_mean"] > 0
    assert "change label with the partner" in result.output

    strict = run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", sst2_dir,
                     "--max-flip-rate", 0)  # implies --partners 8
    assert strict.exit_code == 1 and "partner flip rate" in strict.output and "FAIL" in strict.output

    refused(run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", sst2_dir, "--partners", 0,
                    "--max-flip-rate", 0.1), 2, "--max-flip-rate gates partner draws, and --partners 0 asks for none")
    one_class = run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", sst2_dir, "--limit", 1,
                        "--partners", 2)
    assert "AUC n/a (the partners' labels hold one class)" in one_class.output, one_class.output

    alone = run_cli("validate", n1_engine / "engine", "--checkpoint", n1_engine / "ckpt", "--data", sst2_dir,
                    "--max-flip-rate", 0, "--report", tmp_path / "n1.json")
    assert alone.exit_code == 0, alone.output
    n1 = json.loads((tmp_path / "n1.json").read_text())["partners"]
    assert n1["partner_flip_rate"] == 0 and n1["lone_flip_rate"] == 0 and n1["leakage_auc"] is None
    assert n1["draws"] == 8 and "n/a (N=1)" in alone.output


def test_a_reader_closing_the_pipe_early_ends_quietly(engine_dir):
    """`prumux-deploy predict ... | head -1`: no error line, no traceback, the SIGPIPE status (141)."""
    code = "from prumux_deploy.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "predict", str(engine_dir), *(TEXTS * 600)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.strip()
    assert proc.returncode == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr and "Exception" not in stderr


def test_a_max_seq_length_beyond_the_position_table_is_refused(bert_dir, tmp_path):
    refused(run_cli("init", tmp_path / "m", "--base", bert_dir, "--max-seq-length", 25), 2,
            "--max-seq-length 25 exceeds the base model's position table (24 positions); use at most 24")
    assert not (tmp_path / "m").exists()
    assert run_cli("init", tmp_path / "ok", "--base", bert_dir).exit_code == 0  # default: min(128, 24)
    with pytest.raises(CheckpointError, match="exceeds the base model's position table"):
        create_model(bert_dir, max_seq_length=512)
