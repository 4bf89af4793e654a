"""Training losses: classification over multiplexed instances, token retrieval, and CoFi distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import current



def prediction_distillation(student_logits, teacher_logits, temperature: float = 2.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened predictions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t


class LayerAlignment(nn.Module):
    """CoFi's layer-wise distillation: a learned linear map of student hidden states, and for every chosen
    teacher layer the student layer that matches it best (searched anew at each step, in increasing order)."""

    def __init__(self, hidden_size: int, num_layers: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.teacher_layers = list(range(2, num_layers + 1, 2)) or [num_layers]  # 1-based layer outputs

    def forward(self, student_hidden, teacher_hidden, group_mask, rt=None) -> torch.Tensor:
        """student_hidden / teacher_hidden: lists of [G, S, H] (embeddings first, then each layer);
        group_mask: [G, S], 1 where the multiplexed sequence has a real token. Errors are means over every
        process's real tokens, and the best student layer is chosen on them (rt: distributed.Runtime)."""
        rt = rt or current()
        w = group_mask.unsqueeze(-1).to(student_hidden[0].dtype)
        denom = w.sum() * student_hidden[0].shape[-1]
        mapped = [self.proj(h) for h in student_hidden[1:]]
        total, first = student_hidden[0].new_zeros(()), 0
        for t in self.teacher_layers:
            target = teacher_hidden[t]
            sums = torch.stack([((m - target).float().pow(2) * w).sum() for m in mapped[first:]])  # local squared errors
            best = int(rt.global_sum(sums).argmin())
            total = total + rt.mean_of(sums[best], denom)
            first += best  # later teacher layers map to the same or later student layers
        return total


def _encode_for_demux(model, input_ids, attention_mask):
    """The encoder output [G, S, H] and the demux keys [N, K] as the demux reads them, for losses that run
    the demux MLP at positions of their choosing."""
    x, _, masks = model.encode(input_ids, attention_mask)
    return x, model.demux_keys(masks)


