"""Where the priors' data comes from and how it is judged: the corpus rendered to labelled clips, the sung lines with
their timings, segments encoded once and cached, the alignment measure on hand-made attention, and the artist
classifier on sounds that differ."""

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nexttoken.errors import UserError
from nexttoken.jukebox import alignment
from nexttoken.jukebox.codes import CodeSet, encode_clips, segments_of
from nexttoken.jukebox.data import (DataConfig, corpus_clips, load_data, lyrics_clips, merge, render_corpus, resolved,
                                    select)
from nexttoken.jukebox.fidelity import features, fit_artist_classifier, recognition
from nexttoken.jukebox.prior import Prior, PriorConfig
from nexttoken.jukebox.vqvae import PRESETS, VQVAE


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))


def fake_corpus():
    """Two composers with two pieces each: a piano scale (3 s) and a choir's long chords (5 s)."""
    from nexttoken.midi.corpus import Corpus
    from nexttoken.midi.notes import FAMILIES

    parts, labels = [], []
    for label, family, n, length in (("scales", "piano", 12, 0.25), ("choir", "voice", 5, 1.0)):
        for k in range(2):
            start = np.arange(n) * length
            parts.append(dict(start=start, end=start + length * 0.9, pitch=np.full(n, 60 + k, dtype=np.int16),
                              velocity=np.full(n, 80, dtype=np.int16),
                              family=np.full(n, FAMILIES.index(family), dtype=np.int8)))
            labels.append(label)
    table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    offsets = np.cumsum([0] + [len(p["start"]) for p in parts])
    return Corpus([f"p{i}" for i in range(4)], labels, ["train", "val"] * 2, offsets, np.full(4, 120.0), table)


def test_the_corpus_is_rendered_to_clips_labelled_by_composer_and_instrument_family(monkeypatch):
    monkeypatch.setattr("nexttoken.midi.corpus.load_corpus", lambda name, jobs=2: fake_corpus())
    clips = corpus_clips(DataConfig(piece_seconds=4.0, soundfont="synth"), 8000, 4000)
    assert clips.artists() == ["choir", "scales"] and clips.genres() == ["piano", "voice"]
    assert [t.seconds for t in clips.tracks] == pytest.approx([2.975, 2.975, 4.9, 4.9])
    per_track = torch.bincount(clips.track).tolist()
    assert per_track == [6, 6, 8, 8]  # 3 s and a release tail, and 5 s cut at 4 s, in half-second clips
    assert clips.splits == ["train", "val", "train", "val"]
    again = corpus_clips(DataConfig(piece_seconds=4.0, pieces=1, soundfont="synth"), 8000, 4000)  # the cache's
    assert len(again.tracks) == 4 and torch.equal(again.clips, clips.clips)


def test_a_piece_the_synthesizer_cannot_render_is_skipped_and_counted_and_a_missing_renderer_is_one_error(
        monkeypatch):
    from nexttoken.errors import UserError
    from nexttoken.midi import render

    monkeypatch.setattr("nexttoken.midi.corpus.load_corpus", lambda name, jobs=2: fake_corpus())
    real = render.render

    def flaky(notes, sample_rate, soundfont=None):
        if len(notes.start) < 12 and notes.pitch[0] == 61:  # the second choir piece (the scales have 12 notes)
            raise ValueError("bad note\nmore detail")
        return real(notes, sample_rate, soundfont)

    monkeypatch.setattr(render, "render", flaky)
    clips = corpus_clips(DataConfig(piece_seconds=4.0, soundfont="synth"), 8000, 4000)
    assert clips.skipped == [("p3", "not rendered (ValueError: bad note)")]
    assert torch.bincount(clips.track).tolist() == [6, 6, 8]
    assert corpus_clips(DataConfig(piece_seconds=4.0, soundfont="synth"), 8000, 4000).skipped == clips.skipped

    monkeypatch.setitem(sys.modules, "symusic", None)  # a soundfont chosen, and nothing to render it with
    with pytest.raises(UserError, match="symusic is not installed.*--soundfont synth"):
        render_corpus(fake_corpus(), DataConfig(piece_seconds=3.0), 8000, 4000, Path("some.sf2"))


