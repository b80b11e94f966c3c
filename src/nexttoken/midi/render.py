"""Notes as sound: through a General MIDI soundfont when one is found, else through the built-in synthesizer.

A soundfont is looked up in this order: the path given (``--soundfont``), ``$NEXTTOKEN_SOUNDFONT``, then the places
Debian/Ubuntu and Homebrew install one (``apt-get install timgm6mb-soundfont`` or ``fluid-soundfont-gm``); nothing is
ever downloaded. A file given as a soundfont is checked first (a RIFF ``sfbk`` file whose chunks lie within it), so a
wrong file is refused before any work. The soundfont is played by symusic's synthesizer (pinned below 0.6, whose
renderer raises a TypeError); without one, ``synth.synthesize`` plays the notes with a few built-in timbres, so every
machine gets audio.

    audio = render(notes, 22050)                       # (samples,) float32, soundfont if one is installed
    render_wav(notes, "piece.wav", find_soundfont())   # 16-bit WAV: stereo from a soundfont, mono from the synth
"""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import numpy as np

from nexttoken.errors import UserError
from nexttoken.midi.notes import DRUMS, FAMILY_PROGRAM, Notes, notes_to_score
from nexttoken.midi.synth import synthesize
from nexttoken.files import atomic_write_bytes

SOUNDFONT_PLACES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # 6 MB, quick to load
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)
PEAK = 0.9  # a soundfont's output is scaled to this peak (the built-in synthesizer scales its own to -1 dBFS)


def check_soundfont(path: Path) -> None:
    """A UserError unless ``path`` is a whole SoundFont 2 file: RIFF form ``sfbk`` holding its INFO, sample data and
    preset chunks, none of them running past the end of the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"sfbk":
                raise UserError(f"{path} is not a SoundFont 2 file (.sf2)")
            declared = int.from_bytes(head[4:8], "little") + 8
            if declared > size:
                raise UserError(f"{path}: a truncated soundfont ({size:,} of the {declared:,} bytes it declares)")
            found, pos = set(), 12
            while pos + 12 <= declared:
                f.seek(pos)
                chunk = f.read(12)
                length = int.from_bytes(chunk[4:8], "little")
                if chunk[:4] == b"LIST":
                    found.add(chunk[8:12])
                pos += 8 + length + (length & 1)
            if pos > declared:
                raise UserError(f"{path}: a damaged soundfont (a chunk runs past its end)")
    except OSError as e:
        raise UserError(f"soundfont {path}: {e.strerror}") from None
    missing = {b"INFO", b"sdta", b"pdta"} - found
    if missing:
        raise UserError(f"{path}: a damaged soundfont (no {', '.join(sorted(m.decode() for m in missing))} chunk)")


def find_soundfont(path: str | Path | None = None) -> Path | None:
    """The soundfont to use: the given path (which must be a soundfont), else the environment's, else a system one,
    else None (the built-in synthesizer)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"soundfont {p} not found")
        check_soundfont(p)
        return p
    env = os.environ.get("NEXTTOKEN_SOUNDFONT")
    for candidate in ([env] if env else []) + list(SOUNDFONT_PLACES):
        if Path(candidate).is_file():
            check_soundfont(Path(candidate))
            return Path(candidate)
    return None


def render(notes: Notes, sample_rate: int = 22050, soundfont: Path | None = None, channels: int = 1) -> np.ndarray:
    """float32 audio of the notes, (samples,) for one channel or (samples, 2) for two: through ``soundfont`` if one
    is given, else through the built-in synthesizer (each family played by its ``FAMILY_PROGRAM``, drums as drums).
    No notes are no samples."""
    if channels not in (1, 2):
        raise ValueError("channels must be 1 or 2")
    if not len(notes):  # a greedy sample can hold no note; symusic's synthesizer refuses a score without one
        return np.zeros((0,) if channels == 1 else (0, 2), dtype=np.float32)
    if soundfont is None:
        family = notes.family.astype(np.int64)
        audio = synthesize(notes.start, notes.end - notes.start, notes.pitch, notes.velocity,
                           np.asarray(FAMILY_PROGRAM)[family], family == DRUMS, sample_rate)
        return audio if channels == 1 else np.repeat(audio[:, None], 2, axis=1)
    import symusic

    synth = symusic.Synthesizer(sf_path=str(soundfont), sample_rate=sample_rate)
    stereo = np.asarray(synth.render(notes_to_score(notes), stereo=True))  # (2, samples)
    peak = float(np.abs(stereo).max()) if stereo.size else 0.0
    stereo = (stereo / max(peak, 1e-9) * PEAK).astype(np.float32)
    return stereo.mean(axis=0) if channels == 1 else np.ascontiguousarray(stereo.T)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV of float audio in [-1, 1], (samples,) or (samples, channels), written atomically."""
    audio = audio if audio.ndim == 2 else audio[:, None]
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(audio.shape[1])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def render_wav(notes: Notes, path: str | Path, soundfont: Path | None = None, sample_rate: int = 22050) -> Path:
    """A WAV file of the notes: stereo through a soundfont, mono through the built-in synthesizer."""
    return write_wav(path, render(notes, sample_rate, soundfont, channels=2 if soundfont else 1), sample_rate)
