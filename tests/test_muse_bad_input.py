"""Every muse command given bad values, damaged run folders, folders of other commands, unusable files and unwritable
outputs: exit code 2, one line on stderr naming the problem, no traceback, and nothing left behind (the working folder
and the run folder hold exactly what they held before)."""

import json
import shutil
from pathlib import Path

import pytest

from muse_fixtures import midi_bytes, silent_midi, trained_run
from nexttoken.cli import main


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A trained run, copies of it damaged in every way a file can be, and the bad files the commands are given."""
    trained = trained_run(tmp_path_factory)
    z = tmp_path_factory.mktemp("zoo")
    run = trained["run"]

    def copy(name, damage=None):
        path = shutil.copytree(run, z / name)
        if damage:
            damage(path)
        return path

    copy("bad-ckpt", lambda p: (p / "checkpoint.safetensors").write_bytes(
        (p / "checkpoint.safetensors").read_bytes()[:5000]))
    copy("garbled-ckpt", lambda p: (p / "checkpoint.safetensors").write_bytes(b"\x00" * 64))
    copy("no-ckpt", lambda p: (p / "checkpoint.safetensors").unlink())
    copy("bad-config", lambda p: (p / "config.json").write_text('{"muse": {"corpus": '))
    copy("list-config", lambda p: (p / "config.json").write_text("[1, 2]"))
    copy("bad-value", lambda p: _edit_config(p, lambda c: c["muse"].update(context=-1)))
    copy("no-muse", lambda p: _edit_config(p, lambda c: c.pop("muse")))
    copy("odd-heads", lambda p: _edit_config(p, lambda c: c["muse"].update(n_head=3)))
    copy("int-composers", lambda p: _edit_config(p, lambda c: c["muse"].update(composers=5)))
    copy("unfinished", lambda p: (p / "summary.json").unlink())
    copy("killed-bad-ckpt", lambda p: ((p / "summary.json").unlink(), (p / "checkpoint.safetensors").write_bytes(
        (p / "checkpoint.safetensors").read_bytes()[:5000])))
    copy("bad-critic", lambda p: (p / "critic.safetensors").write_bytes(b"not a critic"))
    for kind in ("grok.train", "jukebox.train-vqvae"):
        folder = z / kind
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"kind": kind, "lr": 0.001}))
    (z / "not-a-run").mkdir()
    (z / "a-file").write_text("not a folder")
    (z / "cut.mid").write_bytes(midi_bytes("chords")[:60])
    (z / "random.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x01\x00" + bytes(range(97)))
    (z / "silent.mid").write_bytes(silent_midi())
    (z / "good.mid").write_bytes(midi_bytes("chords"))
    (z / "good.tokens").write_text("composer:bach\ninst:piano\nstart\ntempo:120\npiano:v72:C4\nwait:50\n"
                                   "piano:v0:C4\nend\n")
    (z / "other.tokens").write_bytes(midi_bytes("chords"))
    (z / "empty.tokens").write_text("\n\n")
    (z / "header.tokens").write_text("composer:bach\ninst:piano\nstart\ntempo:120\nend\n")
    (z / "unknown.tokens").write_text("composer:bach\nstart\npiano:v72:H4\n")
    (z / "binary.tokens").write_bytes(b"\xff\xfe\x00\x81" * 8)
    (z / "fake.sf2").write_text("not a soundfont")
    (z / "cut.sf2").write_bytes(b"RIFF" + (10_000).to_bytes(4, "little") + b"sfbk" + b"LIST" + bytes(20))
    bad_corpus = z / "bad-corpus" / "x"
    bad_corpus.mkdir(parents=True)
    (bad_corpus / "a.mid").write_bytes(midi_bytes("chords")[:40])
    (bad_corpus / "b.mid").write_bytes(silent_midi())
    return {**trained, "zoo": z}


def _edit_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


T, G = ["train", "--corpus", "CORPUS", "--device", "cpu"], ["generate", "RUN", "--device", "cpu"]
CASES = [
    # training settings out of range: refused by their declaration, before anything is read or made
    (["train", "--lr", "-1"], "--lr must be > 0"),
    (["train", "--stretch", "-2"], "--stretch must be >= 0"),
    (["train", "--val-pieces", "-1"], "--val-pieces must be >= 0"),
    (["train", "--transpose", "-3"], "--transpose must be >= 0"),
    (["train", "--warmup", "-5"], "--warmup-steps must be >= 0"),
    (["train", "--max-minutes", "0"], "--max-minutes must be > 0"),
    (["train", "--dropout", "2"], "--dropout must be >= 0 and < 1"),
    (["train", "--steps", "inf"], "expected a finite number"),
    (["train", "--context", "8"], "--context must be >= 16"),
    (["train", "--n-embd", "130"], "must be a multiple of --n-head"),
    (["train", "--workers", "-1"], "--workers must be >= 0"),
    (["train", "--jobs", "0"], "--jobs must be >= 1"),
    (["train", "--encoding", "abc"], "invalid choice"),
    ([*T, "--batch-size", "3", "--grad-accum", "2"], "must divide evenly"),
    (["train", "--corpus", "no/such/folder"], "not a folder of MIDI files"),
    ([*T, "--out", "ZOO/a-file"], "exists and is not a folder"),
    ([*T, "--out", "ZOO/a-file/run"], "cannot create"),
    ([*T, "--out", "RUN"], "already holds a run"),
    # resuming: only runs of this command, undamaged, with their own settings
    (["train", "--resume", "RUN", "--lr", "0.5"], "--lr 0.5 differs from the resumed run's"),
    (["train", "--resume", "RUN", "--out", "elsewhere"], "leave out --out"),
    (["train", "--resume", "RUN", "--steps", "30"], "--steps 30 is fewer than the 60 steps"),
    (["train", "--resume", "ZOO/unfinished", "--steps", "30"], "--steps 30 is fewer than the 60 steps"),
    (["train", "--resume", "RUN", "--max-minutes", "5"], "keeps its time budget"),
    (["train", "--resume", "ZOO/grok.train"], "is a grok.train run, not a muse training run"),
    (["train", "--resume", "ZOO/bad-config"], "config.json is damaged"),
    (["train", "--resume", "ZOO/no-muse"], "config.json is damaged"),
    (["train", "--resume", "ZOO/not-a-run"], "not a run folder"),
    (["train", "--resume", "ZOO/killed-bad-ckpt", "--device", "cpu"], "checkpoint.safetensors is damaged"),
    (["train", "--resume", "ZOO/a-file"], "not a run folder"),
    # generation settings
    ([*G, "--top-p", "0"], "--top-p must be > 0 and <= 1"),
    ([*G, "--top-p", "1.5"], "--top-p must be > 0 and <= 1"),
    ([*G, "--temperature", "-1"], "--temperature must be >= 0"),
    ([*G, "--tempo", "-5"], "--tempo must be > 0"),
    ([*G, "--seconds", "100000"], "--seconds must be > 0 and <= 3600"),
    ([*G, "--seconds", "0"], "--seconds must be > 0"),
    ([*G, "--n", "0"], "--n must be >= 1"),
    ([*G, "--n", "100", "--candidates", "20"], "2000 pieces in one batch; the most is 1024"),
    ([*G, "--prime-notes", "0"], "--prime-notes must be >= 1"),
    ([*G, "--composer", "mozart"], "unknown composer 'mozart'"),
    ([*G, "--instruments", "kazoo"], "unknown instrument 'kazoo'"),
    ([*G, "--instruments", ","], "--instruments needs at least one instrument"),
    ([*G, "--candidates", "2"], "no critic yet"),
    ([*G, "--prime", "nope.mid"], "nope.mid: no such file"),
    ([*G, "--prime", "ZOO"], "is a folder, not a MIDI file"),
    ([*G, "--prime", "ZOO/cut.mid"], "not a readable MIDI file (truncated"),
    ([*G, "--prime", "ZOO/random.mid"], "not a readable MIDI file"),
    ([*G, "--prime", "ZOO/silent.mid"], "holds no notes"),
    ([*G, "--soundfont", "ZOO/fake.sf2"], "is not a SoundFont 2 file"),
    ([*G, "--soundfont", "ZOO/cut.sf2"], "a truncated soundfont"),
    ([*G, "--soundfont", "missing.sf2"], "not found"),
    ([*G, "--out", "ZOO/a-file"], "is a file, not a folder"),
    ([*G, "--out", "ZOO", "--seconds", "1"], "already holds files; choose a new or empty --out"),
    ([*G, "--composer", "J. S. Bach"], "unknown composer 'j_s_bach'"),
    ([*G, "--out", "ZOO/a-file/samples"], "is a file, not a folder"),
    (["generate", "ZOO/bad-ckpt"], "checkpoint.safetensors is damaged"),
    (["generate", "ZOO/garbled-ckpt"], "checkpoint.safetensors is damaged"),
    (["generate", "ZOO/no-ckpt"], "has no checkpoint yet"),
    (["generate", "ZOO/bad-config"], "config.json is damaged"),
    (["generate", "ZOO/list-config"], "config.json is damaged"),
    (["generate", "ZOO/bad-value"], "config.json: context must be >= 16"),
    (["generate", "ZOO/odd-heads"], "config.json: n_embd 32 is not a multiple of n_head 3"),
    (["train", "--resume", "ZOO/odd-heads"], "config.json: n_embd 32 is not a multiple of n_head 3"),
    (["train", "--resume", "ZOO/int-composers"], "config.json: composers must be a list[str], not 5"),
    (["generate", "ZOO/grok.train"], "is a grok.train run, not a muse training run"),
    (["generate", "ZOO/jukebox.train-vqvae"], "is a jukebox.train-vqvae run"),
    (["generate", "ZOO/bad-critic", "--candidates", "2"], "critic.safetensors is damaged"),
    # the critic, evaluation, embeddings and report
    (["critic", "RUN", "--per-composer", "0"], "--per-composer must be >= 1"),
    (["critic", "RUN", "--seconds", "-1"], "--seconds must be > 0"),
    (["critic", "RUN", "--top-p", "0"], "--top-p must be > 0"),
    (["critic", "RUN", "--jobs", "1000"], "--jobs must be >= 1 and <= 64"),
    (["critic", "ZOO/bad-ckpt"], "checkpoint.safetensors is damaged"),
    (["critic", "ZOO/grok.train"], "is a grok.train run"),
    (["evaluate", "RUN", "--n-per-composer", "0"], "--n-per-composer must be >= 1"),
    (["evaluate", "RUN", "--temperature", "-1"], "--temperature must be >= 0"),
    (["evaluate", "not-a-run"], "not a run folder"),
    (["evaluate", "ZOO/bad-config"], "config.json is damaged"),
    (["evaluate", "ZOO/garbled-ckpt"], "checkpoint.safetensors is damaged"),
    (["embeddings", "ZOO/bad-ckpt"], "checkpoint.safetensors is damaged"),
    (["embeddings", "ZOO/jukebox.train-vqvae"], "is a jukebox.train-vqvae run"),
    (["embeddings", "RUN", "--out", "ZOO/a-file"], "is a file, not a folder"),
    (["report", "RUN", "--composers", "0"], "--composers must be >= 1"),
    (["report", "RUN", "--out", "ZOO/a-file"], "is a file, not a folder"),
    (["report", "ZOO/unfinished"], "has not finished training"),
    (["report", "ZOO/grok.train"], "is a grok.train run"),
    (["report", "ZOO/bad-config"], "config.json is damaged"),
    (["report", "ZOO/bad-ckpt", "--out", "new-report"], "checkpoint.safetensors is damaged"),
    # MIDI and tokens files
    (["encode", "missing.mid"], "missing.mid: no such file"),
    (["encode", "ZOO"], "is a folder, not a MIDI file"),
    (["encode", "ZOO/cut.mid"], "not a readable MIDI file (truncated"),
    (["encode", "ZOO/silent.mid"], "the MIDI file holds no notes"),
    (["encode", "ZOO/a-file"], "a-file: not a readable MIDI file (it does not start with MThd, as a MIDI file does)"),
    (["encode", "ZOO/good.mid", "-o", "ZOO/a-file/x.tokens"], "a-file is a file, not a folder"),
    (["decode", "ZOO/header.tokens", "-o", "ZOO/a-file/x.mid"], "a-file is a file, not a folder"),
    (["decode", "ZOO/good.mid"], "is a MIDI file; decode reads tokens"),
    # an output is never the input, and a default output name never replaces an existing file
    (["encode", "ZOO/good.mid", "-o", "ZOO/good.mid"], "good.mid is the input file"),
    (["encode", "ZOO/good.mid", "-o", "ZOO/../ZOONAME/good.mid"], "good.mid is the input file"),
    (["encode", "ZOO/other.tokens"], "other.tokens is the input file"),
    (["encode", "ZOO/good.mid"], "good.tokens already exists; to replace it, name it with -o"),
    (["encode", "ZOO/good.mid", "-o", "ZOO"], "is a folder; name a file to write"),
    (["decode", "ZOO/good.tokens", "-o", "ZOO/good.tokens"], "good.tokens is the input file"),
    (["decode", "ZOO/good.tokens"], "good.mid already exists; to replace it, name it with -o"),
    (["decode", "ZOO/empty.tokens"], "holds no tokens"),
    (["decode", "ZOO/header.tokens"], "the tokens hold no notes"),
    (["decode", "ZOO/unknown.tokens"], "unknown token 'piano:v72:H4'"),
    (["decode", "ZOO/binary.tokens"], "not a tokens file (not text)"),
    (["decode", "ZOO"], "is a folder, not a tokens file"),
    (["prepare", "--corpus", "nowhere"], "not a folder of MIDI files"),
    (["prepare", "--jobs", "0"], "--jobs must be >= 1"),
]


def _listing(*folders: Path) -> set:
    return {(str(p), p.stat().st_size if p.is_file() else -1) for f in folders for p in f.rglob("*")}


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_code_2_and_leaves_nothing_behind(zoo, tmp_path, monkeypatch, capsys, args,
                                                                        message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(zoo["cache"]))
    names = {"RUN": str(zoo["run"]), "CORPUS": zoo["corpus"], "ZOO": str(zoo["zoo"])}
    argv = [next((a.replace(k, v, 1) for k, v in names.items() if a.startswith(k)), a) for a in args]
    argv = [a.replace("ZOONAME", zoo["zoo"].name) for a in argv]
    before = _listing(tmp_path, zoo["run"], zoo["zoo"])
    try:
        code = main(["muse", *argv])
    except SystemExit as e:  # argparse refuses a malformed flag before main's own handler
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert _listing(tmp_path, zoo["run"], zoo["zoo"]) == before


def test_an_output_named_with_o_is_replaced(zoo, tmp_path, capsys):
    """-o names the file to write, so an existing one there is replaced (atomically); only defaults are guarded."""
    tokens, midi = tmp_path / "x.tokens", tmp_path / "x.mid"
    tokens.write_text("old"), midi.write_text("old")
    assert main(["muse", "encode", str(zoo["zoo"] / "good.mid"), "-o", str(tokens)]) == 0
    assert tokens.read_text().startswith("composer:unknown\n")
    assert main(["muse", "decode", str(tokens), "-o", str(midi)]) == 0
    assert midi.read_bytes().startswith(b"MThd")


def test_one_note_is_counted_as_one_note(tmp_path, capsys):
    from muse_fixtures import score

    score([(0, False, [(0, 1, 60, 80)])]).dump_midi(str(tmp_path / "one.mid"))
    assert main(["muse", "encode", str(tmp_path / "one.mid"), "-o", str(tmp_path / "one.tokens")]) == 0
    assert main(["muse", "decode", str(tmp_path / "one.tokens"), "-o", str(tmp_path / "back.mid")]) == 0
    out = capsys.readouterr().out
    assert "tokens for 1 note (" in out and "back.mid: 1 note, 0.5 s" in out


def test_a_corpus_of_unreadable_files_is_refused_after_a_warning_for_each(zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))
    assert main(["muse", "train", "--corpus", str(zoo["zoo"] / "bad-corpus"), "--out", "run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "a.mid: not a readable MIDI file (truncated" in lines[-3] and "b.mid: no notes" in lines[-2]
    assert lines[-1].endswith("bad-corpus: none of the 2 MIDI files could be read") and not (tmp_path / "run").exists()
    (tmp_path / "one-bad").mkdir()
    shutil.copy(zoo["zoo"] / "bad-corpus" / "x" / "a.mid", tmp_path / "one-bad")
    assert main(["muse", "train", "--corpus", str(tmp_path / "one-bad"), "--out", "run"]) == 2
    assert capsys.readouterr().err.strip().endswith("one-bad: its only MIDI file could not be read")