def test_a_renderer_that_crashes_costs_the_piece_not_the_process(monkeypatch):
    import os
    import signal

    from nexttoken.midi import render

    monkeypatch.setattr("nexttoken.midi.corpus.load_corpus", lambda name, jobs=2: fake_corpus())
    real = render.render

    def crashing(notes, sample_rate, soundfont=None):
        if notes.pitch[0] == 61 and len(notes.start) == 12:  # the second scale
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(notes, sample_rate, soundfont)

    monkeypatch.setattr(render, "render", crashing)
    clips = corpus_clips(DataConfig(piece_seconds=4.0, soundfont="synth"), 8000, 4000)
    assert clips.skipped == [("p1", "not rendered (crashed (SIGSEGV))")]
    assert torch.bincount(clips.track, minlength=4).tolist() == [6, 0, 8, 8]


def test_a_prepared_note_table_is_rendered_like_the_corpus(tmp_path):
    """A note table that travelled without music21 (``muse prepare`` prints its path) gives the same clips as the
    corpus it came from, cached under its content rather than its path."""
    table = tmp_path / "table"
    table.mkdir()
    fake_corpus().save(table)
    cfg = DataConfig(audio=str(table), piece_seconds=4.0, soundfont="synth")
    clips = load_data(replace(cfg, lyrics_lines=0), 8000, 4000)
    assert clips.artists() == ["choir", "scales"] and torch.bincount(clips.track).tolist() == [6, 6, 8, 8]
    assert resolved(cfg).soundfont == "synth" and resolved(replace(cfg, soundfont="")).soundfont != ""
    moved = tmp_path / "moved"
    table.rename(moved)
    again = load_data(replace(cfg, audio=str(moved), lyrics_lines=0), 8000, 4000)
    assert torch.equal(again.clips, clips.clips)
    assert len(list((tmp_path / "cache" / "jukebox" / "corpus").iterdir())) == 1


def test_a_new_pipeline_writes_down_the_renderer_it_chose(tmp_path):
    from pathlib import Path

    chosen = resolved(DataConfig()).soundfont
    assert chosen == "synth" or Path(chosen).is_file()
    assert resolved(DataConfig(soundfont="synth")).soundfont == "synth"
    assert resolved(DataConfig(audio=str(tmp_path))).soundfont == ""  # the user's audio is not rendered


def test_your_own_audio_comes_without_the_sung_lines_unless_asked_and_the_corpus_keeps_them(tmp_path):
    """The sung lines would be most of a small folder's clips (200 lines beside six tunes), and docs/jukebox.md says
    --audio takes the user's files instead of the embedded data; a note table is rendered like the corpus."""
    from jukebox_fixtures import audio_folder

    folder = str(audio_folder(tmp_path / "audio"))
    assert load_data(DataConfig(audio=folder), 8000, 2048).artists() == ["alice", "bob"]
    asked = load_data(DataConfig(audio=folder, lyrics_lines=2), 8000, 2048).artists()
    assert "alice" in asked and set(asked) - {"alice", "bob"} <= {"low_voice", "high_voice"} and len(asked) > 2
    assert resolved(DataConfig(audio=folder)).lyrics_lines == 0  # what the pipeline saves
    assert resolved(DataConfig(audio=folder, lyrics_lines=3)).lyrics_lines == 3
    table = tmp_path / "table"
    table.mkdir()
    fake_corpus().save(table)
    for audio in ("music21-small", str(table)):
        assert resolved(DataConfig(audio=audio, soundfont="synth")).lyrics_lines == 200
    assert resolved(DataConfig(audio=str(table), soundfont="synth", lyrics_lines=0)).lyrics_lines == 0


