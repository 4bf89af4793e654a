"""Engine directories: an engine file plus manifest.json (and tokenizer files), checked before use.

    OUT/model.onnx      the graph (ids -> logits, mux and demux inside)
    OUT/manifest.json   what the engine is: inputs/outputs, N, labels, structure, sha256, parity, versions
    OUT/vocab.txt ...   the tokenizer, when the checkpoint had one
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .documents import read_versioned_json, sha256_file
from .errors import EngineError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "prumux-engine"
MANIFEST_VERSION = 1


def read_manifest(engine_dir) -> dict:
    engine_dir = Path(engine_dir)
    file = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise EngineError(f"{engine_dir}: not a directory; pass the directory `prumux-deploy export` wrote")
    if not file.is_file():
        raise EngineError(f"{file}: missing; is {engine_dir} an engine directory from `prumux-deploy export`?")
    manifest = read_versioned_json(file, None, EngineError, what="a prumux engine manifest", kind=MANIFEST_FORMAT,
                                   version=MANIFEST_VERSION, version_key="format_version",
                                   fix_kind="re-export the engine", fix_version="re-export with this prumux-deploy",
                                   fix_json="re-export the engine")
    for key in ("engine", "inputs", "outputs", "num_instances", "labels", "max_seq_length"):
        if key not in manifest:
            raise EngineError(f"{file}: field {key!r} is missing; re-export the engine")
    return manifest


def verify_engine_file(engine_dir, manifest) -> Path:
    """The engine file exists and its sha256 is the one the manifest recorded (no truncation, no swap)."""
    entry = manifest["engine"]
    path = Path(engine_dir) / entry.get("file", "")
    if not path.is_file():
        raise EngineError(f"{path}: missing; the engine directory is incomplete, re-export it")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise EngineError(f"{path}: sha256 {digest[:12]}... does not match manifest.json "
                          f"({str(entry.get('sha256'))[:12]}...); the file was edited, truncated or swapped. "
                          "Re-export the engine")
    return path


class Engine:
    """What every engine kind shares: the verified manifest, input checks, feeds -> logits."""

    input_names: list[str]

    def __init__(self, engine_dir):
        self.dir = Path(engine_dir)
        self.manifest = read_manifest(self.dir)
        self.path = verify_engine_file(self.dir, self.manifest)

    # --- what the engine is --------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return int(self.manifest["num_instances"])

    @property
    def labels(self) -> list[str]:
        return [self.manifest["labels"][str(i)] for i in range(len(self.manifest["labels"]))]

    @property
    def max_seq_length(self) -> int:
        return int(self.manifest["max_seq_length"])

    @property
    def max_position_embeddings(self) -> int:
        return int(self.manifest.get("max_position_embeddings", self.max_seq_length))

    @property
    def uses_token_types(self) -> bool:
        return "token_type_ids" in self.input_names

    # --- running -------------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim != 2:
            raise EngineError(f"input_ids must be [batch, sequence], got shape {list(input_ids.shape)}")
        fixed = self.manifest.get("fixed_length")
        if fixed and input_ids.shape[1] > fixed:
            raise EngineError(f"sequence length {input_ids.shape[1]} exceeds {fixed}, the fixed length this engine "
                              f"attends over (an imported upstream model); truncate the input to {fixed} tokens")
        if input_ids.shape[1] > self.max_position_embeddings:
            raise EngineError(f"sequence length {input_ids.shape[1]} exceeds the engine's position table "
                              f"({self.max_position_embeddings}); truncate the input")
        feeds = {"input_ids": input_ids,
                 "attention_mask": np.ones_like(input_ids) if attention_mask is None
                 else np.asarray(attention_mask, dtype=np.int64)}
        if self.uses_token_types:
            feeds["token_type_ids"] = (np.zeros_like(input_ids) if token_type_ids is None
                                       else np.asarray(token_type_ids, dtype=np.int64))
        for name, value in feeds.items():
            if value.shape != input_ids.shape:
                raise EngineError(f"{name} has shape {list(value.shape)}, input_ids {list(input_ids.shape)}")
        self._check_ids(input_ids, "input_ids", self.vocab_size, "the model's vocabulary")
        if "token_type_ids" in feeds:
            self._check_ids(feeds["token_type_ids"], "token_type_ids", self.type_vocab_size, "its token types")
        return self._run(feeds)

    @staticmethod
    def _check_ids(ids: np.ndarray, name: str, size: int, what: str):
        """Ids outside [0, size) would read past an embedding table (or wrap around, for negative ids)."""
        bad = (ids < 0) | (ids >= size)
        if bad.any():
            row, pos = (int(i) for i in np.argwhere(bad)[0])
            raise EngineError(f"{name} holds {int(ids[row, pos])} at row {row}, position {pos}; ids must lie in "
                              f"[0, {size}) ({what}). Tokenize with the engine's own tokenizer")

    @property
    def vocab_size(self) -> int:
        return int(self.manifest.get("vocab_size") or self._config()["vocab_size"])

    @property
    def type_vocab_size(self) -> int:
        return int(self.manifest.get("type_vocab_size") or self._config()["type_vocab_size"])

    def _config(self) -> dict:
        """The compact model's config.json beside the engine (manifests before 0.2 lack the vocabulary sizes)."""
        import json

        try:
            return json.loads((self.dir / "config.json").read_text())
        except (OSError, ValueError):
            raise EngineError(f"{self.dir}: manifest.json lacks vocab_size and config.json is unreadable; "
                              "re-export the engine") from None

    def run_feeds(self, feeds: dict) -> np.ndarray:
        return self(**{k: v for k, v in feeds.items() if k in ("input_ids", "attention_mask", "token_type_ids")})

    def timed_runner(self, feeds: dict):
        """A zero-argument function that runs the engine once on `feeds` and returns when the work is done:
        what throughput timing calls. GPU engines stage the inputs on the device first, so no host copy
        falls inside the timed region."""
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return lambda: self._run(feeds)

    def _run(self, feeds: dict) -> np.ndarray:
        raise NotImplementedError

    @property
    def arithmetic(self) -> str:
        """What the engine computes in, for reports (validate and bench say it for each side they compare)."""
        return f"{self.manifest.get('precision', 'fp32')} graph, {runtime_of(self.manifest)}"

    @property
    def uses_tf32(self) -> bool:
        return False


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


