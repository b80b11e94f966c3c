"""Reading the user's audio: formats, mono and resampling, discovery, bad files skipped with a count, the cache."""

import os
import signal

import numpy as np
import pytest
import soundfile as sf

from nexttoken.errors import UserError
from nexttoken.jukebox import audio
from nexttoken.jukebox.audio import cache_root, clip_summary, find_tracks, load_clips, read_audio

SR = 16000


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))


def tone(freq, seconds, rate, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def write_good(root):
    (root / "alice").mkdir(parents=True)
    (root / "bob").mkdir()
    left, right = tone(440, 2.5, 44100), tone(440, 2.5, 44100, amp=0.1)
    sf.write(root / "alice" / "one.wav", np.stack([left, right], axis=1), 44100)  # stereo, 44.1 kHz
    sf.write(root / "alice" / "two.flac", tone(330, 2.0, 22050), 22050)
    sf.write(root / "bob" / "three.ogg", tone(220, 3.2, 16000), 16000)


def test_read_audio_mixes_to_mono_and_resamples_keeping_the_pitch(tmp_path):
    write_good(tmp_path)
    x = read_audio(tmp_path / "alice" / "one.wav", SR)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 2.5 * SR) <= 1
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * SR / len(x) - 440) < 1
    assert np.abs(x).max() == pytest.approx(0.3, abs=0.01)  # the average of the two channels
    with pytest.raises(UserError, match="missing.wav: no such file"):
        read_audio(tmp_path / "missing.wav", SR)


def test_a_folder_gives_clips_labelled_by_sub_folder(tmp_path):
    write_good(tmp_path / "music")
    clips = load_clips(tmp_path / "music", SR, clip_seconds=1.0)
    assert [t.id for t in clips.tracks] == ["alice/one.wav", "alice/two.flac", "bob/three.ogg"]
    assert [t.artist for t in clips.tracks] == ["alice", "alice", "bob"]
    assert {t.genre for t in clips.tracks} == {"unknown"}
    assert clips.clips.shape == (2 + 2 + 3, SR) and clips.track.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert clips.start.tolist() == [0, SR, 0, SR, 0, SR, 2 * SR]
    batch = clips.audio([0, 6])
    assert batch.dtype.is_floating_point and batch.abs().max() <= 1 and batch.abs().max() > 0.2
    assert sorted(clips.splits) == ["train", "train", "val"]  # one of alice's two tracks is held out
    assert len(clips.rows("train")) + len(clips.rows("val")) == len(clips)
    assert clip_summary(clips)["artists"] == ["alice", "bob"]


