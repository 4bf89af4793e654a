"""Engines: open an engine directory with the runtime its manifest names, and classify texts with it.

    load_engine(dir)    an Engine: the directory plus its runtime's runner (runners.py), checked to run there
    classify(engine, texts)  tokenize, run (optionally with request isolation), softmax

The directory format and the Engine interface are in engine_dir.py; their names are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine_dir import (MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, Engine, read_manifest, runtime_of, sha256_file,
                         target_warning, verify_engine_file)
from .capabilities import computed_precision, runtimes_for, why_not
from .errors import EngineError
from .isolation import each_alone
from .runtime_onnxruntime import (GPU_INSTALL_HINT, check_providers, ort_arithmetic, ort_providers, ort_session,
                                  ort_tf32, ort_timed_runner, provider_names)
from .runtime_tensorrt import profile_chunks

__all__ = ["MANIFEST", "MANIFEST_FORMAT", "MANIFEST_VERSION", "Engine", "read_manifest", "verify_engine_file", "sha256_file",
           "GPU_INSTALL_HINT", "check_providers", "ort_arithmetic", "ort_providers", "ort_session",
           "ort_tf32", "ort_timed_runner", "provider_names", "profile_chunks", "RUNTIMES",
           "runtime_of", "load_engine", "EngineTargetWarning", "target_warning", "Predictions", "classify"]

RUNTIMES = runtimes_for("onnx")  # what runs an ONNX engine file (manifest "runtime"; TensorRT: plans)


class EngineTargetWarning(UserWarning):
    """An engine runs on another device than the one its graph was exported for (engine_dir.target_warning)."""


def load_engine(engine_dir, device: str = "cpu", runtime: str | None = None, tf32: bool = False, warn=None,
                **kwargs) -> Engine:
    """Open an engine directory with the runtime its manifest names: ONNX engines with ONNX Runtime (CPU, or
    CUDA with device='cuda') or OpenVINO (CPU; prumux_deploy/runtime_openvino.py), TensorRT plans with
    TensorRT. runtime: run an ONNX engine with another runtime than its manifest's ("onnxruntime" or
    "openvino"; an OpenVINO engine runs in ONNX Runtime too, and the reverse). tf32: on device cuda, let
    ONNX Runtime's CUDA provider run fp32 MatMuls in TF32 (off unless asked; a TensorRT plan's TF32 was
    fixed when it was built; a plan runs on the GPU whatever `device` says). cuda_graph=True (ONNX engines on
    device cuda): each input shape runs as a CUDA-graph replay of the graph with that shape fixed
    (runtime_onnxruntime.CudaGraphRunner). warn: receives one line when the graph was exported for the other
    device (`export --device`); default: an EngineTargetWarning. Raises EngineError for an int8 engine on device cuda:
    its quantized ops (DynamicQuantizeMatMul, QAttention) are CPU kernels, so a "cuda" run would time the CPU."""
    manifest = read_manifest(engine_dir)
    mismatch = target_warning(manifest, device)
    if mismatch:
        if warn is None:
            import warnings

            warnings.warn(mismatch, EngineTargetWarning, stacklevel=2)
        else:
            warn(mismatch)
    runtime = _runtime_for(engine_dir, manifest, device, runtime)
    if runtime == "tensorrt":
        device = "cuda"  # a plan is GPU code; TensorRTRunner says so in one line when there is no GPU
    reason = why_not(runtime, device, computed_precision(manifest.get("precision", "fp32"), runtime))
    if reason:
        fix = ("use runtime onnxruntime for device cuda" if runtime == "openvino" else
               "use device cpu, or export --device cuda for the GPU")
        raise EngineError(f"{engine_dir}: {reason}; {fix}")
    return Engine(engine_dir, runtime=runtime, device=device, tf32=tf32, **kwargs)


def _runtime_for(engine_dir, manifest: dict, device: str, runtime: str | None) -> str:
    """The runtime that runs this engine on `device`: a TensorRT plan's own; for an ONNX engine the one asked
    for, else ONNX Runtime on a GPU (the same model.onnx runs in its CUDA provider), else the manifest's."""
    kind = manifest["engine"].get("kind")
    if kind == "tensorrt":
        return "tensorrt"
    if kind != "onnx":
        raise EngineError(f"{engine_dir}: unknown engine kind {kind!r}; re-export the engine")
    runtime = runtime or ("onnxruntime" if device == "cuda" else runtime_of(manifest))
    if runtime not in RUNTIMES:
        raise EngineError(f"{engine_dir}: unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    return runtime


def _check_utf8(text: str, number: int, what: str) -> None:
    """A text that cannot be UTF-8 (a command-line argument in another encoding arrives with lone surrogates,
    Python's surrogateescape) is refused in one line, before the tokenizer fails on it obscurely."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EngineError(f"{what} {number} is not valid UTF-8 (character {e.start + 1}: {text[:e.start][-20:]!r} then an "
                          "undecodable byte); pass text in UTF-8 (set the terminal's or the script's encoding to "
                          "UTF-8, e.g. iconv -f latin1 -t utf-8)") from None


@dataclass
class Predictions:
    """What `classify` returns for B texts: the engine's inputs, the class probabilities [B, C] and the C
    label names; best() gives each text's most likely label and its probability."""

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
    from .data import check_lengths, load_tokenizer, tokenize
    from .isolation import MODES

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
    for k, text in enumerate(texts + (second or [])):
        _check_utf8(text, k % len(texts) + 1, "second sentence" if k >= len(texts) else "text")
    tokenizer = load_tokenizer(engine.dir)
    check_lengths(tokenizer, texts, second, engine.max_seq_length, truncate, warn or (lambda msg: None))
    feeds = tokenize(tokenizer, texts, second, max_length=engine.max_seq_length,
                     uses_token_types=engine.uses_token_types)
    if isolation == "shared":
        logits = engine.run_feeds(feeds)  # [B, C]
    else:
        logits = each_alone(engine.run_feeds, feeds, engine.num_instances)
    bad = np.flatnonzero(~np.isfinite(logits).all(1))
    if bad.size:
        raise EngineError(f"the engine computed NaN or Inf logits for {bad.size} of {len(texts)} texts (first: "
                          f"{texts[bad[0]][:40]!r}); the engine is broken (an fp16 overflow?): re-export it, as fp32 "
                          "if it is fp16 (prumux-deploy export --precision fp32)")
    return Predictions(feeds, softmax(logits.astype(np.float64)), engine.labels)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, as scipy.special.softmax computes it (the same values, bit for bit). Not
    scipy's own: importing scipy starts a second OpenBLAS, whose start-up spins forever when its thread
    buffers cannot be allocated (predict under a tight `ulimit -v` hung here, after the engine had taken its
    memory)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
