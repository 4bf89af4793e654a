"""One runner per backend behind one interface (Polygraphy's runners), and the registry that picks one.

A runner turns one engine file into logits on one device: `runner(feeds) -> logits [B, C]` (feeds
{name: [B, S] int64}; inputs the graph does not take are ignored), `runner.timed(feeds)` for throughput
timing (a zero-argument function; GPU runners stage the inputs on the device first, so no host copy is
timed), and `arithmetic` / `uses_tf32` for reports. Every session or compiled model in the toolchain is
made by a runner (ONNX Runtime's sessions by runtime_onnxruntime.ort_session, the one place that calls
InferenceSession):

    runtime      runs      module                 runner
    onnxruntime  graphs    runtime_onnxruntime    OrtRunner       (CPU, or CUDA: IO binding, CUDA graphs)
    openvino     graphs    runtime_openvino       OpenVINORunner  (CPU, f32 or bf16 inference precision)
    tensorrt     plans     runtime_tensorrt       TensorRTRunner  (GPU, within the plan's profile)
    torch        -         PyTorch runs the model itself (backends.time_torch)

An engine directory is a manifest plus the runner its runtime gets (engine_dir.Engine); bench's rows,
export's runtime choice and quantize's measurements open bare graphs with `open_runner`. What runs where
(device x precision) is capabilities.RUNTIMES. Adding a runtime is one module with its Runner subclass, one
entry in RUNNERS here and one row in capabilities.RUNTIMES.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

import numpy as np

from .capabilities import computed_precision, why_not
from .errors import EngineError


class Runner:
    """feeds -> logits of one engine file on one runtime and device. Subclasses set input_names and
    implement infer(feeds) on exactly those inputs."""

    input_names: list[str]

    @classmethod
    def for_engine(cls, path, manifest: dict, runtime: str, device: str = "cpu", tf32: bool = False, **options):
        """The runner of an engine directory's file `path`, from what its manifest says (a runtime reads more
        of it where the file alone does not say how to run it: OpenVINO's inference precision, a TensorRT
        plan's build flags)."""
        precision = computed_precision(manifest.get("precision", "fp32"), runtime)
        return cls(path, device=device, precision=precision, tf32=tf32, **options)

    def __call__(self, feeds: dict) -> np.ndarray:
        return self.infer({name: feeds[name] for name in self.input_names})

    def infer(self, feeds: dict) -> np.ndarray:
        raise NotImplementedError

    def timed(self, feeds: dict):
        """A zero-argument function running the graph once on `feeds` and returning when the work is done."""
        feeds = {name: feeds[name] for name in self.input_names}
        return lambda: self.infer(feeds)

    @property
    def arithmetic(self) -> str:
        raise NotImplementedError

    @property
    def uses_tf32(self) -> bool:
        return False


@dataclass(frozen=True)
class RunnerEntry:
    runtime: str   # the capabilities.RUNTIMES row it is
    module: str    # where its Runner lives (imported on first use: optional runtimes stay optional)
    runner: str    # the Runner subclass's name


RUNNERS = {e.runtime: e for e in (
    RunnerEntry("onnxruntime", "prumux_deploy.runtime_onnxruntime", "OrtRunner"),
    RunnerEntry("openvino", "prumux_deploy.runtime_openvino", "OpenVINORunner"),
    RunnerEntry("tensorrt", "prumux_deploy.runtime_tensorrt", "TensorRTRunner"),
)}


def runner_class(runtime: str) -> type[Runner]:
    """The Runner subclass of `runtime`; EngineError (one line) for a runtime nothing here runs."""
    entry = RUNNERS.get(runtime)
    if entry is None:
        raise EngineError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNNERS)}")
    return getattr(import_module(entry.module), entry.runner)


def open_runner(runtime: str, graph, device: str = "cpu", precision: str = "fp32", **options) -> Runner:
    """A runner of `graph` (a file path, or serialized ONNX bytes for ONNX Runtime) on `device`, computing in
    `precision` (what capabilities.RUNTIMES allows there; EngineError naming the reason otherwise). options go
    to the runtime's runner: threads, tf32 and cuda_graph (ONNX Runtime), where (a name for its messages)."""
    reason = why_not(runtime, device, precision)
    if reason:
        raise EngineError(f"{runtime} on {device} at {precision}: {reason}")
    return runner_class(runtime)(graph, device=device, precision=precision, **options)
