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
