"""Bad artifacts and bad input: every case gets its one-line message and exit code, and no output."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prumux_deploy import save_checkpoint
from prumux_deploy.cli import main
from prumux_deploy.engine import load_engine
from prumux_deploy.errors import PruMuxError

from conftest import refused, run_cli as run, write_sst2


# --- corrupted engines --------------------------------------------------------------------------

def flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def truncate_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_manifest(**changes):
    def edit(path):
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(changes)
        (path / "manifest.json").write_text(json.dumps(manifest))
    return edit


ENGINE_CORRUPTIONS = {
    "flipped byte in model.onnx": (lambda d: flip_middle_byte(d / "model.onnx"), "does not match manifest.json"),
    "truncated model.onnx": (lambda d: truncate_half(d / "model.onnx"), "does not match manifest.json"),
    "deleted model.onnx": (lambda d: (d / "model.onnx").unlink(), "model.onnx: missing"),
    "deleted manifest": (lambda d: (d / "manifest.json").unlink(), "manifest.json: missing"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{oops"), "not valid JSON"),
    "manifest sha edited": (edit_manifest(engine={"file": "model.onnx", "kind": "onnx", "sha256": "0" * 64}),
                            "does not match manifest.json"),
    "manifest field removed": (lambda d: _drop(d, "inputs"),
                               "field 'inputs' is missing"),
    "manifest version edited": (edit_manifest(format_version=7), "format_version 7 is not supported"),
    "engine swapped": (lambda d: shutil.copyfile(d / "vocab.txt", d / "model.onnx"), "does not match manifest.json"),
}


def _drop(path, key):
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest[key]
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("case", sorted(ENGINE_CORRUPTIONS))
def test_corrupted_engine_is_refused_by_every_command(tmp_path, engine_dir, masked_checkpoint, sst2_dir, case):
    corrupt, message = ENGINE_CORRUPTIONS[case]
    bad = tmp_path / "engine"
    shutil.copytree(engine_dir, bad)
    corrupt(bad)
    report = tmp_path / "report.json"
    results = {
        "predict": run("predict", bad, "fine film"),
        "inspect": run("inspect", bad),
        "validate": run("validate", bad, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
                        "--report", report),
    }
    for command, result in results.items():
        line = refused(result, 2, message)
        assert result.output.strip() == line, (command, result.output)  # nothing but the error
    assert not report.exists()


# --- corrupted checkpoints ----------------------------------------------------------------------

CHECKPOINT_CORRUPTIONS = {
    "flipped byte in model.safetensors": (lambda d: flip_middle_byte(d / "model.safetensors"),
                                          "model.safetensors: sha256 does not match config.json"),
    "flipped byte in masks.safetensors": (lambda d: flip_middle_byte(d / "masks.safetensors"),
                                          "masks.safetensors: sha256 does not match config.json"),
    "deleted model.safetensors": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing"),
    "deleted masks.safetensors": (lambda d: (d / "masks.safetensors").unlink(),
                                  "masks.safetensors: missing, but config.json lists it"),
    "deleted config.json": (lambda d: (d / "config.json").unlink(), "config.json: missing"),
    "config.json not JSON": (lambda d: (d / "config.json").write_text("nope"), "config.json: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CORRUPTIONS))
def test_corrupted_checkpoint_is_refused_and_nothing_is_exported(tmp_path, masked_checkpoint, case):
    corrupt, message = CHECKPOINT_CORRUPTIONS[case]
    bad = tmp_path / "ckpt"
    shutil.copytree(masked_checkpoint, bad)
    corrupt(bad)
    refused(run("export", bad, tmp_path / "engine"), 2, message)
    refused(run("compact", bad, tmp_path / "compact"), 2, message)
    refused(run("inspect", bad), 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no engine, no temp directories


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "Traceback" in result.output


# --- interrupted exports ------------------------------------------------------------------------

def _start_export(ckpt, out, *extra):
    cmd = [sys.executable, "-m", "prumux_deploy.cli", "export", str(ckpt), str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_temp_dir(parent: Path, name: str, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{name}.tmp-") for p in parent.iterdir()):
            return True
        time.sleep(0.05)
    return False


def test_killed_export_leaves_no_target(tmp_path, masked_checkpoint):
    proc = _start_export(masked_checkpoint, tmp_path / "engine")
    assert _wait_for_temp_dir(tmp_path, "engine", proc), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 130, proc.stderr.read().decode()
    assert "interrupted; no output was written" in proc.stderr.read().decode()
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory


def test_hard_killed_export_keeps_the_previous_engine(tmp_path, masked_checkpoint, engine_dir):
    target = tmp_path / "engine"
    shutil.copytree(engine_dir, target)
    before = (target / "manifest.json").read_text()
    proc = _start_export(masked_checkpoint, target, "--force")
    assert _wait_for_temp_dir(tmp_path, "engine", proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the temp dir stays, the target is untouched
    proc.wait(timeout=60)
    assert (target / "manifest.json").read_text() == before
    load_engine(target)  # still a complete, verified engine


# --- bad text input -----------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"sentence\tlabel\nfine\t1\n\xff\xfe bad\t0\n", "dev.tsv:3: not valid UTF-8"),
    (b"sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n", "dev.tsv:3: 3 fields, the header has 2"),
    (b"sentence\tlabel\n \t1\nfine\t0\n", "dev.tsv:2: empty 'sentence'"),
    (b"sentence\tlabel\nfine\tmaybe\n", "dev.tsv:2: label 'maybe' is not one of 0, 1"),
])
def test_bad_tsv_rows_are_named_by_file_and_line(tmp_path, engine_dir, masked_checkpoint, content, message):
    data = tmp_path / "SST-2"
    data.mkdir()
    (data / "dev.tsv").write_bytes(content)
    refused(run("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", data),
            2, message)


def test_skip_bad_rows_counts_what_it_skipped(tmp_path, engine_dir, masked_checkpoint):
    data = write_sst2(tmp_path / "SST-2", [("good", 1), ("bad", 0)])
    with open(data / "dev.tsv", "ab") as f:
        f.write(b"\xff\tbroken\n" + b"one\ttwo\tthree\n" + b"great\t1\n")
    result = run("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", data,
                 "--skip-bad-rows", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad rows" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["examples"] == 3 and report["skipped_rows"] == 2


def test_long_text_is_truncated_with_a_count_or_refused(engine_dir):
    long_text = " ".join(["good"] * 40)  # max_seq_length of the engine is 16
    result = run("predict", engine_dir, long_text, "fine", long_text)
    assert result.exit_code == 0
    assert ("warning: 2 of 3 inputs are longer than 16 tokens and were truncated (--no-truncate, or truncate=False, "
            "refuses them instead)") in result.output
    refused(run("predict", engine_dir, long_text, "--no-truncate"), 2,
            "1 of 1 inputs are longer than 16 tokens (first: row 1); shorten them, or allow truncation (drop "
            "--no-truncate; truncate=True in Python)")
    refused(run("predict", engine_dir, "  "), 2, "empty text")


# --- engine inputs ------------------------------------------------------------------------------

def test_engine_handles_empty_and_odd_batches(engine_dir):
    engine = load_engine(engine_dir)
    assert engine(np.zeros((0, 5), dtype=np.int64)).shape == (0, 2)
    for batch in (1, 3, 17):
        assert engine(np.ones((batch, 4), dtype=np.int64)).shape == (batch, 2)


def test_one_engine_from_eight_threads_matches_sequential_calls(engine_dir):
    engine = load_engine(engine_dir)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 100, size=(b, 12), dtype=np.int64) for b in (1, 2, 3, 5, 7, 8, 9, 11) * 3]
    sequential = [engine(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(engine, batches))
    for want, got in zip(sequential, threaded):
        assert np.array_equal(want, got)


# --- nothing non-finite passes as success ---------------------------------------------------------------

@pytest.fixture
def nan_engine(monkeypatch):
    """Every ONNX engine opened in this test returns NaN for its second row (as a broken engine would)."""
    from prumux_deploy.runtime_onnxruntime import OrtRunner

    real = OrtRunner.infer

    def broken(self, feeds):
        logits = real(self, feeds)
        if len(logits) > 1:
            logits[1] = np.nan
        return logits

    monkeypatch.setattr(OrtRunner, "infer", broken)


def overflowing_checkpoint(path, bert_dir, scale=1e8):
    """A tiny N=2 SST-2 model whose first FFN output projection is scaled by `scale`: finite in fp32,
    beyond fp16's range (65504) once the activations pass through it."""
    import torch

    from prumux_deploy import create_model

    model = create_model(bert_dir, num_instances=2, num_labels=2, task="sst2", max_seq_length=16)
    with torch.no_grad():
        model.layers[0].ffn.down.weight.mul_(scale)
    save_checkpoint(model, path)
    return path


