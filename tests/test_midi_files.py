"""MIDI files read safely: every cut or garbled file is refused with the same verdict every time, the reader never
takes its caller down, a partially readable file is never taken for a whole one, and a corpus build over a folder of
damaged files skips and counts the same files every run."""

import numpy as np
import pytest

from muse_fixtures import CASES, midi_bytes, silent_midi
from nexttoken.errors import UserError
from nexttoken.midi import smf
from nexttoken.midi.corpus import load_corpus
from nexttoken.midi.notes import FAMILIES, PROGRAM_FAMILY, DRUMS, parse_midi, read_midi_files, read_user_midi

SOURCES = [*CASES, "scales-0", "chords-1"]


@pytest.fixture(scope="module")
def music21_file(tmp_path_factory) -> bytes:
    """A file music21's own writer made (running status, several tracks, its meta events), as the corpus has them."""
    import warnings

    from music21 import note, stream

    warnings.simplefilter("ignore")
    score = stream.Score()
    for part_pitches in ([60, 62, 64, 65, 67], [48, 55, 48, 55, 48]):
        part = stream.Part()
        for p in part_pitches:
            part.append(note.Note(p, quarterLength=1))
        score.insert(0, part)
    path = tmp_path_factory.mktemp("m21") / "two-parts.mid"
    score.write("midi", fp=str(path))
    return path.read_bytes()


def verdict(data: bytes) -> str:
    try:
        return f"ok {smf.check(data)}"
    except UserError as e:
        return str(e)


def test_every_cut_of_a_real_file_is_refused_and_the_whole_file_is_read(music21_file):
    for data in [midi_bytes(name) for name in SOURCES] + [music21_file]:
        assert verdict(data).startswith("ok") and len(parse_midi(data)) > 0
        for cut in range(len(data)):
            first = verdict(data[:cut])
            assert not first.startswith("ok"), (cut, len(data))  # a partial file is never taken for a whole one
            assert verdict(data[:cut]) == first


def test_random_bytes_and_mutations_give_one_verdict_and_never_crash_the_caller(tmp_path, music21_file):
    rng = np.random.default_rng(0)
    header = b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0"
    files = []
    for k in range(40):  # random bytes behind a valid header, in a track of a declared (often wrong) length
        body = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        declared = len(body) if k % 2 else int(rng.integers(0, 400))
        files.append(header + b"MTrk" + declared.to_bytes(4, "big") + body)
    sources = [midi_bytes(name) for name in SOURCES] + [music21_file]
    for k in range(60):  # real files with a few bytes changed
        data = bytearray(sources[k % len(sources)])
        for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        files.append(bytes(data))
    paths = []
    for k, data in enumerate(files):
        paths.append(tmp_path / f"f{k:03d}.mid")
        paths[-1].write_bytes(data)
    first = read_midi_files(paths, jobs=2)
    again = read_midi_files(paths, jobs=2)
    for path, data, a, b in zip(paths, files, first, again):
        assert a.ok == b.ok and a.error == b.error
        assert a.ok == verdict(data).startswith("ok")  # what the structure check refuses never reaches the parser
        assert a.ok or str(path) in a.error and "crashed" not in a.error and "timed out" not in a.error
        if a.ok:
            assert all(np.array_equal(getattr(a.value, f), getattr(b.value, f)) for f in ("start", "pitch", "family"))
    assert sum(o.ok for o in first) >= 5  # some mutations leave a readable file (a changed pitch or velocity)


def test_a_corpus_build_over_damaged_files_skips_and_counts_the_same_files_every_run(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "midi" / "mixed"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k, name in enumerate(SOURCES):
        data = midi_bytes(name)
        (folder / f"good-{k}.mid").write_bytes(data)
        (folder / f"cut-{k}.mid").write_bytes(data[: int(rng.integers(1, len(data)))])
    (folder / "silent.mid").write_bytes(silent_midi())
    (folder / "empty.mid").write_bytes(b"")
    results = []
    for attempt in range(3):  # a fresh cache each time: every file read again
        monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / f"cache-{attempt}"))
        corpus = load_corpus(str(tmp_path / "midi"))
        results.append((corpus.skipped, corpus.ids, capsys.readouterr().err.count("skipped")))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == len(SOURCES) + 2 and sorted(results[0][1]) == sorted(f"mixed/good-{k}.mid"
                                                                               for k in range(len(SOURCES)))


def test_a_user_file_is_read_in_a_worker_and_refused_with_one_reason(tmp_path):
    good, silent, cut = tmp_path / "good.mid", tmp_path / "silent.mid", tmp_path / "cut.mid"
    good.write_bytes(midi_bytes("several_instruments"))
    silent.write_bytes(silent_midi())
    cut.write_bytes(midi_bytes("several_instruments")[:100])
    assert len(read_user_midi(good)) == 7
    with pytest.raises(UserError, match="silent.mid: the MIDI file holds no notes"):
        read_user_midi(silent)
    with pytest.raises(UserError, match=r"cut.mid: not a readable MIDI file \(truncated: track"):
        read_user_midi(cut)
    with pytest.raises(UserError, match="is a folder, not a MIDI file"):
        read_user_midi(tmp_path)


@pytest.mark.parametrize("data, reason", [
    (b"RIFF....", "it does not start with MThd, as a MIDI file does"),
    (b"MThd\x00\x00\x00\x08\x00\x00\x00\x01\x01\xe0\x00\x00", "a header of 8 bytes"),
    (b"MThd\x00\x00\x00\x06\x00\x03\x00\x01\x01\xe0", "MIDI format 3"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0", "declares no tracks"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\xe7\x28", "SMPTE"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00\x00", "0 ticks per quarter note"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\x3c\x40\x00", "a data byte at byte"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x08\x00\x90\x3c\xc0\x00\xff\x2f\x00",
     "a data byte above 127"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x08\x00\xff\x51\x02\x07\xa1\x00\x00",
     "a meta event 0x51 of 2 bytes"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x0b\x00\xff\x51\x03\x00\x00\x00\x00\xff\x2f\x00",
     "a tempo of 0"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\x90\x3c\x40", "no End-of-Track"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x08\x00\xff\x2f\x00\x00\xf7\x01\x00",
     None),  # what follows End-of-Track is not part of the track
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x06\x00\xf7\x01\x00\x00\x00", "a 0xf7 event"),
    (b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x06\x8f\x8f\x8f\x8f\x8f\x00",
     "longer than 4 bytes"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
     "ends after 1 of the 2 tracks"),
])
def test_the_structure_check_names_what_is_wrong(data, reason):
    if reason is None:
        assert smf.check(data).tracks == 1
    else:
        with pytest.raises(UserError, match=reason):
            smf.check(data)


def test_program_families_cover_general_midi():
    assert len(PROGRAM_FAMILY) == 128 and set(PROGRAM_FAMILY.tolist()) == set(range(len(FAMILIES))) - {DRUMS}
    assert FAMILIES[PROGRAM_FAMILY[0]] == "piano" and FAMILIES[PROGRAM_FAMILY[40]] == "strings"
    assert FAMILIES[PROGRAM_FAMILY[52]] == "voice" and FAMILIES[PROGRAM_FAMILY[73]] == "winds"
