"""The machine's limit for a model: how fast ONNX Runtime's own kernels run matrix products of its shapes.

`model_gemms(cfg, groups, seq)` lists every matrix product of one encoder pass over a batch of `groups`
multiplexed sequences (per layer: the Q, K, V and output projections, attention scores and context as
batched products, FFN up and down; T = groups * seq tokens), the same products `counts.encoder_flops`
counts. `gemm_rate` times each distinct product alone in ONNX Runtime, with the threads the engines get,
and returns total FLOPs / total time.

bench measures that rate on the *dense* shapes of a model (`PruMuxConfig.full_size`: its base width, every head and
FFN unit, at the same batch and length): this machine's GEMM rate for products like the model's, what a
dense encoder of that width reaches. An engine's achieved rate (FLOPs per sample x samples/s) divided by
it is its efficiency. (Timed alone, with the operands warm in cache, the thin products of a pruned model
run about as fast as the dense ones; measured on the N=10, s=0.95 BERT-base structure: 219 against
207 GFLOP/s.)

int8: the projections as DynamicQuantizeMatMul (what `export --precision int8` runs; activations quantized
per call), attention products in fp32 as in those engines. Measured only where the CPU has VNNI or AMX
(`int8_capable`), since elsewhere ONNX Runtime's int8 kernels are emulated.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .model import PruMuxConfig


@dataclass(frozen=True)
class Gemm:
    """batch x ([m, k] @ [k, n]); `projection` marks a weight product (int8 in int8 engines)."""

    batch: int
    m: int
    k: int
    n: int
    projection: bool

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def model_gemms(cfg: PruMuxConfig, groups: int, seq: int) -> Counter:
    """The matrix products of one encoder pass over `groups` sequences of `seq` tokens -> {Gemm: count}."""
    seq = cfg.max_seq_length if cfg.attend_to_padding else seq
    T, H, D = groups * seq, cfg.model_dim, cfg.head_dim
    gemms = Counter()
    for heads, width in zip(cfg.heads_per_layer, cfg.ffn_per_layer):
        if heads:
            gemms[Gemm(1, T, H, heads * D, True)] += 3                  # Q, K, V
            gemms[Gemm(groups * heads, seq, D, seq, False)] += 2        # scores, context
            gemms[Gemm(1, T, heads * D, H, True)] += 1                  # output projection
        if width:
            gemms[Gemm(1, T, H, width, True)] += 1                      # FFN up
            gemms[Gemm(1, T, width, H, True)] += 1                      # FFN down
    return gemms


def int8_capable() -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI or AMX) for ONNX Runtime's int8 kernels."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _graph(g: Gemm, int8: bool, rng) -> onnx.ModelProto:
    a_shape = [g.m, g.k] if g.batch == 1 else [g.batch, g.m, g.k]
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if int8 and g.projection:
        w = rng.integers(-127, 128, size=(g.k, g.n), dtype=np.int8)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.01, np.float32), "scale")]
        node = helper.make_node("DynamicQuantizeMatMul", ["a", "w", "scale"], ["y"], domain="com.microsoft")
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    else:
        b_shape = (g.k, g.n) if g.batch == 1 else (g.batch, g.k, g.n)
        inits = [numpy_helper.from_array(rng.standard_normal(b_shape).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        opsets = [helper.make_opsetid("", 18)]
    graph = helper.make_graph([node], "gemm", [a], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=opsets)


def time_gemm(g: Gemm, int8: bool = False, repeats: int = 5, threads: int | None = None) -> float:
    """Median seconds of one product in ONNX Runtime (after two warm-up runs)."""
    from .runtime_onnxruntime import ort_session

    rng = np.random.default_rng(0)
    session = ort_session(_graph(g, int8, rng).SerializeToString(), threads=threads, where="the GEMM probe")
    a = rng.standard_normal([g.m, g.k] if g.batch == 1 else [g.batch, g.m, g.k]).astype(np.float32)
    for _ in range(2):
        session.run(None, {"a": a})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"a": a})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_rate(gemms: Counter, int8: bool = False, repeats: int = 5, threads: int | None = None) -> float:
    """GFLOP/s of the products `gemms` ({Gemm: count}) run one after another: total FLOPs / total time."""
    flops = sum(g.flops * n for g, n in gemms.items())
    seconds = sum(time_gemm(g, int8, repeats, threads) * n for g, n in gemms.items())
    return flops / seconds / 1e9


# --- the GPU's limit: two ceilings measured at the start of a run -------------------------------------------

def cuda_median_ms(fn, warmup: int = 3, repeats: int = 10) -> float:
    """Median time of fn() on the GPU in ms, each call between two CUDA events and synchronised, after
    `warmup` calls (module loads and handle creation stay out)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gpu_ceilings(device="cuda", size: int = 8192, copy_bytes: int = 2**30, repeats: int = 10) -> dict:
    """The two ceilings of a GPU roofline, measured now on `device` (medians of CUDA-event timings after
    three warm-ups; random operands, never zeros, which run faster): an fp16 GEMM [size, size] @ [size, size]
    through PyTorch (cuBLAS) in TFLOP/s, and a device-to-device copy of `copy_bytes` in TB/s counting the bytes
    read plus written. Returns {"fp16_gemm_tflops", "copy_tb_s", "gemm_size", "copy_bytes"}."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.float16)
    gemm_ms = cuda_median_ms(lambda: a @ a, repeats=repeats)
    src = torch.randint(0, 255, (copy_bytes,), device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    copy_ms = cuda_median_ms(lambda: dst.copy_(src), repeats=repeats)
    return {"fp16_gemm_tflops": 2 * size**3 / gemm_ms / 1e9, "copy_tb_s": 2 * copy_bytes / copy_ms / 1e9,
            "gemm_size": size, "copy_bytes": copy_bytes}


def activation_bytes(cfg: PruMuxConfig, rows: int, seq: int, element_bytes: int = 2) -> int:
    """The fewest bytes one forward pass over `rows` inputs of `seq` tokens must move through device memory,
    each tensor written once and read once, weights read once: the int64 inputs; each instance's embedding
    rows gathered (rows x seq x W) and the multiplexed sequence written (G x seq x H); per kept sub-layer the
    residual stream read and written (2 x G x seq x H), its inner activations written and read (Q, K, V and
    context: 4 x heads x head_dim; FFN: its width); the demux reads the [CLS] states. Activations and weights
    at `element_bytes` (2 for fp16, 4 for fp32)."""
    N = cfg.num_instances
    groups = -(-rows // N)
    seq = cfg.max_seq_length if cfg.attend_to_padding else seq
    T, H = groups * seq, cfg.model_dim
    inputs = rows * seq * 8 * len(cfg.input_names)
    moved = groups * N * seq * cfg.embedding_dim + T * H
    for heads, width in zip(cfg.heads_per_layer, cfg.ffn_per_layer):
        if heads:
            moved += 2 * T * H + 2 * 4 * T * heads * cfg.head_dim
        if width:
            moved += 2 * T * H + 2 * T * width
    weights = sum((H * 4 * h * cfg.head_dim + H * 2 * w) for h, w in zip(cfg.heads_per_layer, cfg.ffn_per_layer))
    weights += cfg.max_position_embeddings * cfg.embedding_dim  # (word rows: counted as gathered above)
    return inputs + (moved + weights) * element_bytes


def gpu_roofline_ms(flops: float, moved_bytes: float, ceilings: dict) -> float:
    """The roofline's floor for one batch, ms: the larger of FLOP time at the fp16 GEMM rate and byte time at
    the copy rate (no version runs much faster than this)."""
    return max(flops / (ceilings["fp16_gemm_tflops"] * 1e12), moved_bytes / (ceilings["copy_tb_s"] * 1e12)) * 1e3
