"""`prumux-deploy export`: checkpoint -> compact model -> engine file -> parity check -> engine directory.

Everything is written into a temporary directory beside OUT and renamed into place only after the
engine passed its parity check, so a failed or interrupted export leaves OUT as it was.
"""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path

from prumux_deploy.atomic import atomic_dir, check_target
from prumux_deploy.checkpoint import check_vocab, config_dict, load_checkpoint
from prumux_deploy.data import copy_tokenizer, load_tokenizer
from prumux_deploy.documents import dumps, sha256_file
from prumux_deploy.engine import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION
from prumux_deploy.errors import ParityError, PruMuxError
from prumux_deploy.structure import describe

from prumux_deploy.compact import compact
from .gpu import ALIGN
from .onnx import DEFAULT_OPSET, export_onnx, parity, record_graph_facts
from .options import ExportOptions


def library_versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from prumux_deploy import __version__

    return {"prumux_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def build_manifest(cfg, engine_file: Path, kind: str, opset: int, max_len: int, structure: dict,
                   extra: dict | None = None) -> dict:
    return {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
        "engine": {"file": engine_file.name, "kind": kind, "opset": opset,
                   "sha256": sha256_file(engine_file), "bytes": engine_file.stat().st_size},
        "inputs": [{"name": n, "dtype": "int64", "dims": ["batch", "sequence"]}
                   for n in cfg.input_names],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", cfg.num_labels]}],
        "num_instances": cfg.num_instances, "task": cfg.task,
        "vocab_size": cfg.vocab_size, "type_vocab_size": cfg.type_vocab_size,  # engines check ids against these
        "labels": {str(i): cfg.id2label[i] for i in range(cfg.num_labels)},
        "max_seq_length": max_len, "max_position_embeddings": cfg.max_position_embeddings,
        # attend_to_padding: every row is padded to this length inside the graph; longer rows are refused
        "fixed_length": cfg.max_seq_length if cfg.attend_to_padding else None,
        "structure": structure, **(extra or {}), "versions": library_versions(),
    }


