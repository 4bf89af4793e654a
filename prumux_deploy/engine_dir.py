"""Engine directories and the one interface every runtime implements.

    OUT/model.onnx      the graph (ids -> logits, mux and demux inside), or OUT/model.plan (TensorRT)
    OUT/manifest.json   what the engine is: inputs/outputs, N, labels, structure, sha256, parity, runtime, versions
    OUT/vocab.txt ...   the tokenizer, when the checkpoint had one

An `Engine` is the verified directory (manifest, graph, side files) plus the runner its runtime gets from
the registry in runners.py: it checks inputs and hands feeds to the runner. engine.load_engine picks the
runtime from the manifest and the device. Adding a runtime is one module with its Runner, one entry in
runners.RUNNERS and one row in capabilities.RUNTIMES (what it runs where); bench's rows of it are one
record each in backends.BACKEND_TABLE.
"""

from __future__ import annotations

import hashlib

from pathlib import Path

import numpy as np

from .documents import directory_kind, json_kind, listed_file, read_versioned_json, sha256_file
from .errors import EngineError
from .limits import CONFIG_LIMITS

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "prumux-engine"
MANIFEST_VERSION = 1
ENGINE_KINDS = ("onnx", "tensorrt")

# What the graph itself determines, recorded in an ONNX graph's metadata_props at export ("prumux.NAME") and
# checked against the manifest whenever an engine is opened: the manifest is an editable text file, and a
# num_instances of 1 on an N=2 graph would make `triton` drop request isolation.
GRAPH_FACTS = ("num_instances", "num_labels", "max_position_embeddings", "vocab_size", "type_vocab_size")
GRAPH_FACT_PREFIX = "prumux."
# the manifest's whole-number fields within the config's bounds (fixed_length is a max_seq_length)
_LIMITS = {**{name: CONFIG_LIMITS[name][1] for name in GRAPH_FACTS + ("max_seq_length",)},
           "fixed_length": CONFIG_LIMITS["max_seq_length"][1]}


def graph_facts(cfg) -> dict[str, str]:
    """The metadata_props export records in an ONNX engine (`cfg`: the compact model's PruMuxConfig)."""
    return {GRAPH_FACT_PREFIX + name: str(int(getattr(cfg, name))) for name in GRAPH_FACTS}


def read_manifest(engine_dir) -> dict:
    engine_dir = Path(engine_dir)
    file = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        problem = "not a directory" if engine_dir.exists() else "no such directory"
        raise EngineError(f"{engine_dir}: {problem}; pass the directory `prumux-deploy export` wrote")
    if directory_kind(engine_dir) == "checkpoint":
        raise EngineError(f"{engine_dir} is a checkpoint, not an engine; export it first (`prumux-deploy export "
                          f"{engine_dir} ENGINE_DIR`) and pass ENGINE_DIR")
    if not file.is_file():
        raise EngineError(f"{file}: missing; is {engine_dir} an engine directory from `prumux-deploy export`?")
    manifest = read_versioned_json(file, None, EngineError, what="a prumux engine manifest", kind=MANIFEST_FORMAT,
                                   version=MANIFEST_VERSION, version_key="format_version",
                                   fix_kind="re-export the engine", fix_version="re-export with this prumux-deploy",
                                   fix_json="re-export the engine")
    for key in ("engine", "inputs", "outputs", "num_instances", "labels", "max_seq_length"):
        if key not in manifest:
            raise EngineError(f"{file}: field {key!r} is missing; re-export the engine")
    _check_manifest_fields(file, engine_dir, manifest)
    return manifest


