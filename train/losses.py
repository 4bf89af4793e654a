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


def retrieval_loss(model, input_ids, attention_mask, choice=None, rt=None) -> torch.Tensor:
    """Token retrieval warm-up (DataMUX / MUX-PLMs): at every position of the multiplexed sequence pick
    one instance at random and predict that instance's token from the encoder output, through the demux
    MLP with the instance's key and a decoder tied to the word embeddings.

    input_ids, attention_mask: [B, S] with B a multiple of N. choice: [B / N, S] instance per position
    (retrieval_choice; drawn here when None). The mean is over the real positions of every process."""
    rt = rt or current()
    N = model.config.num_instances
    B, S = input_ids.shape
    x, keys = _encode_for_demux(model, input_ids, attention_mask)  # [G, S', H], [N, K]
    G = x.shape[0]
    if choice is None:
        choice = torch.randint(0, N, (G, S))
    choice = choice.to(input_ids.device)
    ids = input_ids.view(G, N, S).gather(1, choice[:, None]).squeeze(1)  # [G, S]
    real = attention_mask.view(G, N, S).gather(1, choice[:, None]).squeeze(1).bool()
    features = model.demux.instance_features(keys[choice][real], x[:, :S][real])  # [P, Hd]
    logits = features @ model.embeddings.word.weight.T  # [P, V], decoder tied to the embeddings
    return rt.mean_of(F.cross_entropy(logits.float(), ids[real], reduction="sum"), real.sum())


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
