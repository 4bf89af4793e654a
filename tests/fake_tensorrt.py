"""Fakes of the GPU stack for tests on machines without a GPU: a `tensorrt` module with TensorRT 11's Python
names and signatures, a CUDA backend for prumux_deploy/cuda.py, and an `onnxruntime` whose CUDA provider can
be made to load or not. Tests put them in place with monkeypatch (sys.modules / prumux_deploy.cuda._backend),
never anywhere else.

Every fake records what the code asks of it (`Recorder.calls`), so tests assert the calls themselves: which
builder flags were set or cleared, the profile shapes, whether host code was allowed before a
version-compatible plan was deserialized, which stream each copy and each enqueue used. Failures are
injected per call name (`Recorder.fail`): the call then returns what the real API returns on failure
(False, None or -1).

The fake plan is JSON: the ONNX graph the builder parsed (base64), the flags and the profile. Executing it
runs that graph on ONNX Runtime's CPU provider with the inputs found at the bound device addresses, so an
engine built and run through the fakes computes real logits, and the export's parity check is real.
"""

from __future__ import annotations

import base64
import enum
import itertools
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as _real_ort  # the fakes below run graphs on the real CPU provider

VERSION = "11.4.0.106"


@dataclass
class Recorder:
    calls: list = field(default_factory=list)   # (name, details) in call order
    fail: set = field(default_factory=set)      # names of calls that report failure

    def log(self, call, /, **details):
        self.calls.append((call, details))
        return call not in self.fail

    def named(self, name) -> list[dict]:
        return [d for n, d in self.calls if n == name]

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


# --- CUDA: device memory and streams (prumux_deploy.cuda's backend interface) --------------------------------

@dataclass
class FakeBuffer:
    address: int
    shape: tuple


@dataclass
class FakeStream:
    cuda_stream: int


class FakeCuda:
    """Device memory as a dict address -> numpy array; streams as numbered handles. `empty` buffers hold NaN
    (what uninitialised memory may hold), so logits read from an engine that did not run show it."""

    def __init__(self, recorder: Recorder, gpu_visible: bool = True):
        self.recorder, self.gpu_visible = recorder, gpu_visible
        self.memory: dict[int, np.ndarray] = {}
        self._addresses = itertools.count(1 << 20, 4096)
        self._streams = itertools.count(7)

    def available(self) -> bool:
        return self.gpu_visible

    def info(self) -> dict:
        return {"gpu": "Fake GPU", "compute_capability": "9.0", "cuda": "13.0"}

    def stream(self):
        return FakeStream(next(self._streams))

    @staticmethod
    def stream_handle(stream) -> int:
        return stream.cuda_stream

    def _alloc(self, array: np.ndarray) -> FakeBuffer:
        address = next(self._addresses)
        self.memory[address] = array
        return FakeBuffer(address, tuple(array.shape))

    def to_device(self, array, stream):
        buffer = self._alloc(np.array(array, copy=True))
        self.recorder.log("copy_to_device", stream=stream.cuda_stream, address=buffer.address, shape=buffer.shape)
        return buffer

    def empty(self, shape, stream):
        buffer = self._alloc(np.full(tuple(shape), np.nan, dtype=np.float32))
        self.recorder.log("empty", stream=stream.cuda_stream, address=buffer.address, shape=buffer.shape)
        return buffer

    @staticmethod
    def address(buffer) -> int:
        return buffer.address

    def to_host(self, buffer, stream) -> np.ndarray:
        self.recorder.log("copy_to_host", stream=stream.cuda_stream, address=buffer.address)
        return self.memory[buffer.address].copy()

    def synchronize(self, stream):
        self.recorder.log("synchronize", stream=stream.cuda_stream)


# --- tensorrt -------------------------------------------------------------------------------------------

