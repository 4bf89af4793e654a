"""Import checkpoints written by the upstream research code into our checkpoint contract.

Kinds (detected from the files; see ../shared/notes/upstream-format.md for the formats):
    prumux_stage1  a PruMUX L0 pruning run or its best/ (yushansu/PruMUX run_glue_prune.py): full-size
                   MuxedBertForSequenceClassification weights + zs.pt masks
    prumux_stage2  a PruMUX fine-tune after pruning (best/FT-lr.../ and its best/): compact tensors, the full
                   dimensions in config.json
    muxplm         a MUX-PLMs task checkpoint (princeton-nlp/datamux-pretraining, hub muxbert_*): full size, no masks
    cofi           a CoFi release (princeton-nlp/CoFiPruning, hub CoFi-*) or any BERT sequence classifier: N = 1,
                   BERT's pooler before the classifier, compact tensors when pruned

A stage-1 run has two forms (`reference`):
    compact  what upstream's evaluation reports: evaluation.py's load_zs + load_model, i.e. utils/cofi_utils.py
             update_params (folds the soft masks into some weights) then prune_model_with_z (cuts), quirks
             included (fold_and_cut reproduces it). Our checkpoint holds that compact model.
    masked   the masked forward that training optimised (CoFiTrainer's evaluation with **zs): our checkpoint
             holds the full-size weights and the masks (mask_convention "cofi"); export compacts it exactly.
docs/upstream.md explains the difference.

Safety: weight files and zs.pt are read with torch.load(weights_only=True) and must hold tensors only (a
pickled object is refused); *_args.bin and l0_module.pt (pickled upstream classes) are never opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import bert_to_prumux_name, check_vocab, save_checkpoint
from .data import TOKENIZER_FILES, has_tokenizer
from .documents import directory_kind
from .errors import CheckpointError, first_line
from .model import PruMuxConfig, PruMuxModel

KIND_NAMES = {
    "prumux_stage1": "PruMUX stage 1 (full-size weights + zs.pt masks)",
    "prumux_stage2": "PruMUX stage 2 (fine-tuned compact model)",
    "muxplm": "MUX-PLMs task checkpoint (full size, no masks)",
    "cofi": "CoFi release / BERT classifier (N=1, pooler)",
}
REFERENCES = ("compact", "masked")
MUX_VARIANTS = ("gaussian_hadamard", "binary_hadamard")
REFUSED_MUX = ("random_ortho", "random_ortho_low_rank", "gaussian_attention", "gaussian_attention_v2")
REFUSED_DEMUX = {"index": "the prefix-token demux (N prefix tokens before [CLS])",
                 "mlp": "the per-instance MLP demux"}
UPSTREAM_CLS_ID = 101  # what the index_pos forward writes at position 0 (models/multiplexing_pretraining_bert.py)
# training-only tensors upstream saves with the model; nothing of the classification forward reads them
TRAINING_ONLY = ("retrieval_head.", "layer_transformation.", "mha_layer_transformation.", "emb_transformation.",
                 "bert.embeddings.position_ids", "cls.")


@dataclass
class Upstream:
    """One upstream checkpoint directory, read (tensors only)."""

    path: Path
    kind: str
    config: dict                     # upstream config.json
    weights: dict[str, torch.Tensor]  # upstream names
    zs: dict[str, torch.Tensor] | None  # stage 1: masks in upstream shapes (None entries dropped)

    @property
    def num_instances(self) -> int:
        return int(self.config.get("num_instances") or 1)

    @property
    def is_mux(self) -> bool:
        return "num_instances" in self.config


# --- reading ------------------------------------------------------------------------------------

def load_tensor_file(file: Path, allow_none: bool = False) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a torch.save or safetensors file; anything else is refused."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise CheckpointError(f"{file}: cannot be read ({first_line(e)}); re-download it") from None
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError for objects, RuntimeError/EOFError for damage
        text = str(e)
        if "Unsupported global" in text:
            what = next((l.split("GLOBAL", 1)[1].split()[0] for l in text.splitlines() if "GLOBAL" in l), "an object")
            raise CheckpointError(f"{file}: holds pickled Python objects ({what}), not only tensors; refusing to "
                                  "unpickle it. Save a plain state dict of tensors (torch.save(model.state_dict()))") from None
        raise CheckpointError(f"{file}: cannot be read as a file of tensors (torch.load with weights_only: "
                              f"{type(e).__name__}); it is damaged or not a torch.save / safetensors file") from None
    if obj is None and allow_none:
        return None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{file}: expected a dict of named tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not (isinstance(v, torch.Tensor) or (allow_none and v is None))]
    if bad:
        raise CheckpointError(f"{file}: entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}, not a tensor; "
                              "only tensors are imported")
    return obj


def _read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; SRC must be an upstream checkpoint directory (config.json + "
                              "pytorch_model.bin)")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}); re-download it") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    if directory_kind(path) == "engine":
        raise CheckpointError(f"{path} is an engine directory (manifest.json), not an upstream checkpoint; `import` "
                              "reads what the research code wrote (config.json + pytorch_model.bin)")
    if cfg.get("format") == "prumux-checkpoint":
        raise CheckpointError(f"{path} is already a prumux-deploy checkpoint; use it directly (export, validate, ...)")
    if cfg.get("model_type", "bert") != "bert":
        raise CheckpointError(f"{file}: model_type {cfg.get('model_type')!r}; only BERT encoders can be imported")
    return cfg


def _weights_file(path: Path) -> Path:
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    if (path / "pytorch_model.bin.index.json").is_file() or (path / "model.safetensors.index.json").is_file():
        raise CheckpointError(f"{path}: sharded weights are not supported; merge them into one pytorch_model.bin")
    raise CheckpointError(f"{path}: no pytorch_model.bin or model.safetensors; is it an upstream checkpoint?")


def _normalise_names(weights: dict) -> dict:
    """Old BERT names (LayerNorm gamma/beta) as upstream's own loader renames them."""
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in weights.items()}


