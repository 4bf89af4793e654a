"""What the GPU engines need from CUDA, through PyTorch: whether a GPU is visible, what it is, and device
buffers on a stream. One small seam (`backend()`), so that tests run the TensorRT code paths on machines
without a GPU by putting a fake in its place (tests/fake_tensorrt.py); nothing else in the package touches
torch.cuda for TensorRT.

Streams: TensorRT's `execute_async_v3(stream)` only orders work on the stream it is given. The inputs are
therefore copied to the GPU on that same stream, and the logits copied back on it, so no copy can race the
engine (CUDA orders the work queued on one stream).
"""

from __future__ import annotations

import numpy as np

from .errors import EngineError


class TorchCuda:
    """CUDA through PyTorch's allocator and streams. Buffers are torch tensors; addresses are their
    data_ptr(), what TensorRT's set_tensor_address takes."""

    def __init__(self):
        import torch

        self.torch = torch

    def available(self) -> bool:
        try:
            return bool(self.torch.cuda.is_available())
        except Exception:  # a CPU-only torch build can fail in odd ways here
            return False

    def info(self) -> dict:
        """GPU name, compute capability and the CUDA version PyTorch was built with."""
        major, minor = self.torch.cuda.get_device_capability(0)
        return {"gpu": self.torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                "cuda": self.torch.version.cuda}

    def stream(self):
        return self.torch.cuda.Stream()

    @staticmethod
    def stream_handle(stream) -> int:
        return int(stream.cuda_stream)

    def to_device(self, array: np.ndarray, stream):
        """A device copy of a host array, the copy queued on `stream`."""
        with self.torch.cuda.stream(stream):
            return self.torch.from_numpy(np.ascontiguousarray(array)).to("cuda")

    def empty(self, shape, stream):
        """An uninitialised float32 device buffer of `shape`, allocated for use on `stream`."""
        with self.torch.cuda.stream(stream):
            return self.torch.empty(tuple(int(d) for d in shape), dtype=self.torch.float32, device="cuda")

    @staticmethod
    def address(buffer) -> int:
        return int(buffer.data_ptr())

    def to_host(self, buffer, stream) -> np.ndarray:
        """The buffer's values on the host, copied on `stream` after the work queued there."""
        with self.torch.cuda.stream(stream):
            host = buffer.to("cpu")
        stream.synchronize()
        return host.numpy()

    @staticmethod
    def synchronize(stream) -> None:
        stream.synchronize()


_backend = None


def backend():
    """The CUDA backend the GPU engines use (TorchCuda unless a test put a fake here)."""
    global _backend
    if _backend is None:
        _backend = TorchCuda()
    return _backend


def require_gpu(what: str, fix: str = "") -> None:
    """EngineError (one line) when no CUDA GPU is visible; `what` names who needs it, `fix` (optional) what
    to do instead."""
    if not backend().available():
        raise EngineError(f"{what} runs only on an NVIDIA GPU with CUDA, and none is visible here "
                          f"(torch.cuda.is_available() is False){'; ' + fix if fix else ''}")
