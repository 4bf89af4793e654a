"""OpenVINO as a runtime: export --runtime openvino|auto, bf16 where the CPU has it, bench's OpenVINO rows."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from prumux_deploy import runtime_openvino
from prumux_deploy.data import load_tokenizer, tokenize
from prumux_deploy.engine import load_engine
from prumux_deploy.runtime_onnxruntime import OrtRunner
from prumux_deploy.errors import EngineError

from conftest import refused, run_cli

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'prumux-deploy[openvino]'")

TEXTS = ["a gorgeous , witty film", "dull and tedious", "the plot was awful"]


@pytest.fixture(scope="module")
def ov_engine(tmp_path_factory, masked_checkpoint):
    out = tmp_path_factory.mktemp("ov") / "engine"
    done = run_cli("export", masked_checkpoint, out, "--runtime", "openvino")
    assert done.exit_code == 0, done.output
    return out


def test_openvino_engine_matches_onnx_runtime(ov_engine):
    manifest = json.loads((ov_engine / "manifest.json").read_text())
    assert manifest["runtime"]["name"] == "openvino" and manifest["runtime"]["inference_precision"] == "f32"
    engine = load_engine(ov_engine)
    assert isinstance(engine.runner, runtime_openvino.OpenVINORunner)
    ort = load_engine(ov_engine, runtime="onnxruntime")
    assert isinstance(ort.runner, OrtRunner)
    feeds = tokenize(load_tokenizer(ov_engine), TEXTS, max_length=16)
    for rows in (1, 2, 3):  # partial mux groups included
        part = {k: v[:rows] for k, v in feeds.items()}
        got, want = engine.run_feeds(part), ort.run_feeds(part)
        assert got.shape == (rows, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert engine.run_feeds({k: v[:0] for k, v in feeds.items()}).shape == (0, 2)
    assert manifest["parity"]["max_abs_logit_error"] < 1e-4
    shown = run_cli("inspect", ov_engine)
    assert "run by openvino" in shown.output and "(fp32)" in shown.output
    predicted = run_cli("predict", ov_engine, *TEXTS)
    assert predicted.exit_code == 0 and len(predicted.output.strip().splitlines()) == 3


def test_runtime_auto_keeps_the_faster_runtime_that_passes_parity(masked_checkpoint, tmp_path):
    done = run_cli("export", masked_checkpoint, tmp_path / "e")  # --runtime auto is the default
    assert done.exit_code == 0, done.output
    runtime = json.loads((tmp_path / "e" / "manifest.json").read_text())["runtime"]
    rates = runtime["choice"]["samples_per_s"]
    assert set(rates) == {"onnxruntime", "openvino"}
    assert runtime["choice"]["chosen"] == runtime["name"] == max(rates, key=rates.get)
    assert runtime["choice"]["batch"] == 64 and runtime["choice"]["sequence"] == 16  # 32*N x min(128, max)
    assert f"runtime auto: {runtime['name']}" in done.output


def test_bf16_where_the_cpu_has_it(masked_checkpoint, engine_dir, sst2_dir, tmp_path, monkeypatch):
    if not runtime_openvino.cpu_has_bf16():
        refused(run_cli("export", masked_checkpoint, tmp_path / "b", "--precision", "bf16"), 2,
                "bf16 needs a CPU with avx512_bf16 or amx_bf16")
        pytest.skip("this CPU has neither avx512_bf16 nor AMX; the refusal is what it gets")
    done = run_cli("export", masked_checkpoint, tmp_path / "b", "--precision", "bf16")
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["runtime"]["inference_precision"] == "bf16"
    assert 0 < manifest["parity"]["max_abs_logit_error"] <= 0.1  # bf16 rounds: not fp32's zero-ish error
    assert manifest["parity"]["engine_arithmetic"] == "fp32 graph, OpenVINO CPU at bf16"  # the graph stays fp32
    result = run_cli("validate", tmp_path / "b", "--checkpoint", masked_checkpoint, "--data", sst2_dir)
    assert result.exit_code == 0, result.output
    assert ">= 98.00%" in result.output and "<= 1.00e-01" in result.output  # bf16's own tolerances
    # a CPU without bf16: refused before any work, in one line
    monkeypatch.setattr(runtime_openvino, "cpu_flags", lambda: {"avx2"})
    refused(run_cli("export", masked_checkpoint, tmp_path / "c", "--precision", "bf16"), 2,
            "bf16 needs a CPU with avx512_bf16 or amx_bf16, and this one has neither")
    assert not (tmp_path / "c").exists()
    with pytest.raises(EngineError, match="bf16 needs a CPU"):
        load_engine(tmp_path / "b")


def test_runtime_and_precision_that_do_not_go_together_are_refused(masked_checkpoint, tmp_path, monkeypatch):
    refused(run_cli("export", masked_checkpoint, tmp_path / "x", "--precision", "bf16", "--runtime", "onnxruntime"),
            2, "--precision bf16 runs in OpenVINO on the CPU; use --runtime openvino (or auto)")
    refused(run_cli("export", masked_checkpoint, tmp_path / "x", "--precision", "int8", "--runtime", "openvino"),
            2, "OpenVINO's int8 is NNCF's post-training quantization, calibrated on task rows: give --data")
    refused(run_cli("export", masked_checkpoint, tmp_path / "x", "--precision", "fp16", "--runtime", "openvino"),
            2, "fp16 engines are for GPUs and run in ONNX Runtime (--runtime onnxruntime)")
    refused(run_cli("export", masked_checkpoint, tmp_path / "x", "--runtime", "openvino", "--format", "tensorrt"),
            2, "--runtime openvino runs ONNX engines; TensorRT plans run in TensorRT (--format onnx)")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    refused(run_cli("export", masked_checkpoint, tmp_path / "x", "--runtime", "openvino"), 2,
            "pip install 'prumux-deploy[openvino]'")
    assert not (tmp_path / "x").exists()
    auto = run_cli("export", masked_checkpoint, tmp_path / "y")  # auto without OpenVINO: ONNX Runtime
    assert auto.exit_code == 0 and "runtime auto" not in auto.output
    assert "runtime" not in json.loads((tmp_path / "y" / "manifest.json").read_text())


def test_bench_times_openvino_beside_onnx_runtime(masked_checkpoint, tmp_path):
    out = tmp_path / "b.json"
    done = run_cli("bench", "--checkpoint", masked_checkpoint, "--backend", "onnxruntime-opt", "--backend", "openvino",
                   "--seq", 16, "-b", 2, "--repeats", 2, "--no-gemm", "--json", out)
    assert done.exit_code == 0, done.output
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"] if r["name"] != "bert-base dense"}
    assert set(rows) == {"onnxruntime-opt", "openvino"}
    assert rows["openvino"]["max_abs_logit_error"] < 1e-4 and rows["openvino"]["samples_per_s"] > 0
    done = run_cli("bench", "--checkpoint", masked_checkpoint, "--backend", "openvino-int8", "--seq", 16, "-b", 2,
                   "--repeats", 2, "--no-gemm", "--json", out, "--force")
    assert done.exit_code == 0, done.output
    row = next(r for r in json.loads(out.read_text())["rows"] if r["backend"] == "openvino-int8")
    assert 1e-6 < row["max_abs_logit_error"] < 1.0 and row["samples_per_s"] > 0  # quantized: not fp32's error
    refused(run_cli("bench", "--peers", "--backend", "torch"), 2, "--peers chooses the backends itself")
    refused(run_cli("bench", "--peers", "--latency"), 2, "--peers compares throughput; drop --latency")
    refused(run_cli("bench", "--peers", "--device", "cuda"), 2, "--device cuda: no CUDA GPU is visible")  # GPU peers need a GPU


def test_triton_serves_bf16_engines_with_the_openvino_backend_and_fp32_ones_with_onnx_runtime(
        ov_engine, masked_checkpoint, tmp_path):
    """Triton's OpenVINO backend reads HINT_BF16 but no f32 setting (it would run an fp32 engine in bf16
    on a bf16 CPU), so only bf16 engines go to it."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from prumux_deploy.export.triton import write_triton_repository

    def config(engine, repo, **kw):
        path = write_triton_repository(engine, tmp_path / repo, "m", isolation="shared", **kw)
        return path, text_format.Parse((path / "config.pbtxt").read_text(), mc.ModelConfig())

    path, fp32 = config(ov_engine, "fp32")
    assert fp32.platform == "onnxruntime_onnx" and not fp32.backend and (path / "1" / "model.onnx").is_file()
    if not runtime_openvino.cpu_has_bf16():
        pytest.skip("no bf16 engine can be exported on this CPU")
    assert run_cli("export", masked_checkpoint, tmp_path / "b", "--precision", "bf16").exit_code == 0
    path, bf16 = config(tmp_path / "b", "bf16")
    assert bf16.backend == "openvino" and not bf16.platform and bf16.default_model_filename == "model.onnx"
    assert {k: v.string_value for k, v in bf16.parameters.items()} == {"HINT_BF16": "YES"}
    _, gpu = config(tmp_path / "b", "gpu", device="gpu")
    assert gpu.platform == "onnxruntime_onnx"


