"""What runs where: one table of runtime x device x precision x format, and the one sentence that says why a
combination does not run.

export (pipeline._check_device / _check_runtime), load_engine, bench's check_config and triton take their
refusals from here: each puts the sentence after its own subject and adds its own fix in its own option names,
so the reason reads the same wherever a user meets it.

    runtime      format    cpu                  cuda
    onnxruntime  onnx      fp32, fp16, int8     fp32, fp16
    openvino     onnx      fp32, bf16, int8     -
    tensorrt     tensorrt  -                    fp32, fp16
    torch        (eager)   fp32, fp16, bf16     fp32, tf32, fp16, bf16
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    name: str
    format: str | None                     # the engine file it runs (None: PyTorch runs the model itself)
    precisions: dict[str, tuple[str, ...]]  # device -> precisions it computes in there

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)


RUNTIMES = {r.name: r for r in (
    Runtime("onnxruntime", "onnx", {"cpu": ("fp32", "fp16", "int8"), "cuda": ("fp32", "fp16")}),
    Runtime("openvino", "onnx", {"cpu": ("fp32", "bf16", "int8")}),
    Runtime("tensorrt", "tensorrt", {"cuda": ("fp32", "fp16")}),
    Runtime("torch", None, {"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")}),
)}

# why a precision is not computed on a device, whichever runtime is asked
PRECISION_ON_DEVICE = {
    ("int8", "cuda"): "int8 is quantized for CPUs (its DynamicQuantizeMatMul / QAttention / QDQ ops have CPU kernels "
                      "only, so on device cuda they would run on the CPU)",
    ("bf16", "cuda"): "bf16 engines are OpenVINO's, which runs them on the CPU (avx512_bf16 or AMX)",
    ("tf32", "cpu"): "TF32 is a GPU arithmetic (the CPU has none)",
}
# why a runtime does not run on a device
RUNTIME_ON_DEVICE = {
    ("openvino", "cuda"): "OpenVINO runs engines on the CPU here",
    ("tensorrt", "cpu"): "a TensorRT engine runs only on a GPU",
}


def why_not(runtime: str, device: str, precision: str | None = None) -> str | None:
    """The reason `runtime` cannot run an engine of `precision` on `device` ("cpu" or "cuda"), or None when it
    can. Unknown runtimes are not refused here (their callers refuse them by name)."""
    entry = RUNTIMES.get(runtime)
    if entry is None:
        return None
    if device not in entry.precisions:
        return RUNTIME_ON_DEVICE.get((runtime, device), f"{runtime} does not run on {device}")
    if precision is not None and precision not in entry.precisions[device]:
        return PRECISION_ON_DEVICE.get((precision, device), f"{runtime} does not compute {precision} on {device}")
    return None


def runs(runtime: str, device: str, precision: str | None = None) -> bool:
    return why_not(runtime, device, precision) is None


def runtimes_for(fmt: str) -> tuple[str, ...]:
    """The runtimes that run an engine file of format `fmt` ("onnx" or "tensorrt")."""
    return tuple(r.name for r in RUNTIMES.values() if r.format == fmt)


def computed_precision(precision: str, runtime: str) -> str:
    """What `runtime` computes an engine of manifest `precision` in: a bf16 engine is the fp32 graph that
    OpenVINO runs in bf16 (export --precision bf16), so any other runtime computes it in fp32."""
    return "fp32" if precision == "bf16" and runtime != "openvino" else precision
