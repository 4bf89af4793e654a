"""Compaction: fold CoFi masks into the weights and remove what they prune.

Every mask scale is folded into the neighbouring weights (see the semantics in prumux_deploy/model.py):
    head_z[l, h]          -> columns of head h in the attention output projection
    head_layer_z[l]       -> rows and bias of the attention output projection
    intermediate_z[l, j]  -> column j of the FFN down projection
    mlp_z[l]              -> rows and bias of the FFN down projection
    hidden_z[k]           -> rows and bias of every sub-layer output projection, every LayerNorm's
                             weight and bias, the demux keys (prumux convention), and in the cofi
                             convention the embedding tables (the sum is scaled before its LayerNorm)
Then pruned heads, FFN units and hidden dims are sliced away and sub-layers with nothing left are
dropped, giving a model with per-layer widths and no masks whose logits equal the masked model's.

Upstream models (second embedding pass, cofi convention) need three more things to stay exact:
    - the first embedding pass normalises over all Hb dims before any mask, so it keeps its full-width
      tables and LayerNorm and selects the kept dims after it (config.pre_mux_hidden_keep);
    - the second pass gets its own tables (PostMuxEmbeddings): position + token-type row 0 and the
      LayerNorm, with hidden_z folded in;
    - the demux keys are not in the hidden space, so they keep all Hb dims (config.demux_key_size).
A sub-layer whose units are all off but whose gate and bias are live (cofi) keeps one unit with zero
output weights, so that its LayerNorm(x + bias) stays.
"""

from __future__ import annotations

import copy

import torch

from prumux_deploy.errors import ModelError
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


def _kept_in_block(masks, unit_key: str, block_key: str, layer: int, size: int, live_bias=None):
    """Kept units (heads or FFN units) of one layer's block, their scales, and the block gate; no units
    when the whole block is gated off. `live_bias` (cofi convention: the block's output bias) keeps unit 0
    at scale 0 when every unit is off but gate * bias is not zero (see the module docstring)."""
    z = masks.get(unit_key)
    row = None if z is None else z[layer]
    idx, scale = _kept(row, size)
    gate = _layer_gate(masks, block_key, layer)
    if gate == 0:
        idx = idx[:0]
    elif idx.numel() == 0 and live_bias is not None and bool((live_bias * gate != 0).any()):
        idx, scale = torch.zeros(1, dtype=torch.long), torch.zeros(1)
    return idx, scale, gate


@torch.no_grad()
def compact(model: PruMuxModel) -> PruMuxModel:
    """Return a new, mask-free model with pruned structure removed; logits match within fp32 rounding."""
    if model.config.is_compact:
        return copy.deepcopy(model)
    cfg = model.config  # compaction runs on the CPU, wherever the model is
    masks = {k: v.detach().cpu() for k, v in model.masks.items()}
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cofi = cfg.mask_convention == "cofi"
    D, Hb = cfg.head_dim, cfg.hidden_size
    keep, s_h = _kept(masks.get("hidden_z"), Hb)  # kept hidden dims and their scales
    if keep.numel() == 0:
        raise ModelError("hidden_z prunes every hidden dim; nothing would remain")
    pruned_hidden = keep.numel() < Hb

    out: dict[str, torch.Tensor] = {}

    def ln(prefix, dst=None):  # a LayerNorm followed by "* hidden_z": fold the scale into weight and bias
        out[(dst or prefix) + ".weight"] = sd[prefix + ".weight"][keep] * s_h
        out[(dst or prefix) + ".bias"] = sd[prefix + ".bias"][keep] * s_h

    new_cfg = PruMuxConfig.from_dict(cfg.to_dict())
    if cfg.second_embedding_pass:
        # first pass: unmasked, over all Hb dims; then the kept dims go on (the selection is a config index)
        for name in ("word", "position", "token_type", "ln"):
            for key in ("weight", "bias") if name == "ln" else ("weight",):
                out[f"embeddings.{name}.{key}"] = sd[f"embeddings.{name}.{key}"]
        new_cfg.pre_mux_hidden_keep = keep.tolist() if pruned_hidden else None
        # second pass: (mux + position + token_type[0]) [* hidden_z] -> LayerNorm -> * hidden_z
        second = sd["embeddings.position.weight"] + sd["embeddings.token_type.weight"][0]
        pre_ln = s_h if cofi else torch.ones_like(s_h)  # cofi scales the sum before its LayerNorm
        out["post_mux.position.weight"] = second[:, keep] * pre_ln
        ln("embeddings.ln", "post_mux.ln")
        out["mux.vectors"] = sd["mux.vectors"][:, keep] * pre_ln
    else:
        pre_ln = s_h if cofi else torch.ones_like(s_h)
        for name in ("word", "position", "token_type"):
            out[f"embeddings.{name}.weight"] = sd[f"embeddings.{name}.weight"][:, keep] * pre_ln
        ln("embeddings.ln")
        out["mux.vectors"] = sd["mux.vectors"][:, keep]

    heads, widths = [], []
    for l in range(cfg.num_hidden_layers):
        p = f"layers.{l}"
        # attention: kept heads, unless the whole block is gated off
        bias = sd[f"{p}.attn.out.bias"] if cofi else None
        head_idx, head_scale, gate = _kept_in_block(masks, "head_z", "head_layer_z", l, cfg.num_attention_heads, bias)
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
        bias = sd[f"{p}.ffn.down.bias"] if cofi else None
        unit_idx, unit_scale, gate = _kept_in_block(masks, "intermediate_z", "mlp_z", l, cfg.intermediate_size, bias)
        widths.append(unit_idx.numel())
        if unit_idx.numel():
            out[f"{p}.ffn.up.weight"] = sd[f"{p}.ffn.up.weight"][unit_idx][:, keep]
            out[f"{p}.ffn.up.bias"] = sd[f"{p}.ffn.up.bias"][unit_idx]
            out[f"{p}.ffn.down.weight"] = (sd[f"{p}.ffn.down.weight"][keep][:, unit_idx]
                                           * (gate * s_h)[:, None] * unit_scale[None, :])
            out[f"{p}.ffn.down.bias"] = sd[f"{p}.ffn.down.bias"][keep] * gate * s_h
            ln(f"{p}.ffn.ln")

    if "demux.pooler.weight" in sd:  # the pooler reads the (masked) [CLS] state
        out["demux.pooler.weight"] = sd["demux.pooler.weight"][:, keep]
    else:  # dense1 reads [key ; h]: h loses the pruned dims; prumux keys live in the hidden space, cofi keys do not
        K = sd["demux.keys"].shape[1]
        w1 = sd["demux.dense1.weight"]
        if cofi:
            out["demux.keys"] = sd["demux.keys"]
            out["demux.dense1.weight"] = torch.cat([w1[:, :K], w1[:, K + keep]], dim=1)
            new_cfg.demux_key_size = K if pruned_hidden else None
        else:
            out["demux.keys"] = sd["demux.keys"][:, keep] * s_h
            out["demux.dense1.weight"] = torch.cat([w1[:, keep], w1[:, Hb + keep]], dim=1)
    for name, t in sd.items():
        if name.startswith("demux.") and name not in out:
            out[name] = t

    new_cfg.layer_num_heads, new_cfg.layer_intermediate_size = heads, widths
    new_cfg.pruned_hidden_size = keep.numel()
    compacted = PruMuxModel(new_cfg)
    compacted.load_state_dict({k: v.contiguous() for k, v in out.items()})
    compacted.tokenizer_dir = getattr(model, "tokenizer_dir", None)
    return compacted.eval()