class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity.INTERNAL_ERROR, _Severity.ERROR, _Severity.WARNING,
                                                     _Severity.INFO, _Severity.VERBOSE)

    def __init__(self, min_severity=_Severity.WARNING):
        self.min_severity = min_severity
        self.messages = []

    def log(self, severity, msg):
        self.messages.append((severity, msg))


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0   # deprecated: always explicit batch
    STRONGLY_TYPED = 1   # accepted and ignored in TensorRT 11: every network is strongly typed
    PREFER_AOT_PYTHON_PLUGINS = 2
    PREFER_JIT_PYTHON_PLUGINS = 3


class BuilderFlag(enum.IntEnum):
    # TensorRT 11 removed FP16, BF16, INT8, FP8, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS (strong typing)
    GPU_FALLBACK = 0
    REFIT = 1
    DISABLE_TIMING_CACHE = 2
    TF32 = 3
    SPARSE_WEIGHTS = 4
    SAFETY_SCOPE = 5
    DEBUG = 6
    VERSION_COMPATIBLE = 7
    EXCLUDE_LEAN_RUNTIME = 8
    REFIT_IDENTICAL = 9
    WEIGHT_STREAMING = 10
    STRIP_PLAN = 11
    ERROR_ON_TIMING_CACHE_MISS = 12


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 8


def _dims(value) -> tuple:
    return tuple(int(v) for v in value)


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags = flags
        self.onnx = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.num_labels = None


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger):
        self.network, self.logger, self._errors = network, logger, []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        proto = onnx.load(model)
        self.network.onnx = proto.SerializeToString()
        self.network.input_names = [i.name for i in proto.graph.input]
        self.network.output_names = [o.name for o in proto.graph.output]
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        self.network.num_labels = int(dims[-1].dim_value)
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int):
        return self._errors[index]


class IOptimizationProfile:
    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.shapes: dict[str, tuple] = {}
        self.valid = True

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 (the real parameter names)
        low, mid, high = _dims(min), _dims(opt), _dims(max)
        self.recorder.log("set_shape", input=input, min=low, opt=mid, max=high)
        if not all(a <= b <= c for a, b, c in zip(low, mid, high)) or not all(v >= 0 for v in low):
            self.valid = False  # TensorRT logs an error; add_optimization_profile then returns -1
        self.shapes[input] = (low, mid, high)


class ITimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def serialize(self):
        return self.data + b"+fake-timings"


class IBuilderConfig:
    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.flags = {BuilderFlag.TF32}  # TensorRT's default: TF32 allowed for fp32 layers
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.recorder.log("set_flag", flag=BuilderFlag(flag).name)
        self.flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.recorder.log("clear_flag", flag=BuilderFlag(flag).name)
        self.flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        ok = self.recorder.log("add_optimization_profile") and profile.valid
        if not ok:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return self.recorder.log("set_timing_cache", ignore_mismatch=ignore_mismatch)


class IHostMemory(bytes):
    """Serialized plan: a buffer (bytes(plan) works as with the real one)."""


class Builder:
    def __init__(self, logger: Logger):
        self.logger = logger
        self.recorder: Recorder = _RECORDER

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self.recorder.log("create_network", flags=int(flags))
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.recorder)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile(self.recorder)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        ok = self.recorder.log("build_serialized_network", flags=sorted(f.name for f in config.flags))
        if not ok or not config.profiles or set(config.profiles[0].shapes) != set(network.input_names):
            return None  # a dynamic-shape network without a profile for every input does not build
        plan = {"fake_plan": VERSION, "onnx": base64.b64encode(network.onnx).decode(),
                "inputs": network.input_names, "outputs": network.output_names, "num_labels": network.num_labels,
                "profile": {n: [list(s) for s in config.profiles[0].shapes[n]] for n in network.input_names},
                "flags": sorted(f.name for f in config.flags), "network_flags": network.flags}
        return IHostMemory(json.dumps(plan).encode())


class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger
        self.engine_host_code_allowed = False
        self.recorder: Recorder = _RECORDER

    def deserialize_cuda_engine(self, serialized_engine):
        self.recorder.log("deserialize_cuda_engine", engine_host_code_allowed=self.engine_host_code_allowed)
        plan = json.loads(bytes(serialized_engine))
        if "VERSION_COMPATIBLE" in plan["flags"] and not self.engine_host_code_allowed:
            # the real runtime refuses a plan that embeds its lean runtime (host code) unless allowed
            self.logger.log(Logger.ERROR, "engine contains host code; set engine_host_code_allowed")
            return None
        return ICudaEngine(plan, self.recorder)