def test_bad_files_are_skipped_with_one_warning_each_and_counted(tmp_path, capsys, monkeypatch):
    root = tmp_path / "music"
    write_good(root)
    sf.write(root / "bob" / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    (root / "bob" / "garbage.wav").write_bytes(os.urandom(4000))
    sf.write(root / "bob" / "silent.flac", np.zeros(3 * SR, dtype=np.float32), SR)
    sf.write(root / "bob" / "short.wav", tone(440, 0.5, SR), SR)
    sf.write(root / "bob" / "crash.wav", tone(440, 2.0, SR), SR)
    (root / "bob" / "gone.wav").symlink_to(tmp_path / "moved-away.wav")  # a link to a file that is not there
    decode = audio._decode

    def crashing_decoder(path, sample_rate):  # stands in for a parser that segfaults on one file
        if path.endswith("crash.wav"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return decode(path, sample_rate)

    monkeypatch.setattr(audio, "_decode", crashing_decoder)
    clips = load_clips(root, SR, clip_seconds=1.0)
    assert len(clips.tracks) == 3 and len(clips) == 7
    reasons = dict(clips.skipped)
    assert set(reasons) == {"bob/empty.wav", "bob/garbage.wav", "bob/silent.flac", "bob/short.wav", "bob/crash.wav",
                            "bob/gone.wav"}
    assert reasons["bob/crash.wav"] == "crashed (SIGSEGV)"
    assert reasons["bob/silent.flac"].startswith("silent")
    assert reasons["bob/garbage.wav"].startswith("unreadable")
    assert reasons["bob/empty.wav"] == "no audio in the file"
    err = capsys.readouterr().err
    assert err.count("warning: skipped") == 6 and "6 of 9 audio files skipped" in err, err


def test_a_folder_with_nothing_usable_is_one_clear_error(tmp_path):
    root = tmp_path / "music"
    root.mkdir()
    with pytest.raises(UserError, match="no audio files"):
        load_clips(root, SR, clip_seconds=1.0)
    sf.write(root / "silent.wav", np.zeros(2 * SR, dtype=np.float32), SR)
    (root / "noise.mp3").write_bytes(b"ID3" + os.urandom(300))
    with pytest.raises(UserError, match="none of the 2 audio files is usable"):
        load_clips(root, SR, clip_seconds=1.0)
    with pytest.raises(UserError, match="not a folder"):
        load_clips(tmp_path / "nowhere", SR, clip_seconds=1.0)


def test_artists_of_any_script_stay_apart_and_a_merge_is_one_warning(tmp_path, capsys):
    for name in ["Бьорк", "Мумий Тролль", "unknown", "björk", "bjork"]:
        (tmp_path / "audio" / name).mkdir(parents=True)
        for k in range(2):
            sf.write(tmp_path / "audio" / name / f"{k}.wav", tone(220 + 50 * k, 1.0, SR), SR)
    clips = load_clips(tmp_path / "audio", SR, clip_seconds=0.5)
    assert clips.artists() == ["bjork", "unknown", "бьорк", "мумий_тролль"]
    assert [t.artist for t in clips.tracks].count("bjork") == 4
    warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert warnings == ["nexttoken: warning: folders 'bjork' and 'björk' are both artist 'bjork'; they are treated "
                        "as one"]


def test_csv_rows_without_an_artist_or_genre_and_merged_names_are_warned_once(tmp_path, capsys):
    write_good(tmp_path)
    (tmp_path / "set.csv").write_text("artist,genre,path\n"
                                      ",Rock,alice/one.wav\n"
                                      ",,alice/two.flac\n"
                                      "Björk,rock,bob/three.ogg\n"
                                      "Carol,jazz\n"  # cut short: no path
                                      "BJORK,Rock,bob/three.ogg\n", encoding="utf-8")
    tracks = find_tracks(tmp_path / "set.csv")
    assert [(t.artist, t.genre) for t in tracks] == [("unknown", "rock"), ("unknown", "unknown"), ("bjork", "rock"),
                                                     ("bjork", "rock")]
    warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert [w.split("set.csv: ")[1] for w in warnings] == [
        "1 row(s) name no path; they are skipped",
        "2 row(s) name no artist; they are artist 'unknown'",
        "artists 'Björk' and 'BJORK' are both artist 'bjork'; they are treated as one",
        "1 row(s) name no genre; they are genre 'unknown'",
        "genres 'Rock' and 'rock' are both genre 'rock'; they are treated as one"]


def test_a_csv_gives_artist_genre_and_lyrics(tmp_path):
    write_good(tmp_path)
    (tmp_path / "set.csv").write_text("path,artist,genre,lyrics\n"
                                      "alice/one.wav,Alice Cooper,Rock,la la la\n"
                                      "bob/three.ogg,Bob,Jazz,\n")
    tracks = find_tracks(tmp_path / "set.csv")
    assert [(t.artist, t.genre, t.lyrics) for t in tracks] == [("alice_cooper", "rock", "la la la"),
                                                               ("bob", "jazz", "")]
    clips = load_clips(tmp_path / "set.csv", SR, clip_seconds=1.0)
    assert clips.genres() == ["jazz", "rock"] and len(clips) == 5
    (tmp_path / "bad.csv").write_text("file,composer\nalice/one.wav,x\n")
    with pytest.raises(UserError, match="missing path, artist, genre"):
        find_tracks(tmp_path / "bad.csv")
    # Excel's "CSV UTF-8" starts with a byte-order mark; a file in another encoding is one line naming it
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfpath,artist,genre\r\nalice/one.wav,Ren\xc3\xa9e,Rock\r\n")
    assert [(t.id, t.artist) for t in find_tracks(tmp_path / "excel.csv")] == [("alice/one.wav", "renee")]
    (tmp_path / "twice.csv").write_text("path,Path ,artist,genre\nalice/one.wav,bob/three.ogg,a,b\n")
    with pytest.raises(UserError, match="twice.csv: two columns are named 'path'; keep one"):
        find_tracks(tmp_path / "twice.csv")
    (tmp_path / "latin.csv").write_bytes(b"path,artist,genre\nalice/one.wav,Ren\xe9e,Rock\n")
    with pytest.raises(UserError, match="latin.csv is not UTF-8 text"):
        find_tracks(tmp_path / "latin.csv")


def test_clips_are_cached_once_per_file_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    root = tmp_path / "music"
    write_good(root)
    first = load_clips(root, SR, clip_seconds=1.0)
    assert (cache_root() / "tracks").is_dir() and str(cache_root()).startswith(str(tmp_path / "cache"))

    def no_decoding(path, sample_rate):
        raise AssertionError("a cached file was decoded again")

    monkeypatch.setattr(audio, "_decode", no_decoding)
    again = load_clips(root, SR, clip_seconds=1.0)
    assert again.clips.equal(first.clips) and again.track.equal(first.track)
    monkeypatch.undo()
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))
    sf.write(root / "bob" / "three.ogg", tone(220, 1.5, SR), SR)
    os.utime(root / "bob" / "three.ogg", ns=(1, 1))
    changed = load_clips(root, SR, clip_seconds=1.0)
    assert len(changed) == len(first) - 2
