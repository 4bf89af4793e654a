"""The GPU code paths (TensorRT builds and plans, ONNX Runtime's CUDA provider, the CUDA reports) run here,
without a GPU, against the fakes in tests/fake_tensorrt.py, which record what the code asks of TensorRT, of
ONNX Runtime and of CUDA. What only a GPU can show (speed, TF32's real error) is in the gpu-marked tests and
examples/gpu/acceptance.sh."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

import fake_tensorrt as fake
from conftest import refused, run_cli
from prumux_deploy.compare import TF32_TOLERANCE, TOLERANCES, tolerance_for
from prumux_deploy.documents import sha256_file
from prumux_deploy.errors import EngineError, PruMuxError
from prumux_deploy.export.tensorrt import ShapeProfile, TensorRTOptions

PROFILE = ShapeProfile(max_batch=8, max_seq=16)  # N=2: batches 1..8, sequences 1..16


@pytest.fixture
def trt(monkeypatch):
    """The fake tensorrt module and CUDA backend in place; yields their recorder."""
    recorder, _ = fake.install(monkeypatch)
    return recorder


def _export_plan(checkpoint, out, **options):
    from prumux_deploy.export.pipeline import export_checkpoint

    profile = options.pop("profile", PROFILE)
    return export_checkpoint(checkpoint, out, fmt="tensorrt", log=lambda m: None,
                             tensorrt=TensorRTOptions(profile, **options))


@pytest.fixture
def plan_dir(trt, tmp_path, masked_checkpoint):
    """A TensorRT engine directory built through the fakes (profile batch 1..8, sequence 1..16)."""
    _export_plan(masked_checkpoint, tmp_path / "plan")
    trt.calls.clear()
    return tmp_path / "plan"


# --- the shape profile --------------------------------------------------------------------------------

def test_a_given_max_batch_caps_the_default_opt_batch():
    # before: opt defaulted to 128*N = 256 whatever max_batch said, and resolve raised "1 / 256 / 8"
    p = ShapeProfile(max_batch=8).resolve(num_instances=2, max_positions=512)
    assert (p.min_batch, p.opt_batch, p.max_batch) == (1, 8, 8)
    p = ShapeProfile(max_batch=7).resolve(num_instances=2, max_positions=512)  # rounded up to whole groups
    assert (p.opt_batch, p.max_batch) == (8, 8)
    assert ShapeProfile(max_batch=1000).resolve(2, 512).opt_batch == 256  # the paper's batch when it fits
    with pytest.raises(PruMuxError, match="got 1 / 64 / 32"):  # an explicit opt batch is never moved
        ShapeProfile(opt_batch=64, max_batch=32).resolve(2, 512)


def test_export_max_batch_8_gets_profile_1_8_8(trt, tmp_path, masked_checkpoint):
    manifest = _export_plan(masked_checkpoint, tmp_path / "e")
    shapes = trt.named("set_shape")
    assert [s["input"] for s in shapes] == ["input_ids", "attention_mask"]  # a single-sentence engine
    assert all((s["min"], s["opt"], s["max"]) == ((1, 1), (8, 16), (8, 16)) for s in shapes)
    assert manifest["tensorrt"]["profile"] == {"min_batch": 1, "opt_batch": 8, "max_batch": 8, "min_seq": 1,
                                               "opt_seq": 16, "max_seq": 16}
    # parity ran through the plan, every call inside the profile, and matched the PyTorch model
    batches = [d["shape"][0] for d in trt.named("set_input_shape")]
    assert batches and max(batches) <= 8 and manifest["parity"]["max_abs_logit_error"] <= 1e-4


# --- TF32 -----------------------------------------------------------------------------------------------

def test_fp32_plans_are_built_with_tf32_cleared(trt, tmp_path, masked_checkpoint):
    from prumux_deploy.engine import load_engine

    manifest = _export_plan(masked_checkpoint, tmp_path / "e")
    assert {"flag": "TF32"} in trt.named("clear_flag") and {"flag": "TF32"} not in trt.named("set_flag")
    assert "TF32" not in trt.named("build_serialized_network")[0]["flags"]
    assert manifest["tensorrt"]["tf32"] is False and manifest["parity"]["tolerance"] == TOLERANCES["fp32"].max_logit_error
    engine = load_engine(tmp_path / "e")
    assert not engine.uses_tf32 and engine.arithmetic == "fp32 TensorRT plan, TF32 off (BuilderFlag.TF32 cleared at build)"
    assert "TF32 off" in manifest["parity"]["engine_arithmetic"]


def test_tf32_is_an_explicit_opt_in_with_its_own_tolerance(trt, tmp_path, masked_checkpoint):
    manifest = _export_plan(masked_checkpoint, tmp_path / "e", tf32=True)
    assert {"flag": "TF32"} in trt.named("set_flag") and not trt.named("clear_flag")
    assert manifest["tensorrt"]["tf32"] is True and manifest["parity"]["tolerance"] == TF32_TOLERANCE.max_logit_error
    result = run_cli("export", masked_checkpoint, tmp_path / "onnx", "--tf32")
    refused(result, 2, "--tf32 is a TensorRT build option (--format tensorrt)")


def test_tf32_tolerance_is_loosest_of_both():
    assert tolerance_for("fp32") == TOLERANCES["fp32"]
    assert tolerance_for("fp32", tf32=True) == TF32_TOLERANCE
    assert tolerance_for("int8", tf32=True).max_logit_error == TOLERANCES["int8"].max_logit_error
    assert tolerance_for("int8", tf32=True).min_agreement == TOLERANCES["int8"].min_agreement


def test_plans_without_a_tf32_record_were_built_with_tensorrt_default(plan_dir):
    from prumux_deploy.engine import load_engine

    manifest = json.loads((plan_dir / "manifest.json").read_text())
    del manifest["tensorrt"]["tf32"]  # what export wrote before it cleared the flag
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    engine = load_engine(plan_dir)
    assert engine.uses_tf32 and "TF32 on" in engine.arithmetic


def test_pytorch_tf32_is_set_explicitly_and_restored():
    from prumux_deploy.devices import torch_arithmetic, torch_tf32, torch_tf32_enabled

    before = torch_tf32_enabled()
    with torch_tf32(True):
        assert torch_tf32_enabled()
        assert torch_arithmetic(torch.device("cuda")) == "fp32, PyTorch CUDA, TF32 on (cuBLAS matmuls, set explicitly)"
    with torch_tf32(False):
        assert not torch_tf32_enabled()
        assert "TF32 off" in torch_arithmetic(torch.device("cuda"))
    assert torch_tf32_enabled() == before
    assert torch_arithmetic(torch.device("cpu")) == "fp32, PyTorch CPU"


def test_validate_reports_which_arithmetic_each_side_used(engine_dir, masked_checkpoint, sst2_dir):
    from prumux_deploy.validate import run_validation

    report = run_validation(engine_dir, masked_checkpoint, None, sst2_dir, progress=False)
    assert report["arithmetic"] == {"engine": "fp32 graph, ONNX Runtime CPU provider", "pytorch": "fp32, PyTorch CPU",
                                    "tf32": False}
    with pytest.raises(PruMuxError, match="`tf32` applies to `device` cuda"):
        run_validation(engine_dir, masked_checkpoint, None, sst2_dir, progress=False, tf32=True)


# --- version-compatible plans ------------------------------------------------------------------------------

def test_version_compatible_plans_are_deserialized_with_host_code_allowed(trt, tmp_path, masked_checkpoint):
    from prumux_deploy.engine import load_engine

    manifest = _export_plan(masked_checkpoint, tmp_path / "e", version_compatible=True)  # parity loads it
    assert {"flag": "VERSION_COMPATIBLE"} in trt.named("set_flag") and manifest["tensorrt"]["version_compatible"]
    assert [d["engine_host_code_allowed"] for d in trt.named("deserialize_cuda_engine")] == [True]
    load_engine(tmp_path / "e")
    assert trt.named("deserialize_cuda_engine")[-1] == {"engine_host_code_allowed": True}


def test_a_plan_tensorrt_cannot_deserialize_is_one_line(plan_dir):
    from prumux_deploy.engine import load_engine

    manifest = json.loads((plan_dir / "manifest.json").read_text())
    manifest["tensorrt"]["version_compatible"] = False
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    plan = json.loads((plan_dir / "model.plan").read_bytes())
    plan["flags"].append("VERSION_COMPATIBLE")  # host code the runtime is not told to allow
    (plan_dir / "model.plan").write_bytes(json.dumps(plan).encode())
    manifest["engine"]["sha256"] = sha256_file(plan_dir / "model.plan")
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="TensorRT cannot deserialize it"):
        load_engine(plan_dir)


# --- running a plan: return values and streams ------------------------------------------------------------

def _ids(batch, seq=12):
    return np.random.default_rng(0).integers(5, 100, size=(batch, seq), dtype=np.int64)


def test_inputs_are_copied_on_the_stream_the_engine_runs_on(plan_dir, trt, masked_checkpoint):
    from prumux_deploy import load_checkpoint
    from prumux_deploy.engine import load_engine

    engine = load_engine(plan_dir)
    ids = _ids(19)  # 19 > max_batch 8: three chunks
    logits = engine(ids)
    with torch.no_grad():
        want = load_checkpoint(masked_checkpoint)(torch.from_numpy(ids)).numpy()
    assert np.abs(logits - want).max() <= 1e-4
    runs = trt.named("execute_async_v3")
    assert [r["shapes"]["input_ids"] for r in runs] == [(8, 12), (8, 12), (3, 12)]
    streams = {r["stream_handle"] for r in runs}
    assert len(streams) == 1
    assert {d["stream"] for d in trt.named("copy_to_device")} == streams  # no copy on another stream
    assert {d["stream"] for d in trt.named("copy_to_host")} == streams
    # the timed runner: staged once on the same stream, then enqueue + wait per call
    trt.calls.clear()
    run = engine.timed_runner({"input_ids": ids[:8], "attention_mask": np.ones_like(ids[:8])})
    run(), run()
    assert len(trt.named("copy_to_device")) == 2 and len(trt.named("execute_async_v3")) == 2
    assert {d["stream"] for d in trt.named("copy_to_device")} | {d["stream_handle"] for d in
                                                                trt.named("execute_async_v3")} == streams


def test_a_timed_runner_rebinds_after_another_call_used_the_context(plan_dir, trt):
    from prumux_deploy.engine import load_engine

    engine = load_engine(plan_dir)
    ids = _ids(8)
    run = engine.timed_runner({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    engine(_ids(3))  # rebinds the one execution context to other buffers
    run()
    assert trt.named("execute_async_v3")[-1]["shapes"]["input_ids"] == (8, 12)


@pytest.mark.parametrize("call, message", [
    ("execute_async_v3", "TensorRT failed to enqueue the engine (execute_async_v3 returned False"),
    ("set_tensor_address", "TensorRT refused the device address of input_ids"),
    ("set_input_shape", "TensorRT refused input input_ids of shape [3, 12]"),
])
def test_every_tensorrt_failure_is_an_error_never_logits(plan_dir, trt, call, message):
    from prumux_deploy.engine import load_engine

    engine = load_engine(plan_dir)
    trt.fail.add(call)
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace("[", r"\[")):
        engine(_ids(3))


def test_shapes_outside_the_profile_are_refused(plan_dir):
    from prumux_deploy.engine import load_engine

    with pytest.raises(EngineError, match=r"refused input input_ids of shape \[3, 17\]; it lies outside"):
        load_engine(plan_dir)._run({"input_ids": _ids(3, 17), "attention_mask": np.ones((3, 17), np.int64)})


def test_the_profile_is_read_from_the_plan(plan_dir, trt):
    from prumux_deploy.engine import load_engine

    engine = load_engine(plan_dir)
    assert (engine.runner.min_batch, engine.runner.max_batch) == (1, 8)
    assert trt.named("get_tensor_profile_shape")[0] == {"name": "input_ids", "profile_index": 0}


def test_no_gpu_is_one_line(plan_dir, monkeypatch):
    from prumux_deploy import cuda
    from prumux_deploy.engine import load_engine

    monkeypatch.setattr(cuda, "_backend", fake.FakeCuda(fake.Recorder(), gpu_visible=False))
    with pytest.raises(EngineError, match="a TensorRT engine runs only on an NVIDIA GPU"):
        load_engine(plan_dir)


# --- ONNX Runtime's CUDA provider ------------------------------------------------------------------------------

def test_a_cuda_provider_that_did_not_start_is_refused(monkeypatch, engine_dir):
    from prumux_deploy.engine import load_engine

    fake.install_onnxruntime(monkeypatch, cuda_loads=False)
    with pytest.raises(EngineError, match="ONNX Runtime did not start CUDAExecutionProvider .the session runs on "
                                          "CPUExecutionProvider.*silent CPU fallback is refused"):
        load_engine(engine_dir, device="cuda")


def test_the_cuda_provider_is_asked_for_exactly_the_tf32_wanted(monkeypatch, engine_dir):
    from prumux_deploy.engine import load_engine

    ort = fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    engine = load_engine(engine_dir, device="cuda")
    assert ort.named("InferenceSession")[-1]["providers"] == [("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                               "CPUExecutionProvider"]
    assert engine.arithmetic == "fp32 graph, ONNX Runtime CUDA provider, TF32 off (use_tf32=0)"
    engine = load_engine(engine_dir, device="cuda", tf32=True)
    assert ort.named("InferenceSession")[-1]["providers"][0] == ("CUDAExecutionProvider", {"use_tf32": "1"})
    assert engine.uses_tf32
    # timing binds inputs and logits on the GPU (IO binding), so no host copy is timed
    ids = _ids(4)
    engine.timed_runner({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})()
    assert {d["device_type"] for d in ort.named("ortvalue_from_numpy")} == {"cuda"}
    assert ort.named("bind_output") == [{"name": "logits", "device_type": "cuda"}]
    assert len(ort.named("run_with_iobinding")) == 1


def test_bench_refuses_to_time_a_cpu_fallback_as_cuda(monkeypatch, engine_dir, masked_checkpoint):
    from prumux_deploy import load_checkpoint
    from prumux_deploy.backends import time_graph

    def _time_ort(*args):
        return time_graph("onnxruntime", args[0], "fp32", *args[1:])
    from prumux_deploy.bench import BenchConfig

    cfg = BenchConfig(device="cuda", warmup=0, repeats=1, min_seconds=0.0)
    model = load_checkpoint(masked_checkpoint)  # engine_dir's model.onnx was exported from it
    ids = torch.from_numpy(_ids(4))
    mask = torch.ones_like(ids)
    fake.install_onnxruntime(monkeypatch, cuda_loads=False)
    with pytest.raises(EngineError, match="did not start CUDAExecutionProvider"):
        _time_ort(engine_dir / "model.onnx", model, ids, mask, cfg)
    ort = fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    result, peak = _time_ort(engine_dir / "model.onnx", model, ids, mask, cfg)
    assert peak is None  # host RSS says nothing about GPU memory: not measured
    assert result["arithmetic"] == "fp32 graph, ONNX Runtime CUDA provider, TF32 off (use_tf32=0)"
    assert ort.named("run_with_iobinding")


# --- int8 and memory on a GPU -------------------------------------------------------------------------------------

def test_int8_is_not_run_on_cuda(tmp_path, engine_dir):
    from prumux_deploy.bench import BACKENDS, BenchConfig, check_config
    from prumux_deploy.engine import load_engine

    int8 = tmp_path / "int8"
    shutil.copytree(engine_dir, int8)
    manifest = json.loads((int8 / "manifest.json").read_text())
    manifest["precision"] = "int8"
    (int8 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="int8 is quantized for CPUs .* use device cpu, or export --device cuda"):
        load_engine(int8, device="cuda")
    assert "onnxruntime-int8" not in BenchConfig.from_options(device="cuda").backends
    assert "onnxruntime-int8" in BenchConfig.from_options(device="cpu").backends == list(BACKENDS)
    with pytest.raises(PruMuxError, match="onnxruntime-int8: int8 is quantized for CPUs .*leave it out"):
        check_config(BenchConfig.from_options(device="cuda", backends=["torch", "onnxruntime-int8"]))
    with pytest.raises(PruMuxError, match="`tf32` applies to `device` cuda"):
        check_config(BenchConfig.from_options(device="cpu", tf32=True))


def test_the_table_shows_unmeasured_gpu_memory_as_such():
    from prumux_deploy.bench import format_table, peak_memory_meaning

    base = {"name": "bert-base dense", "backend": "torch", "samples_per_s": 100.0, "batch": 128,
            "flops_per_sample": 2e10, "peak_mib": 512.0}
    row = {**base, "name": "N=2 s=0.9", "backend": "onnxruntime-opt", "samples_per_s": 1000.0,
           "flops_per_sample": 1e9, "peak_mib": None}
    result = {"baseline": base, "rows": [row], "device": {"gpu": "Fake GPU"},
              "protocol": {"seq": 128, "groups_per_batch": 128, "device": "cuda", "tf32": False,
                           "peak_memory": peak_memory_meaning("cuda")},
              "machine": {"cpu": "x", "cores": 2, "torch": "t", "onnxruntime": "o"}}
    table = format_table(result)
    assert table.splitlines()[4].split()[-1] == "-"  # the ONNX Runtime row on the GPU: not measured
    assert "fp32 matmuls with TF32 off on every row" in table and "ONNX Runtime rows: not measured" in table
    assert "warning" not in table  # 10x on a 20x bound: plausible
    slowed = {**result, "baseline": {**base, "samples_per_s": 0.5}}  # the same row, 2000x on a 20x bound
    assert ("warning: N=2 s=0.9 onnxruntime-opt ran over 10x faster than the FLOP bound allows, so the baseline was "
            "probably slowed by other work on this machine; rerun the comparison on a quiet one") in format_table(slowed)


# --- Triton: a plan's batch range, version compatibility, ORT's TensorRT provider -------------------------------

def test_triton_takes_max_batch_size_from_the_plans_profile(plan_dir, tmp_path):
    from prumux_deploy.export.triton import write_triton_repository

    write_triton_repository(plan_dir, tmp_path / "repo", "m", isolation="shared")
    config = (tmp_path / "repo" / "m" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and 'platform: "tensorrt_plan"' in config
    assert re.search(r"preferred_batch_size: \[?8\]?\n", config)  # 4N = 8 = the maximum
    with pytest.raises(PruMuxError, match="`max_batch_size` 16 exceeds the plan's profile maximum 8"):
        write_triton_repository(plan_dir, tmp_path / "repo2", "m", max_batch_size=16, isolation="shared")


def test_triton_refuses_a_plan_whose_profile_does_not_start_at_1(trt, tmp_path, masked_checkpoint):
    from prumux_deploy.export.triton import write_triton_repository

    _export_plan(masked_checkpoint, tmp_path / "e", profile=ShapeProfile(min_batch=4, max_batch=8, max_seq=16))
    with pytest.raises(PruMuxError, match="starts at batch 4, but Triton sends batches from 1 .* --min-batch 1"):
        write_triton_repository(tmp_path / "e", tmp_path / "repo", "m")


def test_triton_tells_the_server_about_version_compatible_plans(trt, tmp_path, masked_checkpoint):
    _export_plan(masked_checkpoint, tmp_path / "e", version_compatible=True)
    result = run_cli("triton", tmp_path / "e", tmp_path / "repo", "--name", "m", "--isolation", "shared")
    assert result.exit_code == 0, result.output
    assert ("serve with: tritonserver --model-repository " + str(tmp_path / "repo") +
            " --backend-config=tensorrt,version-compatible=true") in result.output
    assert "max_batch_size 8" in result.output


def test_ort_tensorrt_precision_follows_the_graph(engine_dir, tmp_path):
    from prumux_deploy.export.triton import model_config, ort_tensorrt_precision
    from prumux_deploy.engine import read_manifest

    manifest = read_manifest(engine_dir)
    config = model_config(manifest, "m", 64, 1, "gpu", True, ort_tensorrt=True)
    accelerator = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]
    assert accelerator["parameters"] == {"precision_mode": "FP32"}  # an fp32 graph is not asked to run in FP16
    assert ort_tensorrt_precision({**manifest, "precision": "fp16"}) == "FP16"


# --- packaging ----------------------------------------------------------------------------------------------------

def test_gpu_extras_exist_for_both_cuda_lines():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["gpu-cu12"] == ["onnxruntime-gpu[cuda,cudnn]>=1.20,<1.27", "tensorrt-cu12>=10,<12"]
    assert extras["gpu-cu13"] == ["onnxruntime-gpu[cuda,cudnn]>=1.27", "tensorrt-cu13>=11,<12"]
    assert extras["gpu"] == extras["gpu-cu13"]


# --- on a real GPU (skipped with the reason elsewhere) ----------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.ort_cuda
def test_validate_on_cuda_is_fp32_on_both_sides(engine_dir, masked_checkpoint, sst2_dir):
    from prumux_deploy.validate import run_validation

    report = run_validation(engine_dir, masked_checkpoint, None, sst2_dir, device="cuda", progress=False)
    assert report["passed"] and report["metrics"]["max_abs_logit_error"] <= TOLERANCES["fp32"].max_logit_error
    assert report["arithmetic"]["engine"] == "fp32 graph, ONNX Runtime CUDA provider, TF32 off (use_tf32=0)"
    assert report["arithmetic"]["pytorch"] == "fp32, PyTorch CUDA, TF32 off (cuBLAS matmuls, set explicitly)"
