"""The GPU target (`export --device cuda`, export/gpu.py) and the GPU half of bench, checked on the CPU: fused-op
counts per target, the refusal when a fusion does not fire, padding that keeps the function, the one-line
warning for a graph run on the other device, bench's GPU rows, roofline and peers with fakes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import tests.fake_tensorrt as fake
from prumux_deploy import load_checkpoint
from prumux_deploy.errors import ExportError, PruMuxError
from prumux_deploy.compact import compact
from prumux_deploy.export.gpu import ALIGN, pad_ffn_widths, padded_width
from prumux_deploy.export.optimize import check_fusions, expected_fused_ops, op_counts
from prumux_deploy.export.pipeline import export_checkpoint, write_graph
from tests.conftest import refused, run_cli


def _quiet(message):
    pass


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory, masked_checkpoint):
    out = tmp_path_factory.mktemp("gpu") / "engine"
    manifest = export_checkpoint(masked_checkpoint, out, device="cuda", log=_quiet)
    return out, manifest


def test_pad_ffn_widths_rounds_up_to_multiples_of_8_and_keeps_the_function(masked_checkpoint):
    model = compact(load_checkpoint(masked_checkpoint))
    widths = model.config.ffn_per_layer
    padded, new = pad_ffn_widths(model)
    assert new == [padded_width(w) for w in widths] and all(w % ALIGN == 0 for w in new)
    assert new != widths and model.config.ffn_per_layer == widths  # the original is untouched
    assert [0 if l.ffn is None else l.ffn.up.out_features for l in padded.layers] == new
    ids = torch.randint(5, 100, (6, 12))
    with torch.no_grad():
        assert torch.allclose(padded(ids, torch.ones_like(ids)), model(ids, torch.ones_like(ids)), atol=1e-6)


def test_the_gpu_target_writes_fp16_with_skip_layer_norm_padding_and_fp16_norms(gpu_engine, masked_checkpoint):
    out, manifest = gpu_engine
    cfg = compact(load_checkpoint(masked_checkpoint)).config
    assert manifest["precision"] == "fp16" and manifest["optimized_for"] == "gpu"
    assert manifest["fused_ops"] == expected_fused_ops(cfg, for_gpu=True)
    assert "SkipLayerNormalization" in manifest["fused_ops"] and "LayerNormalization" not in manifest["fused_ops"]
    assert manifest["gpu"] == {"target": "cuda", "align": 8, "fp16_normalizations": True,
                               "padded_ffn": [padded_width(w) for w in cfg.ffn_per_layer]}
    # the structure is the model's own, not the padded one
    assert [layer["ffn"] for layer in manifest["structure"]["layers"]] == cfg.ffn_per_layer
    # normalisations take fp16 directly: no Cast feeds or follows one (the CPU fp16 form wraps each in Casts)
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    norms = [n for n in graph.node if n.op_type == "SkipLayerNormalization"]
    assert norms and not any(producers.get(i) is not None and producers[i].op_type == "Cast"
                             for n in norms for i in n.input[:2])
    assert manifest["parity"]["max_abs_logit_error"] <= manifest["parity"]["tolerance"]


def test_fp32_on_the_gpu_target_is_the_gpu_graph_without_fp16(tmp_path, masked_checkpoint):
    manifest = export_checkpoint(masked_checkpoint, tmp_path / "e", device="cuda", precision="fp32", log=_quiet)
    assert manifest["precision"] == "fp32" and manifest["optimized_for"] == "gpu"
    assert manifest["gpu"]["fp16_normalizations"] is False
    assert manifest["parity"]["max_abs_logit_error"] < 1e-4
    import onnx

    graph = onnx.load(str(tmp_path / "e" / "model.onnx")).graph
    assert not [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]


@pytest.mark.parametrize("options, message", [
    (dict(precision="int8"), "`precision` int8 with `device` cuda: int8 is quantized for CPUs"),
    (dict(precision="bf16"), "`precision` bf16 with `device` cuda: bf16 engines are OpenVINO's, which runs them on"),
    (dict(runtime="openvino"), "`runtime` openvino with `device` cuda: OpenVINO runs engines on the CPU here"),
    (dict(optimize=False), "`device` cuda writes the GPU-optimized graph"),
    (dict(device="tpu"), "`device` 'tpu' is not one of cpu, cuda"),
])
def test_gpu_target_refusals_come_before_any_work(tmp_path, masked_checkpoint, options, message):
    options = {"device": "cuda", **options}
    with pytest.raises(PruMuxError, match=message):
        export_checkpoint(masked_checkpoint, tmp_path / "e", log=_quiet, **options)
    assert not (tmp_path / "e").exists()


def test_a_fusion_that_did_not_fire_refuses_the_export(masked_checkpoint):
    cfg = compact(load_checkpoint(masked_checkpoint)).config
    fused = expected_fused_ops(cfg, for_gpu=True)
    check_fusions(fused, cfg, for_gpu=True)  # all there: accepted
    with pytest.raises(ExportError, match=r"fusions did not fire where they should \(Attention 0 of \d+\)"):
        check_fusions({**fused, "Attention": 0}, cfg, for_gpu=True)
    with pytest.raises(ExportError, match=r"SkipLayerNormalization 0 of \d+"):  # a CPU graph is not a GPU graph
        check_fusions(expected_fused_ops(cfg, for_gpu=False), cfg, for_gpu=True)


def test_the_export_refuses_when_the_optimizer_stops_fusing(tmp_path, masked_checkpoint, monkeypatch):
    """What a transformers or ONNX Runtime upgrade that changes the exported pattern looks like: the optimizer
    runs but fuses no attention. The engine would be correct and slow; it is refused, nothing written."""
    from onnxruntime.transformers import fusion_options

    class NoAttention(fusion_options.FusionOptions):
        def __init__(self, model_type):
            super().__init__(model_type)
            self.enable_attention = False

    monkeypatch.setattr(fusion_options, "FusionOptions", NoAttention)
    with pytest.raises(ExportError, match="Attention 0 of"):
        export_checkpoint(masked_checkpoint, tmp_path / "e", device="cuda", log=_quiet)
    assert not (tmp_path / "e").exists()


def test_a_graph_run_on_the_other_device_says_so_in_one_line(gpu_engine, engine_dir, monkeypatch):
    from prumux_deploy.engine import EngineTargetWarning, load_engine

    out, _ = gpu_engine
    said = []
    load_engine(out, warn=said.append)  # a GPU graph on the CPU
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("this engine's graph is tuned for GPUs") and "export --device cpu" in said[0]
    with pytest.warns(EngineTargetWarning, match="tuned for GPUs"):
        load_engine(out)
    fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    said.clear()
    load_engine(engine_dir, device="cuda", warn=said.append)  # a CPU graph on the GPU
    assert len(said) == 1 and "tuned for CPUs" in said[0] and "export --device cuda" in said[0]
    said.clear()
    load_engine(out, device="cuda", warn=said.append)  # where it belongs: nothing to say
    load_engine(engine_dir, warn=said.append)
    assert said == []


def test_predict_prints_the_other_device_warning_once(gpu_engine):
    out, _ = gpu_engine
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command says it itself, never as a Python warning
        done = run_cli("predict", out, "good fun")
    assert done.exit_code == 0, done.output
    assert done.output.count("warning: this engine's graph is tuned for GPUs") == 1


def test_export_device_cuda_on_the_command_line(tmp_path, masked_checkpoint):
    done = run_cli("export", masked_checkpoint, tmp_path / "e", "--device", "cuda")
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert (manifest["precision"], manifest["optimized_for"]) == ("fp16", "gpu")
    refused(run_cli("export", masked_checkpoint, tmp_path / "f", "--device", "cuda", "--precision", "int8"), 2,
            "--precision int8 with --device cuda: int8 is quantized for CPUs")


# --- bench's GPU rows, checked on the CPU ----------------------------------------------------------------------

def test_bench_times_the_bytes_export_writes(tmp_path, masked_checkpoint):
    from prumux_deploy.backends import write_graphs
    from prumux_deploy.bench import BenchConfig

    model = compact(load_checkpoint(masked_checkpoint))
    cfg = BenchConfig(seq=16)
    graphs = write_graphs(model, cfg, ["onnxruntime-opt", "onnxruntime-gpu-fp16", "onnxruntime-gpu"], tmp_path)
    for backend, options in (("onnxruntime-opt", {}), ("onnxruntime-gpu-fp16", {"device": "cuda"}),
                             ("onnxruntime-gpu", {"device": "cuda", "precision": "fp32"})):
        out = tmp_path / f"export-{backend}"
        export_checkpoint(masked_checkpoint, out, max_seq_length=16, runtime="onnxruntime", log=_quiet, **options)
        assert graphs[backend].read_bytes() == (out / "model.onnx").read_bytes(), backend


def test_write_graph_is_deterministic_per_target(tmp_path, masked_checkpoint):
    model = compact(load_checkpoint(masked_checkpoint))
    a, b, c = (tmp_path / f"{k}.onnx" for k in "abc")
    write_graph(model, a, 16, "fp16", "cuda")
    write_graph(model, b, 16, "fp16", "cuda")
    write_graph(model, c, 16, "fp16", "cpu")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_half_precision_torch_rows_carry_their_spot_check(masked_checkpoint):
    from prumux_deploy.backends import time_torch_backend
    from prumux_deploy.reference import timing_inputs
    from prumux_deploy.bench import BenchConfig

    model = compact(load_checkpoint(masked_checkpoint))
    ids, mask = timing_inputs(8, 12, model.config.vocab_size, 0)
    cfg = BenchConfig(warmup=0, repeats=1, min_seconds=0.0)
    result, _ = time_torch_backend("torch-bf16", model, ids, mask, cfg)
    assert result["samples_per_s"] > 0 and 0 < result["max_abs_logit_error"] < 0.5
    assert result["arithmetic"].startswith("bf16")
    assert next(model.parameters()).dtype == torch.float32  # the timed copy is the one in bf16


def test_the_gpu_roofline_is_the_larger_of_flop_and_byte_time(masked_checkpoint):
    from prumux_deploy.bench import BenchConfig, _roofline
    from prumux_deploy.roofline import activation_bytes, gpu_roofline_ms

    cfg = compact(load_checkpoint(masked_checkpoint)).config
    ceilings = {"fp16_gemm_tflops": 1.0, "copy_tb_s": 1.0}
    assert gpu_roofline_ms(3e9, 1e9, ceilings) == pytest.approx(3.0)  # 3 GFLOP at 1 TFLOP/s: 3 ms
    assert gpu_roofline_ms(1e9, 2e12, ceilings) == pytest.approx(2000.0)  # 2 TB at 1 TB/s
    moved = activation_bytes(cfg, 8, 16, 2)
    # inputs (int64), the gathered embedding rows (8 x 16 x W) and the mux output (4 groups x 16 x H) at least
    assert moved > 8 * 16 * 8 * 2 + (8 * 16 * cfg.embedding_dim + 4 * 16 * cfg.model_dim) * 2
    assert activation_bytes(cfg, 8, 16, 4) > moved
    row = {"batch": 8, "samples_per_s": 8000.0, "flops_per_sample": 1e6}
    got = _roofline(row, cfg, BenchConfig(seq=16), ceilings)
    assert got["batch_ms"] == pytest.approx(1.0) and got["roofline_fraction"] == pytest.approx(got["roofline_ms"])


def test_gpu_peers_are_grouped_fp32_and_half_each_against_our_gpu_engine():
    from prumux_deploy.bench import format_peers

    def row(backend, rate, fraction):
        return {"name": "N=10 s=0.95", "backend": backend, "samples_per_s": rate, "roofline_fraction": fraction,
                "max_abs_logit_error": 1e-3}

    rows = [row("torch", 100.0, 0.01), row("onnxruntime-gpu", 150.0, 0.02), row("torch-fp16", 200.0, 0.03),
            row("torch-compile-fp16", 400.0, 0.06), row("onnxruntime-gpu-fp16", 500.0, 0.08)]
    text = format_peers({"rows": rows, "protocol": {"device": "cuda"}}).splitlines()
    assert "what export --device cuda writes" in text[1]
    assert text.index("    fp32: ours = onnxruntime-gpu 150.0/s") < text.index(
        "    fp16: ours = onnxruntime-gpu-fp16 500.0/s (3.33x ours at fp32)")
    torch_fp16 = next(line for line in text if "torch-fp16" in line)
    assert "0.40x" in torch_fp16 and "3.0% of roofline" in torch_fp16


def test_gpu_backends_are_refused_on_the_cpu_and_are_the_gpu_default():
    from prumux_deploy.bench import GPU_BACKENDS, BenchConfig, check_config

    assert BenchConfig.from_options(device="cuda").backends == list(GPU_BACKENDS)
    with pytest.raises(PruMuxError, match="torch-fp16, onnxruntime-gpu-fp16 time GPU arithmetic"):
        check_config(BenchConfig.from_options(device="cpu", backends=["torch", "torch-fp16", "onnxruntime-gpu-fp16"]))


def test_a_gpu_graph_runs_in_the_fake_cuda_provider_with_io_binding(gpu_engine, monkeypatch):
    from prumux_deploy.engine import load_engine

    out, _ = gpu_engine
    ort = fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    engine = load_engine(out, device="cuda", warn=_quiet)
    ids = np.random.default_rng(0).integers(5, 100, (4, 10))
    engine.timed_runner({"input_ids": ids, "attention_mask": np.ones_like(ids)})()
    assert {d["device_type"] for d in ort.named("ortvalue_from_numpy")} == {"cuda"}
    assert engine.arithmetic == "fp16 graph, ONNX Runtime CUDA provider, TF32 off (use_tf32=0)"


# --- CUDA graphs: fixed-shape replays, against the fake CUDA provider --------------------------------------------

def test_cuda_graphs_replay_a_fixed_shape_graph_with_buffers_bound_once(gpu_engine, monkeypatch):
    import onnx

    from prumux_deploy.engine import load_engine
    from prumux_deploy.runtime_onnxruntime import fixed_shape_graph

    out, _ = gpu_engine
    proto = onnx.load_from_string(fixed_shape_graph(out / "model.onnx", 6, 10))
    assert [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input] == [[6, 10]] * 2
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [6, 2]

    ort = fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    plain = load_engine(out, device="cuda", warn=_quiet)
    engine = load_engine(out, device="cuda", cuda_graph=True, warn=_quiet)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(5, 100, (6, 10)) for _ in range(2))
    mask = np.ones_like(a)
    mask[2, 7:] = 0
    for ids in (a, b, a):  # one graph for the shape, its inputs refreshed in place each call
        got = engine(ids, mask)
        np.testing.assert_allclose(got, plain(ids, mask), atol=5e-3)  # fp16: folded shapes round alike, not bitwise
    sessions = ort.named("InferenceSession")
    graph_sessions = [s for s in sessions if s["graph"] == "bytes"]
    assert len(graph_sessions) == 1  # one capture session for the one shape, made on first use
    assert graph_sessions[0]["providers"][0] == ("CUDAExecutionProvider", {"use_tf32": "0", "enable_cuda_graph": "1"})
    assert len(ort.named("update_inplace")) == 3 * 2  # both inputs, three calls: no new buffers
    assert ort.named("bind_ortvalue_output") == [{"name": "logits", "device": "cuda", "shape": (6, 2)}]
    engine(a[:5], mask[:5])  # another shape: its own fixed graph
    assert len([s for s in ort.named("InferenceSession") if s["graph"] == "bytes"]) == 2


def test_cuda_graphs_are_refused_off_the_gpu(gpu_engine):
    from prumux_deploy.engine import load_engine
    from prumux_deploy.errors import EngineError

    with pytest.raises(EngineError, match="CUDA graphs replay work on an NVIDIA GPU: use device cuda"):
        load_engine(gpu_engine[0], cuda_graph=True, warn=_quiet)


def test_bench_times_cuda_graph_replays_with_a_spot_check(monkeypatch, masked_checkpoint, tmp_path):
    from prumux_deploy.backends import time_graph, write_graphs
    from prumux_deploy.reference import timing_inputs
    from prumux_deploy.bench import BenchConfig

    model = compact(load_checkpoint(masked_checkpoint))
    cfg = BenchConfig(device="cuda", warmup=1, repeats=2, min_seconds=0.0, seq=12)
    graphs = write_graphs(model, cfg, ["onnxruntime-gpu-fp16-cudagraph", "onnxruntime-gpu-fp16"], tmp_path)
    # the graph it replays is export's fp16 GPU graph, written once
    assert graphs["onnxruntime-gpu-fp16-cudagraph"] == graphs["onnxruntime-gpu-fp16"]
    ids, mask = timing_inputs(8, 12, model.config.vocab_size, 0)
    ort = fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    result, peak = time_graph("onnxruntime", graphs["onnxruntime-gpu-fp16"], "fp16", model, ids, mask, cfg,
                              cuda_graph=True)
    assert result["arithmetic"].endswith("CUDA graph") and peak is None
    assert 0 < result["max_abs_logit_error"] < 5e-2
    assert len(ort.named("run_with_iobinding")) >= 1 + 1 + 2  # capture, warm-up, timed replays
    assert len(ort.named("update_inplace")) == 2 * 2  # staged once for the spot check, once for timing


# --- the GPU scripts run here as dry runs ----------------------------------------------------------------------

def test_gpu_bench_script_dry_run_lists_its_steps(tmp_path):
    import subprocess

    done = subprocess.run(["bash", "examples/gpu/gpu_bench.sh", "--dry-run", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = [line.split(":")[0][3:] for line in done.stdout.splitlines() if line.startswith("== ")]
    assert steps == ["peers", "example", "export", "validate", "placement"]
    assert "bench --device cuda --peers -n 10,2 -s 0.95" in done.stdout


def test_the_profile_script_runs_on_the_cpu(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "examples/gpu/profile_gpu.py", "--out", str(tmp_path), "--points", "2:0.9",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "profile.json").read_text())
    (point,) = report["points"]
    assert set(point["ms"]) == {"torch fp32", "ort fp32 gpu-graph", "ort fp16 norms32", "ours fp32 (export --device cuda)",
                                "ours fp16 (export --device cuda)", "ours fp16 fixed shape"}
    assert point["errors"] == {} and all(ms > 0 for ms in point["ms"].values())


def test_triton_serves_a_gpu_engine_on_gpu_instances_with_tf32_off(gpu_engine, engine_dir, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    from prumux_deploy.export.triton import write_triton_repository

    def config(path):
        return text_format.Parse((path / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    write_triton_repository(gpu_engine[0], tmp_path / "repo", "g", isolation="shared")
    served = config(tmp_path / "repo" / "g")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(served.instance_group[0].kind) == "KIND_GPU"
    (cuda,) = served.optimization.execution_accelerators.gpu_execution_accelerator
    assert cuda.name == "cuda" and dict(cuda.parameters) == {"use_tf32": "0"}  # as validated: no TF32
    write_triton_repository(engine_dir, tmp_path / "repo", "c", isolation="shared")  # a CPU engine stays on CPUs
    cpu = config(tmp_path / "repo" / "c")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cpu.instance_group[0].kind) == "KIND_CPU"
    assert not cpu.HasField("optimization")


def test_bench_device_cuda_peers_runs_end_to_end_on_fakes(monkeypatch):
    """The GPU run as the command makes it, with its PyTorch side on the CPU (backends.torch_device), ONNX Runtime's
    CUDA provider faked and the roofline's ceilings fixed: every row timed, spot-checked and placed on the
    roofline, the peers grouped fp32 / fp16 against our GPU engines."""
    from prumux_deploy import backends, roofline
    from prumux_deploy.backends import GPU_PEER_BACKENDS
    from prumux_deploy.bench import BenchConfig, format_peers, format_table, run_bench

    monkeypatch.setattr(backends, "torch_device", lambda cfg: torch.device("cpu"))
    monkeypatch.setattr(roofline, "gpu_ceilings", lambda device: {"fp16_gemm_tflops": 1.0, "copy_tb_s": 0.5})
    ort = fake.install_onnxruntime(monkeypatch, cuda_loads=True)
    backends = [b for b in GPU_PEER_BACKENDS if not b.startswith("torch-compile")]  # (inductor: minutes on a CPU)
    cfg = BenchConfig.from_options(quick=True, device="cuda", backends=backends, instances=[2], sparsities=[0.9])
    result = run_bench(cfg, progress=False)
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == set(backends) and result["gpu_ceilings"] == {"fp16_gemm_tflops": 1.0, "copy_tb_s": 0.5}
    for r in rows.values():
        assert r["samples_per_s"] > 0 and 0 < r["roofline_fraction"] == pytest.approx(r["roofline_ms"] / r["batch_ms"])
    for name in ("onnxruntime-gpu", "onnxruntime-gpu-fp16", "onnxruntime-gpu-fp16-cudagraph", "torch-fp16"):
        assert rows[name]["max_abs_logit_error"] < 5e-2, name
    assert rows["onnxruntime-gpu-fp16-cudagraph"]["arithmetic"].endswith("TF32 off (use_tf32=0), CUDA graph")
    assert all(p == "CUDAExecutionProvider" or p[0] == "CUDAExecutionProvider"
               for s in ort.named("InferenceSession") for p in s["providers"][:1])
    table, peers = format_table(result), format_peers(result)
    assert "fp32 matmuls with TF32 off on every row" in table
    assert "fp32: ours = onnxruntime-gpu " in peers and "fp16: ours = onnxruntime-gpu-fp16" in peers
    assert "of roofline" in peers
