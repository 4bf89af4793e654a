"""Upstream-layout checkpoint directories made by the tests, and an independent transcription of the
upstream forward to check them against.

The fixtures in ../shared/fixtures/upstream/ were written and run by the upstream code itself; these cover
what they do not (other N, structures, pair tasks, variants). `upstream_forward` follows the upstream code
line by line in its own names (PruMUX models/multiplexing_pretraining_bert_prumux.py forward,
models/modeling_bert.py CoFi layers, multiplexing_pretraining.py IndexPosDemultiplexerTokenLevel; CoFi's
BertForSequenceClassification for N=1), sharing no code with prumux_deploy.model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

HIDDEN, HEADS, FFN, LAYERS, MAX_POS, VOCAB = 32, 4, 64, 4, 40, 120
WORDS = ("good great fun witty gorgeous lovely bad dull awful boring tedious film movie plot the a is "
         "was and very not what who where why how question answer").split()


def write_vocab(path: Path) -> None:
    """A BERT vocabulary whose [CLS] is id 101, as upstream's index_pos forward assumes."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [",", ".", "'", "?", "!"] + WORDS
    vocab += [f"w{i}" for i in range(VOCAB - len(vocab))]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab[:VOCAB]) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))


def _bert_config(**extra) -> dict:
    cfg = {"architectures": ["MuxedBertForSequenceClassification"], "model_type": "bert", "hidden_act": "gelu",
           "hidden_size": HIDDEN, "num_attention_heads": HEADS, "intermediate_size": FFN,
           "num_hidden_layers": LAYERS, "max_position_embeddings": MAX_POS, "vocab_size": VOCAB,
           "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
           "position_embedding_type": "absolute"}
    cfg.update(extra)
    return cfg


