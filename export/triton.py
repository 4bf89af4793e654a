"""`prumux-deploy triton`: an engine directory -> a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt          platform onnxruntime_onnx (or tensorrt_plan; backend openvino for a bf16
                                    engine), batch dim implicit
    REPO/NAME/1/model.onnx          the engine file, byte for byte (sha256 checked before and after copying)
    REPO/NAME/manifest.json         the engine's manifest, for provenance
    REPO/NAME/labels.txt            class names in label-id order (Triton's classification extension)

and with `with_tokenizer=True` two more models, so clients can send raw text:

    REPO/NAME_tokenizer/            Python backend: TEXT (+ TEXT_PAIR) -> input_ids, attention_mask (+ token_type_ids)
    REPO/NAME_ensemble/             platform ensemble: TEXT (+ TEXT_PAIR) -> tokenizer -> NAME -> logits

The engine pads a batch that is not a multiple of N inside the graph, so any batch size is correct; the
batch sizes Triton is told to prefer and the maximum are multiples of N so that no mux slot is wasted.

Request isolation (`isolation`, default "request"): Triton's dynamic batcher concatenates whole requests of
different clients, so with the engine served directly ("shared") one client's rows can share a mux group
with another's, and its answer changes with (and carries a trace of) the other's content. With "request"
the engine is served as NAME_engine and NAME is a Python-backend model (export/triton_isolation_model.py)
that pads every request to a multiple of N with copies of its own last row before one BLS call to the
engine; batches the engine's own batcher merges are then sums of multiples of N, so no group spans two
requests, and each answer is what the engine gives for that request alone:

    REPO/NAME/config.pbtxt          backend python, the engine's inputs and outputs, dynamic batching
    REPO/NAME/1/model.py            the isolation front; REPO/NAME/1/isolation.py, the grouping it applies
    REPO/NAME_engine/               the engine model as above

The tokenizer model needs numpy and transformers in the Python environment of Triton's Python backend
(the stock Triton image has neither; install them there or point EXECUTION_ENV_PATH at a packed env).

One call updates its model directories as a whole (`prumux_deploy.atomic.atomic_dirs`): each is built
completely in a temporary directory inside REPO (`.NAME.tmp-*`, the same file system), and only then are
they renamed into place, each old version kept aside until all are in; a failure or interrupt on the way puts
the old ones back. So a front is never left beside an engine of another export, nor an engine without its
front. An existing model directory is replaced only with force. A repository may hold other models; only the
model directories named here are touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

from prumux_deploy.capabilities import why_not
from prumux_deploy.atomic import atomic_dirs, os_error_fix
from prumux_deploy.data import copy_tokenizer, has_tokenizer
from prumux_deploy.documents import directory_kind, sha256_file
from prumux_deploy.engine import MANIFEST, read_manifest, runtime_of, verify_engine_file
from prumux_deploy.errors import EngineError, PruMuxError

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
DTYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
          "bool": "TYPE_BOOL", "string": "TYPE_STRING"}
DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_BATCHES_PER_N = 32          # default max_batch_size = 32 * N
MAX_QUEUE_DELAY_US = 100
VERSION = "1"
TOKENIZER_SUFFIX, ENSEMBLE_SUFFIX, ENGINE_SUFFIX = "_tokenizer", "_ensemble", "_engine"
ISOLATION_MODES = ("shared", "request")
DEFAULT_ISOLATION = "request"
TEXT, TEXT_PAIR = "TEXT", "TEXT_PAIR"
LABELS_FILE = "labels.txt"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# --- a config as plain data, serialised either through Triton's protobuf schema or by hand ----------

class Enum(str):
    """An enum value: unquoted in protobuf text format."""


class Map(dict):
    """A protobuf map field: repeated `{ key: ... value: ... }` entries in text format."""


def to_pbtxt(config: dict) -> str:
    """Protobuf text format of a ModelConfig given as plain data.

    With tritonclient installed the data goes through Triton's own `ModelConfig` message (so a field or enum
    name that does not exist in the schema fails here, not in the server); without it, it is written by hand
    in the same format.
    """
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return _write_text(config)
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return text_format.MessageToString(message)


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # quoted, with the C-style escapes text format reads


def _write_text(config: dict, indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if isinstance(value, Map):
            for k, v in value.items():
                entry = {"key": k, "value": v}
                lines.append(f"{pad}{key} {{\n{_write_text(entry, indent + 1)}{pad}}}\n")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{_write_text(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, list):
            if value and all(isinstance(v, dict) for v in value):
                for v in value:
                    lines.append(f"{pad}{key} {{\n{_write_text(v, indent + 1)}{pad}}}\n")
            else:
                lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]\n")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}\n")
    return "".join(lines)


# --- what goes into the configs -------------------------------------------------------------------

def preferred_batch_sizes(n: int, max_batch_size: int) -> list[int]:
    """N*4, N*8, N*16, ... up to max_batch_size, and max_batch_size itself (all multiples of N)."""
    sizes, k = [], 4
    while n * k <= max_batch_size:
        sizes.append(n * k)
        k *= 2
    if max_batch_size not in sizes:
        sizes.append(max_batch_size)
    return sizes


def _dims(entry: dict, where: str) -> list[int]:
    dims = list(entry.get("dims", []))
    if not dims or dims[0] != "batch":
        raise EngineError(f"{where} {entry.get('name')!r}: dims {dims} do not start with the batch axis; "
                          "re-export the engine")
    return [d if isinstance(d, int) else -1 for d in dims[1:]]


def _tensor(entry: dict, where: str) -> dict:
    dtype = entry.get("dtype")
    if dtype not in DTYPES:
        raise EngineError(f"{where} {entry.get('name')!r}: dtype {dtype!r} has no Triton type "
                          f"(supported: {', '.join(DTYPES)})")
    return {"name": entry["name"], "data_type": Enum(DTYPES[dtype]), "dims": _dims(entry, where)}


def model_config(manifest: dict, name: str, max_batch_size: int, copies: int, device: str,
                 dynamic_batching: bool, ort_tensorrt: bool) -> dict:
    platform, file_name = PLATFORMS[manifest["engine"]["kind"]]
    outputs = [_tensor(o, "output") for o in manifest["outputs"]]
    for out in outputs:
        if out["name"] == "logits":
            out["label_filename"] = LABELS_FILE
    config = {"name": name, "platform": platform, "max_batch_size": max_batch_size,
              "input": [_tensor(i, "input") for i in manifest["inputs"]], "output": outputs,
              "instance_group": [{"count": copies, "kind": Enum(DEVICES[device])}]}
    if openvino_backend(manifest, device):
        del config["platform"]
        config.update({"backend": "openvino", "default_model_filename": file_name,
                       "parameters": Map({"HINT_BF16": {"string_value": "YES"}})})
    if dynamic_batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred_batch_sizes(int(manifest["num_instances"]), max_batch_size),
            "max_queue_delay_microseconds": MAX_QUEUE_DELAY_US}
    if ort_tensorrt:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": Map({"precision_mode": ort_tensorrt_precision(manifest)})}]}}
    elif device == "gpu" and manifest["engine"]["kind"] == "onnx":
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "cuda", "parameters": Map(cuda_provider_options(manifest))}]}}
    return config


def cuda_provider_options(manifest: dict) -> dict[str, str]:
    """The CUDA provider's options for an ONNX engine on GPU instances, passed by Triton's ONNX Runtime backend
    (its `cuda` gpu_execution_accelerator) to the provider: use_tf32 "0", since the provider's default runs fp32
    MatMuls in TF32 and `validate --device cuda` checked the engine with TF32 off. No enable_cuda_graph: the
    dynamic batcher sends every batch size up to max_batch_size, and a captured graph holds one fixed shape
    (CUDA graphs need every shape fixed: runtime_onnxruntime.CudaGraphRunner)."""
    return {"use_tf32": "0"}


def openvino_backend(manifest: dict, device: str) -> bool:
    """Whether Triton's OpenVINO backend serves the engine: bf16 engines on CPU instances (its HINT_BF16
    parameter). Its config parameters are INFERENCE_NUM_THREADS, COMPILATION_NUM_THREADS, HINT_BF16,
    NUM_STREAMS and PERFORMANCE_HINT only (openvino_backend README), so it cannot hold OpenVINO to f32: on a
    CPU with bf16 it would run an fp32 engine in bf16, unvalidated. fp32 engines, OpenVINO's included (the same
    model.onnx), are served by ONNX Runtime, whose parity export checked too."""
    return (device == "cpu" and runtime_of(manifest) == "openvino"
            and (manifest.get("runtime") or {}).get("inference_precision") == "bf16")


def ort_tensorrt_precision(manifest: dict) -> str:
    """precision_mode for ONNX Runtime's TensorRT provider in Triton: the graph's own precision. TensorRT 11
    builds strongly typed networks only and dropped the FP16 builder flag behind precision_mode FP16 (TensorRT
    10.x -> 11.x migration guide), so FP16 must come from the graph (export --precision fp16); asking for FP16
    on an fp32 graph would be fp16 under TensorRT 10 and silently fp32 under 11. FP16 is still named for an
    fp16 graph so that a TensorRT 10 build of the provider runs it in fp16 too."""
    return "FP16" if manifest.get("precision") == "fp16" else "FP32"


def plan_batch_range(manifest: dict) -> tuple[int, int]:
    """(min, max) batch of a TensorRT plan's optimization profile, as export recorded it."""
    profile = (manifest.get("tensorrt") or {}).get("profile") or {}
    if "max_batch" not in profile:
        raise EngineError("the manifest records no TensorRT profile (tensorrt.profile); re-export the engine")
    return int(profile.get("min_batch", 1)), int(profile["max_batch"])


