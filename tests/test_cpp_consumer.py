"""examples/cpp/prumux_infer, built with CMake against ONNX Runtime's C++ API, agrees with `predict`.

The headers come from examples/cpp/fetch_ort_headers.sh (an npm registry package; CI runs it first, and the
fixture runs it when they are missing), the library from the Python `onnxruntime` wheel this environment
exports with."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEADERS = Path(os.environ.get("PRUMUX_ORT_INCLUDE", ROOT / ".cache" / "ort-headers" / "include"))


@pytest.fixture(scope="module")
def prumux_infer(tmp_path_factory):
    missing = None
    if not (HEADERS / "onnxruntime_cxx_api.h").is_file() and "PRUMUX_ORT_INCLUDE" not in os.environ:
        # what .ci/run does before the tests, so that the README's test command runs these tests too (the npm
        # registry is one the machines reach; without npm the script says so and the check below reports it)
        subprocess.run(["bash", str(ROOT / "examples" / "cpp" / "fetch_ort_headers.sh"), str(HEADERS.parent)],
                       capture_output=True, text=True, timeout=600)
    if not (HEADERS / "onnxruntime_cxx_api.h").is_file():
        missing = f"ONNX Runtime headers not in {HEADERS}: run examples/cpp/fetch_ort_headers.sh .cache/ort-headers"
    elif shutil.which("cmake") is None or shutil.which("c++") is None:
        missing = "cmake and a C++ compiler are needed to build examples/cpp"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI fetches the headers first, so a skip there would hide a broken build
        pytest.skip(missing)
    build = tmp_path_factory.mktemp("cpp-build")
    for cmd in (["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build), f"-DORT_INCLUDE_DIR={HEADERS}",
                 f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(build)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return build / "prumux_infer"


def label_and_probabilities(line: str):
    """One output line of prumux_infer ('label logit logit ...') -> (label, softmax of the logits)."""
    label, *logits = line.split()
    logits = np.array(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max())
    return label, probs / probs.sum()


def test_cpp_consumer_matches_predict(prumux_infer, engine_dir, tmp_path):
    texts = ["a gorgeous , witty film", "dull", "the plot is thin but the actors are great fun to watch"]
    ids = tmp_path / "ids.txt"
    result = CliRunner().invoke(main, ["predict", str(engine_dir), *texts, "--json", "--ids-out", str(ids)])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    rows = ids.read_text().splitlines()
    assert len(rows) == 3 and len({len(r.split()) for r in rows}) == 1  # padded to one length

    done = subprocess.run([str(prumux_infer), str(engine_dir), str(ids)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3  # batch 3 with N=2: the graph pads the last mux group itself
    for line, want in zip(lines, expected):
        label, probs = label_and_probabilities(line)
        assert label == want["label"]
        np.testing.assert_allclose(probs, list(want["scores"].values()), atol=1e-5)


def test_cpp_consumer_request_isolation_matches_predict(prumux_infer, engine_dir, tmp_path):
    """--isolation request: every row answered as if alone, as `predict --isolation request` does."""
    texts = ["a gorgeous , witty film", "dull", "the plot is thin"]
    ids = tmp_path / "ids.txt"
    result = CliRunner().invoke(main, ["predict", str(engine_dir), *texts, "--json", "--isolation", "request",
                                       "--ids-out", str(ids)])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    outputs = {}
    for mode in ("request", "shared"):
        done = subprocess.run([str(prumux_infer), "--isolation", mode, str(engine_dir), str(ids)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs[mode] = done.stdout.splitlines()
    assert len(outputs["request"]) == 3
    for line, want in zip(outputs["request"], expected):
        label, probs = label_and_probabilities(line)
        assert label == want["label"]
        np.testing.assert_allclose(probs, list(want["scores"].values()), atol=1e-5)
    assert outputs["request"] != outputs["shared"]  # the tiny N=2 engine depends on its partner
    bad = subprocess.run([str(prumux_infer), "--isolation", "private", str(engine_dir), str(ids)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: prumux_infer [--isolation shared|request]")


def test_cpp_consumer_errors(prumux_infer, engine_dir, tmp_path):
    missing = subprocess.run([str(prumux_infer), str(engine_dir), str(tmp_path / "nope.txt")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr == f"error: {tmp_path / 'nope.txt'}: cannot be opened\n"
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("101 102\n101 7 102\n")
    done = subprocess.run([str(prumux_infer), str(engine_dir), str(ragged)], capture_output=True, text=True)
    assert done.returncode == 1 and "rows must have the same length (pad with 0)" in done.stderr
    usage = subprocess.run([str(prumux_infer)], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: prumux_infer [--isolation shared|request] "
                                                            "ENGINE_DIR IDS_FILE")
