"""What `export` is asked for, declared once: ExportOptions, and the one place its combinations are checked.

`ExportOptions.resolved()` refuses what cannot be combined (each refusal one line, in the words of
capabilities.py where it is a question of what runs where) and fills in the defaults that depend on the other
options (precision by device, optimize by format, the runtime, the tolerance by precision), before any work.
export_checkpoint (pipeline.py) takes it; the command builds it from its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from prumux_deploy.compare import PRECISIONS, tolerance_for
from prumux_deploy.errors import PruMuxError

from .onnx import DEFAULT_OPSET
from .tensorrt import TensorRTOptions


@dataclass(frozen=True)
class ExportOptions:
    """fmt: "onnx" or "tensorrt" (needs a GPU); precision: "fp32", "fp16", "int8" or "bf16" (None: fp16 for
    device cuda, else fp32); device: where the engine will run, "cpu" or "cuda" (the GPU target, export/gpu.py);
    runtime: what runs an ONNX engine, "onnxruntime", "openvino" or "auto" (measured, pipeline.choose_runtime);
    optimize: None = optimized ONNX engines, plain TensorRT input graphs; opset: the ONNX opset;
    max_seq_length: the longest input in tokens (None: the checkpoint's); tolerance: the largest absolute logit
    difference accepted (None: the precision's, compare.py); data (with data_config): task data for int8 (its
    candidates measured on it) or bf16 (its dev accuracy checked); tensorrt: the shape profile and builder
    options of a plan."""

    fmt: str = "onnx"
    precision: str | None = None
    device: str = "cpu"
    runtime: str = "onnxruntime"
    optimize: bool | None = None
    opset: int = DEFAULT_OPSET
    max_seq_length: int | None = None
    tolerance: float | None = None
    data: object = None
    data_config: str | None = None
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)

    def resolved(self) -> "ExportOptions":
        """These options with every default filled in, or PruMuxError (one line) for a combination that cannot
        be exported; raised before any work. Optional runtimes that are asked for must be installed."""
        if self.fmt not in ("onnx", "tensorrt"):
            raise PruMuxError(f"`fmt` {self.fmt} is not supported; use onnx or tensorrt")
        precision, runtime = _check_device(self.device, self.fmt, self.precision, self.runtime, self.optimize)
        if precision not in PRECISIONS:
            raise PruMuxError(f"`precision` {precision} is not supported; use fp32, fp16, int8 or bf16")
        if self.data is not None and precision not in ("int8", "bf16"):
            raise PruMuxError("`data` is for `precision` int8 (calibration rows, and the accuracy the int8 choice "
                              "keeps) or bf16 (the accuracy it must keep)")
        if self.optimize is False and precision == "int8":
            raise PruMuxError("int8 engines are quantized from the graph each runtime runs fastest (ONNX Runtime: the "
                              "optimized one; OpenVINO's NNCF: the plain one); leave `optimize` at its default (drop "
                              "--no-optimize)")
        # ONNX Runtime engines are optimized unless asked not to; TensorRT fuses by itself
        optimize = self.fmt == "onnx" if self.optimize is None else self.optimize
        if self.fmt == "tensorrt" and (optimize or precision == "int8"):
            raise PruMuxError("`optimize` and `precision` int8 are ONNX Runtime options; TensorRT fuses the graph "
                              "itself (use `precision` fp16 or fp32 with `fmt` tensorrt)")
        trt = self.tensorrt or TensorRTOptions()
        if self.fmt != "tensorrt" and trt.tf32:
            raise PruMuxError("`tf32` is a TensorRT build option (`fmt` tensorrt); an ONNX engine's TF32 is chosen "
                              "where it runs (validate / bench --device cuda --tf32)")
        if self.fmt != "tensorrt" and not trt.is_default:
            raise PruMuxError("the batch/sequence profile, `timing_cache` and `version_compatible` apply to TensorRT "
                              "engines only (`fmt` tensorrt)")
        runtime = _check_runtime(runtime, self.fmt, precision, self.data is not None)
        tolerance = tolerance_for(precision, trt.tf32).max_logit_error if self.tolerance is None else self.tolerance
        return replace(self, precision=precision, runtime=runtime, optimize=optimize, tolerance=tolerance,
                       tensorrt=trt)


def _check_device(device: str, fmt: str, precision: str | None, runtime: str,
                  optimize: bool | None) -> tuple[str, str]:
    """The export target checked against the other options before any work; returns the precision (default:
    fp16 on cuda, fp32 on the CPU) and the runtime (on cuda ONNX Runtime's CUDA provider: `auto` times CPU
    runtimes, which says nothing about a GPU). int8 and bf16 are CPU arithmetic (ONNX Runtime's int8 kernels, OpenVINO's
    bf16), OpenVINO runs on the CPU here, and the GPU target is an optimized graph."""
    from prumux_deploy.capabilities import why_not

    from .gpu import TARGETS

    if device not in TARGETS:
        raise PruMuxError(f"`device` {device!r} is not one of {', '.join(TARGETS)}")
    if precision is None:
        precision = "fp16" if device == "cuda" else "fp32"
    if device != "cuda":
        return precision, runtime
    reason = why_not("onnxruntime", "cuda", precision)
    if reason:
        raise PruMuxError(f"`precision` {precision} with `device` cuda: {reason}; use fp16 (the default) or fp32")
    if runtime == "openvino":
        raise PruMuxError(f"`runtime` openvino with `device` cuda: {why_not('openvino', 'cuda')}; leave out `runtime` "
                          "(ONNX Runtime's CUDA provider runs GPU engines)")
    if fmt == "onnx" and optimize is False:
        raise PruMuxError("`device` cuda writes the GPU-optimized graph; --no-optimize writes the plain graph for any "
                          "device (leave out `device`)")
    return precision, "onnxruntime"


def _check_runtime(runtime: str, fmt: str, precision: str, with_data: bool = False) -> str:
    """The runtime asked for, checked against the format, precision and data before any work. bf16 is
    OpenVINO's (the only runtime with bf16 on the CPU), fp16 ONNX Runtime's; int8 is either's, OpenVINO's
    only with task data (NNCF calibrates on it), so "auto" with int8 chooses by measurement only then."""
    from prumux_deploy.capabilities import runs
    from prumux_deploy.runtime_openvino import available, check_bf16, nncf_available, require_nncf, require_openvino

    if runtime not in ("onnxruntime", "openvino", "auto"):
        raise PruMuxError(f"`runtime` {runtime!r} is not one of onnxruntime, openvino, auto")
    if fmt == "tensorrt":
        if runtime == "openvino":  # (onnxruntime and auto are the defaults: nothing was chosen for a plan)
            raise PruMuxError("`runtime` openvino runs ONNX engines; TensorRT plans run in TensorRT (`fmt` onnx)")
        return "onnxruntime"
    if precision == "bf16":
        if runtime != "auto" and not runs(runtime, "cpu", "bf16"):
            raise PruMuxError("`precision` bf16 runs in OpenVINO on the CPU; use `runtime` openvino (or auto)")
        require_openvino()
        check_bf16()
        return "openvino"
    if runtime == "openvino" and not runs("openvino", "cpu", precision):
        raise PruMuxError("`runtime` openvino runs fp32, bf16 and int8 engines here; fp16 engines are for GPUs and "
                          "run in ONNX Runtime (`runtime` onnxruntime)")
    if runtime == "openvino" and precision == "int8" and not with_data:
        raise PruMuxError("OpenVINO's int8 is NNCF's post-training quantization, calibrated on task rows: give "
                          "`data` (or use `runtime` onnxruntime for dynamic int8)")
    if runtime == "openvino":
        require_openvino()
        if precision == "int8":
            require_nncf()
    if runtime == "auto" and (precision == "fp16" or not available() or
                              (precision == "int8" and not (with_data and nncf_available()))):
        return "onnxruntime"  # nothing to choose between
    return runtime