def _is_compact(cfg: dict, w: dict) -> bool:
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    if w["bert.embeddings.word_embeddings.weight"].shape[1] != H:
        return True
    for l in range(L):
        q = w.get(f"bert.encoder.layer.{l}.attention.self.query.weight")
        up = w.get(f"bert.encoder.layer.{l}.intermediate.dense.weight")
        if q is None or up is None or q.shape[0] != H or up.shape[0] != I:
            return True
    return False


def read_upstream(src) -> Upstream:
    """Read and classify an upstream directory; one-line CheckpointError for anything we cannot import."""
    path = Path(src)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; SRC is an upstream checkpoint directory")
    cfg = _read_config(path)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise CheckpointError(f"{path / 'config.json'}: {key} is missing; not a BERT config")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path / 'config.json'}: hidden_act {cfg['hidden_act']!r} is not supported "
                              "(only BERT's exact gelu)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path / 'config.json'}: position_embedding_type "
                              f"{cfg['position_embedding_type']!r} is not supported (only absolute)")
    if "num_instances" in cfg:
        mux, demux = cfg.get("muxing_variant", "gaussian_hadamard"), cfg.get("demuxing_variant", "index_pos")
        if mux not in MUX_VARIANTS:
            known = "a known upstream variant not supported yet" if mux in REFUSED_MUX else "unknown"
            raise CheckpointError(f"muxing_variant {mux!r} is {known}; prumux-deploy imports "
                                  f"{' and '.join(MUX_VARIANTS)}")
        if demux != "index_pos":
            what = REFUSED_DEMUX.get(demux)
            raise CheckpointError(f"demuxing_variant {demux!r} ({what or 'unknown'}) is not supported yet; "
                                  "prumux-deploy imports index_pos (the RSA demux of the PruMUX and MUX-PLMs scripts)")
    weights = _normalise_names(load_tensor_file(_weights_file(path)))
    if "bert.embeddings.word_embeddings.weight" not in weights:
        raise CheckpointError(f"{path}: no bert.embeddings.word_embeddings.weight in the weights; not an upstream "
                              "BERT classifier")
    zs = None
    if (path / "zs.pt").is_file():
        zs = load_tensor_file(path / "zs.pt", allow_none=True)
        if zs is None:
            raise CheckpointError(f"{path / 'zs.pt'}: holds None; upstream then rebuilds the masks from l0_module.pt, a "
                                  "pickled L0Module we never load. Write zs.pt with L0Module.forward(training=False)")
        zs = {k: v.float() for k, v in zs.items() if v is not None}
    if "num_instances" in cfg:
        kind = "prumux_stage1" if zs is not None else "prumux_stage2" if _is_compact(cfg, weights) else "muxplm"
    elif zs is not None:
        raise CheckpointError(f"{path}: a CoFi pruning run (zs.pt without num_instances) is not supported yet; "
                              "import its compact release (the directory CoFi's evaluation loads)")
    else:
        kind = "cofi"
    if kind == "prumux_stage1" and _is_compact(cfg, weights):
        raise CheckpointError(f"{path}: zs.pt beside compact weights; a stage-1 run has full-size weights")
    return Upstream(path, kind, cfg, weights, zs)


