"""MuseNet's MIDI token language (MidiTok's encodings, for comparison, are in ``miditok_encoding``).

    nexttoken muse encode piece.mid -o piece.tokens     # one readable token per line
    nexttoken muse decode piece.tokens -o piece.mid

A piece is one stream (OpenAI 2019, https://openai.com/index/musenet/):

    composer:bach inst:piano inst:strings start tempo:90
    piano:v72:G4 strings:v80:D5 wait:50 piano:v0:G4 strings:v0:D5 ... end

- a header: the composer (or genre) token, one ``inst:`` token per instrument family in the piece, ``start``, and the
  first tempo rounded to 10 bpm;
- a note-on is ONE token: family, velocity level and pitch (``piano:v72:G4``, middle C is C4);
- a note-off is the same family and pitch at volume 0 (``piano:v0:G4``); drums have no note-off;
- ``wait:N`` advances absolute time by N x 10 ms (1 <= N <= 128; a longer gap is several waits);
- ``end``.

Notes come from ``nexttoken.midi.notes``, where General MIDI programs map to the 11 families of ``FAMILIES``;
velocity is binned into 8 levels for piano and 4 for every other family.

The round trip MIDI -> tokens -> MIDI keeps every note: pitch exact, onset and offset within half a 10 ms quantum
(notes shorter than one quantum last one quantum), velocity within its level, instrument mapped to its family.
What is lost: the program within a family (the decoder writes one track per family with the program of
``FAMILY_PROGRAM``), controllers, pitch bends and lyrics, the tempo map (times are absolute; the decoded file has the
header tempo and the same note times in seconds), and drum durations (decoded as 0.2 s). Two notes of the same family
and pitch that overlap are paired first-in-first-out, as MIDI itself pairs them: every onset and offset survives, but
when one lies strictly inside the other their two durations are exchanged.

The encoder is hand-written because no library has this scheme: MidiTok's nearest, MIDILike, spends separate
Program, NoteOn, Velocity and NoteOff tokens on a note (over 5 tokens per note on chorales; this scheme about 2.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from nexttoken.errors import UserError
from nexttoken.midi.notes import DRUMS, FAMILIES, Notes

QUANTUM = 0.01  # seconds per wait step, as MuseNet
MAX_WAIT = 128  # the longest single wait token, in quanta
DRUM_SECONDS = 0.2  # drums have no note-off: decoded notes last this long
TEMPOS = tuple(range(30, 251, 10))  # bpm of the tempo tokens
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def velocity_levels(family: int) -> np.ndarray:
    """The velocity each level decodes to: the centre of 8 bins of 16 for piano, of 4 bins of 32 otherwise."""
    width = 16 if family == 0 else 32
    return np.arange(width // 2, 128, width)


def velocity_level(velocity: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Level index (0-based) of each velocity 1..127 for its family.

    >>> velocity_level(np.array([72, 72, 1, 127]), np.array([0, 5, 0, 5])).tolist()
    [4, 2, 0, 3]
    """
    width = np.where(family == 0, 16, 32)
    return (np.clip(velocity, 1, 127) - 1) // width


def _levels(family: int) -> np.ndarray:
    """Velocities of a family's note tokens: 0 (the note-off, none for drums), then every level."""
    return velocity_levels(family) if family == DRUMS else np.concatenate([[0], velocity_levels(family)])


def pitch_name(pitch: int) -> str:
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