def profile_chunks(batch: int, min_batch: int, max_batch: int):
    """(row indices, real rows) of the chunks a batch runs in under a TensorRT profile: at most max_batch rows
    each (a multiple of N, so mux groups stay whole), and a chunk below min_batch repeats its last row. The
    graph fills a partial mux group the same way, so the real rows' groups and logits are unchanged; the
    extra rows' logits are dropped."""
    for start in range(0, batch, max_batch):
        rows = min(max_batch, batch - start)
        yield np.minimum(np.arange(start, start + max(rows, min_batch)), start + rows - 1), rows


class TensorRTEngine(Engine):
    """A serialized TensorRT engine (model.plan) run on the GPU. Batches outside the plan's optimization
    profile are run in chunks inside it (a multiple of N rows, so mux groups stay intact).

    Inputs are copied to the GPU, the engine enqueued and the logits copied back on one CUDA stream (the
    engine's own), so CUDA orders every copy against the engine; device buffers come from
    prumux_deploy/cuda.py. Every TensorRT call that reports failure (set_input_shape, set_tensor_address,
    execute_async_v3 returning False) is an EngineError, never logits read from an engine that did not run.
    A version-compatible plan (export --version-compatible) carries TensorRT's lean runtime, host code that
    the runtime deserializes only with engine_host_code_allowed set (TensorRT Runtime docs)."""

    def __init__(self, engine_dir):
        super().__init__(engine_dir)
        from . import cuda

        try:
            import tensorrt as trt
        except ImportError:
            raise EngineError(f"running a TensorRT engine needs the tensorrt package: {GPU_INSTALL_HINT}") from None
        cuda.require_gpu(f"{self.path}: a TensorRT engine")
        self._cuda, self._trt = cuda.backend(), trt
        entry = self.manifest.get("tensorrt") or {}
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: the engine must not outlive it
        if entry.get("version_compatible"):
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
        self._stream = self._cuda.stream()
        self._bound = None  # who set the context's shapes and addresses last (a timed runner, or None)
        self._lock = threading.Lock()  # one execution context: calls from several threads take turns

    @property
    def uses_tf32(self) -> bool:
        # plans built before prumux-deploy cleared BuilderFlag.TF32 kept TensorRT's default: on
        return bool((self.manifest.get("tensorrt") or {}).get("tf32", True))

    @property
    def arithmetic(self) -> str:
        flag = "BuilderFlag.TF32 set at build" if self.uses_tf32 else "BuilderFlag.TF32 cleared at build"
        return (f"{self.manifest.get('precision', 'fp32')} TensorRT plan, TF32 {'on' if self.uses_tf32 else 'off'} "
                f"({flag})")

    def _run(self, feeds):
        batch = feeds["input_ids"].shape[0]
        if batch == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        chunks = []
        for pick, rows in profile_chunks(batch, self.min_batch, self.max_batch):
            with self._lock:
                staged = self._stage({k: v[pick] for k, v in feeds.items()})
                out = self._bind(staged)
                self._bound = None
                self._enqueue()
                chunks.append(self._cuda.to_host(out, self._stream)[:rows])  # waits for the engine on its stream
        return np.concatenate(chunks)

    def timed_runner(self, feeds: dict):
        """Inputs and logits on the GPU, shapes and addresses set once; each call enqueues and waits."""
        batch = feeds["input_ids"].shape[0]
        if not self.min_batch <= batch <= self.max_batch:
            return super().timed_runner(feeds)
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
                                  f"the engine's optimization profile {self.manifest['tensorrt']['profile']}")
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