def retrieval_choice(num_groups: int, seq_len: int, num_instances: int, seed: int, step: int) -> torch.Tensor:
    """Which instance every position of every group of a global batch retrieves: [G, S], drawn from a
    generator seeded by (seed, step), so every process count draws the same choices."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, num_instances, (num_groups, seq_len), generator=gen)


class StepChoices:
    """The retrieval choices of the current optimizer step, for warm-up, pre-training and fine-tuning's retrieval
    term: `draw` them once for the global batch (retrieval_choice), then `of` slices a micro-batch's groups by
    its rows' positions in the global batch, so every process count and accumulation retrieves alike."""

    def __init__(self, num_instances: int, seed: int):
        self.num_instances, self.seed, self.current = num_instances, seed, None

    def draw(self, input_ids: torch.Tensor, step: int) -> torch.Tensor:
        """input_ids: the global batch [B, S], B a multiple of N. Returns (and keeps) the choices [B / N, S]."""
        N = self.num_instances
        self.current = retrieval_choice(input_ids.shape[0] // N, input_ids.shape[1], N, self.seed, step)
        return self.current

    def of(self, part: dict) -> torch.Tensor:
        """part: a micro-batch with "position" [b] (each row's index in the global batch). Returns [b / N, S]."""
        N = self.num_instances
        return self.current[part["position"][::N].cpu() // N]


def retrieval_loss(model, input_ids, attention_mask, choice=None, rt=None) -> torch.Tensor:
    """Token retrieval warm-up (DataMUX / MUX-PLMs): at every position of the multiplexed sequence pick
    one instance at random and predict that instance's token from the encoder output, through the demux
    MLP with the instance's key and a decoder tied to the word embeddings.

    input_ids, attention_mask: [B, S] with B a multiple of N. choice: [B / N, S] instance per position
    (retrieval_choice; drawn here when None). The mean is over the real positions of every process."""
    x, keys = _encode_for_demux(model, input_ids, attention_mask)  # [G, S', H], [N, K]
    return _retrieval_from(model, x, keys, input_ids, attention_mask, choice, rt)


def _retrieval_from(model, x, keys, input_ids, attention_mask, choice=None, rt=None, total=None,
                    micro_steps: int = 1) -> torch.Tensor:
    """retrieval_loss from an encoder output x [G, S', H] and the demux keys [N, K] computed already; with
    `total` (the real positions of the whole global batch), normalised as batch_mean does."""
    rt = rt or current()
    N = model.config.num_instances
    B, S = input_ids.shape
    G = x.shape[0]
    if choice is None:
        choice = torch.randint(0, N, (G, S))
    choice = choice.to(input_ids.device)
    ids = chosen_instance(input_ids, choice, N)  # [G, S]
    real = chosen_instance(attention_mask, choice, N).bool()
    features = model.demux.instance_features(keys[choice][real], x[:, :S][real])  # [P, Hd]
    logits = features @ model.embeddings.word.weight.T  # [P, V], decoder tied to the embeddings
    local_sum = F.cross_entropy(logits.float(), ids[real], reduction="sum")
    if total is not None:
        return batch_mean(local_sum, total, micro_steps, rt)
    return rt.mean_of(local_sum, real.sum())


def retrieval_from_encoder_output(model, x, input_ids, attention_mask, choice=None, rt=None) -> torch.Tensor:
    """retrieval_loss on the encoder output x [G, S', H] a classification forward computed already (its
    hidden_states[-1]), so that fine-tuning keeps token retrieval as an auxiliary loss without a second encoder
    pass, as upstream's fine-tuning does (datamux-pretraining: retrieval_loss_coeff in the sequence-classification
    models). The demux keys are the model's, scaled by its attached hidden_z in the prumux convention."""
    masks = {k: v.to(x.device) for k, v in model.masks.items()} if model.masks else None
    return _retrieval_from(model, x, model.demux_keys(masks), input_ids, attention_mask, choice, rt)


def batch_mean(local_sum, total, micro_steps: int, rt) -> torch.Tensor:
    """This micro-batch's share of a mean over the whole global batch, whose count `total` every process knows:
    after _step's division by the micro-step count and DDP's average over the processes, the gradient is that
    of (sum over every micro-batch of every process) / total, so --grad-accum changes nothing either."""
    return local_sum * (rt.world_size * micro_steps / max(1, int(total)))


class ContextHead(nn.Module):
    """The warm-up-only map from demux features (width Hd) to the teacher's hidden space (width H).

    The demux features also feed the tied retrieval decoder, which wants them large and aligned with the word
    embeddings, while MiniLM's final states are small (mean square ~0.15): matching them directly makes the two
    objectives fight over scale. A linear head lets the features stay what retrieval needs while carrying the
    teacher's contextual state."""

    def __init__(self, demux_width: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(demux_width, hidden_size)

    def forward(self, features):
        return self.proj(features)


def contextual_distillation_loss(model, teacher, head: ContextHead, input_ids, attention_mask, rt=None) -> torch.Tensor:
    """Contextual warm-up: at every real token of every instance, the demux features of that instance
    ([key_i ; h_t] through the demux MLP, then `head`) should equal the final hidden state an unmultiplexed
    `teacher` (N = 1, same tokenizer, same width) computes for that sentence alone. Retrieval only asks the
    encoder to keep each instance's token identity; this asks it to do each instance's contextual processing
    while the instances share the sequence, which is what multiplexed pretraining teaches in MUX-PLMs.

    input_ids, attention_mask: [B, S] with B a multiple of N. Returns the squared error relative to the
    targets' mean square: 1 is no better than predicting zeros, 0 is exact."""
    N = model.config.num_instances
    B, S = input_ids.shape
    with torch.no_grad():
        target = teacher.encode(input_ids, attention_mask)[0][:, :S]  # [B, S, H]
    x, keys = _encode_for_demux(model, input_ids, attention_mask)  # [G, S', H], [N, K]
    G = x.shape[0]
    real = attention_mask.view(G, N, S).bool()  # [G, N, S]
    which = real.nonzero()  # [P, 3]: group, instance, position of every real token
    features = model.demux.instance_features(keys[which[:, 1]], x[which[:, 0], which[:, 2]])  # [P, Hd]
    wanted = target.view(G, N, S, -1)[real]  # [P, H]
    return (rt or current()).mean_of((head(features) - wanted).pow(2).sum(), wanted.pow(2).sum())


# --- hidden-state distillation from an unmultiplexed teacher (train finetune --hidden-distill) ---------

class LayerReadout(nn.Module):
    """Training-only readouts of one instance's state from the multiplexed state of every encoder layer:
    for layer l and instance i, readout_l(x, i) = U_l gelu(W_l x + b_{l,i}) + c_l, with x [P, H] the
    multiplexed state at P positions and b_{l,i} a per-instance bias (a one-hot instance index through W_l).
    The map is what lets a layer keep N sentences apart without asking its state to equal any one of them;
    it is not exported (the engine runs the encoder and the demux only)."""

    def __init__(self, num_layers: int, num_instances: int, hidden_size: int, teacher_size: int):
        super().__init__()
        H, L = hidden_size, num_layers
        self.instance = nn.Parameter(torch.randn(L, num_instances, H) * 0.02)  # [L, N, H]
        self.inner = nn.ModuleList(nn.Linear(H, H) for _ in range(L))
        self.outer = nn.ModuleList(nn.Linear(H, teacher_size) for _ in range(L))

    def forward(self, layer: int, x, instance):  # x [P, H], instance [P] (long) -> [P, Ht]
        return self.outer[layer](F.gelu(self.inner[layer](x) + self.instance[layer, instance]))


def hidden_state_distillation(readout: LayerReadout, student_hidden, teacher_hidden, attention_mask,
                              rt=None) -> torch.Tensor:
    """Per-layer hidden-state distillation from an unmultiplexed teacher (issue 35's CPU stand-in for
    multiplexed pre-training): at every real token of every instance and every encoder layer l >= 1, the
    readout of the multiplexed state should equal the state the teacher (N = 1, same depth) computes at
    layer l for that sentence alone. The groups are the training batch's random pairings.

    student_hidden: L + 1 tensors [G, S', H] (mixed embeddings, then each layer; PruMuxModel's hidden_states);
    teacher_hidden: L + 1 tensors [B, S', Ht] for the same B = G * N rows; attention_mask: [B, S].
    Returns the mean over layers of the squared error relative to the targets' mean square (1: no better
    than zeros, 0: exact), as a mean over every process's real tokens."""
    rt = rt or current()
    B, S = attention_mask.shape
    G = student_hidden[0].shape[0]
    real = attention_mask.view(G, B // G, S).bool()  # [G, N, S]
    group, instance, pos = real.nonzero().unbind(1)  # [P] each: every real token of every instance
    layers = len(readout.inner)
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for l in range(layers):
        mixed = student_hidden[l + 1][group, pos]  # [P, H]
        wanted = teacher_hidden[l + 1][:, :S].reshape(G, B // G, S, -1)[real].float()  # [P, Ht]
        error = (readout(l, mixed, instance).float() - wanted).pow(2).sum()
        total = total + rt.mean_of(error, wanted.pow(2).sum()) / layers
    return total


# --- multiplexed masked language modelling (train pretrain) ------------------------------------------

MLM_HEAD_WEIGHTS = {  # BertForMaskedLM's prediction head (cls.predictions) -> MLMHead's names
    "cls.predictions.transform.dense.weight": "dense.weight", "cls.predictions.transform.dense.bias": "dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "ln.weight", "cls.predictions.transform.LayerNorm.bias": "ln.bias",
    "cls.predictions.transform.LayerNorm.gamma": "ln.weight", "cls.predictions.transform.LayerNorm.beta": "ln.bias",
    "cls.predictions.bias": "bias", "cls.predictions.decoder.bias": "bias",
}


class MLMHead(nn.Module):
    """BERT's masked-LM prediction head (BertForMaskedLM's cls.predictions) over demultiplexed token states:
    logits = LN(gelu(W features + b)) @ E^T + bias, with E the word embeddings (the decoder is tied to them,
    as in BERT and MUX-PLMs' retrieval head). features: [P, Hd] -> logits [P, V].

    MUX-PLMs (RetrievalHeadIndexPosDemultiplexingBERT) runs the same chain: the shared demux MLP of [key_i ; h_t],
    then pre_decoder (dense, gelu, LayerNorm), then the decoder tied to the embeddings."""

    def __init__(self, demux_width: int, embedding_width: int, vocab_size: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(demux_width, embedding_width)
        self.ln = nn.LayerNorm(embedding_width, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)  # BERT's initializer_range, for a head the base lacks
        nn.init.zeros_(self.dense.bias)

    def forward(self, features, word_embeddings):
        return self.ln(F.gelu(self.dense(features))) @ word_embeddings.T + self.bias


def read_bert_mlm_head(base) -> dict[str, torch.Tensor] | None:
    """The MLM head weights of a BERT directory saved from BertForMaskedLM (model.safetensors or
    pytorch_model.bin), in MLMHead's names; None when it has none (a BertModel, e.g. sentence-transformers'
    MiniLM)."""
    from pathlib import Path

    base = Path(base)
    if (base / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(base / "model.safetensors"), "pt") as f:
            found = {MLM_HEAD_WEIGHTS[k]: f.get_tensor(k) for k in f.keys() if k in MLM_HEAD_WEIGHTS}
    elif (base / "pytorch_model.bin").is_file():
        state = torch.load(base / "pytorch_model.bin", map_location="cpu", weights_only=True)
        found = {MLM_HEAD_WEIGHTS[k]: v for k, v in state.items() if k in MLM_HEAD_WEIGHTS}
    else:
        return None
    needed = {"dense.weight", "dense.bias", "ln.weight", "ln.bias", "bias"}
    return found if needed <= set(found) else None


def pretraining_losses(model, head: MLMHead, input_ids, attention_mask, labels, choice, totals, micro_steps: int = 1,
                       rt=None):
    """MUX-PLMs' pre-training objective on one micro-batch (models/multiplexing_pretraining_bert.py,
    MuxedBertForMaskedLM), from one encoder pass over the masked, multiplexed rows:

    mlm        at every masked position t of every instance i, the demux features of [key_i ; h_t] through
               `head` predict instance i's original token; cross-entropy, mean over the masked tokens of
               every instance and every process (upstream: CrossEntropyLoss over all instances' labels)
    retrieval  the warm-up's token retrieval (retrieval_loss) on the same, masked, rows: upstream keeps it as
               an auxiliary loss (retrieval_loss_coeff) and also retrieves the corrupted input tokens

    input_ids, attention_mask, labels: [B, S], B a multiple of N, labels -100 where nothing is predicted
    (corpus.mask_tokens). choice: [B / N, S] (retrieval_choice). totals: (masked tokens, retrieved positions) of
    the whole global batch (pretraining_totals), so the means are over it whatever the process count and
    --grad-accum (batch_mean). Returns (mlm, retrieval), scalar tensors."""
    rt = rt or current()
    N = model.config.num_instances
    B, S = input_ids.shape
    x, keys = _encode_for_demux(model, input_ids, attention_mask)  # [G, S', H], [N, K]
    G = x.shape[0]
    targets = labels.view(G, N, S)
    masked = targets != -100  # [G, N, S]
    which = masked.nonzero()  # [P, 3]: group, instance, position of every masked token
    features = model.demux.instance_features(keys[which[:, 1]], x[which[:, 0], which[:, 2]])  # [P, Hd]
    logits = head(features, model.embeddings.word.weight)  # [P, V]
    mlm = batch_mean(F.cross_entropy(logits.float(), targets[masked], reduction="sum"), totals[0], micro_steps, rt)
    retrieval = _retrieval_from(model, x, keys, input_ids, attention_mask, choice, rt, totals[1], micro_steps)
    return mlm, retrieval


def pretraining_totals(labels, attention_mask, choice, num_instances: int) -> tuple[int, int]:
    """(masked tokens, real positions retrieval predicts) of a global batch: labels, attention_mask [B, S], choice
    [B / N, S] -- the counts pretraining_losses divides by."""
    real = chosen_instance(attention_mask, choice.to(attention_mask.device), num_instances)
    return int((labels != -100).sum()), int(real.sum())


def chosen_instance(values, choice, num_instances: int):
    """values [B, S] (rows k*N..k*N+N-1 are mux group k) -> [B / N, S]: at each position of group k, the value
    of the instance choice[k, position] picks (the token retrieval predicts there)."""
    B, S = values.shape
    return values.view(B // num_instances, num_instances, S).gather(1, choice[:, None]).squeeze(1)