def export_checkpoint(checkpoint, out, options: ExportOptions | None = None, *, force: bool = False, log=print,
                      **fields) -> dict:
    """Export the checkpoint directory `checkpoint` to the engine directory `out` as `options` say (an
    ExportOptions, export/options.py; or its fields as keywords); returns the manifest.

    Steps: compact -> ONNX -> (ONNX Runtime's transformer optimizer, fp16 / int8) or (TensorRT plan) ->
    manifest -> open the engine as users will and compare its logits with the masked PyTorch model on
    generated batches -> rename the directory into place.

    int8 with data: the int8 candidates of the runtime(s) measured on it, the fastest within 1 point of fp32
    kept; bf16 with data: its dev accuracy checked against fp32's (export/quantize.py). device cuda: FFN widths
    padded to multiples of 8, SkipLayerNormalization, fp16 activations throughout (the manifest's
    optimized_for records it). runtime auto: at fp32 every runtime installed is checked for parity and timed at
    batch 32*N x sequence min(128, max length), and the fastest is kept (the manifest's runtime.choice records
    the measurements); at int8 with data both runtimes' candidates compete (quantization.measured); bf16 is
    OpenVINO's. log receives progress lines. `out` must not exist unless force.

    Raises PruMuxError for inconsistent arguments (before any work), CheckpointError for an unreadable
    checkpoint, DataError for unusable `data`, ParityError when the engine's logits differ from PyTorch's by
    more than the tolerance, either side computes NaN or Inf, or bf16 loses more than 1 point on the dev rows;
    in every case nothing is written to `out`."""
    if options is None:
        options = ExportOptions(**fields)
    elif fields:
        raise TypeError(f"give `options` or keyword options, not both ({', '.join(fields)})")
    options = options.resolved()  # every refusal of a combination, before any work
    fmt, precision, device, runtime = options.fmt, options.precision, options.device, options.runtime
    optimize, opset, tolerance, data = options.optimize, options.opset, options.tolerance, options.data
    max_seq_length, trt_opts = options.max_seq_length, options.tensorrt
    check_target(out, force)  # refuse before spending minutes on the export
    masked = load_checkpoint(checkpoint)
    cfg = masked.config
    max_len = max_seq_length or cfg.max_seq_length
    if cfg.attend_to_padding and max_len != cfg.max_seq_length:
        raise PruMuxError(f"this model attends to padding up to exactly {cfg.max_seq_length} tokens (its logits depend "
                          f"on that length); leave out `max_seq_length`, or re-import with `max_seq_length` {max_len}")
    if max_len > cfg.max_position_embeddings:
        raise PruMuxError(f"`max_seq_length` {max_len} exceeds the model's position table "
                          f"({cfg.max_position_embeddings}); use at most {cfg.max_position_embeddings}")
    if masked.tokenizer_dir is not None:
        check_vocab(load_tokenizer(masked.tokenizer_dir), cfg, checkpoint)
    rows = None
    if data is not None:  # read (and refused when unusable) before minutes of compaction and export
        from .quantize import TaskRows

        rows = TaskRows(cfg, masked.tokenizer_dir, data, max_len, options.data_config, calibration=precision == "int8")
    trt_profile = None
    if fmt == "tensorrt":  # the profile decides the longest input: the manifest must say the same
        given = trt_opts.profile
        if max_seq_length and given.max_seq and max_seq_length != given.max_seq:
            raise PruMuxError(f"`max_seq_length` {max_seq_length} and `max_seq` {given.max_seq} disagree; the "
                              "engine's longest input is one number, give one of them")
        trt_profile = replace(given, max_seq=given.max_seq or max_len).resolve(cfg.num_instances,
                                                                              cfg.max_position_embeddings)
        max_len = trt_profile.max_seq
        from .tensorrt import require_tensorrt

        require_tensorrt()
    log(f"compacting {checkpoint} (N={cfg.num_instances}, {'masked' if masked.masks else 'no masks'})")
    model = compact(masked)
    if cfg.task is None:
        log("the checkpoint names no task: the engine reads single sentences (no token_type_ids)")
    with atomic_dir(out, force=force) as tmp:
        onnx_file = tmp / "model.onnx"
        log(f"exporting ONNX (opset {opset}, inputs {', '.join(cfg.input_names)}, dynamic batch and sequence)")
        from_data = precision == "int8" and rows is not None
        engine_file = onnx_file
        extra = write_graph(model, onnx_file, max_len, precision if fmt == "onnx" and not from_data else "fp32",
                            device, optimize and fmt == "onnx" and not from_data, opset, log)
        extra["precision"] = precision
        if from_data:
            extra.update(_int8_from_data(onnx_file, rows, runtime, log))
            runtime = extra["quantization"]["runtime"]  # what the choice measured is what runs it
        elif fmt == "tensorrt" and precision == "fp16":
            from .optimize import convert_fp16

            convert_fp16(onnx_file, onnx_file)  # strongly typed TensorRT takes its precision from the graph
        if fmt == "tensorrt":
            from .tensorrt import build_plan

            engine_file = tmp / "model.plan"
            extra["tensorrt"] = build_plan(onnx_file, engine_file, trt_profile, cfg.input_names, trt_opts, log)
            onnx_file.unlink()
        if from_data:  # the chosen int8 graph replaced write_graph's
            record_graph_facts(engine_file, model.config)
        manifest = build_manifest(cfg, engine_file, fmt, opset, max_len, describe(model, masked), extra)
        if runtime == "openvino":
            from prumux_deploy.runtime_openvino import runtime_entry

            manifest["runtime"] = runtime_entry(precision)
        if precision == "bf16" and rows is not None:
            from .quantize import check_bf16_accuracy

            manifest["validation"] = check_bf16_accuracy(onnx_file, rows, out, log)
        (tmp / "config.json").write_text(dumps(config_dict(model), indent=2) + "\n")
        # one label per line, in class order: what C++ and Triton consumers read without a JSON parser
        (tmp / "labels.txt").write_text("".join(f"{cfg.id2label[i]}\n" for i in range(cfg.num_labels)))
        if getattr(masked, "tokenizer_dir", None):
            copy_tokenizer(masked.tokenizer_dir, tmp)
        manifest["files"] = side_file_digests(tmp)  # tokenizer, labels and config: checked before every use
        write_manifest(tmp, manifest)
        log(f"checking parity of the {fmt} engine against the PyTorch model ({'masked' if masked.masks else 'no masks'})")
        if runtime == "auto":  # fp32: every candidate's parity is checked there; the chosen one's is the engine's
            manifest["runtime"], manifest["parity"] = choose_runtime(tmp, masked, max_len, tolerance, out, log)
        else:
            manifest["parity"] = check_parity(tmp, masked, max_len, tolerance, out, trt_profile)
        write_manifest(tmp, manifest)
    log(f"wrote {out}/{engine_file.name} (max logit error {manifest['parity']['max_abs_logit_error']:.2e})")
    return manifest


