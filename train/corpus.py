"""The pre-training stream: an unlabelled corpus (data.open_corpus) tokenized on the fly into global batches of
masked rows, the same batches whatever the number of processes, and resumable at the exact row.

How rows are made. The corpus is read in order, epoch after epoch; empty and whitespace-only texts are skipped.
Texts are taken in blocks of B (the global batch); each of K processes tokenizes every K-th text of a block and
the token ids are exchanged (all_gather_object), so the tokenizing is split K ways and every process ends up
with the same token stream. Two ways to cut it into rows of at most L = --max-seq-length tokens:

    line by line   one text per row, [CLS] text [SEP], truncated to L (a sentence-per-line corpus)
    packed         the texts' tokens, each text followed by [SEP], concatenated and cut into rows of
                   [CLS] + L - 1 tokens, no padding (upstream MUX-PLMs run_pretraining.py's default, which
                   concatenates and cuts the tokenized corpus into max_seq_length chunks: group_texts)

Every process then holds the global batch and trains on its slice (distributed.Runtime.shard), as the other
stages do. The masking is drawn for the global batch from a generator seeded by (seed, step), so it does not
depend on the process count either. The stream's state (the `datasets` iterator position after the last
block read, the epoch, and the tokens read but not yet used) is saved with the training state, so --resume
continues with the row that would have come next.

Not shuffled: a streamed corpus is read in its own order, which is what makes the exact resume cheap; shuffle a
corpus whose order is correlated (sorted by topic, question before answer) once beforehand. Consecutive rows
are multiplexed together (rows 0..N-1 of a batch are one mux group, as in the other stages).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prumux_deploy.data import open_corpus
from prumux_deploy.errors import DataError

from .distributed import Runtime

IGNORE = -100  # label of a position without an MLM target (torch cross_entropy's ignore_index)


@dataclass
class CorpusArgs:
    corpus: str = ""
    text_column: str = "text"
    split: str = "train"
    config: str | None = None       # a hub dataset's configuration
    line_by_line: bool = False      # one text per row (else packed rows, upstream's default)


class CorpusStream:
    """Global batches of token rows from a corpus: batch(step) -> {"input_ids", "attention_mask", "position"}
    [B, S] (S <= max_len; packed rows are all max_len long), identical on every process. batch(step) must be
    called for step 0, 1, 2, ... in order (the stream only moves forward); state_dict() / load_state_dict()
    resume it. Raises DataError before training for a corpus without the text column or without any text."""

    def __init__(self, args: CorpusArgs, tokenizer, batch_size: int, max_len: int, rt: Runtime):
        if max_len < 3:
            raise DataError(f"`max_seq_length` {max_len} leaves no room for text between [CLS] and [SEP]; use 3 or "
                            "more")
        self.args, self.tokenizer, self.rt = args, tokenizer, rt
        self.batch_size, self.max_len = batch_size, max_len
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id or 0
        if self.cls_id is None or self.sep_id is None:
            raise DataError("the tokenizer has no [CLS] or [SEP] token; pre-training needs a BERT-style tokenizer")
        self.dataset, self.source = open_corpus(args.corpus, args.split, args.config)
        self._start_state = self.dataset.state_dict()  # the corpus's beginning, where every epoch starts
        self.epoch, self.texts_in_epoch = 0, 0
        self._rows: list[np.ndarray] = []        # line by line: tokenized texts not used yet
        self._buffer = np.zeros(0, np.int32)     # packed: tokens not used yet
        self._state_after_block = self._start_state
        self._iterator = iter(self.dataset)
        self._check_has_text()

    # --- reading ---------------------------------------------------------------------------------
    def _check_has_text(self):
        """Read until the first text, so a wrong column or an empty corpus stops the run before training."""
        self._next_text()
        self._rewind()
        self.texts_in_epoch = 0

    def _rewind(self):
        """Back to the corpus's first row (a new epoch, or after the check above)."""
        self.dataset.load_state_dict(self._start_state)
        self._iterator = iter(self.dataset)

    def _next_text(self) -> str:
        """The next non-empty text; at the end of the corpus the next epoch starts from its beginning."""
        column = self.args.text_column
        while True:
            try:
                row = next(self._iterator)
            except StopIteration:
                if self.texts_in_epoch == 0:
                    raise DataError(f"{self.source}: holds no text (every row is empty); give a corpus with text "
                                    f"in column {column!r}") from None
                self.epoch, self.texts_in_epoch = self.epoch + 1, 0
                self._rewind()
                continue
            if column not in row:
                raise DataError(f"{self.source}: no column {column!r} (columns: {', '.join(row)}); name the one "
                                f"holding the text with `text_column`")
            text = row[column]
            if text is not None and not isinstance(text, str):
                raise DataError(f"{self.source}: column {column!r} holds {type(text).__name__} values, not text; name "
                                f"the text column with `text_column`")
            if text and not text.isspace():
                self.texts_in_epoch += 1
                return text

    def _read_block(self) -> list[np.ndarray]:
        """The next B texts, tokenized: each process tokenizes every K-th one and all share the result."""
        texts = [self._next_text() for _ in range(self.batch_size)]
        self._state_after_block = self.dataset.state_dict()
        K, rank = self.rt.world_size, self.rt.rank
        mine = self._tokenize(texts[rank::K])
        if K == 1:
            return mine
        import torch.distributed as dist

        gathered = [None] * K
        dist.all_gather_object(gathered, mine)
        return [gathered[i % K][i // K] for i in range(len(texts))]

    def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
        if self.args.line_by_line:
            ids = self.tokenizer(texts, truncation=True, max_length=self.max_len, verbose=False)["input_ids"]
            return [np.asarray(t, np.int32) for t in ids]
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [np.asarray(t + [self.sep_id], np.int32) for t in ids]

    def _next_rows(self) -> list[np.ndarray]:
        B = self.batch_size
        if self.args.line_by_line:
            while len(self._rows) < B:
                self._rows.extend(self._read_block())
            rows, self._rows = self._rows[:B], self._rows[B:]
            return rows
        width = self.max_len - 1  # after [CLS]
        while len(self._buffer) < B * width:
            self._buffer = np.concatenate([self._buffer, *self._read_block()])
        cls = np.asarray([self.cls_id], np.int32)
        rows = [np.concatenate([cls, self._buffer[i * width:(i + 1) * width]]) for i in range(B)]
        self._buffer = self._buffer[B * width:]
        return rows

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rows = self._next_rows()
        S = max(len(r) for r in rows)
        ids = torch.full((len(rows), S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), S), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.from_numpy(r.astype(np.int64))
            mask[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask, "position": torch.arange(len(rows))}

    # --- resuming ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"dataset": self._state_after_block, "epoch": self.epoch, "texts_in_epoch": self.texts_in_epoch,
                # token arrays as tensors: the train state loads with torch.load(weights_only=True) (train/loop.py)
                "rows": [torch.from_numpy(np.array(r, copy=True)) for r in self._rows],
                "buffer": torch.from_numpy(self._buffer.copy()), "batch_size": self.batch_size,
                "max_len": self.max_len, "line_by_line": self.args.line_by_line, "source": self.source}

    def load_state_dict(self, state: dict):
        for key, now in (("batch_size", self.batch_size), ("max_len", self.max_len),
                         ("line_by_line", self.args.line_by_line)):
            if state[key] != now:
                flag = {"batch_size": "batch_size", "max_len": "max_seq_length", "line_by_line": "line_by_line"}[key]
                raise DataError(f"the interrupted run used `{flag}` {state[key]}, this one {now}; resume with the "
                                "same options")
        if state["source"] != self.source:
            raise DataError(f"the interrupted run read {state['source']}, this one {self.source}; resume with the same "
                            "`corpus`")
        try:
            self.dataset.load_state_dict(state["dataset"])
            self._iterator = iter(self.dataset)
        except Exception as e:  # noqa: BLE001 - the corpus changed under the saved position
            raise DataError(f"{self.source}: cannot continue at the interrupted run's position ({type(e).__name__}); "
                            "was the corpus changed? Resume with the corpus as it was, or start again") from None
        self._state_after_block = state["dataset"]
        self.epoch, self.texts_in_epoch = state["epoch"], state["texts_in_epoch"]
        self._rows = [np.asarray(r) for r in state["rows"]]
        self._buffer = np.asarray(state["buffer"], np.int32)


def mask_tokens(batch: dict, tokenizer, probability: float, generator: torch.Generator):
    """BERT's masking, as MUX-PLMs applies it (DataCollatorForLanguageModelingMuxed): each real, non-special
    token is chosen with `probability`; a chosen token becomes [MASK] 80% of the time, a random token id 10%,
    and stays 10%. Returns (input ids with the replacements, labels: the original id where chosen, else -100),
    both [B, S]. `generator` draws for the whole global batch, so every process count masks alike."""
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    special = torch.isin(ids, torch.as_tensor(sorted(tokenizer.all_special_ids), dtype=ids.dtype))
    draws = torch.rand((3, *ids.shape), generator=generator)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    chosen = (draws[0] < probability) & real & ~special
    to_mask = chosen & (draws[1] < 0.8)
    to_random = chosen & ~to_mask & (draws[2] < 0.5)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    inputs = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_token_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def masking_generator(seed: int, step: int) -> torch.Generator:
    """The masking draws of one step: the same for every process count, different from retrieval_choice's."""
    return torch.Generator().manual_seed(seed * 1_000_033 + 2 * step + 1)