def full_weights(N: int, num_labels: int, demux_layers: int = 3, mux: str = "gaussian_hadamard",
                 pooler: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-size upstream state dict (every name upstream saves, training-only heads included)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.08):
        return torch.randn(*shape, generator=g) * std

    def ln(prefix, size=HIDDEN):
        return {prefix + ".weight": 1 + rnd(size, std=0.1), prefix + ".bias": rnd(size, std=0.1)}

    def linear(prefix, out, inp):
        return {prefix + ".weight": rnd(out, inp), prefix + ".bias": rnd(out, std=0.05)}

    w = {"bert.embeddings.word_embeddings.weight": rnd(VOCAB, HIDDEN, std=0.5),
         "bert.embeddings.position_embeddings.weight": rnd(MAX_POS, HIDDEN, std=0.5),
         "bert.embeddings.token_type_embeddings.weight": rnd(2, HIDDEN, std=0.5),
         "bert.embeddings.position_ids": torch.arange(MAX_POS)[None], **ln("bert.embeddings.LayerNorm")}
    for l in range(LAYERS):
        p = f"bert.encoder.layer.{l}."
        for name in ("query", "key", "value"):
            w.update(linear(p + f"attention.self.{name}", HIDDEN, HIDDEN))
        w.update(linear(p + "attention.output.dense", HIDDEN, HIDDEN))
        w.update(ln(p + "attention.output.LayerNorm"))
        w.update(linear(p + "intermediate.dense", FFN, HIDDEN))
        w.update(linear(p + "output.dense", HIDDEN, FFN))
        w.update(ln(p + "output.LayerNorm"))
    w.update(linear("bert.pooler.dense", HIDDEN, HIDDEN))
    w.update(linear("classifier", num_labels, HIDDEN))
    if N > 1 or not pooler:
        if mux == "binary_hadamard":  # upstream binary_encoding with epsilon 0: disjoint blocks of ones
            inst = torch.zeros(N, HIDDEN)
            for i in range(N):
                inst[i, i * (HIDDEN // N): (i + 1) * (HIDDEN // N) if i < N - 1 else HIDDEN] = 1
        else:
            inst = torch.randn(N, HIDDEN, generator=g)
            inst = inst / inst.norm(dim=1, keepdim=True)
        w["instance_embedding"] = inst
        demux = {"demux_instance_embedding": torch.randn(N, HIDDEN, generator=g)}
        demux.update(linear("dense_1", HIDDEN, 2 * HIDDEN))
        demux.update(ln("layer_norm_1"))
        for j in range(2, demux_layers + 1):
            demux.update(linear(f"dense_{j}", HIDDEN, HIDDEN))
            demux.update(ln(f"layer_norm_{j}"))
        for prefix in ("demux_module.", "demultiplexer.demux_module.", "retrieval_head.demux_module."):
            w.update({prefix + k: v for k, v in demux.items()})
        w.update(linear("demultiplexer.pre_decoder", HIDDEN, HIDDEN))
        w.update(ln("demultiplexer.pre_decoder_layer_norm"))
        w.update(linear("retrieval_head.decoder", VOCAB, HIDDEN))
        w.update(linear("layer_transformation", HIDDEN, HIDDEN))
    return w


def soft_masks(heads_kept, ffn_kept, hidden_kept: int, dead_heads_live_layer=(), seed: int = 0) -> dict:
    """zs.pt in upstream shapes with soft kept values: layer l keeps its first heads_kept[l] heads and
    ffn_kept[l] units (0 switches the block gate off), hidden_kept dims; layers in dead_heads_live_layer have
    every head_z at 0 but a live head_layer_z (upstream then adds LayerNorm(bias + x))."""
    g = torch.Generator().manual_seed(seed)

    def soft(*shape):
        return 0.55 + 0.44 * torch.rand(*shape, generator=g)

    head_z, head_layer_z = torch.zeros(LAYERS, HEADS), soft(LAYERS)
    int_z, mlp_z = torch.zeros(LAYERS, FFN), soft(LAYERS)
    for l in range(LAYERS):
        head_z[l, : max(heads_kept[l], 1)] = soft(max(heads_kept[l], 1))
        if heads_kept[l] == 0:
            head_layer_z[l] = 0.0
        if l in dead_heads_live_layer:
            head_z[l] = 0.0
            head_layer_z[l] = 0.9
        int_z[l, : max(ffn_kept[l], 1)] = soft(max(ffn_kept[l], 1))
        if ffn_kept[l] == 0:
            mlp_z[l] = 0.0
    hidden_z = torch.zeros(HIDDEN)
    hidden_z[torch.randperm(HIDDEN, generator=g)[:hidden_kept]] = soft(hidden_kept)
    return {"head_z": head_z.view(LAYERS, 1, HEADS, 1, 1), "head_layer_z": head_layer_z,
            "intermediate_z": int_z.view(LAYERS, 1, 1, FFN), "mlp_z": mlp_z, "hidden_z": hidden_z}


def write_dir(path: Path, weights: dict, config: dict, zs: dict | None = None, tokenizer: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(weights, path / "pytorch_model.bin")
    if zs is not None:
        torch.save(zs, path / "zs.pt")
    if tokenizer:
        write_vocab(path)
    return path


def mux_config(N: int, task: str, num_labels: int, **extra) -> dict:
    cfg = dict(num_instances=N, muxing_variant="gaussian_hadamard", demuxing_variant="index_pos",
               num_hidden_demux_layers=3, legacy_demuxing=False, learn_muxing=0, gaussian_hadamard_norm=1.0,
               finetuning_task=task, label2id={str(i): i for i in range(num_labels)})
    return _bert_config(**{**cfg, **extra})


def cofi_config(task: str, num_labels: int) -> dict:
    return _bert_config(architectures=["NewBertForSequenceClassification"], finetuning_task=task,
                        label2id={str(i): i for i in range(num_labels)})


# --- the upstream forward, transcribed --------------------------------------------------------------

def _cofi_layer_norm(x, w, b, hidden_z, eps=1e-12):
    """CoFiLayerNorm: normalise over the kept dims, leave the others as they are."""
    if hidden_z is None:
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    idx = torch.where(~hidden_z.eq(0))[0]
    out = x.clone()
    out[:, :, idx] = F.layer_norm(x.index_select(-1, idx), [len(idx)], w[idx], b[idx], eps)
    return out


def _embeddings(w, inputs_embeds, token_type_ids, hidden_z):
    """CoFiBertEmbeddings.forward."""
    S = inputs_embeds.shape[1]
    x = inputs_embeds + w["bert.embeddings.position_embeddings.weight"][:S][None] \
        + w["bert.embeddings.token_type_embeddings.weight"][token_type_ids]
    if hidden_z is not None:
        x = x.mul(hidden_z)
    x = _cofi_layer_norm(x, w["bert.embeddings.LayerNorm.weight"], w["bert.embeddings.LayerNorm.bias"], hidden_z)
    return x if hidden_z is None else x.mul(hidden_z)


def _encoder(w, x, ext_mask, L, D, zs):
    """CoFiBertEncoder with CoFiBertLayer / CoFiBertSelfOutput / CoFiBertOutput (zs: upstream shapes or None)."""
    zs = zs or {}
    hidden_z = zs.get("hidden_z")
    for l in range(L):
        p = f"bert.encoder.layer.{l}."
        if p + "attention.self.value.weight" in w:
            G, S, _ = x.shape

            def heads(t):
                return t.view(G, S, -1, D).permute(0, 2, 1, 3)

            q, k, v = (heads(F.linear(x, w[p + f"attention.self.{n}.weight"], w[p + f"attention.self.{n}.bias"]))
                       for n in ("query", "key", "value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(D)
            if ext_mask is not None:
                scores = scores + ext_mask
            ctx = scores.softmax(-1) @ v
            if "head_z" in zs:
                ctx = ctx * zs["head_z"][l]
            ctx = ctx.permute(0, 2, 1, 3).reshape(G, S, -1)
            h = F.linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            if "head_layer_z" in zs:
                h = h.mul(zs["head_layer_z"][l])
            if h.sum().eq(0).item():
                x = h + x
            else:
                if hidden_z is not None:
                    h = h.mul(hidden_z)
                x = _cofi_layer_norm(h + x, w[p + "attention.output.LayerNorm.weight"],
                                     w[p + "attention.output.LayerNorm.bias"], hidden_z)
                if hidden_z is not None:
                    x = x.mul(hidden_z)
        if p + "intermediate.dense.weight" in w:
            i = F.gelu(F.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            if "intermediate_z" in zs:
                i = i.mul(zs["intermediate_z"][l])
            o = F.linear(i, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            if "mlp_z" in zs:
                o = o * zs["mlp_z"][l]
            if o.sum().eq(0).item():
                x = o + x
            else:
                if hidden_z is not None:
                    o = o.mul(hidden_z)
                x = _cofi_layer_norm(o + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], hidden_z)
                if hidden_z is not None:
                    x = x.mul(hidden_z)
    return x


@torch.no_grad()
def upstream_forward(w: dict, cfg: dict, input_ids, attention_mask, token_type_ids, zs: dict | None = None):
    """Logits [B, C] as the upstream model computes them. Multiplexed models ignore attention_mask and
    token_type_ids (pad the inputs to the length upstream used); CoFi (N=1) uses both."""
    w = {k: v.float() for k, v in w.items() if v.is_floating_point()}
    L, D = cfg["num_hidden_layers"], cfg["hidden_size"] // cfg["num_attention_heads"]
    if "num_instances" not in cfg:  # CoFiBertForSequenceClassification: plain BERT + pooler
        x = _embeddings(w, w["bert.embeddings.word_embeddings.weight"][input_ids], token_type_ids, None)
        ext = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        x = _encoder(w, x, ext, L, D, zs)
        pooled = torch.tanh(F.linear(x[:, 0], w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"]))
        return F.linear(pooled, w["classifier.weight"], w["classifier.bias"])
    N = cfg["num_instances"]
    B, S = input_ids.shape
    assert B % N == 0
    ids = input_ids.clone()
    ids[:, 0:1] = 101
    zeros = torch.zeros_like(ids)
    e = _embeddings(w, w["bert.embeddings.word_embeddings.weight"][ids], zeros, None)  # first pass, no masks
    e = e.view(B // N, N, S, -1) * w["instance_embedding"][None, :, None, :]
    e = e.mean(dim=1)
    x = _embeddings(w, e, torch.zeros(B // N, S, dtype=torch.long), (zs or {}).get("hidden_z"))
    x = _encoder(w, x, None, L, D, zs)
    dm = "demultiplexer.demux_module."
    feats = x[:, 0:1, :]
    G, _, H = feats.shape
    keys = w[dm + "demux_instance_embedding"]
    pos = keys.unsqueeze(0).unsqueeze(2).expand(G, N, 1, keys.shape[1])
    f = feats.unsqueeze(1).expand(G, N, 1, H)
    f = torch.cat([pos, f], dim=3).view(-1, 1, keys.shape[1] + H)
    if not cfg.get("legacy_demuxing", False):
        y = f
        for j in range(1, cfg.get("num_hidden_demux_layers", 2)):
            y_in = y
            y = F.gelu(F.linear(y, w[dm + f"dense_{j}.weight"], w[dm + f"dense_{j}.bias"]))
            if j > 1:
                y = y + y_in
        y_in = y
        y = F.gelu(F.linear(y, w["demultiplexer.pre_decoder.weight"], w["demultiplexer.pre_decoder.bias"]))
        y = F.layer_norm(y, (y.shape[-1],), w["demultiplexer.pre_decoder_layer_norm.weight"],
                         w["demultiplexer.pre_decoder_layer_norm.bias"], 1e-12) + y_in
    else:
        y1 = F.gelu(F.linear(f, w[dm + "dense_1.weight"], w[dm + "dense_1.bias"]))
        y1 = F.layer_norm(y1, (y1.shape[-1],), w[dm + "layer_norm_1.weight"], w[dm + "layer_norm_1.bias"], 1e-12)
        y = F.gelu(F.linear(y1, w["demultiplexer.pre_decoder.weight"], w["demultiplexer.pre_decoder.bias"]))
        y = F.layer_norm(y, (y.shape[-1],), w["demultiplexer.pre_decoder_layer_norm.weight"],
                         w["demultiplexer.pre_decoder_layer_norm.bias"], 1e-12) + y1
    return F.linear(y.squeeze(1), w["classifier.weight"], w["classifier.bias"])
