"""MIDI made in code for the muse tests: a matrix of hard cases for the round trip, and a two-style toy corpus."""

from pathlib import Path

import numpy as np
import symusic

TPQ = 480


def score(tracks: list[tuple[int, bool, list[tuple[float, float, int, int]]]], tempos=((0.0, 120.0),)) -> symusic.Score:
    """tracks: (program, is_drum, [(start_beat, duration_beats, pitch, velocity), ...]); tempos: (beat, bpm)."""
    s = symusic.Score(TPQ)
    for beat, bpm in tempos:
        s.tempos.append(symusic.Tempo(int(beat * TPQ), bpm))
    for program, is_drum, notes in tracks:
        t = symusic.Track(program=program, is_drum=is_drum)
        for start, dur, pitch, vel in notes:
            t.notes.append(symusic.Note(int(round(start * TPQ)), int(round(dur * TPQ)), pitch, vel))
        s.tracks.append(t)
    return s


CASES = {
    "chords": [(0, False, [(b, 1, p, 90) for b in range(4) for p in (60, 64, 67, 72)])],
    "overlapping_same_pitch": [(0, False, [(0, 2, 60, 80), (1, 2, 60, 100), (4, 1, 62, 70)])],
    "nested_same_pitch": [(0, False, [(0, 4, 60, 80), (1, 1, 60, 100)])],
    "restrike": [(0, False, [(0, 1, 64, 80), (1, 1, 64, 80), (2, 1, 64, 80)])],
    "drums": [(0, True, [(b / 2, 0.25, 36 if b % 2 == 0 else 38, 100) for b in range(8)]),
              (33, False, [(0, 2, 40, 90), (2, 2, 43, 90)])],
    "several_instruments": [(0, False, [(0, 1, 60, 30), (1, 1, 62, 64)]), (40, False, [(0, 2, 76, 100)]),
                            (42, False, [(0, 2, 48, 110)]), (56, False, [(0.5, 1.5, 67, 127)]),
                            (73, False, [(1, 1, 84, 5)]), (52, False, [(2, 1, 69, 80)])],
    "tempo_changes": [(0, False, [(b, 1, 60 + b, 80) for b in range(8)])],
    "long_silence": [(0, False, [(0, 1, 60, 80), (12, 1, 67, 80), (40, 0.5, 72, 80)])],
    "extreme_pitches": [(0, False, [(0, 1, 0, 80), (0, 1, 127, 80), (1, 0.003, 64, 80)])],
}
TEMPOS = {"tempo_changes": ((0, 120.0), (2, 60.0), (4, 200.0)), "long_silence": ((0, 90.0),)}


def case_score(name: str) -> symusic.Score:
    return score(CASES[name], TEMPOS.get(name, ((0.0, 120.0),)))


def toy_piece(style: str, seed: int) -> symusic.Score:
    """'scales': a piano melody walking up a major scale over a bass; 'chords': sustained string chords."""
    rng = np.random.default_rng(seed)
    root = int(rng.integers(55, 65))
    if style == "scales":
        major = [0, 2, 4, 5, 7, 9, 11, 12]
        melody = [(i * 0.5, 0.5, root + major[i % 8], 90) for i in range(32)]
        bass = [(i * 2.0, 2.0, root - 12, 70) for i in range(8)]
        return score([(0, False, melody + bass)])
    chords = [(i * 2.0, 2.0, root + iv + (5 if i % 2 else 0), 70) for i in range(8) for iv in (0, 4, 7)]
    return score([(48, False, chords)])


def toy_corpus(folder: Path, per_style: int = 6) -> Path:
    """folder/scales/*.mid and folder/chords/*.mid: the labels are the sub-folder names."""
    for style in ("scales", "chords"):
        (folder / style).mkdir(parents=True, exist_ok=True)
        for k in range(per_style):
            toy_piece(style, k).dump_midi(str(folder / style / f"{style}-{k}.mid"))
    return folder


# ---- one tiny trained run, shared by the muse test modules -----------------------------------------------------------
TINY = dict(context=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0, val_pieces=0)
_TRAINED: dict = {}


def trained_run(tmp_path_factory) -> dict:
    """A tiny model trained once per test session on the toy corpus: {"root", "corpus", "run", "cache"}. Tests that
    change the run work on a copy; tests that read the corpus set NEXTTOKEN_CACHE to "cache"."""
    if not _TRAINED:
        import pytest

        from nexttoken.muse.train import MuseConfig, train
        from nexttoken.training import LoopConfig, OptimConfig

        root = tmp_path_factory.mktemp("muse")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NEXTTOKEN_CACHE", str(root / "cache"))
            corpus_dir = toy_corpus(root / "midi", per_style=6)
            loop = LoopConfig(steps=60, batch_size=8, eval_every=20, ckpt_every=60)
            run = train(MuseConfig(corpus=str(corpus_dir), **TINY), OptimConfig(lr=1e-2, warmup_steps=10), loop,
                        out=root / "run", device="cpu")
        _TRAINED.update(root=root, corpus=str(corpus_dir), run=run, cache=root / "cache")
    return _TRAINED


def midi_bytes(name: str) -> bytes:
    """A MIDI file of one of the hard cases (or of a toy piece, 'scales-0' / 'chords-3'), as symusic writes it."""
    if name in CASES:
        return bytes(case_score(name).dumps_midi())
    style, seed = name.rsplit("-", 1)
    return bytes(toy_piece(style, int(seed)).dumps_midi())


def silent_midi() -> bytes:
    """A well-formed MIDI file that holds no notes: a tempo and an empty piano track."""
    s = symusic.Score(TPQ)
    s.tempos.append(symusic.Tempo(0, 120.0))
    s.tracks.append(symusic.Track(program=0))
    return bytes(s.dumps_midi())
