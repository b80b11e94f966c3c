"""Notes to audio: the built-in synthesizer when no soundfont is found, and a soundfont checked before it is used."""

import wave

import numpy as np
import pytest

from nexttoken.errors import UserError
from nexttoken.midi.notes import DRUMS, FAMILIES, Notes
from nexttoken.midi.render import check_soundfont, find_soundfont, render, render_wav


def two_instruments() -> Notes:
    """A piano note, a violin note and a snare hit, ending at 1.5 s."""
    family = np.array([FAMILIES.index("piano"), FAMILIES.index("strings"), DRUMS], dtype=np.int8)
    return Notes(np.array([0.0, 0.5, 1.0]), np.array([1.0, 1.5, 1.2]), np.array([60, 67, 38]),
                 np.array([90, 70, 100]), family)


def riff(*chunks: bytes) -> bytes:
    body = b"sfbk" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def listed(kind: bytes, payload: bytes = b"") -> bytes:
    return b"LIST" + (4 + len(payload)).to_bytes(4, "little") + kind + payload


def test_without_a_soundfont_the_built_in_synthesizer_plays_every_family(tmp_path):
    notes = two_instruments()
    mono = render(notes, 16000)
    assert mono.dtype == np.float32 and len(mono) == pytest.approx(16000 * 1.75, abs=2)  # + the release
    assert 0.85 < np.abs(mono).max() <= 1.0
    for start, end in ((0.1, 0.4), (0.6, 0.9), (1.3, 1.45)):  # piano alone, + violin, violin's last bar
        assert np.abs(mono[int(start * 16000) : int(end * 16000)]).max() > 0.01
    stereo = render(notes, 16000, channels=2)
    assert stereo.shape == (len(mono), 2) and np.array_equal(stereo[:, 0], mono)
    path = render_wav(notes, tmp_path / "x.wav", None, sample_rate=16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, len(mono))


def test_a_soundfont_is_checked_whole_before_it_is_used(tmp_path, monkeypatch):
    good = tmp_path / "good.sf2"
    good.write_bytes(riff(listed(b"INFO", b"ifil" + bytes(4)), listed(b"sdta"), listed(b"pdta", bytes(6))))
    check_soundfont(good)
    assert find_soundfont(good) == good
    cases = {"notes.txt": (b"hello", "is not a SoundFont 2 file"),
             "cut.sf2": (good.read_bytes()[:-7], "a truncated soundfont"),
             "partial.sf2": (riff(listed(b"INFO"), listed(b"pdta")), "no sdta chunk"),
             "overrun.sf2": (riff(b"LIST" + (999).to_bytes(4, "little") + b"INFO"), "runs past its end")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=reason):
            find_soundfont(tmp_path / name)
    with pytest.raises(UserError, match="not found"):
        find_soundfont(tmp_path / "missing.sf2")
    monkeypatch.setenv("NEXTTOKEN_SOUNDFONT", str(tmp_path / "notes.txt"))  # a wrong default is named too
    with pytest.raises(UserError, match="notes.txt is not a SoundFont 2 file"):
        find_soundfont()


def test_no_notes_render_as_an_empty_wav_with_or_without_a_soundfont(tmp_path):
    empty = Notes(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                  np.zeros(0, dtype=np.int8))
    sf = find_soundfont() or tmp_path / "never-opened.sf2"
    for soundfont, channels in ((None, 1), (sf, 2)):
        assert render(empty, 16000, soundfont, channels).shape == (0, 2)[:channels]
        with wave.open(str(render_wav(empty, tmp_path / "x.wav", soundfont, sample_rate=16000))) as w:
            assert (w.getnchannels(), w.getnframes()) == (channels, 0)