class ICudaEngine:
    def __init__(self, plan: dict, recorder: Recorder):
        self.plan, self.recorder = plan, recorder
        self._names = plan["inputs"] + plan["outputs"]

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.plan["inputs"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.INT64 if name in self.plan["inputs"] else DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        self.recorder.log("get_tensor_profile_shape", name=name, profile_index=profile_index)
        return [tuple(s) for s in self.plan["profile"][name]]

    def create_execution_context(self):
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine, self.recorder = engine, engine.recorder
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.cuda: FakeCuda = _CUDA
        self._session = None

    def set_input_shape(self, name: str, shape) -> bool:
        shape = _dims(shape)
        ok = self.recorder.log("set_input_shape", name=name, shape=shape)
        low, _, high = self.engine.plan["profile"][name]
        if not ok or len(shape) != len(low) or not all(a <= s <= c for a, s, c in zip(low, shape, high)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.plan["inputs"]:
            return self.shapes.get(name, (-1, -1))
        batch = self.shapes.get(self.engine.plan["inputs"][0], (-1,))[0]
        return (batch, self.engine.plan["num_labels"])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        ok = self.recorder.log("set_tensor_address", name=name, memory=memory)
        if not ok or name not in self.engine._names or memory not in self.cuda.memory:
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not self.recorder.log("execute_async_v3", stream_handle=stream_handle,
                                 addresses=dict(self.addresses), shapes=dict(self.shapes)):
            return False  # nothing runs: the logits buffer keeps whatever it held
        plan = self.engine.plan
        if set(self.shapes) != set(plan["inputs"]) or set(self.addresses) != set(self.engine._names):
            return False
        feeds = {n: self.cuda.memory[self.addresses[n]] for n in plan["inputs"]}
        if any(tuple(v.shape) != self.shapes[n] for n, v in feeds.items()):
            return False
        out = self.cuda.memory[self.addresses["logits"]]
        out[...] = self._run(feeds)
        return True

    def _run(self, feeds: dict) -> np.ndarray:
        if self._session is None:
            self._session = _real_ort.InferenceSession(base64.b64decode(self.engine.plan["onnx"]),
                                                 providers=["CPUExecutionProvider"])
        return self._session.run(["logits"], feeds)[0]


# the fake module and the recorder/CUDA its objects report to (one pair per test, set by install())
_RECORDER: Recorder = Recorder()
_CUDA: FakeCuda = FakeCuda(_RECORDER)


def tensorrt_module() -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = VERSION
    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, TensorIOMode, DataType, Builder, OnnxParser,
                Runtime, IBuilderConfig, IOptimizationProfile, ICudaEngine, IExecutionContext, IHostMemory,
                INetworkDefinition, ITimingCache):
        setattr(module, obj.__name__, obj)
    return module


def install(monkeypatch, gpu_visible: bool = True) -> tuple[Recorder, FakeCuda]:
    """Put the fake tensorrt module and CUDA backend in place for one test; returns (recorder, cuda)."""
    from prumux_deploy import cuda as cuda_module

    recorder = Recorder()
    fake_cuda = FakeCuda(recorder, gpu_visible)
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "_RECORDER", recorder)
    monkeypatch.setattr(this, "_CUDA", fake_cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module())
    monkeypatch.setattr(cuda_module, "_backend", fake_cuda)
    return recorder, fake_cuda


# --- onnxruntime with a CUDA provider that loads, or silently does not ------------------------------------

