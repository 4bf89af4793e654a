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
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(_graph(g, int8, rng).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
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