def _check_manifest_fields(file: Path, engine_dir: Path, manifest: dict) -> None:
    """Every field the commands read has its JSON type and a sane value, and every file the manifest names lies
    inside the engine directory: one EngineError line naming the field, never a TypeError / KeyError later."""
    def refuse(field, value, wanted):
        raise EngineError(f"{file}: field {field!r} is {json_kind(value)}, not {wanted}; re-export the engine")

    def whole(field, value, low=1, optional=False):
        high = _LIMITS[field]
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            refuse(field, value, f"a whole number from {low} to {high}")

    engine = manifest["engine"]
    if not isinstance(engine, dict):
        refuse("engine", engine, "an object with the engine's file, kind and sha256")
    for key in ("file", "sha256"):
        if not isinstance(engine.get(key), str):
            refuse(f"engine.{key}", engine.get(key), "text")
    if engine.get("kind", "onnx") not in ENGINE_KINDS:
        refuse("engine.kind", engine.get("kind"), f"one of {', '.join(ENGINE_KINDS)}")
    listed_file(engine_dir, engine["file"], file, EngineError, "engine", "Re-export the engine")
    for key in ("inputs", "outputs"):
        value = manifest[key]
        if not isinstance(value, list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
            refuse(key, value, "a list of objects with a name each")
    whole("num_instances", manifest["num_instances"])
    labels = manifest["labels"]
    if not isinstance(labels, dict) or not 1 <= len(labels) <= _LIMITS["num_labels"]:
        refuse("labels", labels, f"an object of 1 to {_LIMITS['num_labels']} class names")
    if sorted(labels) != sorted(str(i) for i in range(len(labels))) or not all(isinstance(v, str) for v in labels.values()):
        raise EngineError(f"{file}: field 'labels' must map the class ids '0' to '{len(labels) - 1}' to names (text), "
                          f"it has {sorted(labels, key=str)[:4]}; re-export the engine")
    whole("max_position_embeddings", manifest.get("max_position_embeddings"), optional=True)
    whole("max_seq_length", manifest["max_seq_length"])
    positions = manifest.get("max_position_embeddings")
    if positions is not None and manifest["max_seq_length"] > positions:
        raise EngineError(f"{file}: max_seq_length {manifest['max_seq_length']} exceeds the engine's position table "
                          f"(max_position_embeddings {positions}); re-export the engine")
    for key in ("vocab_size", "type_vocab_size", "fixed_length"):
        whole(key, manifest.get(key), optional=True)
    for key in ("runtime", "structure", "tensorrt", "parity"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            refuse(key, manifest[key], "an object")
    if manifest.get("precision") is not None and not isinstance(manifest["precision"], str):
        refuse("precision", manifest["precision"], "text")
    files = manifest.get("files")
    if files is not None:
        if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
            refuse("files", files, "an object of file names and their sha256 digests")
        for name in files:
            listed_file(engine_dir, name, file, EngineError, "engine", "Re-export the engine")


def runtime_of(manifest: dict) -> str:
    """The runtime an engine directory is built for: its manifest's runtime name (onnxruntime before 0.3)."""
    if manifest["engine"].get("kind") == "tensorrt":
        return "tensorrt"
    return (manifest.get("runtime") or {}).get("name", "onnxruntime")


# what an engine reads beside its graph; export records their sha256 in manifest["files"]
SIDE_FILES = ("config.json", "labels.txt", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json")


def verify_side_files(engine_dir, manifest) -> None:
    """Every file the manifest lists beside the graph (tokenizer, labels, config) is there with the sha256 export
    recorded, and no tokenizer file was added since: an edited or truncated tokenizer would change answers with
    the graph intact (and validate, reading the same files, would not see it). Engines exported before 2026-12-04 list
    none and are not checked. Raises EngineError (one line)."""
    listed = manifest.get("files")
    if listed is None:
        return
    engine_dir = Path(engine_dir)
    for name in SIDE_FILES:
        path = engine_dir / name
        if name not in listed:
            if path.is_file():
                raise EngineError(f"{path}: not part of the exported engine (manifest.json lists no such file); it would "
                                  "change how texts are read. Remove it, or re-export the engine")
            continue
        listed_file(engine_dir, name, engine_dir / MANIFEST, EngineError, "engine", "Re-export the engine")
        if not path.is_file():
            raise EngineError(f"{path}: missing; the engine directory is incomplete, re-export it")
        digest = sha256_file(path)
        if digest != listed[name]:
            raise EngineError(f"{path}: sha256 {digest[:12]}... does not match manifest.json ({str(listed[name])[:12]}...); "
                              "the file was edited, truncated or swapped. Re-export the engine")


def target_warning(manifest: dict, device: str) -> str | None:
    """One line when an ONNX engine runs on another device than the one its graph was exported for
    (`export --device`; the manifest's optimized_for), else None (also for engines that record no target:
    TensorRT plans, int8 / OpenVINO CPU engines, unoptimized graphs)."""
    built = manifest.get("optimized_for")
    if built not in ("cpu", "gpu"):
        return None
    runs_on = "gpu" if device == "cuda" else "cpu"
    if built == runs_on:
        return None
    if built == "cpu":
        return ("this engine's graph is tuned for CPUs (Add + LayerNormalization, unpadded FFN widths; on an H200 it "
                "ran at 0.71-0.74x the GPU graph): re-export it with `export --device cuda` for the GPU")
    return ("this engine's graph is tuned for GPUs (SkipLayerNormalization, padded FFN widths"
            + (", fp16 activations" if manifest.get("precision") == "fp16" else "")
            + "), slower on CPUs than a CPU export: re-export it with `export --device cpu` for the CPU")


def verify_engine_file(engine_dir, manifest) -> Path:
    """The engine file exists and its sha256 is the one the manifest recorded (no truncation, no swap)."""
    entry = manifest["engine"]
    path = Path(engine_dir) / entry.get("file", "")
    if not path.is_file():
        raise EngineError(f"{path}: missing; the engine directory is incomplete, re-export it")
    # an ONNX graph is read once for both its digest and its facts; a plan (no readable facts) is streamed
    graph = path.read_bytes() if _is_onnx(manifest, path) else None
    digest = hashlib.sha256(graph).hexdigest() if graph is not None else sha256_file(path)
    if digest != entry.get("sha256"):
        raise EngineError(f"{path}: sha256 {digest[:12]}... does not match manifest.json "
                          f"({str(entry.get('sha256'))[:12]}...); the file was edited, truncated or swapped. "
                          "Re-export the engine")
    check_manifest_against_graph(engine_dir, manifest, path, graph)
    return path


def _is_onnx(manifest: dict, engine_file: Path) -> bool:
    return engine_file.suffix == ".onnx" or manifest["engine"].get("kind", "onnx") == "onnx"


# --- what the graph says ------------------------------------------------------------------------

def read_graph_facts(path: Path, graph: bytes | None = None) -> dict[str, int]:
    """What an ONNX graph file says about itself: the prumux.* metadata export records (GRAPH_FACTS), and the
    width of its logits output (num_labels; every ONNX engine has it). {} for a file that is not an ONNX
    graph (the runtime will say what is wrong with it). graph: the file's bytes, when read already. onnx parses
    the file (about 0.15 s for 60 MB, once per opening)."""
    import onnx

    try:
        model = (onnx.load_model_from_string(graph) if graph is not None
                 else onnx.load(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001 - not an ONNX graph (a protobuf DecodeError, a plan, ...)
        return {}
    facts: dict[str, int] = {}
    for prop in model.metadata_props:
        name = prop.key[len(GRAPH_FACT_PREFIX):]
        if prop.key.startswith(GRAPH_FACT_PREFIX) and name in GRAPH_FACTS and prop.value.isdigit():
            facts[name] = int(prop.value)
    outputs = model.graph.output
    dims = outputs[0].type.tensor_type.shape.dim if outputs else []
    if "num_labels" not in facts and len(dims) == 2 and dims[1].HasField("dim_value"):
        facts["num_labels"] = int(dims[1].dim_value)
    return facts


def _side_config(engine_dir: Path, manifest: dict) -> dict[str, int]:
    """The dimensions in the compact model's config.json beside the engine (export writes it; TensorRT plans
    have no readable graph), when it is the file export recorded (verify_side_files names any other)."""
    import json

    config = engine_dir / "config.json"
    listed = (manifest.get("files") or {}).get("config.json")
    try:
        if not config.is_file() or (listed is not None and sha256_file(config) != listed):
            return {}
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {k: values[k] for k in GRAPH_FACTS if isinstance(values.get(k), int) and not isinstance(values[k], bool)}


_FACT_WORDS = {  # (what the manifest says, what the graph has)
    "num_instances": ("num_instances is {}", "N={} (sentences per mux group)"),
    "num_labels": ("labels lists {} labels", "{} logits per row"),
    "max_position_embeddings": ("max_position_embeddings is {}", "a position table of {}"),
    "vocab_size": ("vocab_size is {}", "an embedding table of {} token ids"),
    "type_vocab_size": ("type_vocab_size is {}", "{} token types"),
}


def check_manifest_against_graph(engine_dir, manifest: dict, engine_file: Path, graph: bytes | None = None) -> None:
    """The manifest's fields that the graph determines agree with it: N, the label count, the position table
    (and max_seq_length within it) and the vocabulary sizes, as the graph's own metadata and logits output say
    (ONNX), else as the config.json export wrote beside it. Raises EngineError (one line) for an edited
    manifest or one from another engine. graph: the engine file's bytes, when read already."""
    engine_dir = Path(engine_dir)
    file = engine_dir / MANIFEST
    said = {"num_instances": manifest["num_instances"], "num_labels": len(manifest["labels"]),
            **{k: manifest.get(k) for k in ("max_position_embeddings", "vocab_size", "type_vocab_size")}}
    sources = []
    if _is_onnx(manifest, engine_file):
        sources.append((f"the graph {engine_file.name}", read_graph_facts(engine_file, graph)))
    sources.append(("config.json beside it", _side_config(engine_dir, manifest)))
    for where, facts in sources:
        for name in GRAPH_FACTS:
            if name in facts and said.get(name) is not None and facts[name] != said[name]:
                ours, theirs = _FACT_WORDS[name]
                raise EngineError(f"{file}: {ours.format(said[name])}, but {where} has {theirs.format(facts[name])}; "
                                  "the manifest was edited or belongs to another engine. Re-export the engine")
        positions = facts.get("max_position_embeddings")
        if positions is not None and manifest["max_seq_length"] > positions:
            raise EngineError(f"{file}: max_seq_length {manifest['max_seq_length']} exceeds the position table of "
                              f"{where} ({positions}); the manifest was edited. Re-export the engine")


class Engine:
    """An engine directory opened for running: the verified manifest, graph and side files, and the runner of
    `runtime` (default: the manifest's; runners.RUNNERS) on `device`. Checks inputs; feeds -> logits.

    tf32: let ONNX Runtime's CUDA provider run fp32 MatMuls in TF32. options go to the runner (threads,
    cuda_graph for ONNX Runtime; precision fp32|bf16 for OpenVINO). Which runtime may run the engine where is
    engine.load_engine's check (capabilities.why_not); this class opens what it is given."""

    def __init__(self, engine_dir, runtime: str | None = None, device: str = "cpu", tf32: bool = False, **options):
        from .runners import runner_class

        self.dir = Path(engine_dir)
        self.manifest = read_manifest(self.dir)
        self.path = verify_engine_file(self.dir, self.manifest)
        verify_side_files(self.dir, self.manifest)
        self.runtime = runtime or runtime_of(self.manifest)
        self.runner = runner_class(self.runtime).for_engine(self.path, self.manifest, self.runtime, device=device,
                                                             tf32=tf32, **options)
        self.input_names = self.runner.input_names

    def __reduce__(self):
        raise EngineError("an Engine cannot be pickled or sent to another process (its runtime session cannot be); "
                          "send prumux_deploy.scoring.EngineHandle(engine_dir, ...) instead: it pickles as its "
                          "settings and opens the engine once in each worker process")

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
        """Logits [B, C] (float32) for token ids already made: feeds holds input_ids and attention_mask (and
        token_type_ids for pair engines), [B, S] int64, S at most the engine's max_seq_length; other keys (what
        data.tokenize adds) are ignored. Raises EngineError for inputs the engine cannot take."""
        return self(**{k: v for k, v in feeds.items() if k in ("input_ids", "attention_mask", "token_type_ids")})

    def timed_runner(self, feeds: dict):
        """A zero-argument function that runs the engine once on `feeds` and returns when the work is done:
        what throughput timing calls. GPU engines stage the inputs on the device first, so no host copy
        falls inside the timed region."""
        return self.runner.timed(feeds)

    def _run(self, feeds: dict) -> np.ndarray:
        if feeds["input_ids"].shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.runner(feeds)

    @property
    def arithmetic(self) -> str:
        """What the engine computes in, for reports (validate and bench say it for each side they compare)."""
        return self.runner.arithmetic

    @property
    def uses_tf32(self) -> bool:
        return self.runner.uses_tf32
