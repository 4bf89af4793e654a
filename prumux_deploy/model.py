"""The PruMUX model: a BERT encoder with a data multiplexer in front and a demultiplexer behind.

Read top to bottom, like nanoGPT's model.py. Shapes in comments use:
    B  batch rows (sentences)            N  instances multiplexed into one sequence
    G  groups = ceil(B / N)              S  sequence length (L: the fixed length of attend_to_padding)
    H  model width (kept hidden dims)    D  head dim (base hidden / base heads, never pruned)
    Hb the base hidden size              Hd demux width (= Hb; the demux is not pruned)
    K  width of the demux keys (= H, or Hb for exactly compacted imports, see demux_key_size)

One module serves every kind of model the toolchain meets:

* masked models (what CoFi training produces): full-size tensors plus CoFi masks;
* compact models (what `prumux_deploy.compact` produces): no masks, and every layer
  has its own head count and FFN width, 0 meaning that sub-layer is gone;
* models imported from the upstream research code (prumux_deploy/upstream.py), whose forward differs
  from ours in the places the config names (the upstream names are kept):
      second_embedding_pass  the multiplexed embeddings go through the embedding module again
                             (+ position + token-type row 0, LayerNorm), as MUX-PLMs and PruMUX do
                             (models/multiplexing_pretraining_bert*.py pass inputs_embeds to BertModel)
      attend_to_padding      no attention mask: every row is padded to max_seq_length with [PAD] and the
                             padding is attended, as upstream evaluates (attention_mask=None, inputs padded
                             to 128). The model pads itself, so the caller's padding never changes a logit.
      mux_cls_token_id       position 0 of every instance is set to this id before embedding (upstream's
                             index_pos forward writes 101 there)
      ignore_token_type_ids  token-type row 0 everywhere (the multiplexed upstream models never pass them)
      demux_kind index_pos   MUX-PLMs' "RSA" demux with its exact topology (see IndexPosDemux)
      demux_kind pooler      BERT's pooler (dense + tanh on [CLS]) then the classifier: CoFi releases, N=1
      mask_convention cofi   CoFi's masked forward (see below)

Mask semantics (the one place they are defined; compaction in prumux_deploy/compact.py folds exactly these):
    hidden_z[Hb]          x <- x * hidden_z after the embedding LayerNorm, on every sub-layer output
                          before its residual add, and after every sub-layer LayerNorm. LayerNorms
                          normalise over the kept dims (hidden_z != 0) only and write 0 elsewhere.
    head_z[L, heads]      each head's context vector is scaled by head_z[l, h] before the output projection.
    head_layer_z[L]       the attention output projection (bias included) is scaled by head_layer_z[l].
    intermediate_z[L, I]  the FFN activation gelu(x W1 + b1) is scaled per unit.
    mlp_z[L]              the FFN output projection (bias included) is scaled by mlp_z[l].
Two conventions (config.mask_convention) differ in three places:
    prumux  (what `prumux-deploy train` writes) the embeddings are scaled by hidden_z after their
            LayerNorm only; the demux keys are scaled by hidden_z (they live in the same space); a
            sub-layer whose gate is exactly zero (head_layer_z[l] == 0 or every head_z[l] == 0; mlp_z[l] == 0
            or every intermediate_z[l] == 0) is skipped whole, LayerNorm included.
    cofi    (CoFiPruning / PruMUX models/modeling_bert.py, what upstream trained) the embedding sum is also
            scaled by hidden_z before its LayerNorm (CoFiBertEmbeddings); the demux keys are not masked
            (upstream keeps demux_instance_embedding out of the hidden space); a sub-layer is skipped only
            when its output projection is exactly zero (CoFiBertSelfOutput / CoFiBertOutput test
            `.sum() == 0`): gate 0, or every unit off and a zero bias. Every unit off with a live gate and a
            bias adds LayerNorm(x + bias), which compaction keeps as one unit with zero output weights.
            With second_embedding_pass, hidden_z applies to the second pass only (upstream's first
            pass runs without masks, over all Hb dims).

Demux kinds (config.demux_kind), each ending in the classifier:
    key_cls      features_i = LN(gelu(W2 h1) + h1), h1 = gelu(W1 [key_i ; h_CLS]) (our index-style read-out;
                 called "index" before 0.2, still read under that name)
    key_pool     the same MLP at every position, averaged over instance i's own tokens (was "index_pool").
                 The retrieval warm-up trains exactly this per-position demux.
    index_pos    upstream's RSA demux (MUX-PLMs IndexPosDemultiplexerTokenLevel), see IndexPosDemux
    pooler       tanh(W h_CLS + b): BERT's pooler, for N = 1 classifiers (CoFi releases)

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

from .data import task_is_pair
from .errors import ModelError
from .limits import CONFIG_LIMITS, LIST_LIMITS, MAX_PARAMETERS

MASK_NAMES = ("head_z", "head_layer_z", "intermediate_z", "mlp_z", "hidden_z")
MUX_KINDS = ("gaussian_hadamard", "binary_hadamard")  # both: instance vectors times embeddings, mean over N
# how a new model draws its instance vectors (HadamardMux; issue 35's arms). Loaded models bring theirs.
INSTANCE_VECTOR_INITS = ("gaussian", "ones", "near_ones", "binary", "partition")
NEAR_ONES_NOISE = 0.3  # near_ones: v = 1 + 0.3 g, g ~ N(0, 1) per dim, then unit RMS
DEMUX_KINDS = ("key_cls", "key_pool", "index_pos", "pooler")
NEW_MODEL_DEMUX_KINDS = ("key_cls", "key_pool", "index_pos")  # what `init` / `train` create (pooler: N=1 imports)
RENAMED_DEMUX_KINDS = {"index": "key_cls", "index_pool": "key_pool"}  # names written before 0.2
MASK_CONVENTIONS = ("prumux", "cofi")


def check_kind(what: str, kind: str, kinds: tuple[str, ...]):
    if kind not in kinds:
        raise ModelError(f"{what} {kind!r} is unknown; expected one of {', '.join(kinds)}")


# Bounds of a config's whole numbers: generous (far above any BERT) but finite, so that a typo or a hostile
# config.json (hidden_size 1e9, num_hidden_layers 1e6) is refused in one line before any tensor is allocated.


def _shown(value) -> str:
    """A config value as the user wrote it (JSON spelling), or its kind for containers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return f"({'an object' if isinstance(value, dict) else 'a list'})"
    return repr(value) if isinstance(value, str) else str(value)