def test_fp16_overflow_refuses_the_export(tmp_path, bert_dir):
    """Weights beyond fp16's range: the fp16 engine's logits are wrong (or NaN), and the export says so."""
    ckpt = overflowing_checkpoint(tmp_path / "big", bert_dir)
    line = refused(run("export", ckpt, tmp_path / "e", "--precision", "fp16"), 1, "nothing was written to")
    assert "engine logits differ from PyTorch by" in line or "NaN or Inf" in line
    assert not (tmp_path / "e").exists()
    assert run("export", ckpt, tmp_path / "e32").exit_code == 0  # the same model is fine in fp32


def test_an_engine_computing_nan_is_never_exported(tmp_path, masked_checkpoint, nan_engine):
    """The parity check's running maximum used to drop NaN ("max logit error 0.00e+00")."""
    line = refused(run("export", masked_checkpoint, tmp_path / "e"), 1, "the engine computes NaN or Inf logits (")
    assert "where PyTorch does not (an fp16 overflow? export with --precision fp32); nothing was written" in line
    assert not (tmp_path / "e").exists()


def test_a_model_that_overflows_in_fp32_is_not_exported(tmp_path, bert_dir):
    ckpt = overflowing_checkpoint(tmp_path / "huge", bert_dir, scale=1e38)
    refused(run("export", ckpt, tmp_path / "e"), 1, "the PyTorch model itself computes NaN or Inf logits")
    assert not (tmp_path / "e").exists()


def test_predict_refuses_non_finite_logits(engine_dir, nan_engine):
    refused(run("predict", engine_dir, "a gorgeous , witty film", "dull", "--json"), 2,
            "the engine computed NaN or Inf logits for 1 of 2 texts (first: 'dull')")


