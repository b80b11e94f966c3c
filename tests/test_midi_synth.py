"""The built-in synthesizer: length, silence, pitch, drums, determinism, every GM program."""

import math

import numpy as np
import pytest

from nexttoken.midi.synth import HEADROOM, RELEASE, synthesize

SR = 16000


def notes(*rows):
    """(onset, duration, pitch, velocity, program, is_drum) rows -> the six arrays synthesize takes."""
    cols = list(zip(*rows)) if rows else [()] * 6
    return [np.asarray(c) for c in cols]


def spectrum(audio):
    mag = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / SR), mag


def test_length_is_the_last_note_end_plus_release_or_the_requested_seconds():
    args = notes((0.0, 0.5, 60, 90, 0, False), (1.0, 0.75, 64, 90, 40, False), (0.2, 0.1, 38, 90, 0, True))
    assert len(synthesize(*args, sample_rate=SR)) == math.ceil((1.75 + RELEASE) * SR)
    assert len(synthesize(*args, sample_rate=SR, seconds=5.0)) == 5 * SR


def test_silent_input_gives_silence():
    assert len(synthesize(*notes(), sample_rate=SR)) == 0
    audio = synthesize(*notes(), sample_rate=SR, seconds=1.0)
    assert audio.shape == (SR,) and audio.dtype == np.float32 and not audio.any()


@pytest.mark.parametrize("program", [0, 11, 24, 33, 40, 56, 65, 73])  # piano ... flute: their fundamental is loudest
def test_a4_has_its_spectral_peak_at_440_hz(program):
    audio = synthesize(*notes((0.0, 1.0, 69, 100, program, False)), sample_rate=SR)
    freqs, mag = spectrum(audio)
    assert abs(freqs[np.argmax(mag)] - 440.0) < 3.0
    assert audio.dtype == np.float32 and np.abs(audio).max() == pytest.approx(HEADROOM, rel=1e-5)


def test_a_sung_a4_is_harmonic_on_440_hz():
    audio = synthesize(*notes((0.0, 1.0, 69, 100, 52, False)), sample_rate=SR)  # choir "ah"
    freqs, mag = spectrum(audio)
    strong = freqs[mag > 0.1 * mag.max()]
    harmonic = strong / 440.0
    assert (np.abs(harmonic - np.round(harmonic)) < 0.03).all()  # only at multiples of 440 Hz (vibrato spreads them)
    assert mag[np.abs(freqs - 440) < 5].max() > 0.1 * mag.max()


def test_drums_are_broadband_and_tones_are_not():
    def high_share(audio):  # fraction of the energy above 3 kHz
        freqs, mag = spectrum(audio)
        return float((mag[freqs > 3000] ** 2).sum() / (mag ** 2).sum())

    piano = synthesize(*notes((0.0, 0.5, 60, 100, 0, False)), sample_rate=SR)
    hat = synthesize(*notes((0.0, 0.3, 42, 100, 0, True)), sample_rate=SR)
    snare = synthesize(*notes((0.0, 0.3, 38, 100, 0, True)), sample_rate=SR)
    kick = synthesize(*notes((0.0, 0.3, 36, 100, 0, True)), sample_rate=SR)
    assert high_share(piano) < 0.01
    assert high_share(hat) > 0.5 and high_share(snare) > 0.2
    freqs, mag = spectrum(kick)
    assert freqs[np.argmax(mag)] < 150  # the kick is a low thump


def test_output_is_deterministic_and_the_seed_only_changes_drum_noise():
    args = notes((0.0, 0.4, 60, 80, 0, False), (0.1, 0.2, 38, 100, 0, True), (0.3, 0.5, 67, 70, 48, False))
    a, b = synthesize(*args, sample_rate=SR), synthesize(*args, sample_rate=SR)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthesize(*args, sample_rate=SR, seed=1))
    tones = [np.asarray(c)[[0, 2]] for c in args]
    assert np.array_equal(synthesize(*tones, sample_rate=SR), synthesize(*tones, sample_rate=SR, seed=1))


def test_every_program_and_extreme_pitches_render_finite_audio():
    rows = [(0.05 * p, 0.3, 60, 100, p, False) for p in range(128)]
    rows += [(0.0, 0.3, 127, 100, 0, False), (0.0, 0.3, 0, 100, 40, False), (0.0, 0.1, 81, 127, 0, True)]
    audio = synthesize(*notes(*rows), sample_rate=SR)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    for p in range(128):  # every program makes a sound of its own
        one = synthesize(*notes((0.0, 0.3, 60, 100, p, False)), sample_rate=SR)
        assert np.abs(one).max() > 0.5


def test_bad_notes_are_refused():
    with pytest.raises(ValueError, match="one entry per note"):
        synthesize([0.0], [1.0], [60, 62], [90], [0], [False])
    with pytest.raises(ValueError, match="non-negative"):
        synthesize(*notes((-1.0, 1.0, 60, 90, 0, False)))
    with pytest.raises(ValueError, match="0-127"):
        synthesize(*notes((0.0, 1.0, 60, 90, 128, False)))