def default_max_batch_size(manifest: dict) -> int:
    """32*N, or for a TensorRT plan its profile's max batch: Triton's TensorRT backend refuses a config whose
    max_batch_size exceeds what the plan's profile supports (tensorrt_backend, model_state.cc)."""
    if manifest["engine"].get("kind") == "tensorrt":
        return plan_batch_range(manifest)[1]
    return DEFAULT_BATCHES_PER_N * int(manifest["num_instances"])


def server_options(manifest: dict) -> list[str]:
    """tritonserver options the engine needs. A version-compatible plan carries TensorRT's lean runtime,
    which Triton's TensorRT backend loads only when told so on its command line (`--backend-config=tensorrt,
    version-compatible=true`: a backend option, not a model-config parameter; tensorrt_backend README)."""
    if (manifest.get("tensorrt") or {}).get("version_compatible"):
        return ["--backend-config=tensorrt,version-compatible=true"]
    return []


def _engine_inputs(manifest: dict) -> list[str]:
    return [i["name"] for i in manifest["inputs"]]


def text_inputs(manifest: dict) -> list[str]:
    return [TEXT, TEXT_PAIR] if "token_type_ids" in _engine_inputs(manifest) else [TEXT]


def tokenizer_config(manifest: dict, name: str, max_batch_size: int, copies: int,
                     dynamic_batching: bool) -> dict:
    config = {"name": name, "backend": "python", "max_batch_size": max_batch_size,
              "input": [{"name": t, "data_type": Enum("TYPE_STRING"), "dims": [1]} for t in text_inputs(manifest)],
              "output": [{"name": n, "data_type": Enum("TYPE_INT64"), "dims": [-1]} for n in _engine_inputs(manifest)],
              "instance_group": [{"count": copies, "kind": Enum("KIND_CPU")}],
              "parameters": Map({"max_seq_length": {"string_value": str(int(manifest["max_seq_length"]))}})}
    if dynamic_batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": MAX_QUEUE_DELAY_US}
    return config


