"""Which device PyTorch and the engines run on, and what a report says about it.

`resolve_device` turns the `--device` option into a torch.device (a missing GPU is one line, not a
traceback); `device_info` is what every report records so a number can be traced to its machine;
`synchronize` is what timing needs on a GPU (work is queued asynchronously; a timer must wait for it).
`torch_tf32` makes the TF32 state of PyTorch's fp32 matmuls on CUDA explicit for a block, so a GPU
comparison knows (and reports, `torch_arithmetic`) which arithmetic its PyTorch side used.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from .errors import PruMuxError


def resolve_device(device: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:K'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PruMuxError(f"`device` {device}: no CUDA GPU is visible to PyTorch here (torch "
                              f"{torch.__version__}); use `device` cpu, or install a CUDA build of torch")
        return torch.device(device)
    raise PruMuxError(f"`device` {device!r}: choose auto, cpu or cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_tf32(enabled: bool):
    """PyTorch's fp32 matmuls on CUDA (cuBLAS) in TF32 when `enabled`, in full fp32 otherwise, for the block;
    the previous setting is restored after. PyTorch's own default is full fp32 for matmuls, but any code in
    the process may have changed it, so a reference says it explicitly. Uses
    torch.backends.cuda.matmul.fp32_precision ("tf32" / "ieee") where this torch has it (2.9+, where mixing it
    with the legacy allow_tf32 flag is an error), allow_tf32 otherwise (PyTorch CUDA notes, TF32)."""
    matmul = torch.backends.cuda.matmul
    name, value = (("fp32_precision", "tf32" if enabled else "ieee") if hasattr(matmul, "fp32_precision")
                   else ("allow_tf32", bool(enabled)))
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)


def tf32_scope(device: torch.device, enabled: bool):
    """torch_tf32(enabled) on a CUDA device; nothing on the CPU (it has no TF32)."""
    return torch_tf32(enabled) if device.type == "cuda" else contextlib.nullcontext()


def check_tf32(device: torch.device, tf32: bool) -> None:
    """TF32 is a GPU arithmetic: asking for it on the CPU is refused (PruMuxError, one line)."""
    if tf32 and device.type != "cuda":
        raise PruMuxError("`tf32` applies to `device` cuda (TF32 is a GPU arithmetic); drop it on the CPU")


def torch_tf32_enabled() -> bool:
    """Whether PyTorch's fp32 CUDA matmuls run in TF32 right now."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    return precision == "tf32" if precision != "none" else bool(matmul.allow_tf32)


def torch_arithmetic(device: torch.device, dtype: str = "fp32") -> str:
    """What PyTorch computes in on `device` right now, for reports (inside torch_tf32 on a GPU)."""
    if device.type != "cuda":
        return f"{dtype}, PyTorch CPU"
    return f"{dtype}, PyTorch CUDA, TF32 {'on' if torch_tf32_enabled() else 'off'} (cuBLAS matmuls, set explicitly)"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        return next((w for w in first.split() if w[:1].isdigit() and "." in w), first.strip())
    except OSError:
        return None


def device_info(device: torch.device) -> dict:
    """Device, GPU name, driver, CUDA, cuDNN, TensorRT and ONNX Runtime versions (None where absent)."""
    import onnxruntime

    info = {"device": str(device), "cpu": _cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers(),
            "gpu": None, "driver": _nvidia_driver(), "cuda": torch.version.cuda, "cudnn": None, "tensorrt": None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return info