def _whole(name: str, value, low, high) -> int:
    """`value` as an int within [low, high] (either None: unbounded); ModelError naming the field and the range."""
    import numbers

    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (low is None or value >= low) and (high is None or value <= high):
        return int(value)
    if low is None and high is None:
        wanted = "a whole number"
    elif high is None:
        wanted = f"a whole number of at least {low}"
    else:
        wanted = f"a whole number from {low} to {high}"
    limit = " (prumux-deploy's limit, far above any BERT's)" if CONFIG_LIMITS.get(name, (0, None))[1] == high \
        and high is not None and high > 1000 else ""
    raise ModelError(f"{name} {_shown(value)} is not {wanted}{limit}")


def check_config_values(values: dict, annotations: dict[str, str] | None = None) -> dict:
    """Check each known field of `values` against its type in PruMuxConfig (whole numbers within CONFIG_LIMITS,
    true/false, text, lists of whole numbers within LIST_LIMITS, objects), before anything is built from them.
    Returns the values with whole numbers as Python ints. Raises ModelError (one line naming the field and what it
    must be) for the first that is not."""
    import numbers

    annotations = annotations or {f.name: str(f.type) for f in fields(PruMuxConfig)}
    checked = dict(values)
    for name, value in values.items():
        if name not in annotations:
            continue
        kinds = [k.strip() for k in annotations[name].split("|")]
        if value is None and "None" in kinds:
            continue
        kind = kinds[0].split("[")[0]
        if name == "max_seq_length" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                         or value < 1):
            positions = values.get("max_position_embeddings")
            raise ModelError(f"max_seq_length {_shown(value)} is not a whole number from 1 to the position table"
                             + (f" ({positions})" if isinstance(positions, int) else ""))
        if kind == "int":
            checked[name] = _whole(name, value, *CONFIG_LIMITS.get(name, (None, None)))
        elif kind == "bool" and not isinstance(value, bool):
            raise ModelError(f"{name} {_shown(value)} is not true or false")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or (name == "layer_norm_eps" and not 0 < value < 1):
                wanted = "a number between 0 and 1" if name == "layer_norm_eps" else "a finite number"
                raise ModelError(f"{name} {_shown(value)} is not {wanted}")
            checked[name] = float(value)
        elif kind == "str" and not isinstance(value, str):
            raise ModelError(f"{name} {_shown(value)} is not text")
        elif kind == "list":
            if not isinstance(value, (list, tuple)):
                raise ModelError(f"{name} {_shown(value)} is not a list of whole numbers")
            low, high = LIST_LIMITS.get(name, (None, None))
            checked[name] = [_whole(f"{name}[{i}]", v, low, high) for i, v in enumerate(value)]
        elif kind == "dict":
            if not isinstance(value, dict):
                raise ModelError(f"{name} {_shown(value)} is not an object")
            if name == "id2label":
                for k, v in value.items():
                    if not (isinstance(k, int) and not isinstance(k, bool) or isinstance(k, str) and k.isdigit()):
                        raise ModelError(f"id2label has the key {k!r}; its keys are class ids 0, 1, ...")
                    if not isinstance(v, (str, int)) or isinstance(v, bool):
                        raise ModelError(f"id2label[{k}] {_shown(v)} is not a label name (text)")
    return checked


