"""Parameter and FLOP counts of encoder structures: the one place for the formulas that generated structures
(generate.py), the pruning objective (train/gates.py) and the benchmark's FLOP bound (bench.py) use. (A built
model counts its own tensors: PruMuxModel.num_encoder_params, which encoder_params matches.)

A structure is given per layer: heads[l] attention heads of width head_dim, ffn[l] FFN units, over a
hidden width H. "Prunable" parameters are the attention and FFN projections (CoFi's accounting):
LayerNorms, embeddings, the multiplexer and the demultiplexer are not pruned and not counted.
"""

from __future__ import annotations


def prunable_weights(heads, ffn_units, hidden, head_dim):
    """CoFi's count of prunable weights (no biases): 4 * hidden * head_dim per head (Q, K, V, output) and
    2 * hidden per FFN unit (up, down). Works on ints and on tensors of expected counts alike (the L0
    objective uses expected kept heads, units and hidden dims; CoFiPruning's l0_module.py, PruMUX sec. 3)."""
    return 4 * hidden * head_dim * heads + 2 * hidden * ffn_units


def encoder_params(heads: list[int], ffn: list[int], hidden: int, head_dim: int) -> int:
    """Prunable encoder parameters with their biases: what PruMuxModel.num_encoder_params counts for a compact
    model with these widths (a layer's attention or FFN block with 0 heads or units is gone, biases too)."""
    total = 0
    for nh, w in zip(heads, ffn):
        if nh:
            total += prunable_weights(nh, 0, hidden, head_dim) + 3 * nh * head_dim + hidden
        if w:
            total += prunable_weights(0, w, hidden, head_dim) + w + hidden
    return total


def encoder_flops(heads: list[int], ffn: list[int], hidden: int, head_dim: int, seq: int) -> int:
    """FLOPs of one encoder pass over one sequence of `seq` tokens (matrix products only; 2 per
    multiply-add): Q, K, V and output projections, attention scores and context, FFN up and down."""
    total = 0
    for nh, w in zip(heads, ffn):
        inner = nh * head_dim
        if nh:
            total += 2 * seq * hidden * inner * 3      # Q, K, V projections
            total += 2 * seq * seq * inner * 2         # scores and context
            total += 2 * seq * inner * hidden          # output projection
        if w:
            total += 2 * seq * hidden * w * 2          # FFN up and down
    return total


def demux_flops_per_sample(cfg, seq: int) -> float:
    """Matrix FLOPs of one sample's demux read-out and classifier (model.py's demux kinds); cfg: PruMuxConfig."""
    H, K, Hd, C = cfg.model_dim, cfg.key_size, cfg.hidden_size, cfg.num_labels
    if cfg.demux_kind == "pooler":
        return 2 * H * Hd + 2 * Hd * C
    if cfg.demux_kind == "index_pos":  # dense_1, dense_2 .. dense_{D-1} (or none, legacy), pre_decoder
        hidden = 0 if cfg.legacy_demuxing else cfg.num_hidden_demux_layers - 2
        mlp = 2 * (K + H) * Hd + (hidden + 1) * 2 * Hd * Hd
    else:  # key_cls / key_pool: dense1, dense2
        mlp = 2 * (K + H) * Hd + 2 * Hd * Hd
    positions = seq if cfg.demux_kind == "key_pool" else 1
    return positions * mlp + 2 * Hd * C


def prumux_flops_per_sample(cfg, seq: int) -> float:
    """One mux group carries N samples: encoder FLOPs / N, plus each sample's own demux and classifier
    (the demux MLP runs once per sample on [CLS], or at every position with the key_pool read-out). A model
    that attends to padding (imported upstream models) always runs at its fixed length. cfg: PruMuxConfig."""
    seq = cfg.max_seq_length if cfg.attend_to_padding else seq
    return encoder_flops(cfg.heads_per_layer, cfg.ffn_per_layer, cfg.model_dim, cfg.head_dim,
                         seq) / cfg.num_instances + demux_flops_per_sample(cfg, seq)


def bert_flops_per_sample(base: dict, seq: int, num_labels: int = 2) -> float:
    """Dense BERT (a transformers BertConfig as a dict): encoder, pooler and classifier for one sequence."""
    L, H, nh, I = base["num_hidden_layers"], base["hidden_size"], base["num_attention_heads"], base["intermediate_size"]
    enc = encoder_flops([nh] * L, [I] * L, H, H // nh, seq)
    return enc + 2 * H * H + 2 * H * num_labels