RUNTIMES = ("onnxruntime", "openvino")  # what runs an ONNX engine file (manifest "runtime"; TensorRT: plans)


def runtime_of(manifest: dict) -> str:
    """The runtime an engine directory is built for: its manifest's runtime name (onnxruntime before 0.3)."""
    if manifest["engine"].get("kind") == "tensorrt":
        return "tensorrt"
    return (manifest.get("runtime") or {}).get("name", "onnxruntime")


def load_engine(engine_dir, device: str = "cpu", runtime: str | None = None, tf32: bool = False,
                **kwargs) -> Engine:
    """Open an engine directory with the runtime its manifest names: ONNX engines with ONNX Runtime (CPU, or
    CUDA with device='cuda') or OpenVINO (CPU; prumux_deploy/runtime_openvino.py), TensorRT plans with
    TensorRT. runtime: run an ONNX engine with another runtime than its manifest's ("onnxruntime" or
    "openvino"; an OpenVINO engine runs in ONNX Runtime too, and the reverse). tf32: on device cuda, let
    ONNX Runtime's CUDA provider run fp32 MatMuls in TF32 (off unless asked; a TensorRT plan's TF32 was
    fixed when it was built). Raises EngineError for an int8 engine on device cuda: its quantized ops
    (DynamicQuantizeMatMul, QAttention) are CPU kernels, so a "cuda" run would time the CPU."""
    manifest = read_manifest(engine_dir)
    kind = manifest["engine"].get("kind")
    if kind == "tensorrt":
        return TensorRTEngine(engine_dir)
    if kind != "onnx":
        raise EngineError(f"{engine_dir}: unknown engine kind {kind!r}; re-export the engine")
    if device == "cuda" and manifest.get("precision") == "int8":
        raise EngineError(f"{engine_dir}: an int8 engine is quantized for CPUs (its DynamicQuantizeMatMul / QAttention "
                          "ops have CPU kernels only, so on device cuda they would run on the CPU); use device cpu, "
                          "or export --precision fp16 for the GPU")
    # the runtime a CPU engine was chosen for; on a GPU the same model.onnx runs in ONNX Runtime's CUDA provider
    runtime = runtime or ("onnxruntime" if device == "cuda" else runtime_of(manifest))
    if runtime not in RUNTIMES:
        raise EngineError(f"{engine_dir}: unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        if device == "cuda":
            raise EngineError("OpenVINO runs engines on the CPU here; use runtime onnxruntime for device cuda")
        from .runtime_openvino import OpenVINOEngine

        return OpenVINOEngine(engine_dir, **kwargs)
    if device == "cuda":
        kwargs["providers"] = ort_providers(device, tf32)
    return OnnxEngine(engine_dir, **kwargs)


@dataclass
class Predictions:
    """What `classify` returns for B texts."""

    feeds: dict[str, np.ndarray]   # the engine's inputs: input_ids, attention_mask (, token_type_ids), [B, S] int64
    probabilities: np.ndarray      # [B, C] softmax of the engine's logits
    labels: list[str]              # the C class names, in id order

    def best(self) -> list[tuple[str, float]]:
        """(label, probability) of the most likely class of each text."""
        return [(self.labels[k], float(p[k])) for p, k in zip(self.probabilities, self.probabilities.argmax(1))]


def classify(engine: Engine, texts: list[str], second: list[str] | None = None, truncate: bool = True,
             warn=None, isolation: str = "shared") -> Predictions:
    """Tokenize `texts` (and `second`, the second sentences of a pair task) with the engine's own tokenizer
    and run the engine once.

    isolation: "shared" (default) groups the texts N at a time as given, so a text's answer depends on the
    texts it shares a mux group with; "request" treats every text as a request of its own (its group is
    filled with copies of itself, prumux_deploy/isolation.py), so its answer is what classifying it alone
    gives, bit for bit, at the cost of up to N times the compute.

    Raises EngineError for texts that do not fit the engine (pairs for a single-sentence engine or the reverse,
    empty texts), or when the engine computes NaN or Inf (a broken engine must not yield a label);
    DataError for texts longer than the engine takes when truncate is False. `warn` receives the truncation
    notice."""
    from scipy.special import softmax

    from .data import check_lengths, load_tokenizer, tokenize
    from .isolation import MODES, run_isolated

    if isolation not in MODES:
        raise EngineError(f"isolation {isolation!r} is not one of {', '.join(MODES)}")
    second = list(second) if second else None
    if engine.uses_token_types and (second is None or len(second) != len(texts)):
        raise EngineError(f"this engine classifies sentence pairs: give `second` once per text ({len(texts)} texts, "
                          f"{len(second or [])} second sentences)")
    if second and not engine.uses_token_types:
        raise EngineError("this engine classifies single sentences; drop `second`")
    if any(not t.strip() for t in texts):
        raise EngineError("empty text; every text must contain some words")
    tokenizer = load_tokenizer(engine.dir)
    check_lengths(tokenizer, texts, second, engine.max_seq_length, truncate, warn or (lambda msg: None))
    feeds = tokenize(tokenizer, texts, second, max_length=engine.max_seq_length,
                     uses_token_types=engine.uses_token_types)
    logits = run_isolated(engine.run_feeds, feeds, [1] * len(texts), engine.num_instances, isolation)  # [B, C]
    bad = np.flatnonzero(~np.isfinite(logits).all(1))
    if bad.size:
        raise EngineError(f"the engine computed NaN or Inf logits for {bad.size} of {len(texts)} texts (first: "
                          f"{texts[bad[0]][:40]!r}); the engine is broken (an fp16 overflow?): re-export it, as fp32 "
                          "if it is fp16 (prumux-deploy export --precision fp32)")
    return Predictions(feeds, softmax(logits.astype(np.float64), axis=1), engine.labels)