# ---- the vocabulary -----------------------------------------------------------------------------------------------------
class Vocab:
    """Token strings <-> ids. Fixed tokens first (so their ids never change), the corpus's composers last.

    ``families`` limits the note tokens to the instrument families a corpus has (a model trained on chorales needs no
    drum tokens, and a smaller softmax trains faster on a CPU); by default every family is in. The ``inst:`` tokens
    of every family are always there. Note tokens of family
    f, level l (0 = note-off; drums have none) and pitch p have id ``note_base[f] + l * 128 + p``.
    """

    def __init__(self, composers: Sequence[str], families: Sequence[str] = FAMILIES) -> None:
        self.composers = list(composers)
        self.families = [f for f in FAMILIES if f in families]
        # Every family has its instrument token (a request for strings stays expressible), only some have notes.
        tokens = ["start", "end"] + [f"inst:{f}" for f in FAMILIES] + [f"tempo:{t}" for t in TEMPOS]
        self.wait_base = len(tokens) - 1  # id of wait:N is wait_base + N
        tokens += [f"wait:{n}" for n in range(1, MAX_WAIT + 1)]
        self.note_base = np.full(len(FAMILIES), -1, dtype=np.int64)
        for name in self.families:
            f = FAMILIES.index(name)
            self.note_base[f] = len(tokens)
            for v in _levels(f):
                tokens += [f"{name}:v{v}:{pitch_name(p)}" for p in range(128)]
        self.composer_base = len(tokens)
        tokens += [f"composer:{c}" for c in self.composers]
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.start, self.end = self.index["start"], self.index["end"]

        # Per-id lookup tables for decoding and for the timing features.
        n = len(tokens)
        self.wait_value = np.zeros(n, dtype=np.int64)
        self.wait_value[self.wait_base + 1 : self.wait_base + MAX_WAIT + 1] = np.arange(1, MAX_WAIT + 1)
        self.note_family = np.full(n, -1, dtype=np.int64)  # -1: not a note token
        self.note_velocity = np.zeros(n, dtype=np.int64)  # 0: note-off
        self.note_pitch = np.zeros(n, dtype=np.int64)
        self.note_off_of = np.full(n, -1, dtype=np.int64)  # the note-off that ends a note-on (itself for a note-off)
        for name in self.families:
            f = FAMILIES.index(name)
            levels = _levels(f)
            ids = self.note_base[f] + np.arange(len(levels) * 128)
            self.note_family[ids] = f
            self.note_velocity[ids] = np.repeat(levels, 128)
            self.note_pitch[ids] = np.tile(np.arange(128), len(levels))
            if f != DRUMS:
                self.note_off_of[ids] = self.note_base[f] + self.note_pitch[ids]

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        try:
            return self.index[token]
        except KeyError:
            raise UserError(f"unknown token {token!r}") from None

    def composer_id(self, composer: str) -> int:
        if composer not in self.composers:
            raise UserError(f"unknown composer {composer!r}; known: {', '.join(self.composers)}")
        return self.composer_base + self.composers.index(composer)

    def inst_id(self, family: str) -> int:
        if family not in FAMILIES:
            raise UserError(f"unknown instrument {family!r}; choose from {', '.join(FAMILIES)}")
        return self.index[f"inst:{family}"]

    def tempo_id(self, bpm: float) -> int:
        return self.index[f"tempo:{TEMPOS[int(np.argmin([abs(t - bpm) for t in TEMPOS]))]}"]

    def note_ids(self, family: np.ndarray, level: np.ndarray, pitch: np.ndarray) -> np.ndarray:
        """ids of note tokens; ``level`` counts from 1 for note-ons (0 is the note-off) except for drums."""
        base = self.note_base[family]
        if (base < 0).any():
            missing = sorted({FAMILIES[f] for f in np.asarray(family)[base < 0]})
            raise UserError(f"instrument {', '.join(missing)} is not in this vocabulary ({', '.join(self.families)})")
        return base + np.where(family == DRUMS, level - 1, level) * 128 + pitch

    def is_note_on(self, ids: np.ndarray) -> np.ndarray:
        return (self.note_family[ids] >= 0) & (self.note_velocity[ids] > 0)

    def header_ids(self) -> np.ndarray:
        """Every id that belongs in a header and nowhere else."""
        return np.array([self.start] + [self.index[f"inst:{f}"] for f in FAMILIES]
                        + [self.index[f"tempo:{t}"] for t in TEMPOS]
                        + list(range(self.composer_base, len(self))))

    def to_strings(self, ids) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def from_strings(self, tokens: Sequence[str]) -> np.ndarray:
        return np.array([self.id(t) for t in tokens], dtype=np.int64)


# ---- encode / decode ----------------------------------------------------------------------------------------------------
def header(vocab: Vocab, composer: str | None, instruments: Sequence[str], tempo: float) -> np.ndarray:
    ids = [vocab.composer_id(composer)] if composer is not None else []
    ids += [vocab.inst_id(f) for f in sorted(set(instruments), key=FAMILIES.index)]
    return np.array(ids + [vocab.start, vocab.tempo_id(tempo)], dtype=np.int64)


