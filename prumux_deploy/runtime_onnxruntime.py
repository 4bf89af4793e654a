"""ONNX Runtime as a runtime: sessions on the CPU or the CUDA provider (checked: never a silent CPU
fallback), IO-bound timing on the GPU, and the ONNX engine class."""

from __future__ import annotations

import numpy as np

from .engine_dir import Engine
from .errors import EngineError

GPU_INSTALL_HINT = ("pip install 'prumux-deploy[gpu-cu13]', or [gpu-cu12] where nvidia-smi shows CUDA 12.x "
                    "(README, GPU)")
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def provider_names(providers) -> list[str]:
    """Names of an ONNX Runtime providers list whose entries are names or (name, options) pairs."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def check_providers(session, providers, where) -> None:
    """The session runs on every provider that was asked for, or EngineError (one line). ONNX Runtime lists
    the CUDA provider in get_available_providers() even when its CUDA or cuDNN libraries cannot load; the
    session then falls back to the CPU without an error, which only session.get_providers() shows. A GPU
    run that silently times the CPU is refused here."""
    got = list(session.get_providers())
    missing = [p for p in provider_names(providers) if p not in got]
    if missing:
        raise EngineError(f"{where}: ONNX Runtime did not start {', '.join(missing)} (the session runs on "
                          f"{', '.join(got) or 'nothing'}; its CUDA or cuDNN libraries failed to load?), and a "
                          f"silent CPU fallback is refused. Install the onnxruntime-gpu matching the driver's CUDA: "
                          f"{GPU_INSTALL_HINT}")


def ort_session(path, providers=None, threads: int | None = None, where=None):
    """An ONNX Runtime session on `providers` (default: the CPU), checked to run on all of them
    (check_providers). Raises EngineError when ONNX Runtime cannot load the graph."""
    import onnxruntime as ort

    providers = providers or [CPU_PROVIDER]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own exception types for malformed graphs
        raise EngineError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
    check_providers(session, providers, where or path)
    return session


def ort_tf32(providers) -> bool | None:
    """Whether fp32 MatMuls of a session on `providers` run in TF32: the CUDA provider's use_tf32 option (its
    default is 1, TF32 on: ONNX Runtime CUDA provider options); None on the CPU, which has no TF32."""
    for p in providers:
        if isinstance(p, tuple) and p[0] == CUDA_PROVIDER:
            return str(p[1].get("use_tf32", "1")) == "1"
        if p == CUDA_PROVIDER:
            return True
    return None


def ort_arithmetic(precision: str, providers) -> str:
    """What an ONNX Runtime session computes in, for reports: the graph's precision, the provider, and on the
    CUDA provider whether fp32 MatMuls run in TF32."""
    tf32 = ort_tf32(providers)
    if tf32 is None:
        return f"{precision} graph, ONNX Runtime CPU provider"
    return f"{precision} graph, ONNX Runtime CUDA provider, TF32 {'on' if tf32 else 'off'} (use_tf32={int(tf32)})"


class OnnxEngine(Engine):
    """An exported ONNX engine run with ONNX Runtime (CPU, or CUDA with onnxruntime-gpu: `ort_providers`)."""

    def __init__(self, engine_dir, providers=None, threads: int | None = None):
        super().__init__(engine_dir)
        self.providers = providers or [CPU_PROVIDER]
        self.session = ort_session(self.path, self.providers, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def arithmetic(self) -> str:
        return ort_arithmetic(self.manifest.get("precision", "fp32"), self.providers)

    @property
    def uses_tf32(self) -> bool:
        return bool(ort_tf32(self.providers))

    def _run(self, feeds):
        return self.session.run(["logits"], feeds)[0]

    def timed_runner(self, feeds: dict):
        return ort_timed_runner(self.session, {k: v for k, v in feeds.items() if k in self.input_names})


def ort_timed_runner(session, feeds: dict):
    """A zero-argument function running an ONNX Runtime session once on `feeds`. On the CUDA provider the
    inputs are copied to the GPU once and bound with IO binding and the logits stay there, so timing sees
    no host copies (run_with_iobinding synchronises the stream at the end of each run)."""
    if CUDA_PROVIDER not in session.get_providers():
        return lambda: session.run(["logits"], feeds)
    import onnxruntime as ort

    binding = session.io_binding()
    staged = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", 0) for n, v in feeds.items()}
    for name, value in staged.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_output("logits", "cuda")

    def run():
        session.run_with_iobinding(binding)
        return staged  # keeps the device inputs alive as long as the runner

    return run


def ort_providers(device: str, tf32: bool = False) -> list:
    """ONNX Runtime providers for a device. cuda: the CUDA provider with TF32 exactly as asked (its use_tf32
    option defaults to 1, fp32 MatMul in TF32: ONNX Runtime CUDA provider options), then the CPU provider for
    ops CUDA lacks. Needs onnxruntime-gpu (one line when it is missing); whether the provider really starts is
    checked on the session (check_providers)."""
    if device != "cuda":
        return [CPU_PROVIDER]
    import onnxruntime as ort

    if CUDA_PROVIDER not in ort.get_available_providers():
        raise EngineError(f"device cuda needs onnxruntime-gpu and an NVIDIA GPU: {GPU_INSTALL_HINT}")
    return [(CUDA_PROVIDER, {"use_tf32": "1" if tf32 else "0"}), CPU_PROVIDER]