def test_validate_fails_on_non_finite_logits_and_writes_strict_json(tmp_path, engine_dir, masked_checkpoint,
                                                                     sst2_dir, nan_engine):
    result = run("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
                 "--report", tmp_path / "r.json")
    assert result.exit_code == 1 and "FAILED" in result.output
    text = (tmp_path / "r.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert {"rows with NaN/Inf logits", "max |logit error|"} <= failed
    assert report["metrics"]["non_finite_engine_rows"] >= 1 and report["metrics"]["max_abs_logit_error"] is None


def test_strict_json_writer_turns_non_finite_numbers_into_null():
    from prumux_deploy.documents import dumps

    assert json.loads(dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": (2, -float("inf"))})) == \
        {"a": None, "b": [1.0, None], "c": [2, None]}


# --- ids outside the model ------------------------------------------------------------------------------

def small_vocab_bert(tmp_path, bert_dir, vocab_size=50):
    """The tiny BERT with a 50-row embedding table beside its 120-id tokenizer."""
    import torch
    from transformers import BertModel

    from conftest import tiny_bert_config

    path = tmp_path / "small-vocab"
    shutil.copytree(bert_dir, path)
    torch.manual_seed(0)
    BertModel(tiny_bert_config(vocab_size=vocab_size)).save_pretrained(str(path))
    return path


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_where_it_meets_the_model(tmp_path, bert_dir,
                                                                                         glue_dir):
    small = small_vocab_bert(tmp_path, bert_dir)
    message = "the tokenizer has 120 ids but the model's embedding table has 50 rows, so ids 50..119 would index past it"
    refused(run("init", tmp_path / "m", "--base", small, "--task", "sst2"), 2, message)
    refused(run("train", "finetune", tmp_path / "ft", "--init", small, "--data", glue_dir, "--device", "cpu"), 2,
            message)
    # a checkpoint whose tokenizer was swapped afterwards is caught by export
    assert run("init", tmp_path / "ok", "--base", bert_dir, "--task", "sst2").exit_code == 0
    vocab = (tmp_path / "ok" / "vocab.txt").read_text().splitlines()
    (tmp_path / "ok" / "vocab.txt").write_text("\n".join(vocab + [f"extra{i}" for i in range(30)]) + "\n")
    (tmp_path / "ok" / "tokenizer.json").unlink()
    refused(run("export", tmp_path / "ok", tmp_path / "e"), 2, "the tokenizer has 150 ids")
    assert not any((tmp_path / p).exists() for p in ("m", "ft", "e"))


@pytest.mark.parametrize("ids, types, message", [
    ([[2, 5, -1]], None, "input_ids holds -1 at row 0, position 2; ids must lie in [0, 120)"),
    ([[2, 5, 6], [2, 120, 3]], None, "input_ids holds 120 at row 1, position 1; ids must lie in [0, 120)"),
])
def test_engines_check_ids_before_running(engine_dir, ids, types, message):
    from prumux_deploy.errors import EngineError

    engine = load_engine(engine_dir)
    with pytest.raises(EngineError, match=message.replace("[", r"\[").replace(")", r"\)")):
        engine(np.array(ids))


def test_engines_check_token_types(tmp_path, bert_dir):
    from prumux_deploy.errors import EngineError

    assert run("init", tmp_path / "qnli", "--base", bert_dir, "--task", "qnli", "--max-seq-length", 16).exit_code == 0
    assert run("export", tmp_path / "qnli", tmp_path / "e").exit_code == 0
    engine = load_engine(tmp_path / "e")
    ids = np.array([[2, 5, 6, 3]])
    with pytest.raises(EngineError, match=r"token_type_ids holds -1 at row 0, position 3; ids must lie in \[0, 2\)"):
        engine(ids, token_type_ids=np.array([[0, 0, 1, -1]]))
    with pytest.raises(EngineError, match=r"token_type_ids holds 2 at row 0, position 0"):
        engine(ids, token_type_ids=np.array([[2, 0, 0, 0]]))


def test_an_edited_tokenizer_or_label_file_is_refused_before_any_answer(engine_dir, tmp_path):
    """An edited, truncated or added tokenizer file changes every answer while the graph stays intact (and
    validate, reading the same files, would pass): export records the sha256 of every file beside the graph."""
    import shutil

    from prumux_deploy.engine import load_engine
    from prumux_deploy.errors import EngineError

    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert {"config.json", "labels.txt", "vocab.txt"} <= set(manifest["files"])
    for name, damage in (("vocab.txt", lambda p: p.write_text(p.read_text().replace("good", "dull", 1))),
                         ("labels.txt", lambda p: p.write_text("positive\nnegative\n")),
                         ("config.json", lambda p: p.write_bytes(p.read_bytes()[:-10]))):
        copy = tmp_path / name
        shutil.copytree(engine_dir, copy)
        damage(copy / name)
        with pytest.raises(EngineError, match=rf"{name}: sha256 \w+\.\.\. does not match manifest.json .*Re-export"):
            load_engine(copy)
    added = tmp_path / "added"
    shutil.copytree(engine_dir, added)
    from prumux_deploy.engine_dir import SIDE_FILES

    extra = next(name for name in SIDE_FILES if name not in manifest["files"])  # e.g. added_tokens.json
    (added / extra).write_text('{"zebra": 5}')
    with pytest.raises(EngineError, match=f"{extra}: not part of the exported engine"):
        load_engine(added)
    result = run("predict", added, "good fun")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "not part of the exported engine" in result.output


# --- manifest fields the graph determines ----------------------------------------------------------------

def _edited_engine(engine_dir, path, **changes):
    shutil.copytree(engine_dir, path)
    edit_manifest(**changes)(path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"num_instances": 1}, "num_instances is 1, but the graph model.onnx has N=2 (sentences per mux group); the "
                           "manifest was edited or belongs to another engine. Re-export the engine"),
    ({"labels": {"0": "negative", "1": "neutral", "2": "positive"}},
     "labels lists 3 labels, but the graph model.onnx has 2 logits per row"),
    ({"max_position_embeddings": 512, "max_seq_length": 400},
     "max_position_embeddings is 512, but the graph model.onnx has a position table of 24"),
    ({"max_seq_length": 100}, "max_seq_length 100 exceeds the engine's position table (max_position_embeddings 24)"),
    ({"max_seq_length": 0}, "field 'max_seq_length' is the number 0, not a whole number from 1 to 65536"),
    ({"max_seq_length": -5}, "field 'max_seq_length' is the number -5, not a whole number from 1 to 65536"),
    ({"vocab_size": 100000}, "vocab_size is 100000, but the graph model.onnx has an embedding table of 120 token ids"),
])
def test_manifest_fields_the_graph_determines_must_agree_with_it(tmp_path, engine_dir, changes, message):
    """The manifest is an editable text file beside a graph whose sha256 it holds: N=1 on an N=2 graph made
    `triton` drop request isolation, and a swapped label count went unnoticed."""
    from prumux_deploy.errors import EngineError

    bad = _edited_engine(engine_dir, tmp_path / "engine", **changes)
    with pytest.raises(EngineError, match=re.escape(message)):
        load_engine(bad)
    for argv in (["predict", bad, "fine film"], ["inspect", bad], ["triton", bad, tmp_path / "repo", "--name", "m"]):
        line = refused(run(*argv), 2, message)
        assert line.startswith(f"error: {bad / 'manifest.json'}: ")
    assert not (tmp_path / "repo").exists()


