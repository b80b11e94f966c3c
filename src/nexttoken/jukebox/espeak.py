"""espeak-ng as a second voice of the sung lyrics set, where it is installed (``--voices low,high,espeak``).

The built-in formant voice (``lyrics.py``) needs nothing installed and is the default. espeak-ng
(https://github.com/espeak-ng/espeak-ng) is a real phoneme synthesizer, with consonants, vowels and transitions of its
own, so a top prior trained on both voices has to follow the words through two different timbres. It speaks rather
than sings, so each syllable is spoken on its note: it starts at the note's onset, its espeak pitch (0-99) rises and
falls with the tune inside the speaking range, its rate is set so that it lasts about as long as the note, and it is
cut at the note's end. The time each syllable sounds is kept, as for the formant voice. The made-up words are read as
Spanish, which says consonant-vowel syllables as they are written. espeak-ng runs as a subprocess (it has no Python
binding on PyPI that needs nothing else installed); its WAV output is read with soundfile and resampled with soxr.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np
import soundfile
import soxr

from nexttoken.errors import UserError

PROGRAM = "espeak-ng"
LANGUAGE = "es"
SYLLABLE_WPM_SECONDS = 38.0  # a syllable spoken at 120 words per minute lasts about 0.32 s: rate x length ~ 38
FADE_SECONDS = 0.01  # the fade where a syllable is cut at its note's end (no click)


def require() -> None:
    """One clear error when espeak-ng is asked for and not installed."""
    if shutil.which(PROGRAM) is None:
        raise UserError(f"--voices espeak needs {PROGRAM} on the PATH (e.g. apt-get install espeak-ng); the built-in "
                        f"voices low and high need nothing installed")


@functools.lru_cache(maxsize=8192)
def spoken(syllable: str, pitch: int, rate: int, sample_rate: int) -> np.ndarray:
    """(samples,) float32 of ``syllable`` spoken by espeak-ng at espeak ``pitch`` (0-99) and ``rate`` (words per
    minute), at ``sample_rate``, without the silence around it, peak 1."""
    try:
        proc = subprocess.run([PROGRAM, "-v", LANGUAGE, "-p", str(pitch), "-s", str(rate), "-z", "--stdout", syllable],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{PROGRAM} could not speak {syllable!r}: {e}") from None
    try:
        audio, rate_in = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError):
        audio, rate_in = np.zeros((0, 1), dtype=np.float32), sample_rate
    if proc.returncode != 0 or not len(audio):
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"{PROGRAM} gave no audio for {syllable!r}" + (f": {said[0]}" if said else ""))
    audio = audio.mean(1)
    if rate_in != sample_rate:
        audio = soxr.resample(audio, rate_in, sample_rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.01 * max(float(np.abs(audio).max()), 1e-9))
    if not len(loud):
        raise UserError(f"{PROGRAM} spoke {syllable!r} as silence")
    audio = audio[loud[0] : loud[-1] + 1]
    return audio / float(np.abs(audio).max())


def espeak_pitches(pitches: np.ndarray) -> np.ndarray:
    """The tune's MIDI pitches as espeak pitches: 4 per semitone above the lowest note, from 30.

    >>> espeak_pitches(np.array([48, 50, 55, 62])).tolist()
    [30, 38, 58, 86]
    """
    pitches = np.asarray(pitches, dtype=np.int64)
    return np.clip(30 + 4 * (pitches - pitches.min()), 0, 99) if len(pitches) else pitches


def speak(syllables: list[str], pitches, onsets, durations, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(audio (samples,) float32 peak 0.8, ends (S,) seconds): each syllable spoken from its onset and cut at its
    note's end; ``ends`` is when each one stops sounding."""
    onsets, durations = np.asarray(onsets, dtype=float), np.asarray(durations, dtype=float)
    end = float(np.max(onsets + durations)) if len(syllables) else 0.0
    out = np.zeros(int(np.ceil(end * sample_rate)), dtype=np.float32)
    ends = np.zeros(len(syllables))
    fade = max(1, int(FADE_SECONDS * sample_rate))
    for k, (syllable, pitch, onset, duration) in enumerate(zip(syllables, espeak_pitches(pitches), onsets, durations)):
        rate = int(np.clip(round(SYLLABLE_WPM_SECONDS / duration / 10) * 10, 80, 450))  # steps of 10: fewer calls
        y = spoken(syllable, int(pitch), rate, sample_rate)[: int(duration * sample_rate)].copy()
        y[-fade:] *= np.linspace(1, 0, min(fade, len(y)), dtype=np.float32)
        start = int(round(onset * sample_rate))
        y = 0.8 * y[: len(out) - start]
        out[start : start + len(y)] += y
        ends[k] = onset + len(y) / sample_rate
    return out, ends
