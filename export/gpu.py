"""The GPU target of `export --device cuda`: what an engine built to run on an NVIDIA GPU does differently.

Measured on an NVIDIA H200 (docs/benchmarks.md, "GPU"), ONNX Runtime 1.31 CUDA provider, N=10 s=0.95 at batch
1280 x 128, with torch.profiler's CUDA activity (examples/gpu/profile_gpu.py):

* **FFN widths padded to a multiple of 8.** CoFi leaves widths such as 57 or 185 units; a GEMM whose inner or
  outer dimension is not a multiple of 8 half-precision elements (16 bytes) gets cuBLAS's `align1` kernels,
  which load one element at a time: 17 such GEMMs per batch took 0.72 ms of 4.4 ms. The extra units have zero
  weights in and out and zero bias, so gelu(0) * 0 adds exactly nothing: the same function, recorded in the
  manifest (`gpu.padded_ffn`).
* **SkipLayerNormalization** (residual + LayerNorm in one kernel, `optimize_onnx(for_gpu=True)`) for fp32 as
  well as fp16: on the CPU it is slower, so CPU engines keep Add + LayerNormalization.
* **fp16 normalisations stored in fp16.** Keeping LayerNorm / SkipLayerNorm / EmbedLayerNorm in fp32 (the CPU
  fp16 form) wrapped each in Casts: the Casts alone took 1.1 ms of 4.7 ms and the fp32 norm kernels read and
  wrote twice the bytes. ONNX Runtime's CUDA normalisation kernels compute the mean and variance in float
  accumulators for half inputs, so only the stored activations are fp16; the export's parity check holds the
  result to the fp16 tolerance against fp32 PyTorch as always.
"""

from __future__ import annotations

import copy

import torch

from prumux_deploy.model import PruMuxModel

ALIGN = 8  # elements: 16 bytes of fp16, what cuBLAS's vectorised (non-align1) GEMM kernels need
TARGETS = ("cpu", "cuda")


def padded_width(width: int, multiple: int = ALIGN) -> int:
    return -(-width // multiple) * multiple


def pad_ffn_widths(model: PruMuxModel, multiple: int = ALIGN) -> tuple[PruMuxModel, list[int]]:
    """A copy of the compact `model` whose FFN widths are rounded up to `multiple` (0 stays 0). The extra
    units get zero up-projection rows and bias (so gelu(0) = 0) and zero down-projection columns: logits
    are unchanged up to float rounding. Returns (model, new widths per layer)."""
    model = copy.deepcopy(model)
    widths = []
    for layer in model.layers:
        ffn = layer.ffn
        width = 0 if ffn is None else ffn.up.out_features
        target = padded_width(width, multiple)
        widths.append(target)
        if target == width:
            continue
        up = torch.nn.Linear(ffn.up.in_features, target).to(ffn.up.weight)
        down = torch.nn.Linear(target, ffn.down.out_features).to(ffn.down.weight)
        with torch.no_grad():
            for p in (up.weight, up.bias, down.weight):
                p.zero_()
            up.weight[:width], up.bias[:width] = ffn.up.weight, ffn.up.bias
            down.weight[:, :width] = ffn.down.weight
            down.bias.copy_(ffn.down.bias)
        ffn.up, ffn.down = up, down
    model.config.layer_intermediate_size = widths
    return model, widths