def test_audio_typed_as_a_relative_path_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audio").mkdir()
    assert resolved(DataConfig(audio="audio")).audio == str(tmp_path.resolve() / "audio")
    assert resolved(DataConfig(audio="music21-small", soundfont="synth")).audio == "music21-small"


def test_artists_are_kept_by_the_folder_names_the_user_typed(tmp_path, capsys):
    """A folder 'Artist One' is the artist artist_one (``label_of``); --artists 'Artist One' names it."""
    from jukebox_fixtures import audio_folder

    root = audio_folder(tmp_path / "audio")
    (root / "bob").rename(root / "Artist One")
    clips = load_data(DataConfig(audio=str(root), artists=["Artist One"]), 8000, 2048)
    assert clips.artists() == ["artist_one"]
    assert load_data(DataConfig(audio=str(root), artists=["ALICE", "artist_one"]), 8000, 2048).artists() == \
        ["alice", "artist_one"]
    with pytest.raises(UserError, match="--artists Nobody Here: not in"):
        load_data(DataConfig(audio=str(root), artists=["Alice", "Nobody Here"]), 8000, 2048)


def test_sung_lines_keep_their_words_and_timings_and_merge_with_other_audio():
    lines = lyrics_clips(6, 8000, 2048, val_fraction=0.34)
    assert set(lines.artists()) <= {"low_voice", "high_voice"} and lines.genres() == ["song"]
    for t in lines.tracks:
        timing = lines.timings[t.id]
        assert len(timing["starts"]) == len(timing["chars"]) and max(timing["ends"]) < t.seconds
        assert all(t.lyrics[a:b].isalpha() for a, b in timing["chars"])
    assert "val" in lines.splits
    both = merge(lines, lyrics_clips(2, 8000, 2048, seed=1))
    assert len(both.tracks) == 8 and int(both.track.max()) == 7 and len(both.timings) == 8
    only = select(both, [t.artist == "low_voice" for t in both.tracks])
    assert only.artists() == ["low_voice"] and set(only.timings) == {t.id for t in only.tracks}
    assert all(only.tracks[int(i)].artist == "low_voice" for i in only.track)


FAKE_ESPEAK = """#!{python}
import io, json, sys
import numpy as np, soundfile
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
pitch = int(args[args.index("-p") + 1])
t = np.arange(int(0.05 * 22050)) / 22050
tone = np.concatenate([np.zeros(2205), 0.5 * np.sin(2 * np.pi * (100 + pitch) * t).repeat(6), np.zeros(2205)])
buf = io.BytesIO()
soundfile.write(buf, tone.astype(np.float32), 22050, format="WAV", subtype="PCM_16")
sys.stdout.buffer.write(buf.getvalue())
"""


@pytest.fixture
def fake_espeak(tmp_path, monkeypatch):
    """An espeak-ng on the PATH that speaks every syllable as 0.3 s of a tone whose pitch follows -p, between 0.1 s of
    silence, and logs its arguments."""
    from nexttoken.jukebox import espeak

    bin_dir, log = tmp_path / "bin", tmp_path / "espeak.log"
    bin_dir.mkdir()
    program = bin_dir / "espeak-ng"
    program.write_text(FAKE_ESPEAK.format(python=sys.executable, log=str(log)))
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    espeak.spoken.cache_clear()
    yield log
    espeak.spoken.cache_clear()


def test_espeak_speaks_each_syllable_on_its_note_and_keeps_when_it_sounds(fake_espeak):
    from nexttoken.jukebox.lyrics import lyrics_example

    ex = lyrics_example(3, 8000, voice="espeak")
    calls = [json.loads(line) for line in fake_espeak.read_text().splitlines()]
    assert {c[c.index("-v") + 1] for c in calls} == {"es"}
    # every syllable spoken at the espeak pitch of its note: 4 steps a semitone above the tune's lowest note
    spoken_at = {(c[-1], int(c[c.index("-p") + 1])) for c in calls}
    assert spoken_at == {(syl, 30 + 4 * int(p - ex.pitches.min())) for syl, p in zip(ex.syllables, ex.pitches)}
    # each syllable sounds from its note's onset for the tone's 0.3 s, or less where its note is shorter
    notes = ex.ends - ex.starts
    assert np.all(notes < 0.31) and np.all(notes > 0.1)
    for a, b in zip(ex.starts, ex.ends):
        inside = ex.audio[int(a * 8000) + 40 : int(b * 8000) - 40]
        assert np.abs(inside).max() > 0.2
    assert np.all(ex.ends[:-1] <= ex.starts[1:] + 1e-9)  # never two at once