def test_request_isolation_is_the_lone_answer_on_openvino_too(ov_engine):
    """OpenVINO's rounding depends on the padded length: each text runs at its own length."""
    engine = load_engine(ov_engine)
    texts = ["good", "a gorgeous , witty film that goes on", "dull and tedious"]
    from prumux_deploy.engine import classify

    together = classify(engine, texts, isolation="request").probabilities
    for text, row in zip(texts, together):
        assert np.array_equal(row, classify(engine, [text]).probabilities[0]), text


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.fixture
def sst2_with_train(sst2_dir):
    (sst2_dir / "train.tsv").write_text((sst2_dir / "dev.tsv").read_text())  # calibration rows
    return sst2_dir


def test_int8_auto_measures_every_runtimes_candidates_and_keeps_the_fastest_accurate_one(
        masked_checkpoint, sst2_with_train, tmp_path):
    pytest.importorskip("nncf", reason="OpenVINO's int8 needs nncf (the openvino extra)")
    done = run_cli("export", masked_checkpoint, tmp_path / "e", "--precision", "int8", "--data", sst2_with_train)
    assert done.exit_code == 0, done.output
    manifest = _manifest(tmp_path / "e")
    q = manifest["quantization"]
    assert set(q["measured"]) == {"fp32", "dynamic", "static", "nncf"} and q["eval_rows"] == 11
    fp32 = q["measured"]["fp32"]["accuracy"]
    within = [m for m in ("dynamic", "static", "nncf") if q["measured"][m]["accuracy"] >= fp32 - 0.01]
    if within:  # the rule, checked on the recorded measurements
        assert q["method"] == max(within, key=lambda m: q["measured"][m]["samples_per_s"])
    else:
        assert q["method"] == max(("dynamic", "static", "nncf"), key=lambda m: q["measured"][m]["accuracy"])
    assert q["runtime"] == ("openvino" if q["method"] == "nncf" else "onnxruntime")
    engine = load_engine(tmp_path / "e")  # the runtime the choice measured is the one that runs it
    assert isinstance(engine.runner, runtime_openvino.OpenVINORunner if q["runtime"] == "openvino" else OrtRunner)
    assert f"int8: {q['method']} ({q['runtime']}" in done.output
    assert "━" not in done.stdout  # NNCF's progress bars go to stderr with ours


