"""ONNX Runtime as a runtime: sessions on the CPU or the CUDA provider (checked: never a silent CPU
fallback), IO-bound timing on the GPU, fixed-shape CUDA-graph replays, and its runner (runners.py)."""

from __future__ import annotations

import numpy as np

from .errors import EngineError, first_line
from .resources import NotEnoughMemoryError, memory_failure, not_enough_memory
from .runners import Runner

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
    (check_providers). `path`: a graph file, or the serialized graph (bytes). Raises EngineError when ONNX
    Runtime cannot load the graph; NotEnoughMemoryError when it runs out of memory doing so (its std::bad_alloc
    is not a damaged graph)."""
    import onnxruntime as ort

    providers = providers or [CPU_PROVIDER]
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: an error is raised, and our one line says it (no second line)
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own exception types for malformed graphs
        named = where or ("the serialized graph" if isinstance(path, bytes) else path)
        if memory_failure(e):
            raise NotEnoughMemoryError(not_enough_memory(f"open {named} with ONNX Runtime", e)) from None
        raise EngineError(f"{named}: ONNX Runtime cannot load it ({first_line(e)})") from None
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


class OrtRunner(Runner):
    """A graph (file or serialized bytes) run by ONNX Runtime on the CPU or, with device "cuda", the CUDA
    provider (onnxruntime-gpu: `ort_providers`; tf32 sets its use_tf32). cuda_graph (device cuda only): run each
    input shape as a CUDA-graph replay (CudaGraphRunner), up to MAX_GRAPH_SHAPES shapes; further shapes run in
    the ordinary dynamic-shape session. threads: ONNX Runtime's intra-op threads (default: all cores)."""

    def __init__(self, graph, device: str = "cpu", precision: str = "fp32", tf32: bool = False,
                 threads: int | None = None, cuda_graph: bool = False, where=None):
        self.graph, self.precision, self.threads, self.where = graph, precision, threads, where
        self.providers = ort_providers(device, tf32)
        if cuda_graph and CUDA_PROVIDER not in provider_names(self.providers):
            raise EngineError("CUDA graphs replay work on an NVIDIA GPU: use device cuda (or leave out cuda_graph)")
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, CudaGraphRunner] = {}
        # with CUDA graphs the dynamic-shape session (another copy of the weights on the GPU) is made only when
        # a shape past MAX_GRAPH_SHAPES needs it
        self._session = None if cuda_graph else ort_session(graph, self.providers, threads, where)
        self.input_names = graph_input_names(graph) if cuda_graph else [i.name for i in self._session.get_inputs()]

    @property
    def session(self):
        if self._session is None:
            self._session = ort_session(self.graph, self.providers, self.threads, self.where)
        return self._session

    def graph_runner(self, shape: tuple[int, int]) -> "CudaGraphRunner | None":
        """The CUDA-graph runner of one [batch, sequence] shape (made on first use), or None past
        MAX_GRAPH_SHAPES shapes or without cuda_graph."""
        if not self.cuda_graph:
            return None
        if shape not in self._graphs and len(self._graphs) < MAX_GRAPH_SHAPES:
            self._graphs[shape] = CudaGraphRunner(self.graph, self.providers, shape, self.input_names)
        return self._graphs.get(shape)

    @property
    def arithmetic(self) -> str:
        return ort_arithmetic(self.precision, self.providers) + (", CUDA graph" if self.cuda_graph else "")

    @property
    def uses_tf32(self) -> bool:
        return bool(ort_tf32(self.providers))

    def infer(self, feeds):
        graph = self.graph_runner(tuple(feeds["input_ids"].shape)) if len(feeds["input_ids"]) else None
        if graph is not None:
            return graph(feeds)
        return self.session.run(["logits"], feeds)[0]

    def timed(self, feeds: dict):
        feeds = {k: feeds[k] for k in self.input_names}
        graph = self.graph_runner(tuple(feeds["input_ids"].shape))
        if graph is not None:
            graph.stage(feeds)
            return graph.replay
        return ort_timed_runner(self.session, feeds)


def graph_input_names(graph) -> list[str]:
    """The inputs an ONNX graph (file or bytes) takes, read without a session (initializers excluded)."""
    import onnx

    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(str(graph))
    weights = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in weights]


MAX_GRAPH_SHAPES = 16  # CUDA-graph sessions an engine keeps (each holds its own copy of the weights on the GPU)


def fixed_shape_graph(path, batch: int, sequence: int) -> bytes:
    """The engine's graph with its dynamic `batch` and `sequence` dimensions fixed (ONNX Runtime's
    onnx_model_utils.make_dim_param_fixed, outputs re-inferred), serialized. With static shapes ONNX Runtime
    folds the shape computations (Shape, Gather, Concat, Range of shapes ...) that its CUDA provider would
    otherwise leave on the CPU, which is what CUDA-graph capture requires."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path))
    make_dim_param_fixed(model.graph, "batch", batch)
    make_dim_param_fixed(model.graph, "sequence", sequence)
    fix_output_shapes(model)
    return model.SerializeToString()


def _with_cuda_graph(provider):
    """A providers-list entry with the CUDA provider's enable_cuda_graph on (other providers unchanged)."""
    name, options = (provider if isinstance(provider, tuple) else (provider, {}))
    return (name, {**dict(options), "enable_cuda_graph": "1"}) if name == CUDA_PROVIDER else provider


class CudaGraphRunner:
    """One [batch, sequence] shape of an engine as CUDA-graph replays in ONNX Runtime: a session on the graph
    with that shape fixed (fixed_shape_graph), the CUDA provider's enable_cuda_graph on, inputs and logits bound
    once to device buffers that never move (capture records their addresses). The first run captures; every
    later run replays the whole graph in one launch. Measured on an H200 (docs/benchmarks.md, GPU): N=10,
    s=0.95 at 1280 x 128 in fp16, 2.63 ms per batch against 3.03 ms for the dynamic-shape session.

    call(feeds) copies the feeds into the bound buffers (OrtValue.update_inplace), replays, and returns the
    logits [batch, C] on the host; stage(feeds) + replay() do the same without the copies (what timing calls).
    Raises EngineError when the session cannot capture (a node left on the CPU)."""

    def __init__(self, path, providers, shape: tuple[int, int], input_names: list[str]):
        import onnxruntime as ort

        batch, sequence = shape
        graph_providers = [_with_cuda_graph(p) for p in providers]
        self.providers = graph_providers
        named = "the serialized graph" if isinstance(path, bytes) else path
        self.session = ort_session(fixed_shape_graph(path, batch, sequence), graph_providers,
                                   where=f"{named} (CUDA graph, shape {batch}x{sequence})")
        self.binding = self.session.io_binding()
        self.inputs = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.int64), "cuda", 0) for n in input_names}
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type(
            [batch, self.session.get_outputs()[0].shape[1]], np.float32, "cuda", 0)
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_output("logits", self.logits)

    def stage(self, feeds: dict) -> None:
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name], dtype=np.int64))

    def replay(self):
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error types; one line
            raise EngineError(f"ONNX Runtime could not run the engine as a CUDA graph ({first_line(e)}); "
                              "run it without cuda_graph") from None
        return self.logits

    def __call__(self, feeds: dict) -> np.ndarray:
        self.stage(feeds)
        return self.replay().numpy()


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
