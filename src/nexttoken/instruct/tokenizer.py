"""Byte-level BPE trained on the instruct corpus, with a pad distinct from EOS and left-padded batches of prompts.

Byte-level BPE as in GPT-2 (Radford et al. 2019) through the ``tokenizers`` library; numbers are split into single
digits first, as LLaMA does (Touvron et al. 2023, https://arxiv.org/abs/2302.13971), so that sums are learnt digit by
digit rather than as a table of whole-number tokens. The pad token is not EOS: a response must be able to end with EOS
and still be told apart from padding, the first of the RLHF details of Huang et al. 2024
(https://arxiv.org/abs/2403.17031). The chat delimiters are single special tokens. Prompts are padded on the left,
so that every row of a batch ends where generation starts.

    >>> tok = train_tokenizer(["a wise frog sat by the river"] * 20, vocab_size=300)
    >>> batch = tok.encode_batch(["a frog", "a wise frog"])
    >>> batch.mask.tolist()
    [[0, 1, 1], [1, 1, 1]]
    >>> tok.decode(batch.ids[0])
    'a frog'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from nexttoken.errors import UserError
from nexttoken.files import read_text
from nexttoken.instruct.corpus import INSTRUCTION, RESPONSE

PAD = "<|pad|>"
EOS = "<|endoftext|>"
SPECIAL_TOKENS = (PAD, EOS, INSTRUCTION, RESPONSE)  # ids 0, 1, 2, 3 of every trained vocabulary


@dataclass(frozen=True)
class Batch:
    ids: Tensor  # (B, T) long, left-padded with the pad id
    mask: Tensor  # (B, T) long, 1 on real tokens and 0 on padding (the layout Hugging Face models take too)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> BPETokenizer:
    """A byte-level BPE of at most ``vocab_size`` entries (special tokens and the 256 bytes included) learnt from
    ``texts``. Merges stop early once every word of the texts is one token: the default world's corpus needs about
    1,600 entries, so read ``vocab_size`` from the result."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"vocabulary must hold the 256 bytes and {len(SPECIAL_TOKENS)} special tokens, "
                        f"not {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return BPETokenizer(tok)


class BPETokenizer:
    """What the rest of the instruct domain calls: encode, decode, and left-padded batches."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if None in ids:
            missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
            raise UserError(f"tokenizer lacks the special tokens {', '.join(missing)}")
        self.pad_id, self.eos_id, self.instruction_id, self.response_id = ids

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        if not path.exists():
            raise UserError(f"no tokenizer at {path}")
        text = read_text(path)
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # the tokenizers library raises a bare Exception for damaged JSON or a wrong layout
            raise UserError(f"{path} is not a tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        return cls(tokenizer)

    def save(self, path: str | Path) -> None:
        """Written as tokenizer.json (the ``tokenizers`` format), atomically: a killed run leaves no half file."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.tokenizer.save(str(tmp))
        tmp.replace(path)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids + [self.eos_id] if eos else ids

    def decode(self, ids: Sequence[int] | Tensor, stop_at_eos: bool = True) -> str:
        """Text of ``ids`` without padding (pad ids, and the -1 the sampler writes after a stop), cut at the first EOS
        unless ``stop_at_eos`` is False."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if stop_at_eos and self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tokenizer.decode([i for i in ids if i >= 0 and i != self.pad_id], skip_special_tokens=False)

    def encode_batch(self, texts: Sequence[str], eos: bool = False, max_len: int | None = None) -> Batch:
        """Left-padded ids and mask; a text longer than ``max_len`` keeps its last ``max_len`` tokens (the end of a
        prompt is what the next token depends on most)."""
        if not texts:
            raise UserError("cannot encode an empty batch of texts")
        rows = [self.encode(text, eos) for text in texts]
        return left_pad(rows, self.pad_id, max_len)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, max_len: int | None = None) -> Batch:
    """Token rows as one left-padded batch; a row longer than ``max_len`` keeps its last ``max_len`` tokens.

    >>> left_pad([[5, 6], [7]], pad_id=0).ids.tolist()
    [[5, 6], [0, 7]]
    """
    if max_len is not None:
        rows = [row[-max_len:] for row in rows]
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return Batch(ids, mask)
