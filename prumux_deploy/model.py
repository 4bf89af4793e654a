"""The PruMUX model: a BERT encoder with a data multiplexer in front and a demultiplexer behind.

Read top to bottom, like nanoGPT's model.py. Shapes in comments use:
    B  batch rows (sentences)            N  instances multiplexed into one sequence
    G  groups = ceil(B / N)              S  sequence length
    H  model width (kept hidden dims)    D  head dim (base hidden / base heads, never pruned)
    Hd demux width (the base hidden size; the demux is not pruned)

One module serves both kinds of model the toolchain meets:

* masked models (what CoFi training produces): full-size tensors plus CoFi masks;
* compact models (what `prumux_deploy.export.compact` produces): no masks, and every layer
  has its own head count and FFN width, 0 meaning that sub-layer is gone.

Mask semantics (the one place they are defined; compaction in export/compact.py folds exactly these):
    hidden_z[Hb]          x <- x * hidden_z after the embedding LayerNorm, on every sub-layer output
                          before its residual add, and after every sub-layer LayerNorm. LayerNorms
                          normalise over the kept dims (hidden_z != 0) only and write 0 elsewhere.
                          The demux keys are scaled by hidden_z as well (they live in the same space).
    head_z[L, heads]      each head's context vector is scaled by head_z[l, h] before the output projection.
    head_layer_z[L]       the attention output projection (bias included) is scaled by head_layer_z[l].
    intermediate_z[L, I]  the FFN activation gelu(x W1 + b1) is scaled per unit.
    mlp_z[L]              the FFN output projection (bias included) is scaled by mlp_z[l].
A sub-layer whose gate is exactly zero (head_layer_z[l] == 0 or every head_z[l] == 0; mlp_z[l] == 0 or
every intermediate_z[l] == 0) is skipped whole, LayerNorm included: the residual stream passes through.
This is what CoFi's pruned models do, and it is what makes compaction exact.

Demux kinds (config.demux_kind); both use the same weights, an MLP of [key_i ; h] per instance:
    index        h is the multiplexed [CLS] state: one feature vector per instance (the paper's index demux).
    index_pool   h is every position's state; instance i's feature vectors are averaged over instance i's
                 own tokens (its attention_mask). The retrieval warm-up trains exactly this per-position
                 demux, so the pooled read-out starts from features that already tell the instances apart.

Dropout (set_dropout; 0 unless training sets it) sits where BERT has it: after the embeddings, on the
attention probabilities, on each sub-layer output before its residual add, and before the classifier.
It is a training-time setting, not part of the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

MASK_NAMES = ("head_z", "head_layer_z", "intermediate_z", "mlp_z", "hidden_z")
MUX_KINDS = ("gaussian_hadamard",)
DEMUX_KINDS = ("index", "index_pool")


def check_kind(what: str, kind: str, kinds: tuple[str, ...]):
    if kind not in kinds:
        raise ValueError(f"{what} {kind!r} is unknown; expected one of {', '.join(kinds)}")


@dataclass
class PruMuxConfig:
    # base BERT dimensions (what the masks index into)
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # multiplexing and the classifier
    num_instances: int = 1
    mux_kind: str = "gaussian_hadamard"
    mux_seed: int = 0
    demux_kind: str = "index"
    num_labels: int = 2
    id2label: dict[int, str] = field(default_factory=dict)
    task: str | None = None
    max_seq_length: int = 128
    # compact structure; None means "full size" (a masked or unpruned model)
    layer_num_heads: list[int] | None = None
    layer_intermediate_size: list[int] | None = None
    pruned_hidden_size: int | None = None

    def __post_init__(self):
        self.id2label = {int(k): str(v) for k, v in (self.id2label or {}).items()}
        if not self.id2label:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        check_kind("mux_kind", self.mux_kind, MUX_KINDS)
        check_kind("demux_kind", self.demux_kind, DEMUX_KINDS)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_compact(self) -> bool:
        return self.layer_num_heads is not None

    @property
    def heads_per_layer(self) -> list[int]:
        return list(self.layer_num_heads or [self.num_attention_heads] * self.num_hidden_layers)

    @property
    def ffn_per_layer(self) -> list[int]:
        return list(self.layer_intermediate_size or [self.intermediate_size] * self.num_hidden_layers)

    @property
    def model_dim(self) -> int:
        return self.pruned_hidden_size or self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruMuxConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def layer_norm(x, weight, bias, eps, keep=None):
    """LayerNorm over the last dim, or over the kept dims `keep` (an index tensor) only; 0 elsewhere."""
    if keep is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    kept = F.layer_norm(x.index_select(-1, keep), (keep.numel(),), weight[keep], bias[keep], eps)
    return torch.zeros_like(x).index_copy(-1, keep, kept)


class LayerMasks:
    """The slice of the CoFi masks that one encoder layer needs (all None for a compact model)."""

    def __init__(self, masks: dict | None, layer: int):
        masks = masks or {}

        def pick(name):
            z = masks.get(name)
            return None if z is None else z[layer]

        self.head = pick("head_z")              # [heads]
        self.head_layer = pick("head_layer_z")  # []
        self.intermediate = pick("intermediate_z")  # [I]
        self.mlp = pick("mlp_z")                # []
        self.hidden = masks.get("hidden_z")     # [Hb]
        self.keep = masks.get("_hidden_keep")   # index tensor of kept hidden dims

    def attention_off(self) -> bool:
        return (self.head_layer is not None and bool(self.head_layer == 0)) or (
            self.head is not None and bool((self.head == 0).all()))

    def ffn_off(self) -> bool:
        return (self.mlp is not None and bool(self.mlp == 0)) or (
            self.intermediate is not None and bool((self.intermediate == 0).all()))


def scale(x, z):
    return x if z is None else x * z


def fill_last_group(t, N: int):
    """[B, ...] -> [G*N, ...] with G = ceil(B / N): the last mux group is filled by repeating the last row."""
    B = t.shape[0]
    rows = torch.arange((B + N - 1) // N * N, device=t.device).clamp(max=B - 1)
    return t.index_select(0, rows)


class Embeddings(nn.Module):
    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        H = cfg.model_dim
        self.word = nn.Embedding(cfg.vocab_size, H)
        self.position = nn.Embedding(cfg.max_position_embeddings, H)
        self.token_type = nn.Embedding(cfg.type_vocab_size, H)
        self.ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(0.0)

    def forward(self, input_ids, token_type_ids, hidden_z=None, keep=None):
        S = input_ids.shape[1]
        positions = torch.arange(S, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)  # [B,S,H]
        x = layer_norm(x, self.ln.weight, self.ln.bias, self.ln.eps, keep)
        return self.drop(scale(x, hidden_z))


class GaussianHadamardMux(nn.Module):
    """Mix N instances into one sequence: mean_i(emb_i * v_i), v_i fixed row-normalised Gaussians
    (all ones when N = 1, so a single instance sees the pretrained encoder unchanged)."""

    def __init__(self, cfg: PruMuxConfig, seed: int = 0):
        super().__init__()
        N, H = cfg.num_instances, cfg.model_dim
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(N, H, generator=gen)
        # row-normalised so each vector has unit RMS: v_i * v_i has mean 1 and the mix keeps the embedding scale
        v = v / v.norm(dim=-1, keepdim=True) * math.sqrt(H)
        if N == 1:  # nothing to tell apart: N=1 is the plain encoder, as in the paper's baseline
            v = torch.ones(1, H)
        self.register_buffer("vectors", v)  # [N, H], saved in the state dict (fixed, not learned)

    def forward(self, x):  # x: [G*N, S, H] -> [G, S, H]
        N = self.vectors.shape[0]
        x = x.view(-1, N, x.shape[1], x.shape[2])  # [G, N, S, H]
        return (x * self.vectors[None, :, None, :]).mean(dim=1)


class Attention(nn.Module):
    def __init__(self, cfg: PruMuxConfig, num_heads: int):
        super().__init__()
        H, D = cfg.model_dim, cfg.head_dim
        self.num_heads, self.head_dim = num_heads, D
        self.query = nn.Linear(H, num_heads * D)
        self.key = nn.Linear(H, num_heads * D)
        self.value = nn.Linear(H, num_heads * D)
        self.out = nn.Linear(num_heads * D, H)
        self.ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.drop_probs, self.drop = nn.Dropout(0.0), nn.Dropout(0.0)

    def forward(self, x, mask_bias, z: LayerMasks):  # x: [G,S,H], mask_bias: [G,1,1,S]
        G, S, _ = x.shape
        nh, D = self.num_heads, self.head_dim
        q = self.query(x).view(G, S, nh, D).transpose(1, 2)  # [G,nh,S,D]
        k = self.key(x).view(G, S, nh, D).transpose(1, 2)
        v = self.value(x).view(G, S, nh, D).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D) + mask_bias  # [G,nh,S,S]
        ctx = self.drop_probs(scores.softmax(dim=-1)) @ v  # [G,nh,S,D]
        if z.head is not None:
            ctx = ctx * z.head.view(1, nh, 1, 1)
        ctx = ctx.transpose(1, 2).reshape(G, S, nh * D)
        a = self.drop(scale(scale(self.out(ctx), z.head_layer), z.hidden))  # [G,S,H]
        return scale(layer_norm(x + a, self.ln.weight, self.ln.bias, self.ln.eps, z.keep), z.hidden)


class FeedForward(nn.Module):
    def __init__(self, cfg: PruMuxConfig, width: int):
        super().__init__()
        H = cfg.model_dim
        self.up = nn.Linear(H, width)
        self.down = nn.Linear(width, H)
        self.ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(0.0)

    def forward(self, x, z: LayerMasks):  # x: [G,S,H]
        h = scale(F.gelu(self.up(x)), z.intermediate)  # [G,S,I]
        f = self.drop(scale(scale(self.down(h), z.mlp), z.hidden))  # [G,S,H]
        return scale(layer_norm(x + f, self.ln.weight, self.ln.bias, self.ln.eps, z.keep), z.hidden)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: PruMuxConfig, num_heads: int, ffn_width: int):
        super().__init__()
        self.attn = Attention(cfg, num_heads) if num_heads > 0 else None
        self.ffn = FeedForward(cfg, ffn_width) if ffn_width > 0 else None

    def forward(self, x, mask_bias, z: LayerMasks):
        if self.attn is not None and not z.attention_off():
            x = self.attn(x, mask_bias, z)
        if self.ffn is not None and not z.ffn_off():
            x = self.ffn(x, z)
        return x


class IndexDemux(nn.Module):
    """RSA/index demux: instance i's features are an MLP of [key_i ; h], with h the [CLS] state (kind
    "index") or every position's state averaged over instance i's own tokens (kind "index_pool");
    then the classifier."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        N, H, Hd = cfg.num_instances, cfg.model_dim, cfg.hidden_size
        self.pooled = cfg.demux_kind == "index_pool"
        self.keys = nn.Parameter(torch.randn(N, H) * 0.02)  # [N, H]
        self.dense1 = nn.Linear(2 * H, Hd)
        self.dense2 = nn.Linear(Hd, Hd)
        self.ln = nn.LayerNorm(Hd, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(0.0)
        self.classifier = nn.Linear(Hd, cfg.num_labels)

    def instance_features(self, keys, h):  # keys, h: [..., H], broadcast against each other -> [..., Hd]
        h1 = F.gelu(self.dense1(torch.cat(torch.broadcast_tensors(keys, h), dim=-1)))
        h2 = F.gelu(self.dense2(h1)) + h1
        return self.ln(h2)

    def forward(self, x, instance_mask, hidden_z=None):  # x: [G, S, H], instance_mask: [G*N, S] -> [G*N, C]
        keys = scale(self.keys, hidden_z)  # [N, H]
        if self.pooled:
            (G, S, _), N = x.shape, keys.shape[0]
            per_token = self.instance_features(keys[None, :, None], x[:, None])  # [G, N, S, Hd]
            w = instance_mask.view(G, N, S, 1).to(x.dtype)  # [G, N, S, 1], 1 on instance i's tokens
            features = (per_token * w).sum(dim=2) / w.sum(dim=2).clamp(min=1.0)  # [G, N, Hd]
        else:
            features = self.instance_features(keys[None], x[:, None, 0])  # [G, N, Hd]
        return self.classifier(self.drop(features)).flatten(0, 1)


class PruMuxModel(nn.Module):
    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.mux = GaussianHadamardMux(cfg, seed=cfg.mux_seed)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg, h, f) for h, f in zip(cfg.heads_per_layer, cfg.ffn_per_layer))
        self.demux = IndexDemux(cfg)
        self.masks: dict[str, torch.Tensor] = {}
        self.tokenizer_dir = None  # where tokenizer files come from when the model is saved

    # --- masks -------------------------------------------------------------------------------
    def set_masks(self, masks: dict[str, torch.Tensor] | None):
        """Attach CoFi masks (float tensors; 0 = pruned). Only full-size models can carry masks."""
        masks = {k: v.float() for k, v in (masks or {}).items() if v is not None}
        if masks and self.config.is_compact:
            raise ValueError("a compact model carries no masks; fold them with export.compact first")
        self.masks = masks

    def _resolve_masks(self, masks):
        masks = self.masks if masks is None else masks
        if not masks:
            return None
        hidden_z = masks.get("hidden_z")
        if hidden_z is not None:
            masks = dict(masks, _hidden_keep=(hidden_z != 0).nonzero().flatten())
        return masks

    # --- forward -----------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, hidden_states=None):
        """Embed, multiplex, run the encoder. input_ids etc.: [B, S] -> x [G, S, H], group mask [G, S], masks.

        `masks` overrides the attached masks for one call (training passes sampled gates here). When
        `hidden_states` is a list, the multiplexed embeddings and every layer's output are appended to it.
        """
        B, S = input_ids.shape
        N = self.config.num_instances
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        masks = self._resolve_masks(masks)
        hidden_z = None if masks is None else masks.get("hidden_z")
        keep = None if masks is None else masks.get("_hidden_keep")

        if N > 1:  # fill the last group by repeating the last row; its outputs are dropped by the caller
            input_ids, attention_mask, token_type_ids = (
                fill_last_group(t, N) for t in (input_ids, attention_mask, token_type_ids))

        x = self.embeddings(input_ids, token_type_ids, hidden_z, keep)  # [G*N, S, H]
        x = self.mux(x)  # [G, S, H]
        # a position of the mixed sequence is attended if any instance has a real token there.
        # Written as sum > 0 (not amax) and with BERT's own mask-bias pattern (unsqueeze, cast, 1 - m, * min)
        # because ONNX Runtime's transformer optimizer needs both: its shape inference has no ReduceMax, and
        # its attention fusion matches this pattern (see export/optimize.py).
        group_mask = (attention_mask.view(-1, N, S).sum(dim=1) > 0).to(attention_mask.dtype)  # [G, S]
        mask_bias = (1.0 - group_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # [G,1,1,S]
        if hidden_states is not None:
            hidden_states.append(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask_bias, LayerMasks(masks, i))
            if hidden_states is not None:
                hidden_states.append(x)
        return x, group_mask, masks

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, hidden_states=None):
        """input_ids, attention_mask, token_type_ids: [B, S] integer tensors -> logits [B, C]."""
        x, _, masks = self.encode(input_ids, attention_mask, token_type_ids, masks, hidden_states)
        hidden_z = None if masks is None else masks.get("hidden_z")
        instance_mask = None
        if self.demux.pooled:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            instance_mask = fill_last_group(attention_mask, self.config.num_instances)  # [G*N, S]
        logits = self.demux(x, instance_mask, hidden_z)  # [G*N, C]
        return logits[: input_ids.shape[0]]

    # --- training-time settings ----------------------------------------------------------------
    def set_dropout(self, p: float):
        """Dropout probability of every dropout site (see the module docstring); 0 turns them off."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    def set_demux_kind(self, kind: str):
        """Switch between the demux read-outs; they share weights, so a trained demux can change kind."""
        check_kind("demux kind", kind, DEMUX_KINDS)
        self.config.demux_kind = kind
        self.demux.pooled = kind == "index_pool"

    # --- bookkeeping -------------------------------------------------------------------------
    def num_encoder_params(self) -> int:
        """Parameters of the prunable encoder (attention + FFN weights), what sparsity is measured on."""
        return sum(p.numel() for n, p in self.layers.named_parameters() if not n.endswith("ln.weight")
                   and not n.endswith("ln.bias"))

    def save(self, path, tokenizer_dir=None, force: bool = False):
        from .checkpoint import save_checkpoint

        save_checkpoint(self, path, tokenizer_dir=tokenizer_dir, force=force)