def ensemble_config(manifest: dict, name: str, model_name: str, tokenizer_name: str,
                    max_batch_size: int) -> dict:
    texts, ids = text_inputs(manifest), _engine_inputs(manifest)
    outputs = [_tensor(o, "output") for o in manifest["outputs"]]
    return {"name": name, "platform": "ensemble", "max_batch_size": max_batch_size,
            "input": [{"name": t, "data_type": Enum("TYPE_STRING"), "dims": [1]} for t in texts],
            "output": outputs,
            "ensemble_scheduling": {"step": [
                {"model_name": tokenizer_name, "model_version": -1,
                 "input_map": Map({t: t for t in texts}), "output_map": Map({n: n for n in ids})},
                {"model_name": model_name, "model_version": -1,
                 "input_map": Map({n: n for n in ids}),
                 "output_map": Map({o["name"]: o["name"] for o in outputs})},
            ]}}


def isolation_config(manifest: dict, name: str, engine_name: str, max_batch_size: int, copies: int,
                     dynamic_batching: bool) -> dict:
    """The Python-backend front that keeps every request in mux groups of its own (`isolation` request)."""
    outputs = [_tensor(o, "output") for o in manifest["outputs"]]
    for out in outputs:
        if out["name"] == "logits":
            out["label_filename"] = LABELS_FILE
    config = {"name": name, "backend": "python", "max_batch_size": max_batch_size,
              "input": [_tensor(i, "input") for i in manifest["inputs"]], "output": outputs,
              "instance_group": [{"count": copies, "kind": Enum("KIND_CPU")}],
              "parameters": Map({"engine_model": {"string_value": engine_name},
                                 "num_instances": {"string_value": str(int(manifest["num_instances"]))},
                                 "max_batch_size": {"string_value": str(max_batch_size)}})}
    if dynamic_batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred_batch_sizes(int(manifest["num_instances"]), max_batch_size),
            "max_queue_delay_microseconds": MAX_QUEUE_DELAY_US}
    return config


