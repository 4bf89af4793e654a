"""`prumux-deploy export`: checkpoint -> compact model -> engine file -> parity check -> engine directory.

Everything is written into a temporary directory beside OUT and renamed into place only after the
engine passed its parity check, so a failed or interrupted export leaves OUT as it was.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from prumux_deploy.atomic import atomic_dir, check_target
from prumux_deploy.checkpoint import config_dict, copy_tokenizer, load_checkpoint
from prumux_deploy.data import TASKS
from prumux_deploy.engine import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, sha256_file
from prumux_deploy.errors import ParityError, PruMuxError
from prumux_deploy.structure import describe

from .compact import compact
from .onnx import DEFAULT_OPSET, PARITY_TOLERANCE, export_onnx, input_names, max_logit_error, parity_inputs


def uses_token_types(cfg) -> bool:
    task = TASKS.get((cfg.task or "").lower())
    return bool(task and task.is_pair)


def library_versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from prumux_deploy import __version__

    return {"prumux_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def build_manifest(cfg, engine_file: Path, opset: int, token_types: bool, max_len: int, structure: dict,
                   parity: dict) -> dict:
    return {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
        "engine": {"file": engine_file.name, "kind": "onnx", "opset": opset,
                   "sha256": sha256_file(engine_file), "bytes": engine_file.stat().st_size},
        "inputs": [{"name": n, "dtype": "int64", "dims": ["batch", "sequence"]}
                   for n in input_names(token_types)],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", cfg.num_labels]}],
        "num_instances": cfg.num_instances, "task": cfg.task,
        "labels": {str(i): cfg.id2label[i] for i in range(cfg.num_labels)},
        "max_seq_length": max_len, "max_position_embeddings": cfg.max_position_embeddings,
        "structure": structure, "parity": parity, "versions": library_versions(),
    }


def export_checkpoint(checkpoint, out, fmt: str = "onnx", opset: int = DEFAULT_OPSET,
                      max_seq_length: int | None = None, force: bool = False,
                      tolerance: float = PARITY_TOLERANCE, log=print) -> dict:
    """Export a checkpoint directory to an engine directory; returns the manifest."""
    if fmt != "onnx":
        raise PruMuxError(f"--format {fmt} is not available yet; use --format onnx")
    check_target(out, force)  # refuse before spending minutes on the export
    masked = load_checkpoint(checkpoint)
    cfg = masked.config
    max_len = max_seq_length or cfg.max_seq_length
    if max_len > cfg.max_position_embeddings:
        raise PruMuxError(f"--max-seq-length {max_len} exceeds the model's position table "
                          f"({cfg.max_position_embeddings}); use at most {cfg.max_position_embeddings}")
    log(f"compacting {checkpoint} (N={cfg.num_instances}, {'masked' if masked.masks else 'no masks'})")
    model = compact(masked)
    token_types = uses_token_types(cfg)
    with atomic_dir(out, force=force) as tmp:
        engine_file = tmp / "model.onnx"
        log(f"exporting ONNX (opset {opset}, dynamic batch and sequence)")
        export_onnx(model, engine_file, opset=opset, uses_token_types=token_types, max_seq_length=max_len)
        log("checking parity in ONNX Runtime against the masked PyTorch model")
        cases, batches, lengths = parity_inputs(cfg, token_types, max_len)
        error = max_logit_error(_bare_session(engine_file), masked, cases)
        if not error <= tolerance:
            raise ParityError(f"ONNX Runtime logits differ from PyTorch by {error:.3g} > {tolerance:g}; "
                              f"nothing was written to {out}")
        parity = {"max_abs_logit_error": error, "tolerance": tolerance, "reference": "masked PyTorch fp32",
                  "batch_sizes": batches, "lengths": lengths}
        manifest = build_manifest(cfg, engine_file, opset, token_types, max_len, describe(model, masked),
                                  parity)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config_dict(model), indent=2) + "\n")
        if getattr(masked, "tokenizer_dir", None):
            copy_tokenizer(masked.tokenizer_dir, tmp)
    log(f"wrote {out}/model.onnx (max logit error {error:.2e})")
    return manifest


def _bare_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(["logits"], feeds)[0]