def test_export_records_what_the_graph_determines_in_the_graph(engine_dir):
    from prumux_deploy.engine_dir import read_graph_facts

    assert read_graph_facts(engine_dir / "model.onnx") == {"num_instances": 2, "num_labels": 2,
                                                          "max_position_embeddings": 24, "vocab_size": 120,
                                                          "type_vocab_size": 2}


def test_a_graph_without_recorded_facts_is_checked_against_its_config(tmp_path, engine_dir):
    """Engines exported before the graph recorded N: the config.json export wrote beside it (sha256-checked)."""
    import onnx

    from prumux_deploy.documents import sha256_file
    from prumux_deploy.engine_dir import read_graph_facts
    from prumux_deploy.errors import EngineError

    old = tmp_path / "old"
    shutil.copytree(engine_dir, old)
    proto = onnx.load(str(old / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save_model(proto, str(old / "model.onnx"))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["engine"]["sha256"] = sha256_file(old / "model.onnx")
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert read_graph_facts(old / "model.onnx") == {"num_labels": 2}  # the logits output still says it
    load_engine(old)  # a consistent old engine opens
    edit_manifest(num_instances=1)(old)
    with pytest.raises(EngineError, match=r"num_instances is 1, but config.json beside it has N=2"):
        load_engine(old)
    edit_manifest(num_instances=2, labels={"0": "a", "1": "b", "2": "c"})(old)
    with pytest.raises(EngineError, match=r"labels lists 3 labels, but the graph model.onnx has 2 logits per row"):
        load_engine(old)


@pytest.mark.parametrize("changes, message", [
    ({"num_instances": "2"}, "field 'num_instances' is text ('2'), not a whole number from 1 to 1024"),
    ({"num_instances": True}, "field 'num_instances' is true, not a whole number from 1 to 1024"),
    ({"num_instances": 5000}, "field 'num_instances' is the number 5000, not a whole number from 1 to 1024"),
    ({"labels": ["negative", "positive"]}, "field 'labels' is a list, not an object of 1 to 65536 class names"),
    ({"labels": {"a": "negative", "b": "positive"}}, "field 'labels' must map the class ids '0' to '1' to names"),
    ({"engine": ["model.onnx"]}, "field 'engine' is a list, not an object with the engine's file, kind and sha256"),
    ({"engine": {"file": "model.onnx", "kind": "tflite", "sha256": "0" * 64}},
     "field 'engine.kind' is text ('tflite'), not one of onnx, tensorrt"),
    ({"inputs": {"name": "input_ids"}}, "field 'inputs' is an object, not a list of objects with a name each"),
    ({"max_seq_length": "16"}, "field 'max_seq_length' is text ('16'), not a whole number from 1 to 65536"),
    ({"files": ["vocab.txt"]}, "field 'files' is a list, not an object of file names and their sha256 digests"),
    ({"runtime": "onnxruntime"}, "field 'runtime' is text ('onnxruntime'), not an object"),
])
def test_manifest_fields_of_the_wrong_type_are_one_line(tmp_path, engine_dir, changes, message):
    bad = _edited_engine(engine_dir, tmp_path / "engine", **changes)
    for argv in (["predict", bad, "fine film"], ["inspect", bad], ["triton", bad, tmp_path / "repo", "--name", "m"]):
        line = refused(run(*argv), 2, message)
        assert line.startswith(f"error: {bad / 'manifest.json'}: ") and line.endswith("; re-export the engine")


# --- config dimensions, before any tensor ----------------------------------------------------------------

@pytest.fixture
def no_allocation(monkeypatch):
    """Building a model fails the test: a refusal must come before any tensor is allocated."""
    from prumux_deploy.model import PruMuxModel

    def allocate(self, *args, **kwargs):
        raise AssertionError("PruMuxModel was built (its tensors allocated) before the config was refused")

    monkeypatch.setattr(PruMuxModel, "__init__", allocate)


LIMIT = "(prumux-deploy's limit, far above any BERT's)"


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 10 ** 9}, f"hidden_size 1000000000 is not a whole number from 1 to 65536 {LIMIT}"),
    ({"hidden_size": 1e9}, f"hidden_size 1000000000.0 is not a whole number from 1 to 65536 {LIMIT}"),
    ({"num_hidden_layers": 10 ** 6}, f"num_hidden_layers 1000000 is not a whole number from 1 to 1024 {LIMIT}"),
    ({"num_attention_heads": 0}, f"num_attention_heads 0 is not a whole number from 1 to 1024 {LIMIT}"),
    ({"intermediate_size": -64}, f"intermediate_size -64 is not a whole number from 1 to 1048576 {LIMIT}"),
    ({"vocab_size": True}, f"vocab_size true is not a whole number from 1 to 4194304 {LIMIT}"),
    ({"num_instances": 2.5}, f"num_instances 2.5 is not a whole number from 1 to 1024 {LIMIT}"),
    ({"hidden_size": "32"}, f"hidden_size '32' is not a whole number from 1 to 65536 {LIMIT}"),
    ({"max_seq_length": 0}, "max_seq_length 0 is not a whole number from 1 to the position table (24)"),
    ({"max_seq_length": -5}, "max_seq_length -5 is not a whole number from 1 to the position table (24)"),
    ({"hidden_size": 65536, "num_attention_heads": 4, "vocab_size": 1 << 22},
     "these dimensions make a model of about 365 billion parameters (1,360 GiB in float32), more than "
     "prumux-deploy's limit of 8.6 billion; check hidden_size 65536"),
    ({"id2label": ["negative", "positive"]}, "id2label (a list) is not an object"),
    ({"layer_norm_eps": "tiny"}, "layer_norm_eps 'tiny' is not a number between 0 and 1"),
    ({"attend_to_padding": "no"}, "attend_to_padding 'no' is not true or false"),
    ({"task": ["sst2"]}, "task (a list) is not text"),
    ({"demux_kind": {"kind": "key_cls"}}, "demux_kind (an object) is not text"),
])
def test_config_dimensions_and_types_are_refused_before_any_tensor(tmp_path, masked_checkpoint, no_allocation,
                                                                   changes, message):
    """hidden_size 1e9 used to try to allocate 122 TB, 1e6 layers ran for 32 s into 3.5 GB; a string where a
    number goes was an `unexpected TypeError`."""
    bad = tmp_path / "ckpt"
    shutil.copytree(masked_checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **changes}))
    for argv in (["inspect", bad], ["export", bad, tmp_path / "e"], ["compact", bad, tmp_path / "c"]):
        line = refused(run(*argv), 2, message)
        assert line.startswith(f"error: {bad / 'config.json'}: ")
        assert line.endswith("; correct it in config.json or re-create the checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_base_bert_with_absurd_dimensions_is_refused_before_any_tensor(tmp_path, bert_dir, no_allocation):
    base = tmp_path / "base"
    shutil.copytree(bert_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "hidden_size": 4 * 10 ** 8}))
    line = refused(run("init", tmp_path / "m", "--base", base), 2,
                   f"hidden_size 400000000 is not a whole number from 1 to 65536 {LIMIT}")
    assert line.startswith(f"error: {base / 'config.json'}: ")
    (base / "config.json").write_text(json.dumps({**config, "num_attention_heads": "4"}))
    refused(run("init", tmp_path / "m", "--base", base), 2, "config.json: not a BERT config transformers can read (")
    assert not (tmp_path / "m").exists()


