"""CoFi-like random structures at a target sparsity, for demos and speed-only studies.

What CoFi-pruned BERTs look like (per-layer averages from the CoFi authors): heads and FFN widths differ
in every layer, FFN width is cut harder than heads, the first and last FFN layers are kept most, and at
high sparsity many layers lose their attention or FFN block entirely. The generator draws a per-layer
importance for attention and FFN (seeded), keeps `importance * t` of each block, and finds t by bisection
so that the fraction of prunable encoder parameters removed equals the target.
"""

from __future__ import annotations

import torch

from .counts import encoder_params
from .errors import ModelError
from .model import PruMuxConfig


def _widths(t: float, att_imp, ffn_imp, num_heads: int, ffn_size: int):
    heads = [int(round(min(1.0, a * t) * num_heads)) for a in att_imp]
    ffn = [int(round(min(1.0, f * t) * ffn_size)) for f in ffn_imp]
    return heads, ffn


def cofi_like_structure(cfg: PruMuxConfig, sparsity: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Per-layer (heads, FFN widths) whose encoder sparsity is `sparsity` (to within rounding)."""
    if not 0.0 <= sparsity < 1.0:
        raise ModelError(f"sparsity must be in [0, 1), got {sparsity}")
    L, nh, I, H, D = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_size,
                      cfg.head_dim)
    full = encoder_params([nh] * L, [I] * L, H, D)
    if sparsity == 0:
        return [nh] * L, [I] * L
    g = torch.Generator().manual_seed(seed)
    att_imp = (torch.rand(L, generator=g) * 1.4 + 0.3).tolist()
    ffn_imp = (torch.rand(L, generator=g) * 1.2 + 0.2)
    ffn_imp[0] *= 2.0  # first and last FFN layers are kept most
    ffn_imp[-1] *= 1.6
    ffn_imp = (ffn_imp * 0.8).tolist()  # FFN width is cut harder than heads
    lo, hi = 0.0, 1.0 / min(min(att_imp), min(ffn_imp))
    for _ in range(60):  # bisection on the keep scale t: sparsity falls as t grows
        mid = (lo + hi) / 2
        kept = encoder_params(*_widths(mid, att_imp, ffn_imp, nh, I), H, D)
        if 1 - kept / full > sparsity:
            lo = mid
        else:
            hi = mid
    return _widths(hi, att_imp, ffn_imp, nh, I)


def masks_for_structure(cfg: PruMuxConfig, heads: list[int], ffn: list[int], seed: int = 0,
                        fractional: bool = False) -> dict[str, torch.Tensor]:
    """CoFi masks that keep a random subset of `heads[l]` heads and `ffn[l]` units in each layer.
    fractional=True gives kept scales in [0.5, 1.5), as trained deterministic masks have."""
    g = torch.Generator().manual_seed(seed + 1)
    L = cfg.num_hidden_layers

    def pick(n_total, n_keep):
        z = torch.zeros(n_total)
        kept = torch.randperm(n_total, generator=g)[:n_keep]
        z[kept] = torch.rand(n_keep, generator=g) + 0.5 if fractional else 1.0
        return z

    return {"head_z": torch.stack([pick(cfg.num_attention_heads, heads[l]) for l in range(L)]),
            "intermediate_z": torch.stack([pick(cfg.intermediate_size, ffn[l]) for l in range(L)])}
