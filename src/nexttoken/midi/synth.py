"""A small built-in General MIDI synthesizer, so that every machine can turn notes into audio without a soundfont.

Notes come in as plain arrays (onset and duration in seconds, MIDI pitch, velocity 1-127, GM program 0-127, a drum
flag); out comes float32 mono audio, peak-normalised to -1 dBFS. Each GM family plays one of a few timbres:

- keyboards, mallets and plucked strings (piano, guitar, bass, harp): harmonic partials that decay exponentially, the
  higher ones faster, as a struck or plucked string does;
- bowed strings, winds, brass, organ and synth leads and pads: sustained partials under an attack and release
  envelope, with a slow vibrato (but the organ);
- voices: partials shaped by the formants of an open "ah" (``formant_amplitudes``, shared with the Jukebox lyrics
  voice);
- drums (GM channel 10): noise bursts and falling sines chosen by the GM drum key (kick, snare, hats, cymbals, toms,
  other percussion).

Each note is synthesised into its own slice of the output in one go: a harmonic sum by the Chebyshev recurrence
(sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x)) costs one sine and one cosine per note whatever its number of partials,
so a 30 s piece of a few hundred notes renders in a fraction of a second. Drum noise comes from a generator seeded by
``seed``: the same notes always give the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RELEASE = 0.25  # seconds: every sound has died away this long after the end of its note
HEADROOM = 10 ** (-1 / 20)  # the output peak, -1 dBFS
NYQUIST_FRACTION = 0.45  # partials above this fraction of the sample rate are dropped (they would alias)


@dataclass(frozen=True)
class Timbre:
    partials: tuple[float, ...]  # relative amplitude of harmonic 1, 2, ...
    decay: float = 0.0  # 1/s, exponential decay of the fundamental at middle C; 0 = sustained
    partial_decay: float = 0.0  # harmonic k decays (1 + partial_decay * (k - 1)) times faster than the fundamental
    attack: float = 0.005  # seconds of linear rise
    release: float = 0.1  # seconds of linear fall after the note's end (at most RELEASE)
    vibrato: float = 0.0  # depth, as a fraction of the frequency
    gain: float = 1.0


SAW = tuple(1 / k for k in range(1, 11))
TIMBRES = {
    "piano": Timbre((1, 0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05), decay=0.9, partial_decay=0.35, attack=0.003,
                    release=0.12),
    "mallet": Timbre((1, 0, 0, 0.3, 0, 0, 0, 0, 0, 0.1), decay=3.0, partial_decay=1.0, attack=0.002, release=0.1),
    "guitar": Timbre((1, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08), decay=1.5, partial_decay=0.5, attack=0.002,
                     release=0.08),
    "bass": Timbre((1, 0.5, 0.25, 0.12, 0.06), decay=1.2, partial_decay=0.6, attack=0.004, release=0.08, gain=1.3),
    "organ": Timbre((1, 0.8, 0, 0.5, 0, 0, 0, 0.3), attack=0.01, release=0.05, gain=0.7),
    "strings": Timbre(SAW, attack=0.08, release=0.15, vibrato=0.004, gain=0.8),
    "voice": Timbre((), attack=0.1, release=0.15, vibrato=0.006),  # partials from the "ah" formants
    "brass": Timbre((1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1), attack=0.04, release=0.1, vibrato=0.002,
                    gain=0.7),
    "reed": Timbre((1, 0.1, 0.6, 0.1, 0.4, 0.1, 0.25, 0.05, 0.15), attack=0.03, release=0.1, vibrato=0.003,
                   gain=0.8),
    "flute": Timbre((1, 0.2, 0.08, 0.03), attack=0.05, release=0.1, vibrato=0.005),
    "lead": Timbre((1, 0, 0.33, 0, 0.2, 0, 0.14, 0, 0.11), attack=0.01, release=0.1, vibrato=0.003, gain=0.7),
    "pad": Timbre((1, 0.4, 0.2, 0.1), attack=0.25, release=0.2, vibrato=0.002, gain=0.8),
}


def _program_timbres() -> tuple[str, ...]:
    """The timbre of each GM program: by family of eight, then the programs that sound unlike their family."""
    families = ("piano", "mallet", "organ", "guitar", "bass", "strings", "strings", "brass", "reed", "flute", "lead",
                "pad", "pad", "guitar", "mallet", "pad")
    table = [families[p // 8] for p in range(128)]
    table[21:24] = ["reed"] * 3  # accordion, harmonica, bandoneon
    table[45:47] = ["guitar"] * 2  # pizzicato strings, harp
    table[47] = "mallet"  # timpani
    table[52:55] = ["voice"] * 3  # choir aahs, voice oohs, synth voice
    table[55] = "brass"  # orchestra hit
    table[108] = "mallet"  # kalimba
    table[109] = table[111] = "reed"  # bagpipe, shanai
    table[110] = "strings"  # fiddle
    return tuple(table)


PROGRAM_TIMBRE = _program_timbres()

# Vowel formants (Hz) of an adult male voice, Peterson & Barney 1952 (https://doi.org/10.1121/1.1906875), and the
# bandwidths (Hz) a formant synthesiser commonly gives F1-F3.
VOWEL_FORMANTS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
                  "u": (300, 870, 2240)}
FORMANT_BANDWIDTHS = (80, 100, 120)


def midi_to_hz(pitch) -> np.ndarray:
    """Equal temperament, A4 (MIDI 69) = 440 Hz.

    >>> midi_to_hz([69, 81]).tolist()
    [440.0, 880.0]
    """
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69) / 12)


def tone_phase(freq: float, n: int, sample_rate: int, vibrato: float = 0.0, rate: float = 5.5) -> np.ndarray:
    """(n,) float64 phase of a tone at ``freq`` whose frequency swings by +-``vibrato`` (a fraction) ``rate`` times a
    second: the instantaneous frequency f (1 + v sin(2 pi r t)), integrated in closed form."""
    t = np.arange(n) / sample_rate
    if not vibrato:
        return 2 * np.pi * freq * t
    return 2 * np.pi * freq * (t + vibrato * (1 - np.cos(2 * np.pi * rate * t)) / (2 * np.pi * rate))


def harmonic_sum(phase: np.ndarray, amplitudes, ratio: np.ndarray | None = None) -> np.ndarray:
    """(n,) float32 sum over k of ``amplitudes[k] * ratio**k * sin((k + 1) * phase)``.

    ``ratio`` (per sample, optional) makes each partial a factor smaller than the one below it: with
    ratio = exp(-d t) every partial decays d per second faster than the one below, as on a string.

    >>> x = np.linspace(0, 6, 7)
    >>> bool(np.allclose(harmonic_sum(x, [1.0, 0.0, 0.5]), np.sin(x) + 0.5 * np.sin(3 * x), atol=1e-5))
    True
    """
    amplitudes = np.asarray(amplitudes, dtype=np.float32)
    s = np.sin(phase).astype(np.float32)
    out = amplitudes[0] * s if len(amplitudes) else np.zeros_like(s)
    if len(amplitudes) < 2:
        return out
    two_cos = (2 * np.cos(phase)).astype(np.float32)
    s_prev = np.zeros_like(s)
    scale = None if ratio is None else np.array(ratio, dtype=np.float32)
    tmp = np.empty_like(s)
    for a in amplitudes[1:]:
        np.multiply(two_cos, s, out=tmp)
        tmp -= s_prev
        s_prev, s, tmp = s, tmp, s_prev  # the three buffers rotate: no allocation per partial
        if a:
            out += a * (s if scale is None else s * scale)
        if scale is not None:
            scale *= ratio
    return out


def formant_amplitudes(f0: float, formants, sample_rate: int, bandwidths=FORMANT_BANDWIDTHS) -> np.ndarray:
    """Amplitudes of the harmonics of a voice at ``f0`` sung through ``formants``, up to the Nyquist limit: a source
    falling 6 dB per octave (glottal pulses with lip radiation) through a cascade of two-pole resonators, one per
    formant, each of gain 1 at 0 Hz (the cascade formant synthesiser of Klatt 1980, https://doi.org/10.1121/1.383940).

    >>> amps = formant_amplitudes(110.0, VOWEL_FORMANTS["a"], 16000)
    >>> int(np.argmax(amps)) + 1  # the harmonic nearest F1 = 730 Hz is the loudest
    7
    """
    k = np.arange(1, max(1, int(NYQUIST_FRACTION * sample_rate / f0)) + 1)
    f = k * f0
    gain = np.ones(len(k))
    for fc, bw in zip(formants, bandwidths):
        gain *= fc**2 / np.sqrt((fc**2 - f**2) ** 2 + (bw * f) ** 2)
    amps = gain / k
    return (amps / amps.max()).astype(np.float32)


def _tone(timbre: Timbre, pitch: int, duration: float, n: int, sample_rate: int) -> np.ndarray:
    f0 = float(midi_to_hz(pitch))
    if timbre.partials:
        amps = np.asarray(timbre.partials, dtype=np.float32)
        amps = amps[: int(NYQUIST_FRACTION * sample_rate / (f0 * (1 + timbre.vibrato)))]
    else:
        amps = formant_amplitudes(f0 * (1 + timbre.vibrato), VOWEL_FORMANTS["a"], sample_rate)
    if not len(amps):
        return np.zeros(n, dtype=np.float32)
    amps = amps / amps.sum()
    t = np.arange(n, dtype=np.float32) / sample_rate
    env = np.minimum(t / timbre.attack, 1.0)
    env *= np.clip((duration + timbre.release - t) / timbre.release, 0.0, 1.0)
    ratio = None
    if timbre.decay:
        decay = timbre.decay * 2 ** ((pitch - 60) / 24)  # higher strings die sooner
        env *= np.exp(-decay * t)
        ratio = np.exp(-decay * timbre.partial_decay * t)
    phase = tone_phase(f0, n, sample_rate, timbre.vibrato)
    return timbre.gain * harmonic_sum(phase, amps, ratio) * env


DRUM_KIND = {35: "kick", 36: "kick", 37: "snare", 38: "snare", 39: "snare", 40: "snare", 42: "hat", 44: "hat",
             46: "open_hat", 41: "tom", 43: "tom", 45: "tom", 47: "tom", 48: "tom", 50: "tom"}
DRUM_KIND.update({k: "cymbal" for k in (49, 51, 52, 53, 55, 57, 59)})


def _drum(key: int, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / sample_rate
    noise = rng.standard_normal(n).astype(np.float32)
    bright = np.diff(noise, prepend=np.float32(0)) / 2  # first difference: +6 dB per octave, a hiss
    kind = DRUM_KIND.get(key, "perc")
    if kind == "kick":
        freq = 45 + 75 * np.exp(-t / 0.03)  # the skin's pitch falls as the beater's energy spreads
        thump = np.convolve(noise, np.full(16, 1 / 16, dtype=np.float32), "same")
        y = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / 0.18) + 0.5 * thump * np.exp(-t / 0.01)
    elif kind == "snare":
        y = 0.5 * noise * np.exp(-t / 0.07) + 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.05)
    elif kind == "tom":
        freq = 80 * 2 ** ((key - 41) / 9) * (1 + 0.3 * np.exp(-t / 0.05))
        y = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / 0.25) + 0.2 * noise * np.exp(-t / 0.02)
    elif kind in ("hat", "open_hat", "cymbal"):
        tau = {"hat": 0.025, "open_hat": 0.2, "cymbal": 0.5}[kind]
        y = 0.6 * np.diff(bright, prepend=np.float32(0)) * np.exp(-t / tau)
    else:
        y = 0.6 * bright * np.exp(-t / 0.04)
    fade = min(n, int(0.005 * sample_rate))  # a drum cut at the end of its slice must not click
    if fade:
        y[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return y.astype(np.float32)


def synthesize(onset, duration, pitch, velocity, program, is_drum, sample_rate: int = 22050, seconds: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """(samples,) float32 audio of the notes, peak-normalised to -1 dBFS (all zeros when nothing sounds).

    The audio lasts until ``RELEASE`` seconds after the last note's end, or ``seconds`` if that is longer. Arrays are
    one entry per note; ``program`` is ignored for drums, whose ``pitch`` is the GM drum key.
    """
    onset, duration = np.asarray(onset, dtype=np.float64), np.maximum(np.asarray(duration, dtype=np.float64), 0)
    pitch, velocity = np.asarray(pitch, dtype=np.int64), np.clip(np.asarray(velocity, dtype=np.int64), 1, 127)
    program, is_drum = np.asarray(program, dtype=np.int64), np.asarray(is_drum, dtype=bool)
    if not len({len(a) for a in (onset, duration, pitch, velocity, program, is_drum)}) == 1:
        raise ValueError("onset, duration, pitch, velocity, program and is_drum must have one entry per note")
    if len(onset) and (onset.min() < 0 or not np.isfinite(onset + duration).all()):
        raise ValueError("note times must be finite and non-negative")
    if len(onset) and not (0 <= min(pitch.min(), program.min()) and max(pitch.max(), program.max()) <= 127):
        raise ValueError("pitches and programs are MIDI numbers, 0-127")
    end = float((onset + duration).max()) + RELEASE if len(onset) else 0.0
    out = np.zeros(math.ceil(max(end, seconds) * sample_rate), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for i in range(len(onset)):
        start = int(round(onset[i] * sample_rate))
        n = min(math.ceil((duration[i] + RELEASE) * sample_rate), len(out) - start)
        if n <= 0:
            continue
        if is_drum[i]:
            y = _drum(int(pitch[i]), n, sample_rate, rng)
        else:
            y = _tone(TIMBRES[PROGRAM_TIMBRE[program[i]]], int(pitch[i]), float(duration[i]), n, sample_rate)
        out[start : start + n] += (velocity[i] / 127) ** 1.5 * y  # loudness grows faster than velocity
    peak = float(np.abs(out).max()) if len(out) else 0.0
    if peak > 0:
        out *= HEADROOM / peak
    return out
