"""A MIDI file as a readable tokens file, one MuseNet token per line, and back (`muse encode`, `muse decode`).

    nexttoken muse encode piece.mid -o piece.tokens --composer "J. S. Bach"
    nexttoken muse decode piece.tokens -o piece.mid
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nexttoken.errors import UserError
from nexttoken.midi.corpus import label_of
from nexttoken.midi.notes import Notes, read_user_midi, write_midi
from nexttoken.muse.encoding import Vocab, decode, encode
from nexttoken.muse.train import check_out
from nexttoken.files import atomic_write_text


def check_output(source: Path, out: Path | None, suffix: str) -> Path:
    """The file a conversion of ``source`` writes: ``out`` if given, else ``source`` with ``suffix``. Writing over
    the source is refused, and so is replacing an existing file the user did not name: a default name may collide
    with a file made earlier (a piece's own .mid beside its .tokens)."""
    target = out or source.with_suffix(suffix)
    check_out(target.parent)
    if target.is_dir():
        raise UserError(f"{target} is a folder; name a file to write")
    if target.exists() and source.exists() and os.path.samefile(target, source):
        raise UserError(f"{target} is the input file; name another output with -o")
    if out is None and target.exists():
        raise UserError(f"{target} already exists; to replace it, name it with -o {target}")
    return target


def encode_file(midi: Path, out: Path | None = None, composer: str = "unknown") -> tuple[Path, np.ndarray, Notes]:
    """Write the tokens of ``midi`` (default: beside it, as .tokens; an existing file is replaced only when ``out``
    names it); returns the file, the ids and the notes."""
    notes = read_user_midi(midi)
    out = check_output(midi, out, ".tokens")
    label = label_of(composer)
    vocab = Vocab([label])
    ids = encode(notes, vocab, label)
    atomic_write_text(out, "\n".join(vocab.to_strings(ids)) + "\n")
    return out, ids, notes


def read_tokens(path: Path) -> tuple[np.ndarray, Vocab]:
    """The ids of a tokens file (one token per line, blank lines ignored) and the vocabulary of its composers."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a tokens file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    if data.startswith(b"MThd"):
        raise UserError(f"{path} is a MIDI file; decode reads tokens, one per line (make them with: nexttoken muse "
                        f"encode {path})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a tokens file (not text)") from None
    lines = [(n, t.strip()) for n, t in enumerate(text.splitlines(), 1) if t.strip()]
    if not lines:
        raise UserError(f"{path} holds no tokens")
    vocab = Vocab(sorted({t[len("composer:"):] for _, t in lines if t.startswith("composer:")}))
    ids = []
    for n, token in lines:
        if token not in vocab.index:
            raise UserError(f"{path}:{n}: unknown token {token!r}")
        ids.append(vocab.index[token])
    return np.array(ids, dtype=np.int64), vocab


def decode_file(tokens: Path, out: Path | None = None) -> tuple[Path, Notes]:
    """Write the MIDI file of a tokens file (default: beside it, as .mid; an existing file is replaced only when
    ``out`` names it); tokens that hold no note are refused."""
    ids, vocab = read_tokens(tokens)
    out = check_output(tokens, out, ".mid")
    notes = decode(ids, vocab)
    if not len(notes):
        raise UserError(f"{tokens}: the tokens hold no notes")
    return write_midi(notes, out), notes