def onnxruntime_module(cuda_loads: bool, recorder: Recorder) -> types.ModuleType:
    """An `onnxruntime` that lists the CUDA provider as available (as onnxruntime-gpu does even when its CUDA
    libraries cannot load). Sessions run on the real CPU provider; get_providers() reports the CUDA provider
    only when `cuda_loads` (otherwise the silent CPU fallback). IO binding and OrtValue record devices."""
    real = _real_ort

    class OrtValue:
        def __init__(self, array, device):
            self.array, self.device = array, device

        @classmethod
        def ortvalue_from_numpy(cls, numpy_obj, device_type="cpu", device_id=0):
            recorder.log("ortvalue_from_numpy", device_type=device_type, device_id=device_id,
                         shape=tuple(numpy_obj.shape))
            return cls(np.array(numpy_obj, copy=True), device_type)

        @classmethod
        def ortvalue_from_shape_and_type(cls, shape, element_type, device_type="cpu", device_id=0):
            recorder.log("ortvalue_from_shape_and_type", shape=tuple(shape), device_type=device_type)
            return cls(np.full(shape, np.nan, dtype=element_type), device_type)  # poisoned until written

        def update_inplace(self, numpy_obj):
            if numpy_obj.shape != self.array.shape or numpy_obj.dtype != self.array.dtype:
                raise RuntimeError("update_inplace: shape or type differs from the bound buffer's")
            recorder.log("update_inplace", shape=tuple(numpy_obj.shape))
            self.array[...] = numpy_obj

        def numpy(self):
            return self.array.copy()

    class IOBinding:
        def __init__(self):
            self.inputs, self.outputs = {}, {}

        def bind_ortvalue_input(self, name, ortvalue):
            recorder.log("bind_ortvalue_input", name=name, device=ortvalue.device)
            self.inputs[name] = ortvalue

        def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None,
                        buffer_ptr=None):
            recorder.log("bind_output", name=name, device_type=device_type)
            self.outputs[name] = device_type

        def bind_ortvalue_output(self, name, ortvalue):
            recorder.log("bind_ortvalue_output", name=name, device=ortvalue.device, shape=ortvalue.array.shape)
            self.outputs[name] = ortvalue

    class InferenceSession:
        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
            recorder.log("InferenceSession", providers=list(providers or []),
                         graph="bytes" if isinstance(path_or_bytes, bytes) else "file")
            self._session = real.InferenceSession(path_or_bytes, sess_options, providers=["CPUExecutionProvider"])
            names = [p[0] if isinstance(p, tuple) else p for p in (providers or ["CPUExecutionProvider"])]
            self._providers = [p for p in names if cuda_loads or p != "CUDAExecutionProvider"]

        def get_providers(self):
            return list(self._providers)

        def get_inputs(self):
            return self._session.get_inputs()

        def get_outputs(self):
            return self._session.get_outputs()

        def run(self, output_names, input_feed, run_options=None):
            recorder.log("run", providers=self.get_providers())
            return self._session.run(output_names, input_feed, run_options)

        def io_binding(self):
            return IOBinding()

        def run_with_iobinding(self, iobinding, run_options=None):
            recorder.log("run_with_iobinding", inputs={n: v.device for n, v in iobinding.inputs.items()})
            results = self._session.run(list(iobinding.outputs), {n: v.array for n, v in iobinding.inputs.items()})
            for (name, bound), result in zip(iobinding.outputs.items(), results):
                if isinstance(bound, OrtValue):  # a bound buffer receives the result, as on the device
                    bound.array[...] = result

    module = types.ModuleType("onnxruntime")
    for name in dir(real):  # the real module's other names (GraphOptimizationLevel, RunOptions, ...) as they are
        if not name.startswith("__"):
            setattr(module, name, getattr(real, name))
    module.__version__ = real.__version__ + "+fake-gpu"
    module.__spec__ = real.__spec__  # importlib.util.find_spec (torch._dynamo's import checks) reads it
    module.__path__ = real.__path__  # its submodules (onnxruntime.tools, .transformers) import from the real package
    module.SessionOptions = real.SessionOptions
    module.InferenceSession = InferenceSession
    module.OrtValue = OrtValue
    module.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return module


def install_onnxruntime(monkeypatch, cuda_loads: bool) -> Recorder:
    recorder = Recorder()
    monkeypatch.setitem(sys.modules, "onnxruntime", onnxruntime_module(cuda_loads, recorder))
    return recorder