def _check_dimensions(cfg) -> None:
    """What the fields say together: the input length fits the position table, the padding id the vocabulary,
    and the whole model a bounded size (each field within its limit can still multiply to terabytes)."""
    if cfg.max_seq_length > cfg.max_position_embeddings:
        raise ModelError(f"max_seq_length {cfg.max_seq_length} exceeds the position table "
                         f"({cfg.max_position_embeddings}); use at most {cfg.max_position_embeddings}")
    if cfg.pad_token_id >= cfg.vocab_size:
        raise ModelError(f"pad_token_id {cfg.pad_token_id} is not an id of the vocabulary (vocab_size "
                         f"{cfg.vocab_size}); it must be from 0 to {cfg.vocab_size - 1}")
    H, L, I = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    parameters = ((cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * H + L * (4 * H * H + 2 * H * I)
                  + (cfg.num_hidden_demux_layers + 2) * H * H + (cfg.num_instances + cfg.num_labels) * H)
    if parameters > MAX_PARAMETERS:
        raise ModelError(f"these dimensions make a model of about {parameters / 1e9:,.0f} billion parameters "
                         f"({4 * parameters / 2 ** 30:,.0f} GiB in float32), more than prumux-deploy's limit of "
                         f"{MAX_PARAMETERS / 1e9:.1f} billion; check hidden_size {H}, num_hidden_layers {L}, "
                         f"intermediate_size {I} and vocab_size {cfg.vocab_size}")


@dataclass
class PruMuxConfig:
    """Everything a checkpoint's config.json holds: the base BERT's dimensions (what the masks index into), the
    pruned widths of a compact model, the multiplexer (num_instances N, mux_kind and its seed, mux_init), the
    demultiplexer (demux_kind: one of DEMUX_KINDS) and the task (num_labels, id2label, columns). The upstream
    plumbing that imports carry (attend_to_padding, mask_convention, second_embedding_pass, ...) is explained
    in this module's docstring. from_dict / to_dict read and write it; bad values are refused in one line
    (ModelError)."""

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
    mux_init: str | None = None       # how the instance vectors were drawn (None: ones at N=1, else gaussian)
    mux_learned: bool = False         # the instance vectors are trained with the model (else fixed)
    demux_kind: str = "key_cls"
    num_hidden_demux_layers: int = 3  # index_pos: dense_1 .. dense_{D-1} are used (upstream's count)
    legacy_demuxing: bool = False     # index_pos: upstream's legacy path (dense_1 + layer_norm_1 only)
    num_labels: int = 2
    id2label: dict[int, str] = field(default_factory=dict)
    task: str | None = None
    task_columns: dict | None = None  # task "custom": the data's {"text", "text_pair", "label"} column names
    max_seq_length: int = 128
    # upstream forward variants (see the module docstring); the defaults are our own models' forward
    second_embedding_pass: bool = False
    attend_to_padding: bool = False
    mux_cls_token_id: int | None = None
    ignore_token_type_ids: bool = False
    mask_convention: str = "prumux"
    # compact structure; None means "full size" (a masked or unpruned model)
    layer_num_heads: list[int] | None = None
    layer_intermediate_size: list[int] | None = None
    pruned_hidden_size: int | None = None
    demux_key_size: int | None = None             # K when it differs from H (cofi keys are not pruned)
    pre_mux_hidden_keep: list[int] | None = None  # first pass at width Hb, then these dims are kept
    # where an imported model came from (prumux_deploy/upstream.py): kind, source path, reference form
    imported_from: dict | None = None

    def __post_init__(self):
        for name, value in check_config_values(self.__dict__).items():  # types and bounds, before anything else
            setattr(self, name, value)
        _check_dimensions(self)
        self.id2label = {int(k): str(v) for k, v in (self.id2label or {}).items()}
        if not self.id2label:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.demux_kind = RENAMED_DEMUX_KINDS.get(self.demux_kind, self.demux_kind)
        check_kind("mux_kind", self.mux_kind, MUX_KINDS)
        if self.mux_init is not None:
            check_kind("mux_init", self.mux_init, INSTANCE_VECTOR_INITS)
            if self.mux_init == "ones" and self.num_instances > 1:
                raise ModelError(f"mux_init 'ones' gives every instance the same vector, so N={self.num_instances} "
                                 f"instances could not be told apart; use it with N=1, or choose near_ones")
        check_kind("demux_kind", self.demux_kind, DEMUX_KINDS)
        check_kind("mask_convention", self.mask_convention, MASK_CONVENTIONS)
        if self.demux_kind == "pooler" and self.num_instances != 1:
            raise ModelError(f"demux_kind 'pooler' reads one [CLS] state and needs num_instances 1, "
                             f"got {self.num_instances}")
        if self.demux_kind == "index_pos" and not self.legacy_demuxing and self.num_hidden_demux_layers < 2:
            raise ModelError(f"num_hidden_demux_layers must be at least 2 for the index_pos demux, "
                             f"got {self.num_hidden_demux_layers}")

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

    @property
    def embedding_dim(self) -> int:
        """Width of the first embedding pass (Hb when it keeps only pre_mux_hidden_keep afterwards)."""
        return self.hidden_size if self.pre_mux_hidden_keep is not None else self.model_dim

    @property
    def key_size(self) -> int:
        return self.demux_key_size or self.model_dim

    @property
    def uses_token_types(self) -> bool:
        """Whether inputs carry token_type_ids: sentence-pair tasks (the GLUE pair tasks, custom tasks with a
        text_pair column). A model without a task reads single sentences."""
        return task_is_pair(self.task, self.task_columns)

    @property
    def input_names(self) -> list[str]:
        """The engine's inputs, each [batch, sequence] int64."""
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_token_types else [])

    def to_dict(self) -> dict:
        return asdict(self)

    def full_size(self) -> "PruMuxConfig":
        """The unpruned model of the same base shape: every head and FFN unit, the full hidden width."""
        return PruMuxConfig.from_dict({**self.to_dict(), "layer_num_heads": None, "layer_intermediate_size": None,
                                       "pruned_hidden_size": None, "demux_key_size": None,
                                       "pre_mux_hidden_keep": None})

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


