"""OpenVINO as a runtime for exported engines (`export --runtime openvino|auto`, the `openvino` extra).

OpenVINO reads our own `model.onnx` directly (ONNX Runtime's fused ops included: Attention,
EmbedLayerNormalization, BiasGelu), so an OpenVINO engine directory is the same directory with the manifest
saying which runtime runs it:

    manifest["runtime"] = {"name": "openvino", "version": "2026.4...", "inference_precision": "f32"|"bf16"}

The file stays ONNX rather than OpenVINO IR (measured: docs/benchmarks.md "OpenVINO"): one file serves
both runtimes, its sha256 check is unchanged, and compiling from ONNX at load costs about as much as from IR.
bf16 runs the fp32 graph with OpenVINO's bf16 inference precision; it needs a CPU with avx512_bf16 or AMX
(`cpu_has_bf16`), and its parity tolerance is compare.TOLERANCES["bf16"].
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .errors import EngineError, first_line
from .resources import MB, NotEnoughMemoryError, memory_failure, not_enough_memory, require_address_space
from .runners import Runner

# int8 (NNCF QDQ) engines: the quantized MatMuls run in int8 kernels, what stays float at f32 (not the
# bf16 OpenVINO defaults to on a bf16 CPU, which the int8 choice never measured)
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise EngineError("this engine runs with OpenVINO, which is not installed: pip install "
                          "'prumux-deploy[openvino]' (or re-export with --runtime onnxruntime)") from None
    return openvino


def available() -> bool:
    try:
        require_openvino()
    except EngineError:
        return False
    return True


def require_nncf(instead: str = "use `runtime` onnxruntime"):
    """EngineError (one line, ending with `instead`) when NNCF, OpenVINO's int8, is not installed."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise EngineError(f"OpenVINO's int8 needs NNCF, which is not installed: pip install 'prumux-deploy[openvino]'"
                          f" (or {instead})") from None


def nncf_available() -> bool:
    try:
        require_nncf()
    except EngineError:
        return False
    return True


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "")
    return set(flags.split())


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (avx512_bf16 or AMX), where OpenVINO's bf16 is a speedup, not an emulation."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def check_bf16():
    if not cpu_has_bf16():
        raise EngineError(f"bf16 needs a CPU with {' or '.join(BF16_CPU_FLAGS)}, and this one has neither "
                          "(/proc/cpuinfo); use fp32 or int8")


def runtime_entry(precision: str) -> dict:
    """The manifest's runtime record for an OpenVINO engine of `precision` (fp32 or bf16)."""
    return {"name": "openvino", "version": require_openvino().__version__,
            "inference_precision": INFERENCE_PRECISION[precision]}


def compile_cpu(path, hint: str, threads: int | None = None):
    """OpenVINO's compiled model of the ONNX file `path` for the CPU at inference precision `hint` ("f32" or
    "bf16", which needs cpu_has_bf16). Raises EngineError when OpenVINO is missing, the CPU has no bf16, or
    OpenVINO cannot read the graph."""
    ov = require_openvino()
    if hint == "bf16":
        check_bf16()
    config = {"INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    # measured: reading and compiling a 59 MB graph grows the address space by 370 MB (2 cores); short of
    # that, read_model can segfault rather than raise
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    require_address_space(64 * MB + 6 * size, f"open {path} with OpenVINO")
    try:
        core = ov.Core()
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError with a long message for graphs it cannot read
        if memory_failure(e):  # its std::bad_alloc comes under the same first line as a graph it cannot read
            raise NotEnoughMemoryError(not_enough_memory(f"open {path} with OpenVINO", e)) from None
        raise EngineError(f"{path}: OpenVINO cannot compile it ({first_line(e)})") from None


class OpenVINORunner(Runner):
    """A graph compiled by OpenVINO for the CPU (compile_cpu) at the inference precision of `precision`
    (INFERENCE_PRECISION: fp32 and int8 at f32, bf16 at bf16) or the explicit `hint`. One infer request;
    calls from several threads take turns. Logits come back as a float32 copy (OpenVINO reuses its output
    buffer)."""

    def __init__(self, graph, device: str = "cpu", precision: str = "fp32", tf32: bool = False,
                 threads: int | None = None, hint: str | None = None):
        require_openvino()  # before anything else: the one line a missing extra needs
        self.precision = precision
        self.inference_precision = hint or INFERENCE_PRECISION[precision]
        self.compiled = compile_cpu(graph, self.inference_precision, threads)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    @classmethod
    def for_engine(cls, path, manifest: dict, runtime: str, device: str = "cpu", tf32: bool = False,
                   precision: str | None = None, threads: int | None = None):
        """An OpenVINO engine runs at its manifest's inference precision, or at `precision` (fp32 or bf16)."""
        entry = manifest.get("runtime") or {}
        hint = INFERENCE_PRECISION.get(precision) if precision else entry.get("inference_precision", "f32")
        if hint is None:
            raise EngineError(f"OpenVINO runs fp32 or bf16 engines, not {precision!r}")
        return cls(path, device=device, precision=manifest.get("precision", "fp32"), threads=threads, hint=hint)

    @property
    def arithmetic(self) -> str:
        graph = "fp32" if self.precision == "bf16" else self.precision  # bf16 is the fp32 graph run at bf16
        return f"{graph} graph, OpenVINO CPU at {self.inference_precision}"

    def infer(self, feeds):
        with self._lock:
            result = self._request.infer(feeds)
            return np.array(result[self.compiled.output(0)], dtype=np.float32)  # a copy: the buffer is reused
