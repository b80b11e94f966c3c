"""The lyrics set: text, syllables and timings agree; the voice sings the note's pitch and the syllable's sounds."""

import numpy as np
import pytest

from nexttoken.jukebox.lyrics import SYLLABLES, layout, lyrics_example, lyrics_set, make_line, simple_melody, sing

SR = 16000


def spectrum(audio):
    mag = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / SR), mag


def centroid(audio):
    freqs, mag = spectrum(audio)
    return float((freqs * mag ** 2).sum() / (mag ** 2).sum())


def band_ratio(audio, high, low):
    """Energy in the ``high`` band (Hz) over energy in the ``low`` band."""
    freqs, mag = spectrum(audio)
    return float((mag[(freqs > high[0]) & (freqs < high[1])] ** 2).sum()
                 / (mag[(freqs > low[0]) & (freqs < low[1])] ** 2).sum())


def test_examples_are_made_from_their_seed_alone():
    a, b = list(lyrics_set(3, seed=7)), list(lyrics_set(5, seed=7))
    assert [e.text for e in a] == [e.text for e in b[:3]]
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b))
    assert len({e.text for e in lyrics_set(6, seed=1)}) == 6


def test_text_syllables_chars_and_timings_agree():
    for e in lyrics_set(8, seed=3, sample_rate=SR):
        assert len(e.syllables) == len(e.starts) == len(e.ends) == len(e.chars) == len(e.pitches) >= 2
        assert [e.text[a:b] for a, b in e.chars] == e.syllables
        assert set(e.syllables) <= set(SYLLABLES)
        assert e.text.replace(" ", "") == "".join(e.syllables)
        assert (e.ends > e.starts).all() and (e.ends[:-1] <= e.starts[1:]).all() and e.starts[0] == 0
        assert len(e.audio) / SR > e.ends[-1] and e.audio.dtype == np.float32 and np.abs(e.audio).max() <= 1
        # the voice sounds during the syllables and the line is quieter after the last one (accompaniment only)
        sung = e.audio[: int(e.ends[-1] * SR)]
        tail = e.audio[int((e.ends[-1] + 0.02) * SR):]
        assert np.sqrt(np.mean(sung ** 2)) > 3 * np.sqrt(np.mean(tail ** 2))


def test_a_few_dozen_syllables_make_the_words():
    assert 30 <= len(SYLLABLES) <= 50 and len(set(SYLLABLES)) == len(SYLLABLES)
    rng = np.random.default_rng(0)
    lines = [make_line(rng) for _ in range(50)]
    assert all(2 <= len(line) <= 4 and all(1 <= len(word) <= 3 for word in line) for line in lines)
    text, syllables, chars = layout([["ta", "ki"], ["su"]])
    assert text == "taki su" and chars.tolist() == [[0, 2], [2, 4], [5, 7]]


@pytest.mark.parametrize("pitch", [50, 57, 64])
def test_each_syllable_is_sung_on_its_note(pitch):
    audio = sing(["la"], [pitch], [0.0], [0.6], SR)
    vowel = audio[int(0.2 * SR): int(0.5 * SR)]
    freqs, mag = spectrum(vowel)
    f0 = 440 * 2 ** ((pitch - 69) / 12)
    strong = freqs[(mag > 0.2 * mag.max()) & (freqs < 2000)]
    k = np.round(strong / f0)
    assert (np.abs(strong - k * f0) <= 0.01 * k * f0 + 12).all()  # every strong partial is a harmonic (+- vibrato)
    assert mag[np.abs(freqs - f0) < 0.03 * f0].max() > 0.05 * mag.max()  # and the fundamental is there


def test_vowels_and_consonants_sound_different():
    def vowel_part(syllable):
        return sing([syllable], [55], [0.0], [0.6], SR)[int(0.2 * SR): int(0.5 * SR)]

    # F2 of i (2290 Hz) is far above that of u (870 Hz)
    assert band_ratio(vowel_part("li"), (1800, 2800), (600, 1100)) > 100 * band_ratio(vowel_part("lu"), (1800, 2800),
                                                                                       (600, 1100))
    hiss = sing(["sa"], [55], [0.0], [0.6], SR)
    assert centroid(hiss[: int(0.06 * SR)]) > 3000 > centroid(hiss[int(0.2 * SR): int(0.5 * SR)])
    plosive = sing(["ta"], [55], [0.0], [0.6], SR)
    assert np.abs(plosive[: int(0.02 * SR)]).max() < 0.01  # the closure before the burst is silent


def test_melodies_stay_in_the_voice_and_end_on_the_tonic():
    rng = np.random.default_rng(0)
    for voice in ("low", "high"):
        pitches, onsets, durations, tonic = simple_melody(9, rng, voice)
        assert (pitches[-1] - tonic) % 12 == 0
        assert pitches.min() >= tonic and pitches.max() <= tonic + 14
        assert (np.diff(onsets) > 0).all() and (durations > 0).all()
        assert (onsets[1:] >= onsets[:-1] + durations[:-1]).all()
    assert lyrics_example(5, voice="high").voice == "high"