def scale(x, z):
    return x if z is None else x * z


class LayerMasks:
    """The slice of the CoFi masks that one encoder layer needs (all None for a compact model)."""

    def __init__(self, masks: dict | None, layer: int, convention: str = "prumux"):
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
        self.convention = convention

    def _off(self, units, gate, bias) -> bool:
        """Whether a sub-layer is skipped (see "Two conventions" in the module docstring)."""
        if gate is not None and bool(gate == 0):
            return True
        if units is None or not bool((units == 0).all()):
            return False
        return self.convention == "prumux" or not bool((scale(bias, gate) != 0).any())

    def attention_off(self, out_bias) -> bool:
        return self._off(self.head, self.head_layer, out_bias)

    def ffn_off(self, out_bias) -> bool:
        return self._off(self.intermediate, self.mlp, out_bias)


def fill_last_group(t, N: int):
    """[B, ...] -> [G*N, ...] with G = ceil(B / N): the last mux group is filled by repeating the last row."""
    B = t.shape[0]
    rows = torch.arange((B + N - 1) // N * N, device=t.device).clamp(max=B - 1)
    return t.index_select(0, rows)


def pad_to_length(input_ids, attention_mask, token_type_ids, length: int, pad_id: int):
    """attend_to_padding: every row becomes `length` long, [PAD] wherever attention_mask is 0 and after the
    row, so the attended padding is the same whatever the caller's padding was. -> ids, mask, types [B, L]."""
    S = input_ids.shape[1]
    if S > length:
        raise ModelError(f"sequence length {S} exceeds {length}, the length this model attends over; "
                         f"truncate inputs to {length} tokens")
    real = attention_mask != 0
    input_ids = F.pad(torch.where(real, input_ids, pad_id), (0, length - S), value=pad_id)
    token_type_ids = F.pad(torch.where(real, token_type_ids, 0), (0, length - S), value=0)
    attention_mask = F.pad(attention_mask, (0, length - S), value=0)
    return input_ids, attention_mask, token_type_ids


class Embeddings(nn.Module):
    """BERT's embeddings: word + position + token type, LayerNorm. Width cfg.embedding_dim."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        W = cfg.embedding_dim
        self.word = nn.Embedding(cfg.vocab_size, W)
        self.position = nn.Embedding(cfg.max_position_embeddings, W)
        self.token_type = nn.Embedding(cfg.type_vocab_size, W)
        self.ln = nn.LayerNorm(W, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(0.0)
        self.z_before_ln = cfg.mask_convention == "cofi"

    def forward(self, input_ids, token_type_ids, hidden_z=None, keep=None):  # [B, S] -> [B, S, W]
        S = input_ids.shape[1]
        positions = torch.arange(S, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)  # [B,S,W]
        return self.norm(x, hidden_z, keep)

    def second_pass(self, x, hidden_z=None, keep=None):  # [G, S, H] -> [G, S, H]
        """Upstream's second embedding pass over the multiplexed sequence (full-size models; compact ones
        carry PostMuxEmbeddings): + position + token-type row 0, LayerNorm."""
        positions = torch.arange(x.shape[1], device=x.device)
        return self.norm(x + self.position(positions)[None] + self.token_type.weight[0], hidden_z, keep)

    def norm(self, x, hidden_z, keep):
        if self.z_before_ln:
            x = scale(x, hidden_z)
        x = layer_norm(x, self.ln.weight, self.ln.bias, self.ln.eps, keep)
        return self.drop(scale(x, hidden_z))


class PostMuxEmbeddings(nn.Module):
    """The second embedding pass of a compact model: its own position table (token-type row 0 and the
    masks folded in by compaction) and LayerNorm, since they may differ from the first pass's."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        H = cfg.model_dim
        self.position = nn.Embedding(cfg.max_position_embeddings, H)
        self.ln = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):  # [G, S, H] -> [G, S, H]
        positions = torch.arange(x.shape[1], device=x.device)
        return self.drop(self.ln(x + self.position(positions)[None]))


