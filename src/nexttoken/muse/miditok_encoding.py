"""MidiTok's REMI and MIDILike encodings (Fradet et al. 2021, https://github.com/Natooz/MidiTok) with our composer
tokens, so the same model can be trained on them and compared in bits per note (``--encoding remi``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nexttoken.errors import UserError
from nexttoken.midi.notes import Notes, notes_from_score, notes_to_score
from nexttoken.muse.encoding import Encoded


@dataclass
class MidiTokEncoding:
    """MidiTok's REMI or MIDILike (one stream, programs as tokens), with our composer tokens appended to its vocabulary
    so that both encodings are conditioned the same way: ``composer`` + MidiTok's tokens."""

    composers: list[str]
    name: str = "remi"

    def __post_init__(self) -> None:
        import miditok

        cls = {"remi": miditok.REMI, "midilike": miditok.MIDILike}[self.name]
        self.tokenizer = cls(miditok.TokenizerConfig(use_programs=True, one_token_stream_for_programs=True))
        self.composer_base = len(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.composer_base + len(self.composers)

    def composer_id(self, composer: str) -> int:
        if composer not in self.composers:
            raise UserError(f"unknown composer {composer!r}; known: {', '.join(self.composers)}")
        return self.composer_base + self.composers.index(composer)

    def encode(self, notes: Notes, composer: str | None) -> Encoded:
        head = [self.composer_id(composer)] if composer is not None else []
        ids = self.tokenizer.encode(notes_to_score(notes)).ids
        return Encoded(np.array(head + list(ids), dtype=np.int64), len(head))

    def decode(self, ids) -> Notes:
        ids = [int(i) for i in ids if 0 <= int(i) < self.composer_base]
        return notes_from_score(self.tokenizer.decode(ids))

    def token_kinds(self) -> np.ndarray:
        """The kind of every id: MidiTok's token type (Pitch, Velocity, Duration, Position, Bar, Program, ...)."""
        kinds = np.full(self.vocab_size, "header", dtype=object)
        for token, i in self.tokenizer.vocab.items():
            kinds[i] = token.split("_")[0]
        return kinds
