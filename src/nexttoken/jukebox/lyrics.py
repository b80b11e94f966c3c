"""A lyrics set whose timing is known: lines of made-up words sung one syllable per note by a built-in formant voice
over a quiet accompaniment, each with its text, its audio and when every syllable is sung.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341, section 3.5 and figure 4) conditions its top prior on
lyrics through a character encoder that the prior attends to, and shows that the attention learns to follow the words
being sung. Real songs come without syllable timings; here they are the ground truth, so the alignment can be
measured: ``LyricsExample.starts``/``ends`` (seconds) and ``chars`` (where each syllable sits in ``text``).

The words are made of 40 consonant-vowel syllables. The voice is a formant synthesiser: a glottal source at the note's
pitch with vibrato, its harmonics shaped by the vowel's formants (``midi.synth.formant_amplitudes``: Peterson & Barney
1952 vowels through cascade resonators); nasals and liquids (m, n, l, r) are voiced murmurs with their own formants
that glide into the vowel; s is band-limited hiss before the voice starts; t, k and d are a short closure, a burst of
band-limited noise, then the vowel. Two voices, "low" and "high", differ in pitch range and formant scale (a shorter
vocal tract raises every formant); a third, "espeak", is espeak-ng where it is installed (``espeak.py``). The
accompaniment is one soft chord per bar from the built-in synthesizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from nexttoken.jukebox.espeak import speak
from nexttoken.midi.synth import (HEADROOM, VOWEL_FORMANTS, formant_amplitudes, harmonic_sum, midi_to_hz, synthesize,
                                  tone_phase)

CONSONANTS = "dklmnrst"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
# Formants (Hz) of the voiced consonants' murmur, and the noise band (Hz) of the unvoiced ones, both of an adult male.
MURMUR = {"m": (250, 1100, 2300), "n": (250, 1400, 2400), "l": (360, 1300, 2700), "r": (420, 1300, 1600)}
NOISE_BAND = {"s": (4000, 7500), "t": (3000, 6000), "k": (1500, 3500), "d": (2500, 5000)}
NOISE_LEVEL = {"s": 0.12, "t": 0.25, "k": 0.25, "d": 0.12}  # RMS against a vowel peak of 0.8
CONSONANT_SECONDS = {"s": 0.08, "t": 0.045, "k": 0.05, "d": 0.03, "m": 0.06, "n": 0.06, "l": 0.05, "r": 0.05}
VOICES = {"low": (45, 52, 1.0), "high": (55, 62, 1.15)}  # lowest tonic, highest tonic, formant scale
TUNE_RANGE = {**VOICES, "espeak": VOICES["low"]}  # espeak-ng (espeak.py) speaks where the low voice sings
DEFAULT_VOICES = ("low", "high")
MAJOR = (0, 2, 4, 5, 7, 9, 11, 12, 14)  # scale degrees -> semitones above the tonic
TAIL = 0.3  # seconds of accompaniment after the last syllable


@dataclass
class LyricsExample:
    text: str  # the line as written: words of syllables, separated by spaces
    audio: np.ndarray  # (samples,) float32, voice and accompaniment
    sample_rate: int
    syllables: list[str]  # one per note
    starts: np.ndarray  # (S,) seconds at which each syllable's first sound begins
    ends: np.ndarray  # (S,) seconds at which it ends
    chars: np.ndarray  # (S, 2) int64 [start, end) of each syllable in ``text``
    pitches: np.ndarray  # (S,) MIDI pitch each syllable is sung on
    voice: str


def make_line(rng: np.random.Generator, words: tuple[int, int] = (2, 4), syllables: tuple[int, int] = (1, 3)
              ) -> list[list[str]]:
    """A line of made-up words, each a list of syllables."""
    return [[SYLLABLES[rng.integers(len(SYLLABLES))] for _ in range(rng.integers(syllables[0], syllables[1] + 1))]
            for _ in range(rng.integers(words[0], words[1] + 1))]


def layout(words: list[list[str]]) -> tuple[str, list[str], np.ndarray]:
    """The line's text, its syllables in order, and each syllable's [start, end) characters in the text.

    >>> text, syllables, chars = layout([["da", "ki"], ["mo"]])
    >>> text, syllables, [text[a:b] for a, b in chars]
    ('daki mo', ['da', 'ki', 'mo'], ['da', 'ki', 'mo'])
    """
    text, syllables, chars = "", [], []
    for w, word in enumerate(words):
        if w:
            text += " "
        for syllable in word:
            chars.append((len(text), len(text) + len(syllable)))
            syllables.append(syllable)
            text += syllable
    return text, syllables, np.array(chars, dtype=np.int64).reshape(-1, 2)


def simple_melody(n: int, rng: np.random.Generator, voice: str = "low", tempo: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A stepwise major-key tune of ``n`` notes ending on the tonic: (pitches, onsets s, durations s, tonic)."""
    low, high, _ = TUNE_RANGE[voice]
    tonic = int(rng.integers(low, high + 1))
    beat = 60.0 / (tempo or rng.uniform(90, 130))
    degree, degrees = int(rng.choice([0, 2, 4])), []
    for _ in range(n):
        degrees.append(degree)
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(MAJOR) - 1))
    if n:
        degrees[-1] = 0 if degrees[-1] < 4 else 7  # home at the end, in whichever octave is nearer
    lengths = rng.choice([0.5, 0.5, 1.0], size=n) * beat  # eighths and quarters
    if n:
        lengths[-1] = 2 * beat
    onsets = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    pitches = tonic + np.array([MAJOR[d] for d in degrees], dtype=np.int64)
    return pitches, onsets, lengths * 0.95, tonic  # a breath of legato between notes


