"""The one table of what runs where (prumux_deploy/capabilities.py) and the refusals that read it."""

from __future__ import annotations

import pytest

from prumux_deploy.capabilities import RUNTIMES, computed_precision, runs, runtimes_for, why_not


def test_the_table_says_what_runs_where():
    assert runtimes_for("onnx") == ("onnxruntime", "openvino") and runtimes_for("tensorrt") == ("tensorrt",)
    assert RUNTIMES["tensorrt"].devices == ("cuda",) and RUNTIMES["openvino"].devices == ("cpu",)
    assert runs("onnxruntime", "cuda", "fp16") and runs("onnxruntime", "cpu", "int8") and runs("openvino", "cpu", "bf16")
    assert not runs("onnxruntime", "cuda", "int8") and not runs("openvino", "cuda") and not runs("tensorrt", "cpu")


@pytest.mark.parametrize("runtime, device, precision, reason", [
    ("onnxruntime", "cuda", "int8", "int8 is quantized for CPUs"),
    ("onnxruntime", "cuda", "bf16", "bf16 engines are OpenVINO's"),
    ("openvino", "cuda", None, "OpenVINO runs engines on the CPU here"),
    ("tensorrt", "cpu", None, "a TensorRT engine runs only on a GPU"),
    ("torch", "cpu", "tf32", "TF32 is a GPU arithmetic"),
    ("openvino", "cpu", "fp16", "openvino does not compute fp16 on cpu"),
])
def test_each_refusal_is_one_sentence_from_the_table(runtime, device, precision, reason):
    said = why_not(runtime, device, precision)
    assert said.startswith(reason) and "\n" not in said


def test_a_bf16_engine_is_fp32_arithmetic_outside_openvino():
    assert computed_precision("bf16", "openvino") == "bf16"
    assert computed_precision("bf16", "onnxruntime") == "fp32" and computed_precision("int8", "onnxruntime") == "int8"


def test_the_same_reason_reaches_every_command(tmp_path, masked_checkpoint, engine_dir, monkeypatch):
    """export, load_engine and bench say why int8 does not run on a GPU with the table's own words."""
    import json
    import shutil

    from prumux_deploy.bench import BenchConfig, check_config
    from prumux_deploy.engine import load_engine
    from prumux_deploy.errors import EngineError, PruMuxError
    from prumux_deploy.export.pipeline import export_checkpoint

    reason = why_not("onnxruntime", "cuda", "int8")
    with pytest.raises(PruMuxError) as export_error:
        export_checkpoint(masked_checkpoint, tmp_path / "e", device="cuda", precision="int8", log=lambda m: None)
    int8 = tmp_path / "int8"
    shutil.copytree(engine_dir, int8)
    manifest = json.loads((int8 / "manifest.json").read_text())
    (int8 / "manifest.json").write_text(json.dumps({**manifest, "precision": "int8"}))
    with pytest.raises(EngineError) as load_error:
        load_engine(int8, device="cuda")
    with pytest.raises(PruMuxError) as bench_error:
        check_config(BenchConfig.from_options(device="cuda", backends=["onnxruntime-int8"]))
    for error in (export_error, load_error, bench_error):
        assert reason in str(error.value)