def write_graph(model, onnx_file: Path, max_len: int, precision: str = "fp32", device: str = "cpu",
                optimize: bool = True, opset: int = DEFAULT_OPSET, log=lambda message: None) -> dict:
    """The engine graph `export` writes for a compact model at (precision, device): the model as the target
    takes it (_for_device), exported (export_onnx), then optimized and converted or quantized (_optimize) unless
    optimize is False and precision fp32. One function, so that bench times the bytes export writes. Returns
    the manifest entries that describe the graph (precision, optimized, fused_ops, ...)."""
    exported = _for_device(model, device, log)
    export_onnx(exported, onnx_file, opset=opset, max_seq_length=max_len)
    entries = {"precision": precision, "optimized": False}
    if device == "cuda":
        entries["gpu"] = {"target": "cuda", "align": ALIGN, "padded_ffn": exported.config.ffn_per_layer,
                          "fp16_normalizations": precision == "fp16"}
    if optimize or precision != "fp32":
        entries.update(_optimize(onnx_file, precision, log, model.config, device))
    record_graph_facts(onnx_file, model.config)  # what the manifest's N, labels, ... are checked against
    return entries


def _for_device(model, device: str, log):
    """The compact model as the target's graph is exported from it: on cuda with FFN widths padded to
    multiples of 8 (export/gpu.py; the same function, zero units), else unchanged."""
    if device != "cuda":
        return model
    from .gpu import pad_ffn_widths

    padded, widths = pad_ffn_widths(model)
    if widths != model.config.ffn_per_layer:
        log(f"GPU target: FFN widths padded to multiples of {ALIGN} with zero units "
            f"({sum(widths) - sum(model.config.ffn_per_layer)} added)")
    return padded


def _optimize(onnx_file: Path, precision: str, log, cfg=None, device: str = "cpu") -> dict:
    """Run ONNX Runtime's transformer optimizer in place (refused when an expected fusion did not fire:
    optimize.check_fusions), then convert to fp16 or quantize to int8 (dynamic: no task data to calibrate
    on). device cuda: the GPU target (export/gpu.py). Returns the manifest entries: fused-op counts (so users
    see which fusions fired), quantized ops and the int8 method."""
    from .optimize import check_fusions, convert_fp16, optimize_onnx, quantize_int8

    log("optimizing with ONNX Runtime's transformer optimizer")
    # GPU graphs (and fp16 ones, which are for GPUs) use SkipLayerNormalization, the fast form there; CPU graphs
    # keep Add + LN
    for_gpu = precision == "fp16" or device == "cuda"
    entries = {"optimized": True, "optimized_for": "gpu" if for_gpu else "cpu",
               "fused_ops": optimize_onnx(onnx_file, onnx_file, for_gpu=for_gpu)}
    if cfg is not None:
        check_fusions(entries["fused_ops"], cfg, for_gpu)
    if precision == "fp16" and device == "cuda":
        log("converting to fp16 (activations and normalisations stored in fp16, their statistics accumulated in fp32 "
            "by ONNX Runtime's CUDA kernels; int64 inputs and fp32 logits kept)")
        convert_fp16(onnx_file, onnx_file, norms_in_fp32=False)
    elif precision == "fp16":
        log("converting to fp16 (every normalisation and its gamma/beta kept in fp32, int64 inputs and fp32 logits kept)")
        convert_fp16(onnx_file, onnx_file)
    elif precision == "int8":
        log("quantizing weights to int8 (dynamic quantization, per channel; task data would also try static)")
        entries["quantized_ops"] = quantize_int8(onnx_file, onnx_file)
        entries["quantization"] = {"method": "dynamic", "reason": "no task data to calibrate static quantization on"}
    return entries


def _int8_from_data(onnx_file: Path, rows, runtime: str, log) -> dict:
    """int8 with task data (export/quantize.py): ONNX Runtime's dynamic and static candidates on the
    optimized graph (`runtime` onnxruntime or auto), OpenVINO's NNCF candidate on the plain one (openvino or
    auto); the chosen graph replaces `onnx_file`. Returns the manifest entries; quantization.runtime says
    which runtime the chosen engine is for."""
    import shutil

    from .optimize import optimize_onnx
    from .quantize import choose_int8

    runtimes = ("onnxruntime", "openvino") if runtime == "auto" else (runtime,)
    plain, optimized, fused = onnx_file.with_name("plain.onnx"), None, None
    shutil.copyfile(onnx_file, plain)
    if "onnxruntime" in runtimes:
        log("optimizing with ONNX Runtime's transformer optimizer")
        optimized = onnx_file.with_name("optimized.onnx")
        fused = optimize_onnx(plain, optimized)
    try:
        quantization = choose_int8(plain, optimized, onnx_file, rows=rows, runtimes=runtimes, log=log)
    finally:
        for path in (plain, optimized):
            if path is not None:
                path.unlink(missing_ok=True)
    entries = {"quantization": quantization, "quantized_ops": quantization.pop("quantized_ops")}
    if quantization["runtime"] == "onnxruntime":
        entries.update(optimized=True, optimized_for="cpu", fused_ops=fused)
    return entries