def test_real_configs_pass_the_checks(masked_checkpoint):
    from prumux_deploy.model import PruMuxConfig

    from prumux_deploy import load_checkpoint

    load_checkpoint(masked_checkpoint)
    PruMuxConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096)  # BERT-large


# --- a checkpoint's or engine's files stay inside it ------------------------------------------------------

@pytest.fixture
def hashed(monkeypatch):
    """Every path sha256_file reads, in order (checkpoint.py and engine_dir.py import it by name)."""
    from prumux_deploy import checkpoint, documents, engine_dir

    seen = []
    real = documents.sha256_file

    def recording(path):
        seen.append(Path(path))
        return real(path)

    for module in (checkpoint, engine_dir):
        monkeypatch.setattr(module, "sha256_file", recording)
    return seen


def test_checkpoint_files_outside_its_directory_are_refused_before_any_is_read(tmp_path, masked_checkpoint,
                                                                               hashed):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    for name in ("../../etc/passwd", "/etc/passwd", "../outside/secret.txt"):
        bad = tmp_path / "ckpt"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(masked_checkpoint, bad)
        config = json.loads((bad / "config.json").read_text())
        config["files"][name] = "0" * 64
        (bad / "config.json").write_text(json.dumps(config))
        hashed.clear()
        line = refused(run("inspect", bad), 2, f"config.json: lists the file {name!r}, which lies outside the "
                                                f"checkpoint directory {bad}; only the checkpoint's own files may be "
                                                "listed (nothing was read). Re-create the checkpoint")
        assert line.startswith(f"error: {bad / 'config.json'}")
        assert hashed == []  # not even the checkpoint's own files: the listing is refused first
    # a listed file that is a symbolic link leading outside
    bad = tmp_path / "linked"
    shutil.copytree(masked_checkpoint, bad)
    shutil.move(bad / "masks.safetensors", outside / "masks.safetensors")
    (bad / "masks.safetensors").symlink_to(outside / "masks.safetensors")
    hashed.clear()
    refused(run("export", bad, tmp_path / "e"), 2,
            f"config.json: lists the file 'masks.safetensors', a symbolic link to {outside / 'masks.safetensors'} "
            f"outside the checkpoint directory {bad} (nothing was read); copy the file into {bad}, or re-create the "
            "checkpoint")
    assert hashed == [] and not (tmp_path / "e").exists()
    # a link inside the directory is fine
    inside = tmp_path / "inside"
    shutil.copytree(masked_checkpoint, inside)
    (inside / "weights").mkdir()
    shutil.move(inside / "masks.safetensors", inside / "weights" / "masks.safetensors")
    (inside / "masks.safetensors").symlink_to(Path("weights") / "masks.safetensors")
    assert run("inspect", inside).exit_code == 0


