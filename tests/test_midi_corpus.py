import json
import shutil

import numpy as np
import pytest

from muse_fixtures import toy_corpus, toy_piece
from nexttoken.errors import UserError
from nexttoken.midi import music21_corpus as corpus_mod
from nexttoken.midi import corpus as corpus_module
from nexttoken.midi.corpus import label_of, load_corpus, split_by_piece


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))


def test_folder_labels_from_subfolders_and_corrupt_files_skipped(tmp_path, capsys):
    root = toy_corpus(tmp_path / "midi", per_style=3)
    (root / "chords" / "broken.mid").write_bytes(b"MThd not really")
    (root / "scales" / "empty.mid").write_bytes(b"")
    corpus = load_corpus(str(root))
    assert corpus.skipped == 2
    assert sorted(set(corpus.labels)) == ["chords", "scales"] and len(corpus) == 6
    err = capsys.readouterr().err
    assert "broken.mid" in err and "2 file(s) could not be read" in err
    # The second call reads the cache, and a changed folder is read again.
    assert load_corpus(str(root)).ids == corpus.ids
    toy_piece("scales", 99).dump_midi(str(root / "scales" / "new.mid"))
    assert len(load_corpus(str(root))) == 7


def test_a_prepared_note_table_travels_without_its_sources(tmp_path):
    """The cached table (pieces.json + notes.npz) is a corpus of its own: copied elsewhere, with the MIDI gone."""
    import shutil

    root = toy_corpus(tmp_path / "midi", per_style=2)
    corpus = load_corpus(str(root))
    moved = shutil.copytree(corpus.path, tmp_path / "elsewhere" / "table")
    shutil.rmtree(root)
    again = load_corpus(str(moved))
    assert again.ids == corpus.ids and again.labels == corpus.labels and again.splits == corpus.splits
    assert all(np.array_equal(again.table[k], corpus.table[k]) for k in corpus.table)
    # A damaged copy is one clear error, not numpy's.
    notes = moved / "notes.npz"
    notes.write_bytes(notes.read_bytes()[: notes.stat().st_size // 2])
    with pytest.raises(UserError, match="not a readable note table"):
        load_corpus(str(moved))
    shutil.copy(corpus.path / "notes.npz", notes)
    meta = json.loads((moved / "pieces.json").read_text())
    (moved / "pieces.json").write_text(json.dumps({**meta, "ids": meta["ids"][1:]}))
    with pytest.raises(UserError, match="pieces.json and notes.npz count different pieces"):
        load_corpus(str(moved))
    (moved / "pieces.json").write_text(json.dumps(meta))
    with np.load(corpus.path / "notes.npz") as z:
        good = {k: z[k] for k in z.files}
    for change, message in [({"pitch": good["pitch"][:-1]}, "the note columns do not fit the pieces' offsets"),
                            ({"family": good["family"] * 0 + 50}, "a family outside 0-"),
                            ({"pitch": good["pitch"] + 200}, "a pitch outside 0-127")]:
        np.savez_compressed(notes, **{**good, **change})
        with pytest.raises(UserError, match=message):
            load_corpus(str(moved))
    np.savez_compressed(notes, **{k: v for k, v in good.items() if k != "pitch"})
    with pytest.raises(UserError, match="it lacks the pitch column"):
        load_corpus(str(moved))


def _score(broken: str):
    """Four 3/4 bars of quarter notes; 'repeats': a start repeat with no end; 'shared': one time signature object in
    two bars (both as music21's ABC reader leaves some of the corpus's tunes)."""
    from music21 import bar, meter, note, stream

    part, signature = stream.Part(), meter.TimeSignature("3/4")
    for i in range(4):
        m = stream.Measure(number=i + 1)
        if i in ((0, 2) if broken == "shared" else (0,)):
            m.insert(0, signature)
        for k in range(3):
            m.append(note.Note(60 + i + k, quarterLength=1))
        part.append(m)
    if broken == "repeats":
        list(part.getElementsByClass(stream.Measure))[1].leftBarline = bar.Repeat(direction="start")
    score = stream.Score()
    score.insert(0, part)
    return score


@pytest.mark.parametrize("broken", ["repeats", "shared"])
def test_scores_music21_refuses_to_write_are_repaired(tmp_path, broken):
    import warnings

    from nexttoken.midi.notes import read_midi

    warnings.simplefilter("ignore")
    with pytest.raises(Exception):
        _score(broken).write("midi", fp=str(tmp_path / "as-is.mid"))
    corpus_mod.write_score_midi(_score(broken), tmp_path / "repaired.mid")
    notes = read_midi(tmp_path / "repaired.mid")
    assert sorted(notes.pitch.tolist()) == sorted(60 + i + k for i in range(4) for k in range(3))
    assert not list(tmp_path.glob(".*.tmp"))


def test_maestro_style_csv(tmp_path):
    root = toy_corpus(tmp_path / "midi", per_style=2)
    rows = ["canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration"]
    for k, split in enumerate(["train", "validation"]):
        rows.append(f"Johann Sebastian Bach,Piece {k},{split},2004,scales/scales-{k}.mid,x.wav,10")
        rows.append(f"Frédéric Chopin,Piece {k},{split},2004,chords/chords-{k}.mid,x.wav,10")
    rows.append("Frédéric Chopin,Missing,train,2004,chords/nope.mid,x.wav,10")
    csv = root / "maestro.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")  # as a spreadsheet's "CSV UTF-8" saves it
    corpus = load_corpus(str(csv))
    assert sorted(set(corpus.labels)) == ["frederic_chopin", "johann_sebastian_bach"]
    assert corpus.splits.count("val") == 2 and corpus.skipped == 1
    # An edited composer or split is a new corpus, though its files have not changed.
    csv.write_text("\n".join(rows).replace("Frédéric Chopin", "Chopin").replace(",validation,", ",train,") + "\n")
    edited = load_corpus(str(csv))
    assert sorted(set(edited.labels)) == ["chopin", "johann_sebastian_bach"] and edited.splits.count("val") == 0


def test_folder_names_of_any_script_are_distinct_composers_and_a_merge_is_one_warning(tmp_path, capsys):
    root = tmp_path / "midi"
    names = ["Шостакович", "Мумий Тролль", "unknown", "björk", "bjork", "Чайковский"]
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        toy_piece("scales", k).dump_midi(str(root / name / "a.mid"))
    corpus = load_corpus(str(root))
    assert corpus.composers() == ["bjork", "unknown", "мумий_тролль", "чайковский", "шостакович"]
    warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert warnings == ["nexttoken: warning: folders 'bjork' and 'björk' are both composer 'bjork'; they are "
                        "treated as one"]
    # The music21 corpus's collection names, and every ASCII name, keep the labels they always had.
    assert [label_of(n) for n in ("ryansMammoth", "nottingham-dataset", "J. S. Bach", "Frédéric Chopin", "!?")] == [
        "ryansmammoth", "nottingham_dataset", "j_s_bach", "frederic_chopin", "unknown"]


def test_a_table_cached_under_other_labels_is_not_reused(tmp_path, monkeypatch):
    """The cache key holds every piece's label, so a table prepared when names were folded to ASCII (both Cyrillic
    folders 'unknown') is read again, not served with its old labels."""
    root = tmp_path / "midi"
    for k, name in enumerate(["Шостакович", "Прокофьев"]):
        (root / name).mkdir(parents=True)
        toy_piece("chords", k).dump_midi(str(root / name / "a.mid"))
    monkeypatch.setattr(corpus_module, "label_of", lambda name: "unknown")
    assert load_corpus(str(root)).composers() == ["unknown"]
    monkeypatch.undo()
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))
    assert load_corpus(str(root)).composers() == ["прокофьев", "шостакович"]