def isolation_model_source() -> tuple[str, str]:
    """(model.py, isolation.py) of REPO/NAME/1 in request isolation: export/triton_isolation_model.py and
    prumux_deploy/isolation.py, shipped as package files."""
    return (resources.files("prumux_deploy.export").joinpath("triton_isolation_model.py").read_text(),
            resources.files("prumux_deploy").joinpath("isolation.py").read_text())


def default_device(kind: str, manifest: dict | None = None) -> str:
    """TensorRT plans and ONNX engines exported for the GPU (`export --device cuda`, fp16 ones) get GPU
    instances; other ONNX engines CPU instances."""
    return "gpu" if kind == "tensorrt" or (manifest or {}).get("optimized_for") == "gpu" else "cpu"


# --- checks -----------------------------------------------------------------------------------------

def _check_options(manifest: dict, engine_dir: Path, name: str, max_batch_size, copies: int, device,
                   ort_tensorrt: bool, with_tokenizer: bool) -> tuple[int, str]:
    kind = manifest["engine"].get("kind")
    if kind not in PLATFORMS:
        raise EngineError(f"{engine_dir}: engine kind {kind!r} has no Triton backend here "
                          f"(supported: {', '.join(PLATFORMS)})")
    if runtime_of(manifest) == "openvino" and manifest.get("precision") == "int8":
        # its choice was measured with the float layers at f32, which Triton's OpenVINO backend cannot set
        raise EngineError(f"{engine_dir}: an OpenVINO int8 engine has no Triton backend that runs it as measured "
                          "(the OpenVINO backend cannot hold its float layers to f32); for Triton, export int8 with "
                          "--runtime onnxruntime")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PruMuxError(f"`name` {name!r} is not a usable model name; use letters, digits, '_', '-', '.' "
                          "(not starting with '.' or '-')")
    n = int(manifest["num_instances"])
    if max_batch_size is None:
        max_batch_size = default_max_batch_size(manifest)
    if max_batch_size < 1:
        raise PruMuxError(f"`max_batch_size` must be at least 1 (a positive multiple of N={n}), "
                          f"got {max_batch_size}")
    if max_batch_size % n:
        low, high = max_batch_size // n * n, (max_batch_size // n + 1) * n
        hint = f"{low} or {high}" if low else f"{high}"
        raise PruMuxError(f"`max_batch_size` {max_batch_size} is not a multiple of N={n} (the engine "
                          f"multiplexes {n} rows per pass); use {hint}")
    if kind == "tensorrt":
        _check_plan_batches(manifest, engine_dir, max_batch_size)
    if copies < 1:
        raise PruMuxError(f"`copies` must be at least 1, got {copies}")
    device = default_device(kind, manifest) if device is None else device
    if device not in DEVICES:
        raise PruMuxError(f"`device` must be one of {', '.join(DEVICES)}, got {device!r}")
    if kind == "tensorrt" and device != "gpu":
        raise PruMuxError(f"{why_not('tensorrt', 'cpu')}; use `device` gpu")
    if ort_tensorrt and kind != "onnx":
        raise PruMuxError(f"`ort_tensorrt` applies to ONNX engines (ONNX Runtime's TensorRT provider); "
                          f"this engine is {kind!r}")
    if ort_tensorrt and device != "gpu":
        raise PruMuxError("`ort_tensorrt` needs `device` gpu (ONNX Runtime's TensorRT provider runs on GPU "
                          "instances only)")
    if with_tokenizer and not has_tokenizer(engine_dir):
        raise PruMuxError(f"{engine_dir}: no tokenizer files (vocab.txt / tokenizer.json), so `with_tokenizer` "
                          "cannot build a text front end; export from a checkpoint made from a BERT directory")
    return max_batch_size, device