def test_engine_files_outside_its_directory_are_refused_before_any_is_read(tmp_path, engine_dir, hashed):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(engine_dir / "model.onnx", outside)
    for entry, message in (
            ({"file": "/etc/passwd", "kind": "onnx", "sha256": "0" * 64}, "lists the file '/etc/passwd', which lies "
                                                                          "outside the engine directory"),
            ({"file": "../outside.onnx", "kind": "onnx", "sha256": "0" * 64}, "lists the file '../outside.onnx', "
                                                                              "which lies outside the engine directory")):
        bad = _edited_engine(engine_dir, tmp_path / "engine", engine=entry)
        hashed.clear()
        for argv in (["predict", bad, "fine film"], ["inspect", bad], ["triton", bad, tmp_path / "repo", "--name", "m"]):
            line = refused(run(*argv), 2, message)
            assert line.endswith("(nothing was read). Re-export the engine")
        assert hashed == []
        shutil.rmtree(bad)
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    bad = _edited_engine(engine_dir, tmp_path / "engine", files={**manifest["files"], "../../etc/shadow": "0" * 64})
    refused(run("predict", bad, "fine film"), 2, "lists the file '../../etc/shadow', which lies outside the engine")
    shutil.rmtree(bad)
    # the graph itself a symbolic link leading outside
    bad = tmp_path / "linked"
    shutil.copytree(engine_dir, bad)
    (bad / "model.onnx").unlink()
    (bad / "model.onnx").symlink_to(outside)
    hashed.clear()
    refused(run("predict", bad, "fine film"), 2, f"lists the file 'model.onnx', a symbolic link to {outside} outside "
                                                  f"the engine directory {bad} (nothing was read)")
    assert hashed == []


# --- --force replaces only what prumux-deploy wrote --------------------------------------------------------