def test_espeak_lines_are_a_voice_of_their_own_and_a_missing_espeak_is_one_error(fake_espeak, monkeypatch):
    lines = lyrics_clips(9, 8000, 2048, voices=("low", "high", "espeak"))
    assert "espeak_voice" in lines.artists()
    default = lyrics_clips(9, 8000, 2048)
    assert "espeak_voice" not in default.artists()  # the default set is its own, cached apart
    assert DataConfig(voices=["low", "espeak"]).validate().voices == ["low", "espeak"]
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="--voices espeak needs espeak-ng on the PATH"):
        DataConfig(voices=["espeak"]).validate()
    with pytest.raises(UserError, match="--voices takes distinct names"):
        DataConfig(voices=["low", "low"]).validate()


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed")
def test_the_real_espeak_speaks_a_syllable():
    from nexttoken.jukebox.espeak import spoken

    audio = spoken("da", 50, 120, 16000)
    assert 0.05 < len(audio) / 16000 < 1.0 and np.abs(audio).max() == pytest.approx(1.0)


def test_segments_are_runs_of_consecutive_clips_and_their_codes_are_cached(tmp_path):
    lines = lyrics_clips(3, 8000, 2048)
    keep = torch.ones(len(lines), dtype=torch.bool)
    keep[1] = False  # a gap in the first line: two segments
    lines.clips, lines.track, lines.start = lines.clips[keep], lines.track[keep], lines.start[keep]
    runs = segments_of(lines)
    assert len(runs) == 4 and runs[0].tolist() == [0]
    vqvae = VQVAE(PRESETS["tiny"])
    codes = encode_clips(vqvae, lines, step=7, progress=False)
    for i, hop in enumerate((8, 32, 128)):
        lengths = [len(codes.segment(i, s)) for s in range(4)]
        assert lengths == [len(r) * 2048 // hop for r in runs]
    codes.save(tmp_path / "codes.safetensors")
    back = CodeSet.load(tmp_path / "codes.safetensors")
    assert back.step == 7 and back.tracks == codes.tracks and all(torch.equal(a, b) for a, b in
                                                                  zip(back.codes, codes.codes))


def hand_made_codes(val_change: float = 0.5) -> CodeSet:
    """One sung line per split: 'da ki' with 'da' sung from 0 s and 'ki' from 0.5 s (in the held-out line from
    ``val_change``) to 1 s; 10 top codes of 0.128 s each."""
    tracks = [{"id": f"l{i}", "artist": "v", "genre": "song", "lyrics": "da ki", "seconds": 1.28, "split": split}
              for i, split in enumerate(("train", "val"))]
    timings = {f"l{i}": {"starts": [0.0, change], "ends": [change, 1.0], "chars": [[0, 2], [3, 5]]}
               for i, change in enumerate((0.5, val_change))}
    return CodeSet(("top",), (128,), 8, 1000, [torch.randint(8, (20,))], [torch.tensor([0, 10, 20])],
                   torch.tensor([0, 1]), torch.tensor([0, 0]), tracks, ["v"], ["song"], timings)


def test_the_alignment_measure_counts_attention_on_the_syllable_being_sung(monkeypatch):
    cfg = PriorConfig(level="top", context=16, n_layer=1, n_head=2, n_embd=16, lyrics_width=8, lyrics_layers=1,
                      cross_every=1, codebook_size=8, artists=["v"], genres=["song"], hop=128, sample_rate=1000,
                      max_seconds=2.0)
    prior = Prior(cfg.validate()).eval()

    def attention(prior, batch):  # head 0 looks at the held-out line's sung syllable's first letter, head 1 at the
        seconds = batch["seconds"]  # start id
        B, T = seconds.shape
        right = torch.where(seconds < 0.3, 1, 4)  # memory index: the start id, then the text's characters
        pattern = torch.zeros(1, B, 2, T, 6)
        pattern[0, :, 0].scatter_(-1, right[..., None], 1.0)
        pattern[0, :, 1, :, 0] = 1.0
        return pattern

    monkeypatch.setattr(alignment, "cross_patterns", attention)
    score = alignment.alignment_score(prior, hand_made_codes(val_change=0.3))
    assert (score.layer, score.head, score.accuracy, score.mean_accuracy) == (0, 0, 1.0, 0.5)  # 7 of 8 in training
    assert score.positions == 8 and score.lines == 1  # codes starting at 0 ... 0.896 s lie inside a syllable
    assert score.chance == pytest.approx(2 / 6)
    # the heuristic's characters at 0.384 and 0.512 s are 'a' and the space; the clock learnt 'da' until 0.5 s from
    # the training line, so it misses 0.384 s, where head 0 finds 'ki'
    assert score.linear == pytest.approx(6 / 8) and score.clock == pytest.approx(7 / 8)
    assert score.off_clock == 1.0 and score.off_clock_chance == pytest.approx(2 / 6)


def test_the_timing_clock_guesses_the_syllable_most_often_sung_at_each_fraction_of_a_line():
    clock = alignment.TimingClock(hand_made_codes(), buckets=10)
    assert clock(np.array([0.05, 0.45, 0.55, 0.95]), 2).tolist() == [0, 0, 1, 1]
    assert clock(np.array([0.1, 0.5]), 4).tolist() == [0, 2]  # no 4-syllable line seen: an even spread


def test_lyrics_bits_reads_each_held_out_line_with_its_own_words_and_with_the_next_lines():
    cfg = PriorConfig(level="top", context=16, n_layer=1, n_head=2, n_embd=16, lyrics_width=8, lyrics_layers=1,
                      cross_every=1, codebook_size=8, artists=["v"], genres=["song"], hop=128, sample_rate=1000,
                      max_seconds=2.0)
    torch.manual_seed(0)
    prior = Prior(cfg.validate()).eval()
    codes = hand_made_codes()
    codes.tracks[0]["split"] = "val"  # two held-out lines, both 'da ki'
    own, swapped = alignment.lyrics_bits(prior, codes)
    assert own == pytest.approx(swapped) and own > 0  # the same words either way
    codes.tracks[1]["lyrics"] = "mo su ra"
    own_b, swapped_b = alignment.lyrics_bits(prior, codes)
    assert own_b != pytest.approx(swapped_b)  # now each line is also read with the other's words
    assert own_b != pytest.approx(own)


def test_the_artist_classifier_tells_sounds_apart_and_recognition_counts_the_asked_artist():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 8000

    def clip(kind):
        if kind == "tone":
            return np.sin(2 * np.pi * rng.uniform(200, 400) * t) * 0.5
        return rng.standard_normal(16000) * 0.2

    kinds = ["tone", "hiss"] * 8
    audio = torch.tensor(np.stack([clip(k) for k in kinds]), dtype=torch.float32)
    x = features(audio, 8000)
    assert x.shape == (16, 2, 128)  # two seconds each
    classifier = fit_artist_classifier(x[:10], kinds[:10])
    result = recognition(classifier, x[10:], kinds[10:], x[10:], kinds[10:])
    assert result.accuracy == 1.0 and result.real_accuracy == 1.0 and result.chance == 0.5
    wrong = recognition(classifier, x[10:], [{"tone": "hiss", "hiss": "tone"}[k] for k in kinds[10:]], x[10:],
                        kinds[10:])
    assert wrong.accuracy == 0.0 and wrong.per_artist == {"hiss": 0.0, "tone": 0.0}
