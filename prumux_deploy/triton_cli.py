"""`prumux-deploy triton`: write a Triton Inference Server model repository for an engine.

Registered on the main group in cli.py (`main.add_command(triton)`).
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import COUNT


@click.command("triton")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--name", required=True,
              help="Model name in the repository (the directory REPO/NAME; clients call it by this name).")
@click.option("--max-batch-size", type=COUNT, default=None,
              help="Largest batch Triton sends to one model instance; a positive multiple of N "
                   "[default: 32*N].")
@click.option("--instances", "-k", type=COUNT, default=1, show_default=True, metavar="K",
              help="Model instances (copies) Triton runs in parallel.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Let Triton merge requests into batches (preferred sizes 4N, 8N, ... up to the maximum, "
                   "100 us queue delay).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Where the instances run [default: cpu for ONNX engines, gpu for TensorRT engines].")
@click.option("--ort-tensorrt", is_flag=True,
              help="ONNX engines on GPU: run the graph with ONNX Runtime's TensorRT provider in FP16.")
@click.option("--with-tokenizer", is_flag=True,
              help="Also write NAME_tokenizer (Python backend: text -> token ids) and NAME_ensemble "
                   "(text -> logits), so clients can send raw strings.")
@click.option("--force", is_flag=True, help="Replace the model directories if they exist.")
def triton(engine_dir, repo, name, max_batch_size, instances, dynamic_batching, device, ort_tensorrt,
           with_tokenizer, force):
    """Write a Triton model repository entry REPO/NAME for the engine in ENGINE_DIR.

    \b
    REPO/NAME/config.pbtxt    onnxruntime_onnx (or tensorrt_plan); shapes without the batch axis
    REPO/NAME/1/model.onnx    the engine file (its sha256 is checked against manifest.json first)
    REPO/NAME/manifest.json   the engine's manifest, for provenance

    The engine multiplexes N rows per pass, so the maximum and preferred batch sizes are multiples of N.
    Other models in REPO are left alone; serve it with `tritonserver --model-repository REPO`.
    """
    from prumux_deploy.engine import read_manifest
    from prumux_deploy.export.triton import (DEFAULT_BATCHES_PER_N, ENSEMBLE_SUFFIX, PLATFORMS,
                                             TOKENIZER_SUFFIX, default_device, write_triton_repository)

    path = write_triton_repository(engine_dir, repo, name, max_batch_size=max_batch_size, instances=instances,
                                   dynamic_batching=dynamic_batching, with_tokenizer=with_tokenizer,
                                   force=force, device=device, ort_tensorrt=ort_tensorrt)
    manifest = read_manifest(path)
    n = int(manifest["num_instances"])
    kind = manifest["engine"]["kind"]
    click.echo(f"wrote {path} ({PLATFORMS[kind][0]}, N={n}, max_batch_size "
               f"{max_batch_size or DEFAULT_BATCHES_PER_N * n}, {instances} instance(s) on "
               f"{device or default_device(kind)})")
    if with_tokenizer:
        click.echo(f"wrote {repo / (name + TOKENIZER_SUFFIX)} (Python backend tokenizer) and "
                   f"{repo / (name + ENSEMBLE_SUFFIX)} (text -> logits; call this one with TEXT)")
    click.echo(f"serve with: tritonserver --model-repository {repo}")