def test_force_never_replaces_a_fifo_a_socket_or_a_directory_it_did_not_write(tmp_path, engine_dir,
                                                                                masked_checkpoint, bert_dir):
    import socket
    import stat

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for force in ((), ("--force",)):
        refused(run("predict", engine_dir, "fine film", "--ids-out", fifo, *force), 2,
                f"{fifo} is a FIFO (named pipe), not a file this command wrote; choose another path")
        refused(run("export", masked_checkpoint, fifo, *force), 2,
                f"{fifo} is a FIFO (named pipe), not a file this command wrote; choose another path")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        refused(run("predict", engine_dir, "fine film", "--ids-out", sock_path, "--force"), 2,
                f"{sock_path} is a socket, not a file this command wrote; choose another path")
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    # a directory of someone else's files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for argv in (["export", masked_checkpoint, mine, "--force"], ["init", mine, "--base", bert_dir, "--force"],
                 ["compact", masked_checkpoint, mine, "--force"]):
        refused(run(*argv), 2, f"{mine} is a directory this command did not write (no prumux-deploy checkpoint, "
                               "engine or Triton model in it), and --force replaces only those; choose another path, "
                               "or remove it yourself")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    # without --force the same refusals come first: advice to pass --force would only lead to them
    refused(run("export", masked_checkpoint, mine), 2, f"{mine} is a directory this command did not write")
    (tmp_path / "a.txt").write_text("keep me too")
    refused(run("export", masked_checkpoint, tmp_path / "a.txt"), 2,
            f"{tmp_path / 'a.txt'} exists and is not a directory; choose another output path")
    # what it wrote (and empty directories) it still replaces
    assert run("init", tmp_path / "ckpt", "--base", bert_dir).exit_code == 0
    assert run("init", tmp_path / "ckpt", "--base", bert_dir, "--force").exit_code == 0
    (tmp_path / "empty").mkdir()
    assert run("init", tmp_path / "empty", "--base", bert_dir, "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


# --- resuming and sharing OUT.run ---------------------------------------------------------------------------

def _finetune_argv(out, bert_dir, glue_dir, *extra):
    return ["train", "finetune", out, "--init", bert_dir, "--data", glue_dir, "--task", "sst2", "--instances", 2,
            "--epochs", 1, "--batch-size", 8, "--lr", 1e-3, "--max-seq-length", 12, "--eval-every", 4,
            "--save-every", 3, "--seed", 0, "--device", "cpu", *extra]


def _die_after_step(monkeypatch, at=3, then=None):
    """RunState.save raises KeyboardInterrupt (Ctrl-C) after saving step `at`, as an interrupted run."""
    from prumux_deploy.train import loop

    original = loop.RunState.save

    def save_then_die(self, step, objects):
        original(self, step, objects)
        if step == at:
            if then is not None:
                then(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.RunState, "save", save_then_die)
    return original


def test_resume_refuses_options_that_differ_from_the_interrupted_run(tmp_path, bert_dir, glue_dir, monkeypatch):
    """pretrain --resume compared its batch size, length and corpus; finetune, warmup and prune resumed whatever
    they were given, mixing two runs' settings in one model."""
    from prumux_deploy.train import loop
    from prumux_deploy.train.stages import PruneArgs, prune

    out = tmp_path / "ft"
    original = _die_after_step(monkeypatch)
    assert run(*_finetune_argv(out, bert_dir, glue_dir)).exit_code == 130
    monkeypatch.setattr(loop.RunState, "save", original)
    state = (loop.run_dir(out) / "train_state.pt").read_bytes()
    for extra, message in ((["--batch-size", 4], "the interrupted run used --batch-size 8, this one 4; resume with "
                                                 "the same options"),
                           (["--lr", 1e-4], "the interrupted run used --lr 0.001, this one 0.0001"),
                           (["--epochs", 2], "the interrupted run used --epochs 1.0, this one 2.0"),
                           (["--seed", 1], "the interrupted run used --seed 0, this one 1"),
                           (["--max-train-samples", 20], "the interrupted run used --max-train-samples none, this one 20"),
                           (["--max-seq-length", 10], "the interrupted run used --max-seq-length 12, this one 10"),
                           (["--instances", 1, "--batch-size", 8], "the interrupted run used --instances 2, this one 1")):
        argv = _finetune_argv(out, bert_dir, glue_dir, "--resume")
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        refused(run(*argv), 2, message)
        assert not out.exists() and (loop.run_dir(out) / "train_state.pt").read_bytes() == state  # untouched
    # what may change: how often it saves and evaluates, the device
    argv = _finetune_argv(out, bert_dir, glue_dir, "--resume")
    argv[argv.index("--eval-every") + 1] = 2
    result = run(*argv)
    assert result.exit_code == 0, result.output
    # prune: its own options too
    args = loop.TrainArgs(task="sst2", data=str(glue_dir), instances=2, epochs=1.0, batch_size=8, lr=1e-3,
                          max_seq_length=12, eval_every=4, save_every=3, seed=0, device="cpu")
    _die_after_step(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prune(out, tmp_path / "pruned", args, PruneArgs(sparsity=0.5), log=lambda m: None)
    monkeypatch.setattr(loop.RunState, "save", original)
    with pytest.raises(PruMuxError, match="the interrupted run used `sparsity` 0.5, this one 0.3; resume with the same"):
        prune(out, tmp_path / "pruned", args, PruneArgs(sparsity=0.3), resume=True, log=lambda m: None)
    prune(out, tmp_path / "pruned", args, PruneArgs(sparsity=0.5), resume=True, log=lambda m: None)


HOLD_LOCK = """
import sys
from prumux_deploy.train.loop import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("holding", flush=True)
sys.stdin.read()
lock.release()
"""

TRY_LOCK = """
import sys
from prumux_deploy.errors import PruMuxError
from prumux_deploy.train.loop import RunLock
try:
    RunLock(sys.argv[1]).acquire().release()
    print("acquired")
except PruMuxError as e:
    print(e)
"""


def test_two_runs_with_the_same_out_do_not_share_out_run(tmp_path, bert_dir, glue_dir, monkeypatch):
    from prumux_deploy.train import loop

    out = tmp_path / "ft"
    run_path = loop.run_dir(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = sorted(p.name for p in run_path.iterdir())
        for extra in ((), ("--resume",), ("--force",)):
            line = refused(run(*_finetune_argv(out, bert_dir, glue_dir, *extra)), 2,
                           f"{run_path} is in use by another run (pid {holder.pid}); wait for it or choose another OUT")
            assert line.count("error:") == 1
        assert not out.exists() and sorted(p.name for p in run_path.iterdir()) == before == ["lock"]
    finally:
        holder.communicate("", timeout=60)
    assert not run_path.exists()  # the holder made OUT.run only for its lock, and removed it
    # a running stage holds the lock from when it sets up its run state to when it has written OUT
    seen = []

    def try_from_another_process(state):
        seen.append(subprocess.run([sys.executable, "-c", TRY_LOCK, str(run_path)], capture_output=True, text=True,
                                   timeout=120).stdout.strip())

    original = _die_after_step(monkeypatch, then=try_from_another_process)
    assert run(*_finetune_argv(out, bert_dir, glue_dir)).exit_code == 130
    monkeypatch.setattr(loop.RunState, "save", original)
    assert seen == [f"{run_path} is in use by another run (pid {os.getpid()}); wait for it or choose another `out`"]
    assert "lock" not in [p.name for p in run_path.iterdir()]  # released when the interrupted run ended
    assert run(*_finetune_argv(out, bert_dir, glue_dir, "--resume")).exit_code == 0
    done = subprocess.run([sys.executable, "-c", TRY_LOCK, str(run_path)], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "acquired"


def test_a_text_that_is_not_utf8_is_one_line(engine_dir):
    # a command-line argument in another encoding reaches Python as lone surrogates (surrogateescape)
    done = run("predict", engine_dir, "good", "caf\udce9 bad")
    refused(done, 2, "text 2 is not valid UTF-8 (character 4: 'caf' then an undecodable byte); pass text in UTF-8")


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_column_named_twice_is_one_line(tmp_path, engine_dir, masked_checkpoint, suffix):
    sep = "," if suffix == ".csv" else "\t"
    data = tmp_path / f"dev{suffix}"
    data.write_text(sep.join(["sentence", "label", "label"]) + "\n" + sep.join(["a good film", "1", "0"]) + "\n")
    message = f"{data}: the header names column 'label' twice (columns 2 and 3); rename or drop one"
    refused(run("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", data), 2, message)
    refused(run("predict", engine_dir, "--input", data, "--output", tmp_path / "o.jsonl"), 2, message)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_dangling_link_as_the_output_is_refused_before_the_work(tmp_path, masked_checkpoint):
    out = tmp_path / "engine"
    out.symlink_to(tmp_path / "gone" / "x")
    done = run("export", masked_checkpoint, out)
    refused(done, 2, f"cannot write {out}: it is a symbolic link to {tmp_path / 'gone' / 'x'}, which does not exist")
    assert "compacting" not in done.output  # refused before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"] and out.is_symlink()


def test_concurrent_force_writers_both_finish_and_leave_nothing_behind(tmp_path):
    import threading

    from prumux_deploy.atomic import atomic_dir

    target = tmp_path / "out"
    barrier, errors = threading.Barrier(4), []

    def writer(k):
        try:
            with atomic_dir(target, force=True) as tmp:
                (tmp / "config.json").write_text('{"format": "prumux-checkpoint"}')  # an output of ours
                (tmp / "who").write_text(str(k))
                barrier.wait()  # all four swap at once
        except Exception as e:  # noqa: BLE001 - the test reports any
            errors.append(e)

    (target).mkdir()
    (target / "config.json").write_text('{"format": "prumux-checkpoint"}')
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.tmp-* or .out.old-* left
    assert (target / "who").read_text() in {"0", "1", "2", "3"}


def test_an_output_that_appears_meanwhile_is_not_replaced_without_force(tmp_path):
    from prumux_deploy.atomic import atomic_dir
    from prumux_deploy.errors import PruMuxError

    target = tmp_path / "out"
    with pytest.raises(PruMuxError, match="appeared while this command ran .*pass `force` to replace it"):
        with atomic_dir(target) as tmp:
            (tmp / "mine").write_text("1")
            target.mkdir()  # another run put its output there first
            (target / "theirs").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "theirs").exists()


@pytest.mark.parametrize("after", [0.4, 0.9])
def test_ctrl_c_while_the_command_line_starts_is_one_line(after, masked_checkpoint):
    """torch and the runtimes take seconds to load; a Ctrl-C then gets the one line every interruption gets."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-m", "prumux_deploy.cli", "inspect", str(masked_checkpoint)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.skip(f"the command finished within {after} s here; nothing was interrupted")
    assert (child.returncode, err.strip()) == (130, "interrupted; no output was written"), err


def test_an_unusable_datasets_cache_is_named_not_the_data(tmp_path, engine_dir, masked_checkpoint):
    import os
    import subprocess
    import sys

    data = tmp_path / "dev.csv"
    data.write_text("sentence,label\na good film,1\na bad film,0\n")
    (tmp_path / "afile").write_text("not a directory")
    cache = tmp_path / "afile" / "cache"  # cannot be created: its parent is a file
    done = subprocess.run([sys.executable, "-m", "prumux_deploy.cli", "validate", str(engine_dir), "--checkpoint",
                           str(masked_checkpoint), "--data", str(data)], capture_output=True, text=True,
                          env={**os.environ, "HF_DATASETS_CACHE": str(cache)}, timeout=300)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the Hugging Face datasets cache {cache} cannot be used: ") and "Traceback" not in done.stderr
    assert last.endswith("set HF_DATASETS_CACHE (or HF_HOME) to a writable directory with free space")
    assert str(data) not in last  # the data file is not blamed