def encode_events(notes: Notes, vocab: Vocab) -> np.ndarray:
    """The event tokens of a piece (no header, no end), vectorised: note-ons, note-offs and waits in time order."""
    q_on = np.rint(notes.start / QUANTUM).astype(np.int64)
    q_off = np.maximum(np.rint(notes.end / QUANTUM).astype(np.int64), q_on + 1)
    family = notes.family.astype(np.int64)
    pitch = notes.pitch.astype(np.int64)
    on = vocab.note_ids(family, velocity_level(notes.velocity, family) + 1, pitch)
    melodic = family != DRUMS
    off = vocab.note_ids(family[melodic], np.zeros(int(melodic.sum()), dtype=np.int64), pitch[melodic])
    time = np.concatenate([q_on, q_off[melodic]])
    ids = np.concatenate([on, off])
    is_on = np.concatenate([np.ones(len(on), dtype=np.int8), np.zeros(len(off), dtype=np.int8)])
    order = np.lexsort((ids, is_on, time))  # by time; at equal times offs first (a re-struck note), then by id
    time, ids = time[order], ids[order]
    if not len(ids):
        return ids

    gap = np.diff(time, prepend=0)  # quanta to wait before each event
    n_waits = -(-gap // MAX_WAIT)  # ceil: a long gap becomes several waits
    out = np.empty(len(ids) + int(n_waits.sum()), dtype=np.int64)
    event_pos = np.cumsum(n_waits + 1) - 1
    out[event_pos] = ids
    is_wait = np.ones(len(out), dtype=bool)
    is_wait[event_pos] = False
    # Within each gap: full waits of MAX_WAIT quanta, then the remainder.
    k = np.arange(int(n_waits.sum())) - np.repeat(np.cumsum(n_waits) - n_waits, n_waits)  # index within its gap
    g = np.repeat(gap, n_waits)
    last = k == np.repeat(n_waits, n_waits) - 1
    out[is_wait] = vocab.wait_base + np.where(last, g - MAX_WAIT * k, MAX_WAIT)
    return out


def encode(notes: Notes, vocab: Vocab, composer: str | None = None) -> np.ndarray:
    """Header + events + end: the whole token stream of a piece, as ids."""
    instruments = [FAMILIES[f] for f in np.unique(notes.family)]
    return np.concatenate([header(vocab, composer, instruments, notes.tempo), encode_events(notes, vocab),
                           [vocab.end]])


def decode(ids: Sequence[int], vocab: Vocab) -> Notes:
    """Token ids -> Notes. Tolerant of anything a sampler can produce: header tokens set the tempo and are otherwise
    skipped, an unmatched note-off is ignored, notes still sounding at ``end`` (or at the last token) end there."""
    from collections import defaultdict, deque

    ids = np.asarray(ids, dtype=np.int64)
    tempo = 120.0
    t = 0  # quanta
    sounding: dict[tuple[int, int], deque] = defaultdict(deque)
    rows: list[tuple[int, int, int, int, int]] = []  # (on, off, pitch, velocity, family), off in quanta (-1 = drums)
    wait_value, fam, vel, pitch = vocab.wait_value, vocab.note_family, vocab.note_velocity, vocab.note_pitch
    for i in ids.tolist():
        if i < 0 or i >= len(vocab):
            continue
        if wait_value[i]:
            t += int(wait_value[i])
        elif fam[i] >= 0:
            f, p, v = int(fam[i]), int(pitch[i]), int(vel[i])
            if f == DRUMS:
                rows.append((t, -1, p, v, f))
            elif v:
                sounding[(f, p)].append(len(rows))
                rows.append((t, t, p, v, f))
            elif sounding[(f, p)]:  # first in, first out
                r = sounding[(f, p)].popleft()
                rows[r] = (rows[r][0], t, p, rows[r][3], f)
        elif i == vocab.end:
            break
        elif vocab.tokens[i].startswith("tempo:"):
            tempo = float(vocab.tokens[i][6:])
    for queue in sounding.values():
        for r in queue:
            rows[r] = (rows[r][0], max(t, rows[r][0] + 1), *rows[r][2:])
    if not rows:
        return Notes.empty(tempo)
    a = np.array(rows, dtype=np.int64)
    start = a[:, 0] * QUANTUM
    end = np.where(a[:, 1] < 0, start + DRUM_SECONDS, np.maximum(a[:, 1], a[:, 0] + 1) * QUANTUM)
    return Notes(start, end, a[:, 2].astype(np.int16), a[:, 3].astype(np.int16), a[:, 4].astype(np.int8),
                 tempo).sorted()


def tokens_per_note(ids: np.ndarray, n_notes: int) -> float:
    return len(ids) / max(n_notes, 1)


# ---- per-token features for MuseNet's extra embeddings --------------------------------------------------------------------
@dataclass
class TokenTimes:
    """Where each token sits in the music: the inputs of MuseNet's timing and structural embeddings."""

    quanta: np.ndarray  # (T,) absolute time in 10 ms steps, shared by every token of one instant
    chord_index: np.ndarray  # (T,) index of the token among the tokens of its instant
    total_quanta: int  # length of the piece (for the position-within-the-piece embedding)


def token_times(ids: np.ndarray, vocab: Vocab, total_quanta: int | None = None) -> TokenTimes:
    waits = vocab.wait_value[np.clip(ids, 0, len(vocab) - 1)]
    # A wait moves time on for the tokens after it, so the wait itself still belongs to the instant before.
    quanta = np.cumsum(waits) - waits
    instant = np.cumsum(waits > 0) - (waits > 0)  # instants are separated by waits; a wait closes its instant
    first = np.searchsorted(instant, instant)  # index of the first token of each token's instant (instant is sorted)
    chord_index = np.arange(len(ids)) - first
    total = int(quanta[-1] + waits[-1]) if total_quanta is None and len(ids) else int(total_quanta or 0)
    return TokenTimes(quanta, chord_index, max(total, 1))


# ---- the encodings a model can be trained on ------------------------------------------------------------------------------
ENCODINGS = ("musenet", "remi", "midilike")


@dataclass
class Encoded:
    ids: np.ndarray  # (T,) the whole piece, header included
    n_header: int  # the first n_header ids are the header, repeated at the start of every training window
    times: TokenTimes | None = None  # for the extra embeddings (musenet only)


@dataclass
class MuseNetEncoding:
    composers: list[str]
    families: Sequence[str] = FAMILIES
    name: str = "musenet"
    vocab: Vocab = field(init=False)

    def __post_init__(self) -> None:
        self.vocab = Vocab(self.composers, self.families)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, notes: Notes, composer: str | None) -> Encoded:
        ids = encode(notes, self.vocab, composer)
        n_header = int(np.argmax(ids == self.vocab.start)) + 2  # ... start tempo:N
        return Encoded(ids, n_header, token_times(ids, self.vocab))

    def decode(self, ids) -> Notes:
        return decode(ids, self.vocab)

    def composer_id(self, composer: str) -> int:
        return self.vocab.composer_id(composer)

    def allowed_next(self, ids: np.ndarray, n_header: int) -> np.ndarray:
        """(len(ids), vocab) which tokens may follow each prefix ``ids[: i + 1]`` of a piece's body: the rules the
        sampler enforces. No header token after the header, and a note-off only for a note that is sounding. Rows
        inside the header allow everything."""
        v = self.vocab
        T, V = len(ids), len(v)
        off_ids = np.flatnonzero((v.note_family >= 0) & (v.note_velocity == 0))  # one column per sounding-able note
        column = np.full(V, -1)
        column[off_ids] = np.arange(len(off_ids))
        sign = np.where(v.note_off_of < 0, 0, np.where(v.note_velocity > 0, 1, -1))[ids]  # +1 on, -1 off, 0 other
        sign[:n_header] = 0
        at = np.flatnonzero(sign)
        changes = np.zeros((T, len(off_ids)), dtype=np.int16)
        changes[at, column[v.note_off_of[ids[at]]]] = sign[at]
        allowed = np.ones((T, V), dtype=bool)
        allowed[:, v.header_ids()] = False
        allowed[:, off_ids] = np.cumsum(changes, axis=0) > 0  # notes sounding after each token
        allowed[: n_header - 1] = True  # the header's own tokens predict the header
        return allowed

    def token_kinds(self) -> np.ndarray:
        """The kind of every id (note-on, note-off, wait, end, header): where the bits per note go."""
        v = self.vocab
        kinds = np.full(len(v), "header", dtype=object)
        kinds[v.wait_value > 0] = "wait"
        kinds[(v.note_family >= 0) & (v.note_velocity > 0)] = "note-on"
        kinds[(v.note_family >= 0) & (v.note_velocity == 0)] = "note-off"
        kinds[v.end] = "end"
        return kinds


def make_encoding(name: str, composers: Sequence[str], families: Sequence[str] = FAMILIES):
    """The encoding a run was trained with: ours, or one of MidiTok's (``miditok_encoding``) for comparison."""
    if name == "musenet":
        return MuseNetEncoding(list(composers), list(families))
    if name in ("remi", "midilike"):
        from nexttoken.muse.miditok_encoding import MidiTokEncoding

        return MidiTokEncoding(list(composers), name)
    raise UserError(f"unknown encoding {name!r}; choose from {', '.join(ENCODINGS)}")