def instance_vectors(init: str, N: int, H: int, seed: int) -> torch.Tensor:  # -> [N, H]
    """The instance vectors v_i of a new model's Hadamard multiplexer (DataMUX sec. 3.1 draws them from
    N(0, 1)). All but partition have unit RMS, so the mix mean_i(emb_i * v_i) keeps the embeddings' scale.

    gaussian   N(0, 1) rows normalised to unit RMS (DataMUX's; every dim gets a random gain and sign)
    ones       all ones (N=1 only: the plain encoder)
    near_ones  1 + 0.3 g, unit RMS: the encoder's basis nearly kept, instances told apart by small gains
    binary     random +-1 per dim (upstream's binary_hadamard): gains kept at 1, signs scrambled
    partition  the dims dealt out among the instances: v_i = N on instance i's dims, 0 elsewhere, so each
               dim of the mix carries one instance's value unscaled (each instance keeps 1/N of its dims)
    """
    gen = torch.Generator().manual_seed(seed)
    if init == "ones":
        return torch.ones(N, H)
    if init == "partition":
        owner = torch.randperm(H, generator=gen) % N            # [H]: which instance keeps each dim
        return (owner[None, :] == torch.arange(N)[:, None]).float() * N
    g = torch.randn(N, H, generator=gen)
    if init == "binary":
        return torch.sign(g) + (g == 0).float()
    v = 1 + NEAR_ONES_NOISE * g if init == "near_ones" else g
    return v / v.norm(dim=-1, keepdim=True) * math.sqrt(H)  # unit RMS: mean(v_i * v_i) = 1


class HadamardMux(nn.Module):
    """Mix N instances into one sequence: mean_i(emb_i * v_i) (DataMUX's Hadamard multiplexer; upstream's
    `instance_embedding`). New models draw v_i by config.mux_init (instance_vectors; by default Gaussian,
    and all ones when N = 1 so a single instance sees the pretrained encoder unchanged); imported and loaded
    models bring theirs in the state dict."""

    def __init__(self, cfg: PruMuxConfig, seed: int = 0):
        super().__init__()
        N, H = cfg.num_instances, cfg.model_dim
        init = cfg.mux_init or ("ones" if N == 1 else "gaussian")
        v = instance_vectors(init, N, H, seed)  # [N, H], saved in the state dict either way
        if cfg.mux_learned:  # trained with the encoder; the engine holds the trained values as constants
            self.vectors = nn.Parameter(v)
        else:
            self.register_buffer("vectors", v)

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

    def forward(self, x, mask_bias, z: LayerMasks):  # x: [G,S,H], mask_bias: [G,1,1,S] or None
        G, S, _ = x.shape
        nh, D = self.num_heads, self.head_dim
        q = self.query(x).view(G, S, nh, D).transpose(1, 2)  # [G,nh,S,D]
        k = self.key(x).view(G, S, nh, D).transpose(1, 2)
        v = self.value(x).view(G, S, nh, D).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # [G,nh,S,S]
        if mask_bias is not None:
            scores = scores + mask_bias
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
        if self.attn is not None and not z.attention_off(self.attn.out.bias):
            x = self.attn(x, mask_bias, z)
        if self.ffn is not None and not z.ffn_off(self.ffn.down.bias):
            x = self.ffn(x, z)
        return x