def test_openvino_int8_is_nncf_qdq_on_the_plain_graph_and_validates(masked_checkpoint, sst2_with_train, tmp_path):
    pytest.importorskip("nncf", reason="OpenVINO's int8 needs nncf (the openvino extra)")
    out = tmp_path / "e"
    done = run_cli("export", masked_checkpoint, out, "--precision", "int8", "--runtime", "openvino", "--data",
                   sst2_with_train)
    assert done.exit_code == 0, done.output
    manifest = _manifest(out)
    assert manifest["runtime"]["name"] == "openvino" and manifest["runtime"]["inference_precision"] == "f32"
    assert manifest["quantization"]["method"] == "nncf" and set(manifest["quantization"]["measured"]) == {"fp32", "nncf"}
    assert manifest["optimized"] is False and "fused_ops" not in manifest  # NNCF quantized the plain graph
    assert manifest["quantized_ops"]["QuantizeLinear"] > 0 and manifest["quantized_ops"]["DequantizeLinear"] > 0
    assert 0 < manifest["parity"]["max_abs_logit_error"] <= 1.0
    assert manifest["parity"]["engine_arithmetic"] == "int8 graph, OpenVINO CPU at f32"
    engine = load_engine(out)
    assert engine.runner.inference_precision == "f32"  # never OpenVINO's bf16 default on a bf16 CPU
    feeds = tokenize(load_tokenizer(out), TEXTS, max_length=16)
    assert engine.run_feeds(feeds).shape == (3, 2)
    report = tmp_path / "r.json"
    result = run_cli("validate", out, "--checkpoint", masked_checkpoint, "--data", sst2_with_train, "--report", report)
    data = json.loads(report.read_text())
    assert data["precision"] == "int8" and data["thresholds"]["max_logit_error"] == 1.0
    assert result.exit_code == (0 if data["passed"] else 1), result.output
    # Triton's OpenVINO backend cannot hold the float layers to f32: refused in one line, nothing written
    refused(run_cli("triton", out, tmp_path / "repo", "--name", "m"), 2,
            "an OpenVINO int8 engine has no Triton backend that runs it as measured")
    assert not (tmp_path / "repo").exists()


