"""The one reference path and the one input generator every check and timing uses.

    reference_logits(model, feeds)   PyTorch's logits for engine feeds: what export's parity, validate and
                                     bench's spot checks compare an engine against (compare.compare_logits)
    parity_inputs(cfg, max_len)      generated cases across batch sizes around multiples of N and lengths
                                     1 .. max, with padding (export's parity check)
    timing_inputs(rows, seq, vocab)  one unpadded batch of random ids (what bench and export's runtime
                                     choice time)
"""

from __future__ import annotations

import numpy as np
import torch


def reference_logits(model, feeds: dict, device=None) -> np.ndarray:
    """feeds {input_ids, attention_mask[, token_type_ids]: [B, S] int64, numpy arrays or tensors} -> the
    PyTorch model's logits [B, C] as float32 numpy, computed without gradients on `device` (default: where
    the model's weights are) in whatever arithmetic the caller's scope sets (autocast, TF32)."""
    device = device or next(model.parameters()).device
    args = [feeds[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in feeds]
    args = [(torch.from_numpy(a) if isinstance(a, np.ndarray) else a).to(device) for a in args]
    with torch.no_grad():
        return model(*args).float().cpu().numpy()


def parity_inputs(cfg, max_len: int, seed: int = 0, min_batch: int = 1,
                  max_batch: int | None = None, min_len: int = 1):
    """Generated inputs covering batch sizes around multiples of N and lengths from 1 to max, kept inside
    [min_batch, max_batch] and [min_len, max_len] (a TensorRT engine's profile)."""
    N = cfg.num_instances
    gen = np.random.default_rng(seed)
    top = max_batch or max(7, 2 * N)
    batches = sorted({min(max(b, min_batch), top) for b in (1, N + 1, 2 * N, 7)})
    lengths = sorted({max(s, min_len) for s in (1, max(1, max_len // 2), max_len)})
    cases = []
    for b in batches:
        for s in lengths:
            ids = gen.integers(0, cfg.vocab_size, size=(b, s), dtype=np.int64)
            mask = np.ones((b, s), dtype=np.int64)
            real = gen.integers(1, s + 1, size=b)  # each row's real length; the rest is padding
            mask[np.arange(s)[None, :] >= real[:, None]] = 0
            feeds = {"input_ids": ids, "attention_mask": mask}
            if cfg.uses_token_types:
                feeds["token_type_ids"] = (np.arange(s)[None, :] >= (real[:, None] // 2)).astype(np.int64)
            cases.append(feeds)
    return cases, batches, lengths


def timing_inputs(rows: int, seq: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [rows, seq] int64 tensors: random ids (from 1000 where the vocabulary is
    BERT-sized, past its special and unused tokens; else from 5) and no padding, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (rows, seq), generator=g)
    return ids, torch.ones(rows, seq, dtype=torch.long)