def concat_key(keys, h):
    """[key ; h] with the leading dims broadcast against each other: keys [..., K], h [..., H] -> [..., K+H]."""
    lead = torch.broadcast_shapes(keys.shape[:-1], h.shape[:-1])
    return torch.cat([keys.expand(*lead, keys.shape[-1]), h.expand(*lead, h.shape[-1])], dim=-1)


class InstanceDemux(nn.Module):
    """What the key-based demuxes share: a key per instance (upstream's demux_instance_embedding), an MLP
    of [key_i ; h] (instance_features, per kind) and the classifier. h is the multiplexed [CLS] state, or
    (key_pool) every position's state, averaged over instance i's own tokens."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        N, K, H, Hd = cfg.num_instances, cfg.key_size, cfg.model_dim, cfg.hidden_size
        self.pooled = cfg.demux_kind == "key_pool"
        self.keys = nn.Parameter(torch.randn(N, K) * 0.02)  # [N, K]
        self.dense1 = nn.Linear(K + H, Hd)
        self.drop = nn.Dropout(0.0)
        self.classifier = nn.Linear(Hd, cfg.num_labels)

    def instance_features(self, keys, h):  # keys [..., K], h [..., H] -> [..., Hd]
        raise NotImplementedError

    def forward(self, x, instance_mask, keys):  # x: [G, S, H], instance_mask: [G*N, S], keys [N, K] -> [G*N, C]
        if self.pooled:
            (G, S, _), N = x.shape, keys.shape[0]
            per_token = self.instance_features(keys[None, :, None], x[:, None])  # [G, N, S, Hd]
            w = instance_mask.view(G, N, S, 1).to(x.dtype)  # [G, N, S, 1], 1 on instance i's tokens
            features = (per_token * w).sum(dim=2) / w.sum(dim=2).clamp(min=1.0)  # [G, N, Hd]
        else:
            features = self.instance_features(keys[None], x[:, None, 0])  # [G, N, Hd]
        return self.classifier(self.drop(features)).flatten(0, 1)


class KeyDemux(InstanceDemux):
    """key_cls / key_pool: h1 = gelu(W1 [key_i ; h]); features = LN(gelu(W2 h1) + h1)."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__(cfg)
        Hd = cfg.hidden_size
        self.dense2 = nn.Linear(Hd, Hd)
        self.ln = nn.LayerNorm(Hd, eps=cfg.layer_norm_eps)

    def instance_features(self, keys, h):
        h1 = F.gelu(self.dense1(concat_key(keys, h)))
        h2 = F.gelu(self.dense2(h1)) + h1
        return self.ln(h2)


class IndexPosDemux(InstanceDemux):
    """Upstream's index_pos ("RSA") demux, MUX-PLMs IndexPosDemultiplexerTokenLevel, with D =
    num_hidden_demux_layers:
        x = gelu(dense_1([k_i ; h]));  x = gelu(dense_j(x)) + x  for j = 2 .. D-1
        features = pre_decoder_layer_norm(gelu(pre_decoder(x))) + x
    dense_D and layer_norm_1..D exist upstream but are never applied here (dense_D serves the retrieval
    head; the code fetches dropout_j where its name says layer_norm_j). With legacy_demuxing (PruMUX's copy):
        x = layer_norm_1(gelu(dense_1([k_i ; h])));  features = pre_decoder_layer_norm(gelu(pre_decoder(x))) + x
    Names here: dense1 = dense_1, residual[j-2] = dense_j, ln1 = layer_norm_1, pre_decoder_ln =
    pre_decoder_layer_norm, keys = demux_instance_embedding."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__(cfg)
        Hd, D = cfg.hidden_size, cfg.num_hidden_demux_layers
        self.legacy = cfg.legacy_demuxing
        self.ln1 = nn.LayerNorm(Hd, eps=cfg.layer_norm_eps) if self.legacy else None
        self.residual = nn.ModuleList([] if self.legacy else [nn.Linear(Hd, Hd) for _ in range(2, D)])
        self.drops = nn.ModuleList(nn.Dropout(0.0) for _ in range(1 + len(self.residual)))  # upstream dropout_j
        self.pre_decoder = nn.Linear(Hd, Hd)
        self.pre_decoder_ln = nn.LayerNorm(Hd, eps=cfg.layer_norm_eps)

    def instance_features(self, keys, h):
        x = self.drops[0](F.gelu(self.dense1(concat_key(keys, h))))
        if self.legacy:
            x = self.ln1(x)
        for dense, drop in zip(self.residual, self.drops[1:]):
            x = drop(F.gelu(dense(x))) + x
        return self.pre_decoder_ln(F.gelu(self.pre_decoder(x))) + x


class PoolerHead(nn.Module):
    """BERT's pooler and classifier (N = 1; CoFi releases): logits = classifier(tanh(W h_CLS + b))."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        self.pooler = nn.Linear(cfg.model_dim, cfg.hidden_size)
        self.drop = nn.Dropout(0.0)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, x, instance_mask, keys):  # x: [G, S, H] -> [G, C]
        return self.classifier(self.drop(torch.tanh(self.pooler(x[:, 0]))))


