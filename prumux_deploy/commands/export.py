"""`prumux-deploy export | triton`: engines from checkpoints, and Triton model repositories from engines."""

from __future__ import annotations

from pathlib import Path

import click

from ..compare import describe_defaults
from ..options import COUNT, NON_NEGATIVE, OPSET, force_option


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True,
              help="onnx: model.onnx for ONNX Runtime; tensorrt: model.plan (needs an NVIDIA GPU and tensorrt).")
@click.option("--opset", type=OPSET, default=18, show_default=True, help="ONNX opset version.")
@click.option("--max-seq-length", type=COUNT, default=None, help="Longest input (default: the checkpoint's).")
@click.option("--optimize/--no-optimize", default=None,
              help="ONNX engines are optimized by default: embeddings + multiplexer fused (EmbedLayerNormalization "
                   "per instance) and ONNX Runtime's transformer optimizer run (fused Attention, BiasGelu; "
                   "SkipLayerNorm only for fp16/GPU engines, where it is faster), with the fused-op counts in the "
                   "manifest. --no-optimize writes the plain exported graph.")
@click.option("--data", default=None,
              help="The task's data (any form validate takes), for --precision int8 or bf16. int8: every "
                   "candidate (ONNX Runtime dynamic, ONNX Runtime static QDQ and OpenVINO NNCF, these two "
                   "calibrated on its train rows) is measured on its dev rows and the fastest within 1 point of "
                   "fp32 accuracy is kept (--runtime narrows the candidates); without it: ONNX Runtime dynamic. "
                   "bf16: refused if it loses more than 1 point on the dev rows. Measurements go in the manifest.")
@click.option("--data-config", default=None, help="Configuration of a hub dataset given as --data.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the engine will run. cuda: the GPU graph (FFN widths padded to multiples of 8, "
                   "SkipLayerNormalization, fp16 by default with fp16 normalisations), run by ONNX Runtime's CUDA "
                   "provider; its parity is still checked here, on the CPU. Running an engine on the other device "
                   "works, with a one-line warning.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default=None,
              help="fp16 for GPUs (with --device cpu every normalisation stays fp32); int8 for CPUs: dynamic "
                   "quantization, or with --data the fastest int8 candidate within 1 point of fp32 (see --data); "
                   "bf16 for CPUs with avx512_bf16 or AMX: the fp32 graph run by OpenVINO in bf16.  [default: fp16 "
                   "with --device cuda, else fp32]")
@click.option("--runtime", type=click.Choice(["auto", "onnxruntime", "openvino"]), default="auto", show_default=True,
              help="What runs the ONNX engine: auto checks the parity of each installed runtime (ONNX Runtime, "
                   "OpenVINO with the openvino extra), times it on this machine at batch 32*N and keeps the "
                   "fastest (int8 with --data: the int8 candidates of both, see --data); the manifest records "
                   "the choice and the measurements.")
@click.option("--tolerance", type=NON_NEGATIVE, default=None,
              help="Largest logit difference vs the masked PyTorch model before the export is refused "
                   f"[default: {describe_defaults('max_logit_error')}].")
@click.option("--min-batch", type=COUNT, default=None, help="TensorRT profile: smallest batch (default 1).")
@click.option("--opt-batch", type=COUNT, default=None,
              help="TensorRT profile: batch to tune for (default 128*N, at most --max-batch).")
@click.option("--max-batch", type=COUNT, default=None, help="TensorRT profile: largest batch (default 128*N).")
@click.option("--min-seq", type=COUNT, default=None, help="TensorRT profile: shortest sequence (default 1).")
@click.option("--opt-seq", type=COUNT, default=None, help="TensorRT profile: sequence to tune for (default max).")
@click.option("--max-seq", type=COUNT, default=None, help="TensorRT profile: longest sequence (default --max-seq-length).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache file, read if present and updated after the build.")
@click.option("--version-compatible", is_flag=True,
              help="TensorRT: build a version-compatible engine (it embeds TensorRT's lean runtime; Triton must be "
                   "started with --backend-config=tensorrt,version-compatible=true, which `triton` prints).")
@click.option("--tf32", is_flag=True,
              help="TensorRT: let fp32 layers run in TF32 (BuilderFlag.TF32, TensorRT's default, cleared without this "
                   "flag) and check parity with the TF32 tolerance (5e-2); recorded in the manifest.")
@force_option()
def export(checkpoint, out, fmt, opset, max_seq_length, optimize, data, data_config, device, precision, runtime,
           tolerance, min_batch, opt_batch, max_batch, min_seq, opt_seq, max_seq, timing_cache, version_compatible, tf32, force):
    """Compact CHECKPOINT and export an engine (ids -> logits, mux/demux inside) to OUT.

    The engine is opened as users will open it and checked on generated batches (sizes not divisible
    by N included); if its logits differ from PyTorch by more than --tolerance nothing is written.
    """
    from ..atomic import check_file_target
    from ..export.options import ExportOptions
    from ..export.pipeline import export_checkpoint
    from ..export.tensorrt import ShapeProfile, TensorRTOptions

    if timing_cache:  # updated after the build: refuse an unwritable one before it
        check_file_target(timing_cache, force=True)
    trt = TensorRTOptions(ShapeProfile(min_batch, opt_batch, max_batch, min_seq, opt_seq, max_seq),
                          str(timing_cache) if timing_cache else None, version_compatible, tf32)
    options = ExportOptions(fmt=fmt, precision=precision, device=device, runtime=runtime, optimize=optimize,
                            opset=opset, max_seq_length=max_seq_length, tolerance=tolerance, data=data,
                            data_config=data_config, tensorrt=trt)
    export_checkpoint(checkpoint, out, options, force=force, log=lambda msg: click.echo(msg, err=True))
    click.echo(f"engine ready: {out}")


