"""TensorRT as a runtime: a serialized plan run on the GPU within its optimization profile."""

from __future__ import annotations

import threading

import numpy as np

from .errors import EngineError
from .runners import Runner
from .runtime_onnxruntime import GPU_INSTALL_HINT


def profile_chunks(batch: int, min_batch: int, max_batch: int):
    """(row indices, real rows) of the chunks a batch runs in under a TensorRT profile: at most max_batch rows
    each (a multiple of N, so mux groups stay whole), and a chunk below min_batch repeats its last row. The
    graph fills a partial mux group the same way, so the real rows' groups and logits are unchanged; the
    extra rows' logits are dropped."""
    for start in range(0, batch, max_batch):
        rows = min(max_batch, batch - start)
        yield np.minimum(np.arange(start, start + max(rows, min_batch)), start + rows - 1), rows


class TensorRTRunner(Runner):
    """A serialized TensorRT engine (model.plan) run on the GPU. Batches outside the plan's optimization
    profile are run in chunks inside it (a multiple of N rows, so mux groups stay intact).

    Inputs are copied to the GPU, the engine enqueued and the logits copied back on one CUDA stream (the
    engine's own), so CUDA orders every copy against the engine; device buffers come from
    prumux_deploy/cuda.py. Every TensorRT call that reports failure (set_input_shape, set_tensor_address,
    execute_async_v3 returning False) is an EngineError, never logits read from an engine that did not run.
    A version-compatible plan (export --version-compatible) carries TensorRT's lean runtime, host code that
    the runtime deserializes only with engine_host_code_allowed set (TensorRT Runtime docs)."""

    def __init__(self, path, device: str = "cuda", precision: str = "fp32", tf32: bool = True,
                 version_compatible: bool = False):
        from pathlib import Path

        from . import cuda

        # tf32: whether the plan was built with BuilderFlag.TF32 (fixed at build; plans from before the flag
        # was recorded kept TensorRT's default, on)
        self.path, self.precision, self.tf32_built = Path(path), precision, tf32

        try:
            import tensorrt as trt
        except ImportError:
            raise EngineError(f"running a TensorRT engine needs the tensorrt package: {GPU_INSTALL_HINT}") from None
        cuda.require_gpu(f"{self.path}: a TensorRT engine")
        self._cuda, self._trt = cuda.backend(), trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: the engine must not outlive it
        if version_compatible:
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{self.path}: TensorRT cannot deserialize it (built for another GPU or TensorRT "
                              "version?); rebuild it here")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if "logits" not in names or not self.input_names:
            raise EngineError(f"{self.path}: the plan has no inputs or no logits output (tensors {names}); re-export it")
        # the profile as the plan holds it: [min, opt, max] shapes of profile 0
        low, _, high = self.engine.get_tensor_profile_shape(self.input_names[0], 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.profile_shapes = (tuple(int(d) for d in low), tuple(int(d) for d in high))  # [batch, sequence]
        self._stream = self._cuda.stream()
        self._bound = None  # who set the context's shapes and addresses last (a timed runner, or None)
        self._lock = threading.Lock()  # one execution context: calls from several threads take turns

    @classmethod
    def for_engine(cls, path, manifest: dict, runtime: str, device: str = "cuda", tf32: bool = False):
        """A plan's TF32 and lean-runtime host code were fixed when it was built (manifest["tensorrt"]);
        the tf32 asked for at run time does not apply."""
        entry = manifest.get("tensorrt") or {}
        return cls(path, device=device, precision=manifest.get("precision", "fp32"),
                   tf32=bool(entry.get("tf32", True)), version_compatible=bool(entry.get("version_compatible")))

    @property
    def uses_tf32(self) -> bool:
        return self.tf32_built

    @property
    def arithmetic(self) -> str:
        flag = "BuilderFlag.TF32 set at build" if self.uses_tf32 else "BuilderFlag.TF32 cleared at build"
        return f"{self.precision} TensorRT plan, TF32 {'on' if self.uses_tf32 else 'off'} ({flag})"

    def infer(self, feeds):
        batch = feeds["input_ids"].shape[0]
        chunks = []
        for pick, rows in profile_chunks(batch, self.min_batch, self.max_batch):
            with self._lock:
                staged = self._stage({k: v[pick] for k, v in feeds.items()})
                out = self._bind(staged)
                self._bound = None
                self._enqueue()
                chunks.append(self._cuda.to_host(out, self._stream)[:rows])  # waits for the engine on its stream
        return np.concatenate(chunks)

    def timed(self, feeds: dict):
        """Inputs and logits on the GPU, shapes and addresses set once; each call enqueues and waits."""
        batch = feeds["input_ids"].shape[0]
        if not self.min_batch <= batch <= self.max_batch:
            return super().timed(feeds)
        token = object()
        with self._lock:
            staged = self._stage(feeds)
            out = self._bind(staged)
            self._bound = token
        self._cuda.synchronize(self._stream)  # the copies are done before any timing starts

        def run():
            with self._lock:
                if self._bound is not token:  # another call used the context since: bind this runner's buffers
                    self._bind(staged, out)
                    self._bound = token
                self._enqueue()
                self._cuda.synchronize(self._stream)
            return out

        return run

    def _stage(self, feeds: dict) -> dict:
        """Device copies of the engine's inputs, queued on the engine's stream."""
        return {n: self._cuda.to_device(np.ascontiguousarray(feeds[n]), self._stream) for n in self.input_names}

    def _bind(self, staged: dict, out=None):
        """Set every input's shape and address and the logits' address (a new logits buffer of the shape
        TensorRT infers, unless `out` is given); returns the logits buffer."""
        for name in self.input_names:
            shape = tuple(int(d) for d in staged[name].shape)
            if not self.context.set_input_shape(name, shape):
                raise EngineError(f"{self.path}: TensorRT refused input {name} of shape {list(shape)}; it lies outside "
                                  f"the engine's optimization profile (from {list(self.profile_shapes[0])} to "
                                  f"{list(self.profile_shapes[1])})")
            self._set_address(name, staged[name])
        if out is None:
            shape = tuple(int(d) for d in self.context.get_tensor_shape("logits"))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.path}: TensorRT could not infer the logits' shape ({list(shape)}) from "
                                  "the input shapes; re-export the engine")
            out = self._cuda.empty(shape, self._stream)
        self._set_address("logits", out)
        return out

    def _set_address(self, name: str, buffer) -> None:
        if not self.context.set_tensor_address(name, self._cuda.address(buffer)):
            raise EngineError(f"{self.path}: TensorRT refused the device address of {name} (misaligned or not "
                              "device memory); nothing was run")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._cuda.stream_handle(self._stream)):
            raise EngineError(f"{self.path}: TensorRT failed to enqueue the engine (execute_async_v3 returned "
                              "False; see the TensorRT log above); no logits were computed")