DEMUX_MODULES = {"key_cls": KeyDemux, "key_pool": KeyDemux, "index_pos": IndexPosDemux, "pooler": PoolerHead}


class PruMuxModel(nn.Module):
    """A multiplexed BERT classifier (DataMUX / MUX-PLMs) with CoFi's structured masks: embeddings -> mux
    (N sentences mixed into one sequence) -> encoder -> demux -> classifier, in one module.

    model(input_ids, attention_mask, token_type_ids) -> logits [B, C] for B rows [B, S]. Consecutive rows form the
    mux groups; a batch that is not a multiple of N has its last group filled by repeating the last row (those
    outputs are dropped). The model is masked (masks attached: the training form) or compact (the masked
    structure removed by compact.compact); both give the same logits. create_model makes one from a BERT,
    load_checkpoint reads one. Raises ModelError for inputs it cannot take (a sequence past the position
    table)."""

    def __init__(self, cfg: PruMuxConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        if cfg.pre_mux_hidden_keep is not None:  # derived from the config, so not saved with the weights
            self.register_buffer("pre_mux_keep", torch.tensor(cfg.pre_mux_hidden_keep, dtype=torch.long),
                                 persistent=False)
        self.mux = HadamardMux(cfg, seed=cfg.mux_seed)
        self.post_mux = PostMuxEmbeddings(cfg) if cfg.second_embedding_pass and cfg.is_compact else None
        self.layers = nn.ModuleList(
            EncoderLayer(cfg, h, f) for h, f in zip(cfg.heads_per_layer, cfg.ffn_per_layer))
        self.demux = DEMUX_MODULES[cfg.demux_kind](cfg)
        self.masks: dict[str, torch.Tensor] = {}
        self.tokenizer_dir = None  # where tokenizer files come from when the model is saved

    # --- masks -------------------------------------------------------------------------------
    def set_masks(self, masks: dict[str, torch.Tensor] | None):
        """Attach CoFi masks (float tensors; 0 = pruned). Only full-size models can carry masks."""
        masks = {k: v.float() for k, v in (masks or {}).items() if v is not None}
        if masks and self.config.is_compact:
            raise ModelError("a compact model carries no masks; fold them with prumux_deploy.compact first")
        self.masks = masks

    def _resolve_masks(self, masks):
        masks = self.masks if masks is None else masks
        if not masks:
            return None
        device = self.embeddings.word.weight.device
        masks = {k: v.to(device) for k, v in masks.items()}  # no copy when they are there already
        hidden_z = masks.get("hidden_z")
        if hidden_z is not None:
            masks = dict(masks, _hidden_keep=(hidden_z != 0).nonzero().flatten())
        return masks

    def demux_keys(self, masks=None):
        """The demux keys as the demux reads them [N, K]: scaled by hidden_z in the prumux convention
        (None for the pooler head, which has none)."""
        keys = getattr(self.demux, "keys", None)
        if keys is not None and self.config.mask_convention == "prumux" and masks:
            keys = scale(keys, masks.get("hidden_z"))
        return keys

    # --- forward -----------------------------------------------------------------------------
    def prepare_inputs(self, input_ids, attention_mask=None, token_type_ids=None):
        """Defaults, the fixed length of attend_to_padding, mux-group filling, the forced [CLS] id and ignored
        token types: [B, S] -> ids, mask, types [G*N, S'] (S' = max_seq_length with attend_to_padding)."""
        cfg = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None or cfg.ignore_token_type_ids:
            token_type_ids = torch.zeros_like(input_ids)
        if cfg.attend_to_padding:
            input_ids, attention_mask, token_type_ids = pad_to_length(
                input_ids, attention_mask, token_type_ids, cfg.max_seq_length, cfg.pad_token_id)
        elif input_ids.shape[1] > cfg.max_position_embeddings:  # else an IndexError from the position table
            raise ModelError(f"sequence length {input_ids.shape[1]} exceeds {cfg.max_position_embeddings}, this "
                             f"model's position table; truncate inputs to {cfg.max_seq_length} tokens")
        if cfg.num_instances > 1:  # fill the last group by repeating the last row; its outputs are dropped
            input_ids, attention_mask, token_type_ids = (
                fill_last_group(t, cfg.num_instances) for t in (input_ids, attention_mask, token_type_ids))
        if cfg.mux_cls_token_id is not None:
            input_ids = torch.cat([torch.full_like(input_ids[:, :1], cfg.mux_cls_token_id), input_ids[:, 1:]], 1)
        return input_ids, attention_mask, token_type_ids

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, hidden_states=None):
        """Embed, multiplex, run the encoder. input_ids etc.: [B, S] -> x [G, S, H], group mask [G, S], masks.

        `masks` overrides the attached masks for one call (training passes sampled gates here). When
        `hidden_states` is a list, the multiplexed embeddings and every layer's output are appended to it.
        """
        return self._encode(*self.prepare_inputs(input_ids, attention_mask, token_type_ids), masks, hidden_states)

    def _encode(self, input_ids, attention_mask, token_type_ids, masks=None, hidden_states=None):
        cfg, N, S = self.config, self.config.num_instances, input_ids.shape[1]
        masks = self._resolve_masks(masks)
        hidden_z = None if masks is None else masks.get("hidden_z")
        keep = None if masks is None else masks.get("_hidden_keep")

        if cfg.second_embedding_pass:  # upstream's first pass runs without masks
            x = self.embeddings(input_ids, token_type_ids)  # [G*N, S, W]
            if cfg.pre_mux_hidden_keep is not None:
                x = x.index_select(-1, self.pre_mux_keep)  # [G*N, S, H]
            x = self.mux(x)  # [G, S, H]
            x = self.post_mux(x) if self.post_mux is not None else self.embeddings.second_pass(x, hidden_z, keep)
        else:
            x = self.mux(self.embeddings(input_ids, token_type_ids, hidden_z, keep))  # [G, S, H]
        # a position of the mixed sequence is attended if any instance has a real token there.
        # Written as sum > 0 (not amax) and with BERT's own mask-bias pattern (unsqueeze, cast, 1 - m, * min)
        # because ONNX Runtime's transformer optimizer needs both: its shape inference has no ReduceMax, and
        # its attention fusion matches this pattern (see export/optimize.py).
        group_mask = (attention_mask.view(-1, N, S).sum(dim=1) > 0).to(attention_mask.dtype)  # [G, S]
        mask_bias = None
        if not cfg.attend_to_padding:
            mask_bias = (1.0 - group_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # [G,1,1,S]
        if hidden_states is not None:
            hidden_states.append(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask_bias, LayerMasks(masks, i, cfg.mask_convention))
            if hidden_states is not None:
                hidden_states.append(x)
        return x, group_mask, masks

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, hidden_states=None):
        """input_ids, attention_mask, token_type_ids: [B, S] integer tensors -> logits [B, C] (any B: the last
        mux group is filled, see the class). masks: structured masks for this call instead of the attached ones
        (training passes sampled gates). hidden_states: a list, appended the multiplexed embeddings and every
        layer's output [G, S, H]."""
        ids, mask, types = self.prepare_inputs(input_ids, attention_mask, token_type_ids)
        x, _, masks = self._encode(ids, mask, types, masks, hidden_states)
        logits = self.demux(x, mask, self.demux_keys(masks))  # [G*N, C]
        return logits[: input_ids.shape[0]]

    # --- training-time settings ----------------------------------------------------------------
    def set_dropout(self, p: float):
        """Dropout probability of every dropout site (see the module docstring); 0 turns them off."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    def set_demux_kind(self, kind: str):
        """Switch between the key_cls and key_pool read-outs; they share weights, so a trained demux can
        change kind."""
        kind = RENAMED_DEMUX_KINDS.get(kind, kind)
        check_kind("demux kind", kind, ("key_cls", "key_pool"))
        if self.config.demux_kind not in ("key_cls", "key_pool"):
            raise ModelError(f"a {self.config.demux_kind} demux cannot switch to {kind}; only key_cls and "
                             "key_pool share weights")
        self.config.demux_kind = kind
        self.demux.pooled = kind == "key_pool"

    # --- bookkeeping -------------------------------------------------------------------------
    def num_encoder_params(self) -> int:
        """Parameters of the prunable encoder (attention + FFN weights), what sparsity is measured on."""
        return sum(p.numel() for n, p in self.layers.named_parameters() if not n.endswith("ln.weight")
                   and not n.endswith("ln.bias"))