def test_csv_composers_merged_or_missing_are_warned_once(tmp_path, capsys):
    root = toy_corpus(tmp_path / "midi", per_style=2)
    (root / "set.csv").write_text("path,composer\nscales/scales-0.mid,Dvořák\nscales/scales-1.mid,Dvorak\n"
                                  "chords/chords-0.mid,\nchords/chords-1.mid\n", encoding="utf-8")
    corpus = load_corpus(str(root / "set.csv"))
    assert corpus.composers() == ["dvorak", "unknown"]
    warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert len(warnings) == 2
    assert warnings[0].endswith("set.csv: 2 row(s) name no composer (composer); they are composer 'unknown'")
    assert warnings[1].endswith("set.csv: composer values 'Dvořák' and 'Dvorak' are both composer 'dvorak'; they "
                                "are treated as one")


def test_bad_corpus_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        load_corpus(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MIDI files"):
        load_corpus(str(tmp_path / "empty"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="needs a path column"):
        load_corpus(str(tmp_path / "bad.csv"))
    (tmp_path / "latin1.csv").write_bytes("path,composer\na.mid,Chopin Frédéric\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_corpus(str(tmp_path / "latin1.csv"))


def test_split_is_by_piece_stable_and_per_label():
    ids = [f"piece{i}" for i in range(40)]
    labels = ["a"] * 20 + ["b"] * 19 + ["c"]
    splits = split_by_piece(ids, labels, 0.1)
    assert splits.count("val") == 4 and splits[-1] == "train"  # 2 + 2, none from a one-piece label
    assert split_by_piece(ids[::-1], labels[::-1], 0.1) == splits[::-1]  # depends on the ids, not their order


def test_music21_preparation_resumes_after_an_interruption(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "SMALL", {"bach": 3})
    calls = []
    real = corpus_mod.convert_source

    def counting(rel, label, out_dir):
        calls.append(rel)
        return real(rel, label, out_dir)

    # A first run that dies after converting one file.
    monkeypatch.setattr(corpus_mod, "ProcessPoolExecutor", _InlinePool)
    monkeypatch.setattr(corpus_mod, "as_completed", iter)
    monkeypatch.setattr(corpus_mod, "convert_source", _dies_after(1, counting))
    with pytest.raises(KeyboardInterrupt):
        corpus_mod.prepare_music21("small")
    assert len(calls) == 1
    monkeypatch.setattr(corpus_mod, "convert_source", counting)
    corpus = corpus_mod.prepare_music21("small")
    assert len(calls) == 3 and len(set(calls)) == 3  # the converted file was not converted again
    assert len(corpus) == 3 and set(corpus.labels) == {"bach"} and corpus.n_notes(0) > 100

    # A file an older converter gave up on is converted again by this one; the others are not.
    records = sorted(corpus_mod.cache_root().glob("music21-*/records/*.json"))
    old = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**old, "errors": ["x: StreamException"], "converter": 1}))
    for table in corpus_mod.cache_root().glob("music21-*/small-v*"):
        shutil.rmtree(table)
    calls.clear()
    corpus_mod.prepare_music21("small")
    assert calls == [old["source"]]


def _dies_after(n, fn):
    count = [0]

    def wrapped(*args):
        if count[0] == n:
            raise KeyboardInterrupt
        count[0] += 1
        return fn(*args)

    return wrapped


class _LazyFuture:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


class _InlinePool:
    """ProcessPoolExecutor stand-in that runs each task in this process, one at a time, as its result is asked for."""

    def __init__(self, max_workers=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        return _LazyFuture(fn, args)
