"""Bad artifacts and bad input: every case gets its one-line message and exit code, and no output."""

import json
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
    assert "warning: 2 of 3 inputs are longer than 16 tokens and were truncated" in result.output
    refused(run("predict", engine_dir, long_text, "--no-truncate"), 2,
            "1 of 1 inputs are longer than 16 tokens (first: row 1)")
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