def _check_plan_batches(manifest: dict, engine_dir: Path, max_batch_size: int) -> None:
    """Triton sends a plan any batch from 1 to max_batch_size: that range must lie inside its profile."""
    low, high = plan_batch_range(manifest)
    if low > 1:
        raise PruMuxError(f"{engine_dir}: the plan's profile starts at batch {low}, but Triton sends batches from 1 "
                          f"(a lone request); re-export it with --min-batch 1")
    if max_batch_size > high:
        raise PruMuxError(f"`max_batch_size` {max_batch_size} exceeds the plan's profile maximum {high}, which "
                          f"Triton's TensorRT backend refuses; use at most {high}, or re-export with --max-batch "
                          f"{max_batch_size}")


# --- the Python-backend tokenizer ---------------------------------------------------------------------
# export/triton_tokenizer_model.py, copied to REPO/NAME_tokenizer/1/model.py. It runs inside Triton's Python
# backend, where prumux_deploy is usually not installed, so it is self-contained (numpy + transformers) and mirrors
# prumux_deploy.data.tokenize: truncation at the engine's max_seq_length, padding to the longest row of a
# request. triton_python_backend_utils exists only inside the server, so it is imported in execute().

def tokenizer_model_source() -> str:
    """The source of REPO/NAME_tokenizer/1/model.py, shipped as export/triton_tokenizer_model.py."""
    return resources.files("prumux_deploy.export").joinpath("triton_tokenizer_model.py").read_text()


# --- writing ----------------------------------------------------------------------------------------

def write_triton_repository(engine_dir, repo, name: str, max_batch_size: int | None = None, copies: int = 1,
                            dynamic_batching: bool = True, with_tokenizer: bool = False, force: bool = False,
                            device: str | None = None, ort_tensorrt: bool = False,
                            isolation: str = DEFAULT_ISOLATION) -> Path:
    """Write REPO/NAME (and REPO/NAME_tokenizer, REPO/NAME_ensemble with with_tokenizer; REPO/NAME_engine
    with isolation "request", the default, unless N=1: effective_isolation); returns REPO/NAME, the model
    clients call.

    max_batch_size defaults to 32*N (a TensorRT plan: its profile's max batch, which it may not exceed; the
    profile must start at batch 1) and must be a positive multiple of N. device defaults to cpu for ONNX
    engines and gpu for TensorRT engines. ort_tensorrt asks ONNX Runtime in Triton to run the graph with its
    TensorRT execution provider in the graph's precision (FP16 for an fp16 export; ONNX engines on GPU
    instances only). A version-compatible plan needs tritonserver started with `server_options(manifest)`.
    """
    engine_dir, repo = Path(engine_dir), Path(repo)
    manifest = read_manifest(engine_dir)
    engine_file = verify_engine_file(engine_dir, manifest)
    max_batch_size, device = _check_options(manifest, engine_dir, name, max_batch_size, copies, device,
                                            ort_tensorrt, with_tokenizer)
    if repo.exists() and not repo.is_dir():
        raise PruMuxError(f"{repo} exists and is not a directory; REPO must be a model repository directory")
    kind = directory_kind(repo)  # a model repository holds one folder per model, not a model's own files
    if kind is not None:
        named = {"engine": "an engine directory (manifest.json)", "checkpoint": "a checkpoint (model.safetensors)"}
        raise PruMuxError(f"{repo} is {named[kind]}, not a model repository; give a new or existing repository "
                          "directory for REPO")
    if isolation not in ISOLATION_MODES:
        raise PruMuxError(f"`isolation` must be one of {', '.join(ISOLATION_MODES)}, got {isolation!r}")
    isolation = effective_isolation(manifest, isolation)
    names = [name] + ([name + TOKENIZER_SUFFIX, name + ENSEMBLE_SUFFIX] if with_tokenizer else [])
    if isolation == "request":
        names.insert(0, name + ENGINE_SUFFIX)  # put in first: the front refers to it (the ensemble, last)
    created = not os.path.lexists(repo)
    try:
        # every target is checked (exists without force, not ours, unwritable) before anything is written
        with atomic_dirs([repo / n for n in names], force=force) as tmps:
            _write_models(dict(zip(names, tmps)), manifest, engine_dir, engine_file, name, isolation,
                          with_tokenizer, max_batch_size, copies, device, dynamic_batching, ort_tensorrt)
    except BaseException as e:
        if created:  # nothing of this update is left in it: "absent when there was none"
            with contextlib.suppress(OSError):
                repo.rmdir()
        if isinstance(e, OSError):  # a full disk, a lost permission: one line, not "unexpected OSError"
            raise _update_failed(repo, e) from e
        raise
    return repo / name


