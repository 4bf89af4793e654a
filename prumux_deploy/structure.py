"""Per-layer structure and parameter counts, the numbers `inspect` and the manifest report."""

from __future__ import annotations

import torch

from .model import PruMuxConfig, PruMuxModel


def _count(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _full_size(cfg: PruMuxConfig) -> PruMuxModel:
    """The unpruned model of the same base shape, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return PruMuxModel(cfg.full_size())


def describe(model: PruMuxModel, reference: PruMuxModel | None = None) -> dict:
    """Structure of a compact (or unpruned) model; `reference` is the full-size model sparsity is measured
    against (prunable encoder parameters: attention and FFN projections, LayerNorms excluded)."""
    cfg = model.config
    layers = []
    for i, layer in enumerate(model.layers):
        layers.append({"layer": i, "heads": layer.attn.num_heads if layer.attn is not None else 0,
                       "ffn": layer.ffn.up.out_features if layer.ffn is not None else 0,
                       "params": _count(layer)})
    encoder = model.num_encoder_params()
    if reference is None or reference.config.is_compact:  # measure against the base shape it was pruned from
        reference = _full_size(cfg)
    full = reference.num_encoder_params()
    return {
        "hidden_size": cfg.model_dim, "base_hidden_size": cfg.hidden_size,
        "base_heads": cfg.num_attention_heads, "base_ffn": cfg.intermediate_size,
        "num_instances": cfg.num_instances, "layers": layers,
        "params_total": _count(model), "params_encoder": encoder,
        "params_total_before": _count(reference), "params_encoder_before": full,
        "sparsity": 1.0 - encoder / full if full else 0.0,
    }


def format_table(info: dict) -> str:
    base_h, base_f = info["base_heads"], info["base_ffn"]
    rows = [f"{'layer':>5}  {'heads':>9}  {'ffn':>11}  {'params':>11}"]
    for l in info["layers"]:
        rows.append(f"{l['layer']:>5}  {l['heads']:>4}/{base_h:<4}  {l['ffn']:>5}/{base_f:<5}  {l['params']:>11,}")
    rows.append(f"hidden size {info['hidden_size']}/{info['base_hidden_size']}, N={info['num_instances']}, "
                f"params {info['params_total']:,} (encoder {info['params_encoder']:,} of "
                f"{info['params_encoder_before']:,}), sparsity {info['sparsity']:.1%}")
    return "\n".join(rows)


def inspect_path(path) -> tuple[str, dict]:
    """(header lines, structure) of an engine directory or a checkpoint directory.

    An engine reports the structure its manifest recorded (after checking the engine file's sha256); a
    checkpoint is compacted in memory and measured (describe). Raises EngineError / CheckpointError for a
    directory that is neither, or is damaged."""
    from pathlib import Path

    path = Path(path)
    if any((path / f).exists() for f in ("manifest.json", "model.onnx", "model.plan")):
        from .engine import read_manifest, verify_engine_file

        manifest = read_manifest(path)
        verify_engine_file(path, manifest)
        from .engine import runtime_of

        runtime = manifest.get("runtime") or {}
        precision = manifest.get("precision", "fp32")
        header = (f"engine {path}: {manifest['engine']['kind']} {manifest['engine']['file']} run by "
                  f"{runtime_of(manifest)} {runtime.get('version', '')}".rstrip() + f" ({precision}), "
                  f"inputs {[i['name'] for i in manifest['inputs']]}, labels {list(manifest['labels'].values())}")
        return header, manifest["structure"]
    from .checkpoint import load_checkpoint
    from .compact import compact

    model = load_checkpoint(path)
    info = describe(compact(model), model)
    kind = "compact" if model.config.is_compact else ("masked" if model.masks else "unpruned")
    header = f"checkpoint {path}: {kind}, task {model.config.task}, labels {list(model.config.id2label.values())}"
    if model.config.imported_from:
        from .upstream import summary

        info["imported_from"] = model.config.imported_from
        header += f"\nimported from {model.config.imported_from['source']}: {summary(model)}"
    return header, info