def side_file_digests(engine_dir: Path) -> dict[str, str]:
    """{name: sha256} of what an engine reads beside its graph (config.json, labels.txt, the tokenizer files):
    a damaged or edited tokenizer changes every answer while the graph stays intact, so it is checked like the
    graph (engine_dir.verify_side_files)."""
    from prumux_deploy.engine_dir import SIDE_FILES

    return {name: sha256_file(engine_dir / name) for name in SIDE_FILES if (engine_dir / name).is_file()}


def write_manifest(engine_dir: Path, manifest: dict):
    (engine_dir / MANIFEST).write_text(dumps(manifest, indent=2) + "\n")


def choose_runtime(engine_dir: Path, reference, max_len: int, tolerance: float, out, log) -> tuple[dict, dict]:
    """`runtime` auto: check each runtime's parity on the written engine and time it at batch 32*N x sequence
    min(128, max_len) (median of repeats, prumux_deploy/timing.py); the fastest that passes is kept. Returns
    the manifest's runtime entry (with choice = {runtime: samples/s, ..., chosen, reason}) and the chosen
    runtime's parity record (check_parity's)."""
    import numpy as np

    from prumux_deploy.engine import load_engine
    from prumux_deploy.reference import timing_inputs
    from prumux_deploy.runtime_openvino import runtime_entry
    from prumux_deploy.timing import throughput

    cfg = reference.config
    batch, seq = 32 * cfg.num_instances, min(128, max_len)
    ids, mask = timing_inputs(batch, seq, cfg.vocab_size)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    if cfg.uses_token_types:
        feeds["token_type_ids"] = np.zeros((batch, seq), dtype=np.int64)
    measured, parities = {}, {}
    for runtime in ("onnxruntime", "openvino"):
        engine = load_engine(engine_dir, runtime=runtime, warn=_checked_on_the_cpu)
        parities[runtime] = check_parity(engine_dir, reference, max_len, tolerance, out, engine=engine)
        measured[runtime] = throughput(engine.timed_runner(feeds), batch, warmup=2, repeats=5)["samples_per_s"]
    chosen = max(measured, key=measured.get)
    other = min(measured, key=measured.get)
    ratio = measured[chosen] / measured[other]
    log(f"runtime auto: {chosen} ({measured[chosen]:.1f} samples/s at {batch}x{seq}, {ratio:.2f}x {other}); "
        "both within parity")
    entry = runtime_entry("fp32") if chosen == "openvino" else {"name": "onnxruntime"}
    entry["choice"] = {"samples_per_s": measured, "batch": batch, "sequence": seq, "chosen": chosen,
                       "reason": f"fastest of the runtimes whose parity holds ({ratio:.2f}x {other})"}
    return entry, parities[chosen]


def _checked_on_the_cpu(line: str) -> None:
    """A GPU target's parity is checked on the CPU (ONNX Runtime's CPU kernels take the same graph): the
    other-device notice load_engine gives users does not apply to this check."""


def check_parity(engine_dir: Path, reference, max_len: int, tolerance: float, out, profile=None,
                 engine=None) -> dict:
    """Run the engine as users will (load_engine, with the manifest's runtime; or `engine`, already loaded)
    on generated inputs; refuse it past the tolerance. A TensorRT `profile` bounds the batches and lengths
    tried to the ones the engine was built for."""
    from prumux_deploy.engine import load_engine

    engine = engine or load_engine(engine_dir, warn=_checked_on_the_cpu)
    bounds = {} if profile is None else dict(min_batch=profile.min_batch, max_batch=profile.max_batch,
                                             min_len=profile.min_seq)
    from prumux_deploy.reference import parity_inputs

    cases, batches, lengths = parity_inputs(reference.config, max_len, **bounds)
    try:
        result = parity(engine.run_feeds, reference, cases)
    except ParityError as e:
        raise ParityError(f"{e}; nothing was written to {out}") from None
    if not result.within(tolerance):
        raise ParityError(f"engine logits differ from PyTorch by {result.max_abs_error:.3g} > {tolerance:g}; "
                          f"nothing was written to {out}")
    return {"max_abs_logit_error": result.max_abs_error, "mean_abs_logit_error": result.mean_abs_error,
            "agreement": result.agreement, "tolerance": tolerance, "reference": "masked PyTorch fp32 (CPU)",
            "engine_arithmetic": engine.arithmetic,
            "batch_sizes": batches, "lengths": lengths}
