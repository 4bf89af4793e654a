"""Compaction: fold CoFi masks into the weights and remove what they prune.

Every mask scale is folded into the neighbouring weights (see the semantics in prumux_deploy/model.py):
    head_z[l, h]          -> columns of head h in the attention output projection
    head_layer_z[l]       -> rows and bias of the attention output projection
    intermediate_z[l, j]  -> column j of the FFN down projection
    mlp_z[l]              -> rows and bias of the FFN down projection
    hidden_z[k]           -> rows and bias of every sub-layer output projection, every LayerNorm's
                             weight and bias, and the demux keys
Then pruned heads, FFN units and hidden dims are sliced away and sub-layers with nothing left are
dropped, giving a model with per-layer widths and no masks whose logits equal the masked model's.
"""

from __future__ import annotations

import copy

import torch

from prumux_deploy.model import PruMuxConfig, PruMuxModel


def _kept(z: torch.Tensor | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices kept, their scales) for a mask vector; no mask keeps everything at scale 1."""
    if z is None:
        return torch.arange(size), torch.ones(size)
    idx = (z != 0).nonzero().flatten()
    return idx, z[idx].float()


def _layer_gate(masks: dict, name: str, layer: int) -> float:
    z = masks.get(name)
    return 1.0 if z is None else float(z[layer])


def _kept_in_block(masks, unit_key: str, block_key: str, layer: int, size: int):
    """Kept units (heads or FFN units) of one layer's block, their scales, and the block gate; no units
    when the whole block is gated off."""
    idx, scale = _kept(_row(masks, unit_key, layer), size)
    gate = _layer_gate(masks, block_key, layer)
    if gate == 0 or idx.numel() == 0:
        idx = idx[:0]
    return idx, scale, gate


def _row(masks: dict, name: str, layer: int):
    z = masks.get(name)
    return None if z is None else z[layer]


@torch.no_grad()
def compact(model: PruMuxModel) -> PruMuxModel:
    """Return a new, mask-free model with pruned structure removed; logits match within fp32 rounding."""
    if model.config.is_compact:
        return copy.deepcopy(model)
    cfg, masks, sd = model.config, model.masks, model.state_dict()
    D = cfg.head_dim
    keep, s_h = _kept(masks.get("hidden_z"), cfg.hidden_size)  # kept hidden dims and their scales
    if keep.numel() == 0:
        raise ValueError("hidden_z prunes every hidden dim; nothing would remain")

    out: dict[str, torch.Tensor] = {}

    def ln(prefix):  # a LayerNorm followed by "* hidden_z": fold the scale into weight and bias
        out[prefix + ".weight"] = sd[prefix + ".weight"][keep] * s_h
        out[prefix + ".bias"] = sd[prefix + ".bias"][keep] * s_h

    for name in ("word", "position", "token_type"):
        out[f"embeddings.{name}.weight"] = sd[f"embeddings.{name}.weight"][:, keep]
    ln("embeddings.ln")
    out["mux.vectors"] = sd["mux.vectors"][:, keep]

    heads, widths = [], []
    for l in range(cfg.num_hidden_layers):
        p = f"layers.{l}"
        # attention: kept heads, unless the whole block is gated off
        head_idx, head_scale, gate = _kept_in_block(masks, "head_z", "head_layer_z", l, cfg.num_attention_heads)
        heads.append(head_idx.numel())
        if head_idx.numel():
            cols = (head_idx[:, None] * D + torch.arange(D)).flatten()  # feature columns of kept heads
            for proj in ("query", "key", "value"):
                out[f"{p}.attn.{proj}.weight"] = sd[f"{p}.attn.{proj}.weight"][cols][:, keep]
                out[f"{p}.attn.{proj}.bias"] = sd[f"{p}.attn.{proj}.bias"][cols]
            row_scale = (gate * s_h)[:, None]
            col_scale = head_scale.repeat_interleave(D)[None, :]
            out[f"{p}.attn.out.weight"] = sd[f"{p}.attn.out.weight"][keep][:, cols] * row_scale * col_scale
            out[f"{p}.attn.out.bias"] = sd[f"{p}.attn.out.bias"][keep] * gate * s_h
            ln(f"{p}.attn.ln")
        # FFN: kept units, unless the whole block is gated off
        unit_idx, unit_scale, gate = _kept_in_block(masks, "intermediate_z", "mlp_z", l, cfg.intermediate_size)
        widths.append(unit_idx.numel())
        if unit_idx.numel():
            out[f"{p}.ffn.up.weight"] = sd[f"{p}.ffn.up.weight"][unit_idx][:, keep]
            out[f"{p}.ffn.up.bias"] = sd[f"{p}.ffn.up.bias"][unit_idx]
            out[f"{p}.ffn.down.weight"] = (sd[f"{p}.ffn.down.weight"][keep][:, unit_idx]
                                           * (gate * s_h)[:, None] * unit_scale[None, :])
            out[f"{p}.ffn.down.bias"] = sd[f"{p}.ffn.down.bias"][keep] * gate * s_h
            ln(f"{p}.ffn.ln")

    # demux: keys live in the hidden space (scaled by hidden_z); dense1 reads [key ; h_CLS]
    out["demux.keys"] = sd["demux.keys"][:, keep] * s_h
    w1 = sd["demux.dense1.weight"]
    out["demux.dense1.weight"] = torch.cat([w1[:, keep], w1[:, cfg.hidden_size + keep]], dim=1)
    for name, t in sd.items():
        if name.startswith("demux.") and name not in out:
            out[name] = t

    new_cfg = PruMuxConfig.from_dict(cfg.to_dict())
    new_cfg.layer_num_heads, new_cfg.layer_intermediate_size = heads, widths
    new_cfg.pruned_hidden_size = keep.numel()
    compacted = PruMuxModel(new_cfg)
    compacted.load_state_dict({k: v.contiguous() for k, v in out.items()})
    compacted.tokenizer_dir = getattr(model, "tokenizer_dir", None)
    return compacted.eval()