def _band_noise(n: int, band: tuple[float, float], sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) noise of unit RMS whose spectrum is flat inside ``band`` (Hz) with soft edges, by shaping its FFT."""
    if n < 2:
        return np.zeros(n, dtype=np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    lo, hi = band
    width = 0.15 * (hi - lo)
    mask = 1 / (1 + np.exp(-(freqs - lo) / width)) / (1 + np.exp((freqs - hi) / width))  # a smooth box
    noise = np.fft.irfft(spectrum * mask, n)
    return (noise / max(np.sqrt(np.mean(noise ** 2)), 1e-12)).astype(np.float32)


def _syllable(syllable: str, pitch: int, seconds: float, sample_rate: int, scale: float,
              rng: np.random.Generator) -> np.ndarray:
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n, dtype=np.float32) / sample_rate
    consonant, vowel = syllable[0], syllable[1]
    f0 = float(midi_to_hz(pitch))
    c_end = min(CONSONANT_SECONDS[consonant], 0.4 * seconds)
    phase = tone_phase(f0, n, sample_rate, vibrato=0.006)
    vowel_amps = formant_amplitudes(f0, [f * scale for f in VOWEL_FORMANTS[vowel]], sample_rate)
    # When the voice starts and how the consonant's own sound fills the time before the vowel
    if consonant in MURMUR:
        voice_on, glide = 0.0, np.clip((t - c_end) / 0.02 + 0.5, 0, 1)  # murmur glides into the vowel
        murmur = 0.4 * harmonic_sum(phase, formant_amplitudes(f0, [f * scale for f in MURMUR[consonant]],
                                                              sample_rate))
        voiced = glide * harmonic_sum(phase, vowel_amps) + (1 - glide) * murmur
        noise = np.zeros(n, dtype=np.float32)
    else:
        voice_on = c_end
        voiced = harmonic_sum(phase, vowel_amps)
        burst_start = 0.0 if consonant == "s" else 0.6 * c_end  # plosives: closure, then the burst
        burst = np.clip((t - burst_start) / 0.003, 0, 1) * np.clip((c_end - t) / 0.003, 0, 1)  # 3 ms edges: no click
        noise = NOISE_LEVEL[consonant] * _band_noise(n, NOISE_BAND[consonant], sample_rate, rng) * burst
    envelope = np.clip((t - voice_on) / 0.015, 0, 1) * np.clip((seconds - t) / 0.03, 0, 1)
    voiced = voiced / max(float(np.abs(voiced).max()), 1e-9)
    return (0.8 * envelope * voiced + noise).astype(np.float32)


def sing(syllables: list[str], pitches, onsets, durations, sample_rate: int, voice: str = "low",
         seed: int = 0) -> np.ndarray:
    """(samples,) float32 of the syllables sung one per note (voice alone), lasting until the last note ends."""
    scale = VOICES[voice][2]
    rng = np.random.default_rng(seed)
    end = float(np.max(np.asarray(onsets) + np.asarray(durations))) if len(syllables) else 0.0
    out = np.zeros(int(np.ceil(end * sample_rate)), dtype=np.float32)
    for syllable, pitch, onset, duration in zip(syllables, pitches, onsets, durations):
        y = _syllable(syllable, int(pitch), float(duration), sample_rate, scale, rng)
        start = int(round(onset * sample_rate))
        y = y[: len(out) - start]
        out[start : start + len(y)] += y
    return out


def accompaniment(tonic: int, seconds: float, beat: float, sample_rate: int) -> np.ndarray:
    """One soft chord per bar of four beats, I IV V I ... an octave below the tune, on the built-in piano."""
    bars = int(np.ceil(seconds / (4 * beat)))
    roots = [tonic - 12 + (0, 5, 7, 0)[b % 4] for b in range(bars)]
    notes = [(4 * beat * b, 4 * beat * 0.95, r + i) for b, r in enumerate(roots) for i in (0, 4, 7)]
    onset, duration, pitch = (np.array(col, dtype=float) for col in zip(*notes))
    n = len(onset)
    audio = synthesize(onset, duration, pitch.astype(int), np.full(n, 50), np.zeros(n, int), np.zeros(n, bool),
                       sample_rate=sample_rate, seconds=seconds)
    return audio[: int(np.ceil(seconds * sample_rate))]


def lyrics_example(seed: int, sample_rate: int = 16000, voice: str | None = None,
                   accompaniment_db: float = -14.0, voices: tuple[str, ...] = DEFAULT_VOICES) -> LyricsExample:
    """One sung line, made from ``seed`` alone (by ``voice``, or one drawn from ``voices``): the same seed always
    gives the same example."""
    rng = np.random.default_rng(seed)
    voice = voice or voices[int(rng.integers(len(voices)))]
    text, syllables, chars = layout(make_line(rng))
    tempo = float(rng.uniform(90, 130))
    pitches, onsets, durations, tonic = simple_melody(len(syllables), rng, voice, tempo)
    sing_seed = int(rng.integers(2**31))  # drawn whoever sings, so the random stream is the same for every voice
    if voice == "espeak":
        sung, ends = speak(syllables, pitches, onsets, durations, sample_rate)
    else:
        sung, ends = sing(syllables, pitches, onsets, durations, sample_rate, voice, seed=sing_seed), onsets + durations
    total = len(sung) + int(TAIL * sample_rate)  # the last chord dies away after the last syllable
    backing = accompaniment(tonic, total / sample_rate, 60.0 / tempo, sample_rate)
    mix = np.pad(sung / max(float(np.abs(sung).max()), 1e-9), (0, total - len(sung)))
    mix += 10 ** (accompaniment_db / 20) * backing[:total]
    fade = int(0.05 * sample_rate)
    mix[-fade:] *= np.linspace(1, 0, fade)
    mix *= HEADROOM / max(float(np.abs(mix).max()), 1e-9)
    return LyricsExample(text, mix.astype(np.float32), sample_rate, syllables, onsets, ends, chars, pitches, voice)


def lyrics_set(n: int, seed: int = 0, sample_rate: int = 16000, voices: tuple[str, ...] = DEFAULT_VOICES
               ) -> Iterator[LyricsExample]:
    """``n`` sung lines, each by one of ``voices``, one at a time; example i depends on (seed, i, voices) only, so a
    longer set starts with the shorter one."""
    for i in range(n):
        yield lyrics_example(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]), sample_rate, voices=voices)