def find_tokenizer(src: Path, tokenizer=None) -> Path:
    """--tokenizer, else SRC, else the parent of a best/ directory (upstream's evaluation does the same)."""
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        if not tokenizer.is_dir():
            problem = "a file" if tokenizer.exists() else "no such directory"
            raise CheckpointError(f"`tokenizer` {tokenizer}: {problem}; give the directory that holds the "
                                  f"tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
        if not has_tokenizer(tokenizer):
            raise CheckpointError(f"`tokenizer` {tokenizer}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
        return tokenizer
    if has_tokenizer(src):
        return src
    if src.name == "best" and has_tokenizer(src.parent):
        return src.parent
    raise CheckpointError(f"{src}: no tokenizer files (vocab.txt / tokenizer.json) here"
                          f"{' or in its parent' if src.name == 'best' else ''}; pass `tokenizer` DIR with the "
                          "tokenizer the model was trained with (e.g. bert-base-uncased's vocab.txt)")


def load_upstream_tokenizer(directory: Path):
    """The tokenizer in `directory` as transformers loads it; upstream directories often lack what
    AutoTokenizer needs to pick a class (then BERT's WordPiece over vocab.txt, lower-cased unless
    tokenizer_config.json says otherwise, as upstream's BertTokenizer(vocab.txt) does)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception:  # noqa: BLE001 - no class recorded: BERT's tokenizer over vocab.txt
        if not (directory / "vocab.txt").is_file():
            raise CheckpointError(f"{directory}: its tokenizer cannot be loaded and has no vocab.txt") from None
        tok = BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    vocab = directory / "vocab.txt"
    if vocab.is_file():
        lines = sum(1 for line in vocab.read_text(encoding="utf-8").splitlines() if line)
        if len(tok) < lines:
            raise CheckpointError(f"{directory}: the tokenizer loaded with {len(tok)} ids but vocab.txt lists {lines}; "
                                  "its tokenizer files disagree, pass `tokenizer` with a consistent one")
    return tok


# --- stage 1: upstream's own fold and cut --------------------------------------------------------

def _layer(l: int, rest: str) -> str:
    return f"bert.encoder.layer.{l}.{rest}"


def _demux_prefix(w: dict) -> str:
    return "demultiplexer.demux_module." if "demultiplexer.demux_module.dense_1.weight" in w else "demux_module."


@torch.no_grad()
def fold_and_cut(up: Upstream) -> dict[str, torch.Tensor]:
    """Upstream's stage-1 evaluation form, in upstream names: utils/cofi_utils.py update_params then
    prune_model_with_z, reproduced with its quirks:
      - hidden_z is folded into the embedding tables, the instance embedding, the input columns of Q/K/V,
        FFN up and demux dense_1 ([z ; z], so the demux keys are scaled too), the rows of both output
        projections and the attention output bias, but not into the FFN output bias or any LayerNorm;
      - head_layer_z is folded only where head_z exists, mlp_z only where intermediate_z exists;
      - heads with head_z * head_layer_z == 0 and units with intermediate_z * mlp_z == 0 are cut, and a
        sub-layer with none left is removed;
      - the hidden dims with hidden_z == 0 are cut everywhere, the demux keys and dense_1's key columns
        included (upstream indexes the h columns as index + 768, BERT-base's width: here index + Hb).
    Returns the compact state dict upstream's MuxedBertForSequenceClassification then runs."""
    cfg, zs = up.config, up.zs or {}
    w = {k: v.clone().float() for k, v in up.weights.items()}
    L, nh, Hb = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    D = Hb // nh
    dm, mux = _demux_prefix(w), "instance_embedding" in w  # N = 1 (CoFi) models have no mux or demux
    head_z = zs["head_z"].reshape(L, nh) if "head_z" in zs else None
    head_layer_z = zs.get("head_layer_z")
    int_z = zs["intermediate_z"].reshape(L, -1) if "intermediate_z" in zs else None
    mlp_z = zs.get("mlp_z")
    hidden_z = zs.get("hidden_z")

    # update_params
    for l in range(L):
        if int_z is not None:
            w[_layer(l, "output.dense.weight")] *= int_z[l][None, :]
            if mlp_z is not None:
                w[_layer(l, "output.dense.weight")] *= mlp_z[l]
                w[_layer(l, "output.dense.bias")] *= mlp_z[l]
        if head_z is not None:
            per_dim = head_z[l].repeat_interleave(D)
            w[_layer(l, "attention.self.value.weight")] *= per_dim[:, None]
            w[_layer(l, "attention.self.value.bias")] *= per_dim
            if head_layer_z is not None:
                w[_layer(l, "attention.output.dense.weight")] *= head_layer_z[l]
                w[_layer(l, "attention.output.dense.bias")] *= head_layer_z[l]
    if hidden_z is not None:
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            w[f"bert.embeddings.{name}.weight"] *= hidden_z
        if mux:
            w["instance_embedding"] *= hidden_z
            w[dm + "dense_1.weight"] *= torch.cat([hidden_z, hidden_z])
        for l in range(L):
            for name in ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense"):
                w[_layer(l, name + ".weight")] *= hidden_z
            w[_layer(l, "attention.output.dense.weight")] *= hidden_z[:, None]
            w[_layer(l, "attention.output.dense.bias")] *= hidden_z
            w[_layer(l, "output.dense.weight")] *= hidden_z[:, None]
        if "bert.pooler.dense.weight" in w:
            w["bert.pooler.dense.weight"] *= hidden_z

    # prune_model_with_z
    keep = torch.arange(Hb) if hidden_z is None else hidden_z.nonzero().flatten()
    for l in range(L):
        a = _layer(l, "attention.")
        if head_z is not None:
            alive = head_z[l] * (head_layer_z[l] if head_layer_z is not None else 1.0)
            heads = alive.nonzero().flatten()
            cols = (heads[:, None] * D + torch.arange(D)).flatten()
            if heads.numel() == 0:  # CoFi's prune_heads sets the whole block to None; its LayerNorm stays uncut
                for name in ("self.query", "self.key", "self.value", "output.dense"):
                    for p in ("weight", "bias"):
                        del w[f"{a}{name}.{p}"]
            else:
                for name in ("self.query", "self.key", "self.value"):
                    w[f"{a}{name}.weight"] = w[f"{a}{name}.weight"][cols]
                    w[f"{a}{name}.bias"] = w[f"{a}{name}.bias"][cols]
                w[f"{a}output.dense.weight"] = w[f"{a}output.dense.weight"][:, cols]
        if hidden_z is not None and f"{a}self.query.weight" in w:
            for name in ("self.query", "self.key", "self.value"):
                w[f"{a}{name}.weight"] = w[f"{a}{name}.weight"][:, keep]
            w[f"{a}output.dense.weight"] = w[f"{a}output.dense.weight"][keep]
            w[f"{a}output.dense.bias"] = w[f"{a}output.dense.bias"][keep]
            for p in ("weight", "bias"):
                w[f"{a}output.LayerNorm.{p}"] = w[f"{a}output.LayerNorm.{p}"][keep]
        up_w, down_w = _layer(l, "intermediate.dense."), _layer(l, "output.dense.")
        if hidden_z is not None:
            w[up_w + "weight"] = w[up_w + "weight"][:, keep]
            w[down_w + "weight"] = w[down_w + "weight"][keep]
            w[down_w + "bias"] = w[down_w + "bias"][keep]
            for p in ("weight", "bias"):
                w[_layer(l, f"output.LayerNorm.{p}")] = w[_layer(l, f"output.LayerNorm.{p}")][keep]
        if int_z is not None:
            units = (int_z[l] * (mlp_z[l] if mlp_z is not None else 1.0)).nonzero().flatten()
            if units.numel() == 0:
                for p in ("weight", "bias"):
                    del w[up_w + p], w[down_w + p]
            else:
                w[up_w + "weight"], w[up_w + "bias"] = w[up_w + "weight"][units], w[up_w + "bias"][units]
                w[down_w + "weight"] = w[down_w + "weight"][:, units]
    if hidden_z is not None:
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            w[f"bert.embeddings.{name}.weight"] = w[f"bert.embeddings.{name}.weight"][:, keep]
        for p in ("weight", "bias"):
            w[f"bert.embeddings.LayerNorm.{p}"] = w[f"bert.embeddings.LayerNorm.{p}"][keep]
        if mux:
            w["instance_embedding"] = w["instance_embedding"][:, keep]
            w[dm + "demux_instance_embedding"] = w[dm + "demux_instance_embedding"][:, keep]
            w[dm + "dense_1.weight"] = w[dm + "dense_1.weight"][:, torch.cat([keep, keep + Hb])]
        if "bert.pooler.dense.weight" in w:
            w["bert.pooler.dense.weight"] = w["bert.pooler.dense.weight"][:, keep]
    return w


def masks_from_zs(up: Upstream) -> dict[str, torch.Tensor]:
    """zs.pt in our mask shapes: head_z [L, heads], intermediate_z [L, I], the rest as they are."""
    L = up.config["num_hidden_layers"]
    zs = dict(up.zs)
    if "head_z" in zs:
        zs["head_z"] = zs["head_z"].reshape(L, up.config["num_attention_heads"])
    if "intermediate_z" in zs:
        zs["intermediate_z"] = zs["intermediate_z"].reshape(L, up.config["intermediate_size"])
    unknown = sorted(set(zs) - {"head_z", "head_layer_z", "intermediate_z", "mlp_z", "hidden_z"})
    if unknown:
        raise CheckpointError(f"{up.path / 'zs.pt'}: unknown mask {unknown[0]!r}")
    return {k: v.contiguous() for k, v in zs.items()}


# --- our config and weights ----------------------------------------------------------------------

def _labels(cfg: dict, num_labels: int, task) -> dict[int, str]:
    names = None
    if cfg.get("id2label"):
        names = {int(k): str(v) for k, v in cfg["id2label"].items()}
    elif cfg.get("label2id"):
        try:
            names = {int(v): str(k) for k, v in cfg["label2id"].items()}
        except (TypeError, ValueError):
            names = None
    generic = (names is None or sorted(names) != list(range(num_labels))
               or all(v in (str(k), f"LABEL_{k}") for k, v in names.items()))
    if generic:
        if task is not None and len(task.label_names) == num_labels:
            return task.id2label
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    return names


def _task(cfg: dict):
    from .data import TASKS

    name = str(cfg.get("finetuning_task") or "").lower().replace("-", "")
    return TASKS.get(name)


def _structure(w: dict, L: int, D: int) -> tuple[list[int], list[int]]:
    heads, ffn = [], []
    for l in range(L):
        q = w.get(_layer(l, "attention.self.query.weight"))
        up = w.get(_layer(l, "intermediate.dense.weight"))
        heads.append(0 if q is None else q.shape[0] // D)
        ffn.append(0 if up is None else up.shape[0])
    return heads, ffn


def build_config(up: Upstream, w: dict, compact: bool, max_seq_length: int | None, mask_padding: bool,
                 reference: str | None) -> PruMuxConfig:
    c = up.config
    L, nh, Hb = c["num_hidden_layers"], c["num_attention_heads"], c["hidden_size"]
    num_labels = w["classifier.weight"].shape[0]
    task = _task(c)
    max_pos = c.get("max_position_embeddings", 512)
    max_len = max_seq_length or min(128, max_pos)
    if not 1 <= max_len <= max_pos:
        raise CheckpointError(f"`max_seq_length` {max_len} must be between 1 and the position table ({max_pos})")
    mux = up.is_mux
    if mask_padding and not mux:
        raise CheckpointError(f"{up.path}: `mask_padding` applies to multiplexed upstream models, which attend to "
                              "padding; this N=1 model masks it already, so leave the option out")
    kw = dict(
        vocab_size=c["vocab_size"], hidden_size=Hb, num_hidden_layers=L, num_attention_heads=nh,
        intermediate_size=c["intermediate_size"], max_position_embeddings=max_pos,
        type_vocab_size=c.get("type_vocab_size", 2), layer_norm_eps=c.get("layer_norm_eps", 1e-12),
        pad_token_id=c.get("pad_token_id") or 0, num_instances=up.num_instances,
        num_labels=num_labels, id2label=_labels(c, num_labels, task), task=task.name if task else None,
        max_seq_length=max_len, mask_convention="cofi",
        imported_from={"kind": up.kind, "source": str(up.path.resolve()), "reference": reference,
                       "attention": "masked padding" if mux and mask_padding else
                       ("attends to padding" if mux else "masked padding")},
    )
    if mux:
        kw.update(mux_kind=c.get("muxing_variant", "gaussian_hadamard"), demux_kind="index_pos",
                  num_hidden_demux_layers=int(c.get("num_hidden_demux_layers", 2)),
                  legacy_demuxing=bool(c.get("legacy_demuxing", False)), second_embedding_pass=True,
                  attend_to_padding=not mask_padding, mux_cls_token_id=UPSTREAM_CLS_ID, ignore_token_type_ids=True)
        kw["imported_from"].update(muxing_variant=kw["mux_kind"], demuxing_variant="index_pos")
    else:
        kw.update(demux_kind="pooler")
    if compact:
        heads, ffn = _structure(w, L, Hb // nh)
        H = w["bert.embeddings.word_embeddings.weight"].shape[1]
        kw.update(layer_num_heads=heads, layer_intermediate_size=ffn, pruned_hidden_size=H)
        if mux:
            K = w[_demux_prefix(w) + "demux_instance_embedding"].shape[1]
            kw["demux_key_size"] = K if K != H else None
    try:
        return PruMuxConfig(**kw)
    except ValueError as e:
        raise CheckpointError(f"{up.path / 'config.json'}: {e}") from None


def _our_names(w: dict, cfg: PruMuxConfig) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Upstream names -> ours for the tensors the classification forward reads; also the upstream names used."""
    out, used = {}, set()

    def take(ours: str, theirs: str):
        out[ours] = w[theirs]
        used.add(theirs)

    for name in w:
        mapped = bert_to_prumux_name(name)
        if mapped is not None:
            take(mapped, name)
    if cfg.demux_kind == "pooler":
        out["mux.vectors"] = torch.ones(1, cfg.model_dim)  # N = 1: the multiplexer is the identity
    else:
        take("mux.vectors", "instance_embedding")
        dm = _demux_prefix(w)
        take("demux.keys", dm + "demux_instance_embedding")
    for p in ("weight", "bias"):
        if cfg.demux_kind == "pooler":
            take(f"demux.pooler.{p}", f"bert.pooler.dense.{p}")
        else:
            take(f"demux.dense1.{p}", f"{dm}dense_1.{p}")
            if cfg.legacy_demuxing:
                take(f"demux.ln1.{p}", f"{dm}layer_norm_1.{p}")
            else:
                for j in range(2, cfg.num_hidden_demux_layers):
                    take(f"demux.residual.{j - 2}.{p}", f"{dm}dense_{j}.{p}")
            take(f"demux.pre_decoder.{p}", f"demultiplexer.pre_decoder.{p}")
            take(f"demux.pre_decoder_ln.{p}", f"demultiplexer.pre_decoder_layer_norm.{p}")
        take(f"demux.classifier.{p}", f"classifier.{p}")
    if cfg.second_embedding_pass and cfg.is_compact:  # upstream runs the same embedding module twice
        out["post_mux.position.weight"] = out["embeddings.position.weight"] + out["embeddings.token_type.weight"][0]
        out["post_mux.ln.weight"], out["post_mux.ln.bias"] = out["embeddings.ln.weight"], out["embeddings.ln.bias"]
    return out, used


def _unused_is_expected(name: str) -> bool:
    """Upstream tensors the classification forward never reads: training-only heads, the second name of the
    shared demux module and the demux layers upstream does not apply, BERT's pooler in MUX models, and
    the LayerNorms left behind by removed sub-layers."""
    if name.startswith(TRAINING_ONLY + ("demux_module.", "demultiplexer.demux_module.", "bert.pooler.")):
        return True
    mapped = bert_to_prumux_name(name)
    return mapped is not None and (".attn.ln." in mapped or ".ffn.ln." in mapped)


def to_model(up: Upstream, reference: str = "compact", max_seq_length: int | None = None,
             mask_padding: bool = False) -> PruMuxModel:
    """Our model for an upstream checkpoint (see the module docstring for `reference`)."""
    if reference not in REFERENCES:
        raise CheckpointError(f"`reference` {reference!r}: choose compact or masked")
    if reference == "masked" and up.kind != "prumux_stage1":
        raise CheckpointError(f"`reference` masked applies to PruMUX stage-1 runs (zs.pt); {up.path} is a "
                              f"{KIND_NAMES[up.kind]}, whose only form is the one it holds")
    if up.kind == "prumux_stage1" and reference == "compact":
        w, compact = fold_and_cut(up), True
    else:
        w, compact = up.weights, up.kind in ("prumux_stage2", "cofi") and _is_compact(up.config, up.weights)
    cfg = build_config(up, w, compact, max_seq_length, mask_padding,
                       reference if up.kind == "prumux_stage1" else None)
    model = PruMuxModel(cfg)
    try:
        ours, used = _our_names(w, cfg)
    except KeyError as e:
        raise CheckpointError(f"{up.path}: tensor {e.args[0]} is missing for a {KIND_NAMES[up.kind]}") from None
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in ours:
            raise CheckpointError(f"{up.path}: no tensor for {name} (a {KIND_NAMES[up.kind]} needs it)")
        if tuple(ours[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"{up.path}: {name} has shape {list(ours[name].shape)}, expected {list(ref.shape)}")
    leftovers = [n for n in w if (n not in used or bert_to_prumux_name(n) not in (None, *expected))
                 and not _unused_is_expected(n)]
    if leftovers:
        raise CheckpointError(f"{up.path}: unexpected tensor {leftovers[0]} ({len(leftovers)} in all); this checkpoint "
                              "has parts prumux-deploy does not know, so its forward would not be reproduced")
    model.load_state_dict({k: ours[k].float().contiguous() for k in expected})
    if up.kind == "prumux_stage1" and reference == "masked":
        model.set_masks(masks_from_zs(up))
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{up.path}: {name} holds NaN or Inf values")
    return model.eval()


def summary(model: PruMuxModel) -> str:
    """One line: what was found and what was written."""
    cfg, info = model.config, model.config.imported_from or {}
    if cfg.is_compact:
        structure = (f"heads kept {cfg.heads_per_layer}/{cfg.num_attention_heads}, FFN kept {cfg.ffn_per_layer}/"
                     f"{cfg.intermediate_size}, hidden kept {cfg.model_dim}/{cfg.hidden_size}")
    elif model.masks:
        from .compact import compact

        small = compact(model).config
        structure = (f"masks keep heads {small.heads_per_layer}/{cfg.num_attention_heads}, FFN "
                     f"{small.ffn_per_layer}/{cfg.intermediate_size}, hidden {small.model_dim}/{cfg.hidden_size}")
    else:
        structure = "unpruned"
    mux = (f"N={cfg.num_instances}, {cfg.mux_kind} mux, index_pos demux ({cfg.num_hidden_demux_layers} demux layers"
           f"{', legacy' if cfg.legacy_demuxing else ''}), {info.get('attention', '')}"
           if cfg.demux_kind == "index_pos" else "N=1, pooler head")
    ref = f", reference {info['reference']}" if info.get("reference") else ""
    return (f"{KIND_NAMES[info.get('kind', 'cofi')]}: {mux}, {cfg.num_hidden_layers} layers, {structure}, "
            f"task {cfg.task}, labels {list(cfg.id2label.values())}{ref}")


def import_checkpoint(src, out, reference: str = "compact", tokenizer=None, max_seq_length: int | None = None,
                      mask_padding: bool = False, force: bool = False) -> PruMuxModel:
    """Read SRC (an upstream directory), write OUT (our checkpoint with a fast tokenizer); returns the model."""
    import tempfile

    from .atomic import check_target

    check_target(out, force)
    up = read_upstream(src)
    model = to_model(up, reference, max_seq_length, mask_padding)
    tok_dir = find_tokenizer(up.path, tokenizer)
    tok = load_upstream_tokenizer(tok_dir)
    check_vocab(tok, model.config, tok_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        save_checkpoint(model, out, tokenizer_dir=tmp, force=force)
    return model
