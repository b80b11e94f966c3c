"""A piece of music as note arrays (``Notes``), and MIDI files read into them and written from them.

General MIDI programs map to the 11 instrument families of ``FAMILIES`` (``PROGRAM_FAMILY`` says which program goes
where); a written file has one track per family, with the program of ``FAMILY_PROGRAM`` (drums on channel 10).

Every file is checked by ``smf.check`` before symusic parses it, so a damaged or truncated file is refused with the
reason instead of being read in part. Files from users go through ``read_midi_files`` / ``read_user_midi``, which
parse them in worker processes (``nexttoken.isolate``): whatever a parser does with a file, the caller survives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nexttoken.errors import UserError
from nexttoken.isolate import Outcome, map_isolated
from nexttoken.midi import smf
from nexttoken.files import atomic_write_bytes

FAMILIES = ("piano", "mallets", "organ", "guitar", "bass", "strings", "voice", "brass", "winds", "synth", "drums")
DRUMS = FAMILIES.index("drums")
# The program each family is written back with: acoustic grand, vibraphone, church organ, nylon guitar, acoustic bass,
# string ensemble, choir aahs, brass section, flute, square lead (drums use channel 10).
FAMILY_PROGRAM = (0, 11, 19, 24, 32, 48, 52, 61, 73, 80, 0)
MIDI_SUFFIXES = (".mid", ".midi", ".kar")


def _program_families() -> np.ndarray:
    """General MIDI program (0-127) -> family index. The GM groups of 8, with the mixed groups split by instrument."""
    fam = np.empty(128, dtype=np.int8)
    groups = ["piano", "mallets", "organ", "guitar", "bass", "strings", "strings", "brass", "winds", "winds",
              "synth", "synth", "synth", "guitar", "mallets", "synth"]  # 0-7 piano ... 120-127 sound effects
    for g, name in enumerate(groups):
        fam[8 * g : 8 * g + 8] = FAMILIES.index(name)
    fam[47] = FAMILIES.index("mallets")  # timpani
    fam[52:55] = FAMILIES.index("voice")  # choir aahs, voice oohs, synth voice
    fam[108] = FAMILIES.index("mallets")  # kalimba
    fam[109] = fam[111] = FAMILIES.index("winds")  # bagpipe, shanai
    fam[110] = FAMILIES.index("strings")  # fiddle
    return fam


PROGRAM_FAMILY = _program_families()


@dataclass
class Notes:
    """A piece as parallel arrays, one row per note, times in seconds: what encodings, augmentation, metrics and the
    synthesizer read."""

    start: np.ndarray  # (N,) float64 seconds
    end: np.ndarray  # (N,) float64 seconds
    pitch: np.ndarray  # (N,) int16 0..127
    velocity: np.ndarray  # (N,) int16 1..127
    family: np.ndarray  # (N,) int8 index into FAMILIES
    tempo: float = 120.0  # the first tempo of the file, bpm

    def __len__(self) -> int:
        return len(self.pitch)

    @property
    def seconds(self) -> float:
        return float(self.end.max()) if len(self) else 0.0

    def sorted(self) -> "Notes":
        order = np.lexsort((self.pitch, self.family, self.start))
        return self.take(order)

    def take(self, index: np.ndarray) -> "Notes":
        return Notes(self.start[index], self.end[index], self.pitch[index], self.velocity[index],
                     self.family[index], self.tempo)

    @classmethod
    def empty(cls, tempo: float = 120.0) -> "Notes":
        f = np.zeros(0)
        i = np.zeros(0, dtype=np.int16)
        return cls(f, f.copy(), i, i.copy(), np.zeros(0, dtype=np.int8), tempo)

    @classmethod
    def concat(cls, parts: Sequence["Notes"], tempo: float = 120.0) -> "Notes":
        if not parts:
            return cls.empty(tempo)
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("start", "end", "pitch", "velocity",
                                                                               "family")), tempo)


def notes_from_score(score) -> Notes:
    """A symusic Score (any time unit) -> Notes, every track's program mapped to its family."""
    sec = score.to("second")
    parts = []
    for track in sec.tracks:
        arr = track.notes.numpy()
        if not len(arr["pitch"]):
            continue
        family = DRUMS if track.is_drum else int(PROGRAM_FAMILY[track.program])
        start = arr["time"].astype(np.float64)
        parts.append(Notes(start, start + arr["duration"], arr["pitch"].astype(np.int16),
                           np.clip(arr["velocity"], 1, 127).astype(np.int16),
                           np.full(len(start), family, dtype=np.int8)))
    tempo = float(score.tempos[0].qpm) if len(score.tempos) else 120.0
    return Notes.concat(parts, tempo).sorted()


def notes_to_score(notes: Notes, tpq: int = 480):
    """Notes -> a symusic Score at the notes' tempo, one track per family (drums on channel 10)."""
    import symusic

    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, float(notes.tempo)))
    ticks_per_second = tpq * notes.tempo / 60.0
    for f in np.unique(notes.family):
        sel = notes.family == f
        start = np.rint(notes.start[sel] * ticks_per_second).astype(np.int32)
        end = np.maximum(np.rint(notes.end[sel] * ticks_per_second).astype(np.int32), start + 1)
        track = symusic.Track(name=FAMILIES[f], program=FAMILY_PROGRAM[f], is_drum=bool(f == DRUMS))
        track.notes = symusic.Note.from_numpy(start, end - start, notes.pitch[sel].astype(np.int8),
                                              notes.velocity[sel].astype(np.int8))
        score.tracks.append(track)
    return score


# ---- reading --------------------------------------------------------------------------------------------------------
def _check_file(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a MIDI file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")


def parse_midi(data: bytes, source: str = "MIDI data") -> Notes:
    """Notes of the bytes of a MIDI file, checked whole before symusic parses them; any fault is a UserError."""
    import symusic

    try:
        smf.check(data)
    except UserError as e:
        raise UserError(f"{source}: not a readable MIDI file ({e})") from None
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError/ValueError/IndexError for files it cannot read
        raise UserError(f"{source}: not a readable MIDI file ({e})") from None
    return notes_from_score(score)


def read_midi(path: str | Path) -> Notes:
    """Notes of a MIDI file, parsed in this process: for files this program wrote or already read safely."""
    _check_file(Path(path))
    return parse_midi(Path(path).read_bytes(), str(path))


def read_midi_files(paths: Sequence[str | Path], jobs: int = 1, timeout: float = 60.0,
                    on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """``Outcome`` of ``read_midi`` for every path, each parsed in a worker process: a file that crashes or hangs the
    parser is that file's verdict (``Outcome.error``), never the caller's end."""
    return map_isolated(read_midi, list(paths), timeout=timeout, workers=jobs, on_done=on_done)


def read_user_midi(path: str | Path) -> Notes:
    """Notes of one MIDI file given by the user, parsed in a worker process; a file with no notes is refused too."""
    _check_file(Path(path))  # a missing file or a folder is named before a worker starts
    outcome = read_midi_files([path])[0]
    if not outcome.ok:
        raise UserError(outcome.error if outcome.error.startswith(str(path)) else f"{path}: {outcome.error}")
    if not len(outcome.value):
        raise UserError(f"{path}: the MIDI file holds no notes (a note counts once its note-off ends it)")
    return outcome.value


# ---- writing --------------------------------------------------------------------------------------------------------
def write_midi(notes: Notes, path: str | Path) -> Path:
    """A MIDI file of the notes, written atomically."""
    atomic_write_bytes(path, bytes(notes_to_score(notes).dumps_midi()))
    return Path(path)
