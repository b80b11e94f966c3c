import numpy as np
import pytest

from muse_fixtures import CASES, case_score
from nexttoken.errors import UserError
from nexttoken.midi.notes import DRUMS, Notes, notes_from_score, read_midi, write_midi
from nexttoken.muse.data import Augment
from nexttoken.muse.encoding import QUANTUM, MuseNetEncoding, Vocab, decode, encode, token_times, velocity_levels
from nexttoken.muse.miditok_encoding import MidiTokEncoding

VOCAB = Vocab(["bach", "unknown"])


def roundtrip(notes, tmp_path):
    """MIDI -> tokens -> MIDI file -> notes, through real files."""
    ids = encode(notes, VOCAB, "bach")
    return read_midi(write_midi(decode(ids, VOCAB), tmp_path / "back.mid")), ids


def assert_same_notes(a, b, nested_ok=False):
    """Every note kept: pitch exact, onset/offset within one quantum, velocity within its level, family mapped."""
    assert len(a) == len(b)
    ka = np.lexsort((a.end, a.start, a.pitch, a.family))
    kb = np.lexsort((b.end, b.start, b.pitch, b.family))
    a, b = a.take(ka), b.take(kb)
    assert np.array_equal(a.family, b.family)
    assert np.array_equal(a.pitch, b.pitch)
    assert np.abs(a.start - b.start).max() <= QUANTUM + 1e-3
    melodic = a.family != DRUMS
    if nested_ok:  # same-pitch overlaps pair first-in-first-out: the set of offsets survives
        assert np.allclose(np.sort(a.end[melodic]), np.sort(b.end[melodic]), atol=QUANTUM + 1e-3)
    else:
        assert np.abs(a.end[melodic] - b.end[melodic]).max(initial=0) <= QUANTUM + 1e-3
    for f in np.unique(a.family):
        sel = a.family == f
        half_bin = (128 // len(velocity_levels(f))) // 2
        assert np.abs(a.velocity[sel].astype(int) - b.velocity[sel]).max() <= half_bin


@pytest.mark.parametrize("case", [c for c in CASES if c != "extreme_pitches"])
def test_round_trip_keeps_every_note(case, tmp_path):
    path = tmp_path / "in.mid"
    case_score(case).dump_midi(str(path))
    original = read_midi(path)
    back, _ = roundtrip(original, tmp_path)
    assert_same_notes(original, back, nested_ok=case == "nested_same_pitch")


def test_round_trip_extreme_pitches_and_sub_quantum_notes(tmp_path):
    path = tmp_path / "in.mid"
    case_score("extreme_pitches").dump_midi(str(path))
    original = read_midi(path)
    back, _ = roundtrip(original, tmp_path)
    assert sorted(back.pitch.tolist()) == [0, 64, 127]
    short = back.pitch == 64
    assert back.end[short] - back.start[short] == pytest.approx(QUANTUM, abs=2e-3)  # lasts one quantum


def test_tempo_changes_keep_seconds(tmp_path):
    path = tmp_path / "in.mid"
    case_score("tempo_changes").dump_midi(str(path))
    notes = read_midi(path)
    # beats 0-1 at 120 bpm (0.5 s each), 2-3 at 60 bpm (1 s), then 200 bpm (0.3 s)
    assert notes.start[:5].tolist() == pytest.approx([0, 0.5, 1.0, 2.0, 3.0], abs=1e-3)
    back, _ = roundtrip(notes, tmp_path)
    assert np.abs(back.start - notes.start).max() <= QUANTUM


def test_long_silence_is_several_waits():
    notes = notes_from_score(case_score("long_silence"))
    tokens = VOCAB.to_strings(encode(notes, VOCAB))
    waits = [int(t[5:]) for t in tokens if t.startswith("wait:")]
    assert max(waits) == 128 and len(waits) > 10
    assert sum(waits) * QUANTUM == pytest.approx(notes.seconds, abs=QUANTUM)


def test_header_then_events_then_end():
    notes = notes_from_score(case_score("several_instruments"))
    tokens = VOCAB.to_strings(encode(notes, VOCAB, "bach"))
    # violin (40) and cello (42) are both strings; choir aahs (52) is voice
    assert tokens[:7] == ["composer:bach", "inst:piano", "inst:strings", "inst:voice", "inst:brass", "inst:winds",
                          "start"]
    assert tokens[7] == "tempo:120" and tokens[-1] == "end"
    assert not any(t.startswith(("composer:", "inst:", "tempo:")) or t == "start" for t in tokens[8:-1])


def test_one_token_per_note_on_and_readable_names():
    notes = notes_from_score(case_score("chords"))
    tokens = VOCAB.to_strings(encode(notes, VOCAB))
    assert "piano:v88:C4" in tokens and "piano:v0:C4" in tokens  # middle C, note-on and note-off
    on = [t for t in tokens if ":v" in t and ":v0:" not in t]
    assert len(on) == len(notes)


def test_drums_have_no_note_off():
    notes = notes_from_score(case_score("drums"))
    tokens = VOCAB.to_strings(encode(notes, VOCAB))
    drum = [t for t in tokens if t.startswith("drums:")]
    assert len(drum) == (notes.family == DRUMS).sum() and not any(":v0:" in t for t in drum)


def test_decode_tolerates_any_token_sequence():
    ids = np.random.default_rng(0).integers(0, len(VOCAB), 2000)
    notes = decode(ids, VOCAB)
    assert len(notes) > 0 and (notes.end > notes.start).all()


def test_unknown_token_and_missing_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown token"):
        VOCAB.from_strings(["piano:v72:H4"])
    with pytest.raises(UserError, match="no such file"):
        read_midi(tmp_path / "missing.mid")
    (tmp_path / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    with pytest.raises(UserError, match="not a readable MIDI file"):
        read_midi(tmp_path / "corrupt.mid")


def test_vocab_limited_to_families_rejects_others():
    small = Vocab(["bach"], ["piano"])
    assert len(small) < len(VOCAB) / 4
    assert small.inst_id("strings") >= 0  # every instrument can still be requested
    with pytest.raises(UserError, match="not in this vocabulary"):
        encode(notes_from_score(case_score("several_instruments")), small)


def test_timing_features_are_shared_by_simultaneous_tokens():
    notes = notes_from_score(case_score("chords"))
    ids = encode(notes, VOCAB, "bach")
    t = token_times(ids, VOCAB)
    tokens = VOCAB.to_strings(ids)
    first_wait = tokens.index("wait:50")
    assert set(t.quanta[:first_wait + 1].tolist()) == {0}  # the chord and the wait after it: time 0
    assert t.quanta[first_wait + 1] == 50 and t.chord_index[first_wait + 1] == 0
    assert t.chord_index[first_wait - 1] > 0


def test_musenet_needs_fewer_tokens_per_note_than_midilike(bach_chorales):
    ours = MuseNetEncoding(["bach"])
    theirs = MidiTokEncoding(["bach"], "midilike")
    n = sum(len(x) for x in bach_chorales)
    ours_tpn = sum(len(ours.encode(x, "bach").ids) for x in bach_chorales) / n
    theirs_tpn = sum(len(theirs.encode(x, "bach").ids) for x in bach_chorales) / n
    assert ours_tpn <= 2.5, ours_tpn  # the target on multi-voice music
    assert theirs_tpn > 2 * ours_tpn


def test_miditok_encoding_round_trip_keeps_the_notes(bach_chorales):
    enc = MidiTokEncoding(["bach"], "remi")
    notes = bach_chorales[0]
    e = enc.encode(notes, "bach")
    assert e.ids[0] == enc.composer_id("bach") and e.n_header == 1
    back = enc.decode(e.ids)
    assert len(back) == len(notes) and sorted(back.pitch.tolist()) == sorted(notes.pitch.tolist())


@pytest.fixture(scope="module")
def bach_chorales(tmp_path_factory):
    """Three real chorales from the music21 corpus, converted by the corpus worker."""
    from nexttoken.midi.music21_corpus import convert_source

    out = tmp_path_factory.mktemp("chorales")
    notes = []
    for rel in ("bach/bwv10.7.mxl", "bach/bwv102.7.mxl", "bach/bwv103.6.mxl"):
        record = convert_source(rel, "bach", str(out))
        assert not record["errors"], record
        notes += [read_midi(out / name) for _, _, name in record["pieces"]]
    return notes


def test_a_melody_encodes_to_the_documented_tokens_and_back():
    """Two piano notes, then one of them again at 120 bpm: the exact token stream of the module docstring's scheme."""
    notes = Notes(np.array([0.0, 0.5, 0.5]), np.array([0.5, 1.0, 1.25]), np.array([60, 64, 60]),
                  np.array([72, 100, 30]), np.zeros(3, dtype=np.int8), tempo=117.0)
    vocab = Vocab(["bach"], ["piano"])
    ids = encode(notes, vocab, "bach")
    assert vocab.to_strings(ids) == ["composer:bach", "inst:piano", "start", "tempo:120", "piano:v72:C4",
                                     "wait:50", "piano:v0:C4", "piano:v24:C4", "piano:v104:E4", "wait:50",
                                     "piano:v0:E4", "wait:25", "piano:v0:C4", "end"]
    back = decode(ids, vocab)
    assert back.start.tolist() == [0.0, 0.5, 0.5] and back.end.tolist() == [0.5, 1.25, 1.0]
    assert back.pitch.tolist() == [60, 60, 64] and back.velocity.tolist() == [72, 24, 104] and back.tempo == 120.0


def test_augmentation_transposes_stretches_and_spares_drums():
    from muse_fixtures import case_score

    notes = notes_from_score(case_score("drums"))
    out = Augment(transpose=5, stretch=0.2, velocity=10)(notes, np.random.default_rng(3))
    drums = notes.family == DRUMS
    assert np.array_equal(out.pitch[drums], notes.pitch[drums])
    shift = set((out.pitch[~drums] - notes.pitch[~drums]).tolist())
    assert len(shift) == 1 and abs(shift.pop()) <= 5
    ratio = out.end.max() / notes.end.max()
    assert 1 / 1.2 - 1e-9 <= ratio <= 1.2 + 1e-9 and out.tempo == pytest.approx(notes.tempo / ratio)
    again = Augment(transpose=5, stretch=0.2, velocity=10)(notes, np.random.default_rng(3))
    assert np.array_equal(again.pitch, out.pitch) and np.array_equal(again.start, out.start)