def _update_failed(repo: Path, error: OSError) -> PruMuxError:
    where = f" ({error.filename})" if error.filename else ""
    return PruMuxError(f"cannot update {repo}: {error.strerror or type(error).__name__}{where}; nothing of this "
                       f"update was put in, its models are as they were; {os_error_fix(error)}")


def _write_models(dirs: dict[str, Path], manifest: dict, engine_dir: Path, engine_file: Path, name: str,
                  isolation: str, with_tokenizer: bool, max_batch_size: int, copies: int, device: str,
                  dynamic_batching: bool, ort_tensorrt: bool) -> None:
    """Write every model directory of one update, each into its temporary directory dirs[model name]."""
    engine_name = name + ENGINE_SUFFIX if isolation == "request" else name
    _write_model(dirs[engine_name], manifest, engine_dir, engine_file, engine_name, max_batch_size, copies,
                 device, dynamic_batching, ort_tensorrt)
    if isolation == "request":
        _write_isolation_front(dirs[name], manifest, engine_dir, name, engine_name, max_batch_size, copies,
                               dynamic_batching)
    if with_tokenizer:
        tokenizer_name, ensemble_name = name + TOKENIZER_SUFFIX, name + ENSEMBLE_SUFFIX
        _write_tokenizer(dirs[tokenizer_name], manifest, engine_dir, tokenizer_name, max_batch_size, copies,
                         dynamic_batching)
        model_dir = dirs[ensemble_name]
        (model_dir / VERSION).mkdir()  # ensembles need an (empty) version directory
        (model_dir / "config.pbtxt").write_text(
            to_pbtxt(ensemble_config(manifest, ensemble_name, name, tokenizer_name, max_batch_size)))


def effective_isolation(manifest: dict, isolation: str) -> str:
    """The isolation the repository gets: an N=1 engine has no mux groups to share (every row is alone in its
    pass), so "request" needs no front and the engine is served directly, as "shared" writes it."""
    return "shared" if int(manifest["num_instances"]) == 1 else isolation


def _write_model(model_dir: Path, manifest: dict, engine_dir: Path, engine_file: Path, name: str,
                 max_batch_size: int, copies: int, device: str, dynamic_batching: bool,
                 ort_tensorrt: bool):
    _, file_name = PLATFORMS[manifest["engine"]["kind"]]
    (model_dir / VERSION).mkdir(parents=True)
    copy = model_dir / VERSION / file_name
    shutil.copyfile(engine_file, copy)
    if sha256_file(copy) != manifest["engine"]["sha256"]:
        raise EngineError(f"{engine_file}: changed while it was being copied; try again")
    shutil.copyfile(engine_dir / MANIFEST, model_dir / MANIFEST)
    labels = manifest["labels"]
    (model_dir / LABELS_FILE).write_text("".join(f"{labels[str(i)]}\n" for i in range(len(labels))))
    config = model_config(manifest, name, max_batch_size, copies, device, dynamic_batching, ort_tensorrt)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))


def _write_isolation_front(model_dir: Path, manifest: dict, engine_dir: Path, name: str, engine_name: str,
                           max_batch_size: int, copies: int, dynamic_batching: bool):
    (model_dir / VERSION).mkdir(parents=True)
    model_py, isolation_py = isolation_model_source()
    (model_dir / VERSION / "model.py").write_text(model_py)
    (model_dir / VERSION / "isolation.py").write_text(isolation_py)
    shutil.copyfile(engine_dir / MANIFEST, model_dir / MANIFEST)
    labels = manifest["labels"]
    (model_dir / LABELS_FILE).write_text("".join(f"{labels[str(i)]}\n" for i in range(len(labels))))
    config = isolation_config(manifest, name, engine_name, max_batch_size, copies, dynamic_batching)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))


def _write_tokenizer(model_dir: Path, manifest: dict, engine_dir: Path, name: str, max_batch_size: int,
                     copies: int, dynamic_batching: bool):
    version_dir = model_dir / VERSION
    (version_dir / "tokenizer").mkdir(parents=True)
    copy_tokenizer(engine_dir, version_dir / "tokenizer")
    (version_dir / "model.py").write_text(tokenizer_model_source())
    (model_dir / "config.pbtxt").write_text(
        to_pbtxt(tokenizer_config(manifest, name, max_batch_size, copies, dynamic_batching)))