@click.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--name", required=True,
              help="Model name in the repository (the directory REPO/NAME; clients call it by this name).")
@click.option("--max-batch-size", type=COUNT, default=None,
              help="Largest batch Triton sends to one model copy; a positive multiple of N "
                   "[default: 32*N; a TensorRT plan: its profile's max batch, which it may not exceed].")
@click.option("--copies", "-k", type=COUNT, default=1, show_default=True, metavar="K",
              help="Copies of the model Triton runs in parallel (its instance_group count).")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Let Triton merge requests into batches (preferred sizes 4N, 8N, ... up to the maximum, "
                   "100 us queue delay).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Where the copies run [default: gpu for TensorRT engines and engines exported with --device cuda, "
                   "which then run on the CUDA provider with TF32 off, as validated; cpu for other ONNX engines].")
@click.option("--ort-tensorrt", is_flag=True,
              help="ONNX engines on GPU: run the graph with ONNX Runtime's TensorRT provider in the graph's own "
                   "precision (TensorRT 11 is strongly typed: FP16 comes from an fp16 export, --precision fp16).")
@click.option("--with-tokenizer", is_flag=True,
              help="Also write NAME_tokenizer (Python backend: text -> token ids) and NAME_ensemble "
                   "(text -> logits), so clients can send raw strings.")
@click.option("--isolation", type=click.Choice(["shared", "request"]), default="request", show_default=True,
              help="request: no mux group ever holds rows of two requests (a Python-backend front pads each "
                   "request with its own rows before the engine, served as NAME_engine), so an answer never "
                   "depends on other clients; shared: the engine is served directly and the batcher's merged "
                   "requests share groups (more throughput for single-row traffic of one trusted client). N=1 engines "
                   "have no groups to share: served directly either way.")
@force_option("the model directories if they exist")
def triton(engine_dir, repo, name, max_batch_size, copies, dynamic_batching, device, ort_tensorrt,
           with_tokenizer, isolation, force):
    """Write a Triton model repository entry REPO/NAME for the engine in ENGINE_DIR.

    \b
    --isolation request (the default):
    REPO/NAME/config.pbtxt           Python backend: keeps each request in mux groups of its own
    REPO/NAME/1/model.py, isolation.py   the front, which calls the engine model below
    REPO/NAME_engine/config.pbtxt    onnxruntime_onnx (tensorrt_plan; openvino backend for bf16 engines)
    REPO/NAME_engine/1/model.onnx    the engine file (its sha256 is checked against manifest.json first)
    REPO/NAME_engine/manifest.json   the engine's manifest, for provenance
    --isolation shared: the engine model itself is REPO/NAME. Clients call NAME either way.

    The engine multiplexes N rows per pass, so the maximum and preferred batch sizes are multiples of N.
    Other models in REPO are left alone; serve it with `tritonserver --model-repository REPO`.
    """
    from ..atomic import check_writable
    from ..engine import read_manifest
    from ..export.triton import (ENGINE_SUFFIX, ENSEMBLE_SUFFIX, PLATFORMS, TOKENIZER_SUFFIX, default_device,
                                 default_max_batch_size, effective_isolation, openvino_backend,
                                 server_options, write_triton_repository)

    check_writable(repo / name)  # an unwritable REPO is refused before the engine is read and hashed
    path = write_triton_repository(engine_dir, repo, name, max_batch_size=max_batch_size, copies=copies,
                                   dynamic_batching=dynamic_batching, with_tokenizer=with_tokenizer,
                                   force=force, device=device, ort_tensorrt=ort_tensorrt, isolation=isolation)
    manifest = read_manifest(path)
    n = int(manifest["num_instances"])
    kind = manifest["engine"]["kind"]
    if effective_isolation(manifest, isolation) != isolation:
        click.echo("N=1: every row has a pass of its own, so there is nothing to isolate; the engine is served "
                   f"directly as {name}")
        isolation = "shared"
    if isolation == "request":
        click.echo(f"wrote {path} (request isolation front, Python backend) in front of "
                   f"{repo / (name + ENGINE_SUFFIX)}:")
    served_by = ("openvino backend, bf16" if openvino_backend(manifest, device or default_device(kind, manifest))
                 else PLATFORMS[kind][0])
    click.echo(f"wrote {repo / (name + ENGINE_SUFFIX) if isolation == 'request' else path} ({served_by}, "
               f"N={n}, max_batch_size "
               f"{max_batch_size or default_max_batch_size(manifest)}, {copies} cop{'y' if copies == 1 else 'ies'} on "
               f"{device or default_device(kind, manifest)})")
    if with_tokenizer:
        click.echo(f"wrote {repo / (name + TOKENIZER_SUFFIX)} (Python backend tokenizer) and "
                   f"{repo / (name + ENSEMBLE_SUFFIX)} (text -> logits; call this one with TEXT)")
    click.echo(" ".join(["serve with: tritonserver --model-repository", str(repo), *server_options(manifest)]))