def test_bf16_with_data_records_its_dev_accuracy_and_refuses_a_drop(masked_checkpoint, sst2_with_train, tmp_path,
                                                                     monkeypatch):
    if not runtime_openvino.cpu_has_bf16():
        pytest.skip("this CPU has neither avx512_bf16 nor AMX")
    from prumux_deploy.export import quantize

    done = run_cli("export", masked_checkpoint, tmp_path / "b", "--precision", "bf16", "--data", sst2_with_train)
    assert done.exit_code == 0, done.output
    validation = _manifest(tmp_path / "b")["validation"]
    assert set(validation["measured"]) == {"fp32", "bf16"} and validation["eval_rows"] == 11
    drop = validation["measured"]["fp32"]["accuracy"] - validation["measured"]["bf16"]["accuracy"]
    assert drop <= validation["max_drop"] == 0.01
    assert "bf16 on 11 dev rows:" in done.output
    monkeypatch.setattr(quantize, "MAX_DROP", -1.0)  # any result is now a drop too large
    refused(run_cli("export", masked_checkpoint, tmp_path / "c", "--precision", "bf16", "--data", sst2_with_train),
            1, "points of dev accuracy")
    assert not (tmp_path / "c").exists()


def test_unusable_int8_arguments_are_refused_before_any_work(masked_checkpoint, sst2_dir, tmp_path, monkeypatch):
    done = run_cli("export", masked_checkpoint, tmp_path / "e", "--precision", "int8", "--data", sst2_dir)
    refused(done, 2, "train.tsv: missing; int8 with --data calibrates on its train rows: give --data that has a "
                     "train split")  # sst2_dir holds dev.tsv only
    assert "compacting" not in done.output and not (tmp_path / "e").exists()  # before compaction and export
    refused(run_cli("export", masked_checkpoint, tmp_path / "e", "--precision", "int8", "--no-optimize"), 2,
            "leave --optimize at its default (drop --no-optimize)")
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if NNCF were not installed
    refused(run_cli("bench", "--checkpoint", masked_checkpoint, "--backend", "openvino-int8", "--no-gemm"), 2,
            "OpenVINO's int8 needs NNCF, which is not installed: pip install 'prumux-deploy[openvino]' (or leave out "
            "the openvino-int8 backend")
    refused(run_cli("export", masked_checkpoint, tmp_path / "e", "--precision", "int8", "--runtime", "openvino",
                    "--data", sst2_dir), 2, "(or use --runtime onnxruntime)")
    assert not (tmp_path / "e").exists()
