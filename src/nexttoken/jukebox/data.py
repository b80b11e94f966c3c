"""The audio every Jukebox stage learns from, as one ``ClipSet``: the embedded default (the music21 corpus rendered to
audio, with the built-in sung lyrics set) or the user's own audio (a folder or a CSV, read by ``audio.py``).

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341) trains on songs labelled with artist, genre and
lyrics. The embedded default needs no network: each piece of the music21 corpus subset that ``nexttoken muse`` uses
(``nexttoken.midi.corpus``) is rendered to audio (``nexttoken.midi.render``: a General MIDI soundfont when one is
installed, else the built-in synthesizer), its first ``piece_seconds`` only; the artist is the composer (or the folk
collection) and the genre the instrument family that plays most of its notes. The lyrics set (``lyrics.py``) adds
lines of made-up words sung one syllable per note, artist ``low_voice`` or ``high_voice`` (``espeak_voice`` with
``--voices low,high,espeak`` where espeak-ng is installed), genre ``song``, with the time each syllable is sung: the
ground truth of the lyrics-alignment measure. Both are rendered once and cached under ``$NEXTTOKEN_CACHE/jukebox``
(default ``~/.cache/nexttoken/jukebox``).

    nexttoken jukebox prepare                                    # the default: corpus + 200 sung lines
    nexttoken jukebox prepare --audio ~/music                    # your folder (artist = sub-folder), no sung lines
    nexttoken jukebox prepare --audio ~/music --lyrics-lines 200 # your folder and the sung lines
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nexttoken.config import check, option
from nexttoken.errors import UserError
from nexttoken.isolate import map_isolated
from nexttoken.jukebox.audio import (MIN_DB, ClipSet, Track, cache_root, extract_clips, load_clips, split_tracks,
                                     warn)
from nexttoken.jukebox.espeak import require as require_espeak
from nexttoken.jukebox.lyrics import DEFAULT_VOICES, TUNE_RANGE, lyrics_set
from nexttoken.midi.corpus import MUSIC21_NAMES, corpus_source
from nexttoken.progress import Progress
from nexttoken.files import load_tensors, save_tensors

MUSIC21 = MUSIC21_NAMES  # the corpus by name: rendered from its notes
LYRICS_GENRE = "song"
RENDERER = 1  # bumped whenever rendering changes, so no cache made by another renderer is reused
SUNG_LINES = 200  # the sung lines the embedded default adds to the rendered corpus


@dataclass
class DataConfig:
    audio: str = option("music21-small", "music21-small (the corpus rendered to audio), music21 (all of it), a note "
                        "table that `nexttoken muse prepare` printed (rendered the same way), a folder of audio files "
                        "(artist = sub-folder) or a CSV of path, artist, genre[, lyrics]")
    artists: list[str] = option(default_factory=list, help="keep only these artists (default: all)")
    pieces: int = option(0, "corpus pieces per artist for training (0: all; a few held out besides)", ge=0, le=10**6)
    piece_seconds: float = option(20.0, "seconds rendered from the start of each corpus piece", gt=0, le=3600)
    soundfont: str = option("", "the corpus's instruments: a General MIDI .sf2 file, 'synth' for the built-in "
                            "synthesizer, or '' for a system soundfont when one is installed (a new pipeline keeps "
                            "what it chose)")
    lyrics_lines: int | None = option(None, f"lines of the built-in sung lyrics set added to the audio (default: "
                                      f"{SUNG_LINES} with rendered notes, none with your own audio files; 0: none)",
                                      ge=0, le=100_000)
    voices: list[str] = option(default_factory=lambda: list(DEFAULT_VOICES), help="who sings the lines: low and high "
                               "(the built-in formant voice), espeak (espeak-ng, where it is installed)")
    val_fraction: float = option(0.1, "share of each artist's tracks held out (user audio and sung lines)", ge=0,
                                 lt=1)
    jobs: int = option(2, "processes reading audio files or converting the corpus", ge=1, le=64)

    def sung_lines(self) -> int:
        """The sung lines added: as asked, else the embedded default's with rendered notes and none with the user's
        own files (the lines would outnumber a small folder's clips and take over what the priors learn)."""
        if self.lyrics_lines is not None:
            return self.lyrics_lines
        return SUNG_LINES if rendered(self.audio) else 0

    def validate(self) -> "DataConfig":
        if not self.voices or len(set(self.voices)) < len(self.voices) or not set(self.voices) <= set(TUNE_RANGE):
            raise UserError(f"--voices takes distinct names among {', '.join(TUNE_RANGE)}, not "
                            f"{','.join(self.voices) or 'nothing'}")
        if "espeak" in self.voices and self.sung_lines():
            require_espeak()
        check(self)
        if not rendered(self.audio):  # the user's recordings: nothing to render, every file is used
            unused = [name for name in ("pieces", "piece_seconds", "soundfont")
                      if getattr(self, name) != getattr(DataConfig, name)]
            if unused:
                raise UserError(f"--{unused[0].replace('_', '-')} applies to rendered notes (music21-small or a note "
                                f"table), not to the recordings of --audio {self.audio}")
        return self


def resolved(cfg: DataConfig) -> DataConfig:
    """``cfg`` as a pipeline saves it, so that it reads the same audio later from any folder and whatever is
    installed by then: a path made absolute (it was typed relative to the folder the command ran in), the sung lines
    counted and the renderer written down ('synth' or a soundfont's path)."""
    from nexttoken.midi.render import find_soundfont

    cfg = replace(cfg, audio=corpus_source(cfg.audio), lyrics_lines=cfg.sung_lines())
    if not rendered(cfg.audio) or cfg.soundfont == "synth":
        return cfg
    soundfont = find_soundfont(cfg.soundfont or None)
    return replace(cfg, soundfont=str(soundfont) if soundfont else "synth")


def known_label(typed: str, labels: list[str]) -> str:
    """An artist or genre as typed, or, when it is not among ``labels``, as ``label_of`` makes labels of folder names
    and CSV cells: the folder 'Artist One' is the artist artist_one, and so is the name typed."""
    from nexttoken.midi.corpus import label_of

    return typed if typed in labels else label_of(typed)


def load_data(cfg: DataConfig, sample_rate: int, clip_samples: int) -> ClipSet:
    """The clips of ``cfg``'s audio at ``sample_rate``, cut ``clip_samples`` long, with the sung lines added."""
    cfg.validate()
    if rendered(cfg.audio):
        clips = corpus_clips(cfg, sample_rate, clip_samples)
    else:
        clips = load_clips(cfg.audio, sample_rate, clip_samples / sample_rate, val_fraction=cfg.val_fraction,
                           jobs=cfg.jobs)
    if cfg.sung_lines():
        clips = merge(clips, lyrics_clips(cfg.sung_lines(), sample_rate, clip_samples, cfg.val_fraction,
                                          voices=tuple(cfg.voices)))
    if cfg.artists:
        wanted = [known_label(a, clips.artists()) for a in cfg.artists]
        missing = [typed for typed, label in zip(cfg.artists, wanted) if label not in clips.artists()]
        if missing:
            raise UserError(f"--artists {','.join(missing)}: not in {cfg.audio} (artists: "
                            f"{', '.join(clips.artists())})")
        clips = select(clips, [t.artist in wanted for t in clips.tracks])
    if not len(clips.rows("train")):
        raise UserError(f"{cfg.audio}: no training audio (every track is held out); add tracks or lower "
                        f"--val-fraction")
    return clips


# ---- the rendered corpus ---------------------------------------------------------------------------------------------
def rendered(audio: str) -> bool:
    """Whether ``--audio`` names notes to render (the music21 corpus or a prepared note table), not audio files."""
    from nexttoken.midi.corpus import is_note_table

    return audio in MUSIC21 or is_note_table(audio)


def corpus_key(audio: str) -> str:
    """The rendered corpus's cache name: the corpus name, or a note table's content hash (a path has slashes; the same
    path may hold another table later)."""
    if audio in MUSIC21:
        return audio
    digest = hashlib.sha1()
    for name in ("pieces.json", "notes.npz"):
        digest.update((Path(audio) / name).read_bytes())
    return "table-" + digest.hexdigest()[:12]


def corpus_clips(cfg: DataConfig, sample_rate: int, clip_samples: int) -> ClipSet:
    """The corpus pieces rendered to audio (cached per rendering setting), the pieces per artist ``cfg`` keeps."""
    from nexttoken.midi.corpus import load_corpus
    from nexttoken.midi.render import find_soundfont

    corpus = load_corpus(cfg.audio, cfg.jobs)
    soundfont = None if cfg.soundfont == "synth" else find_soundfont(cfg.soundfont or None)
    renderer = f"sf-{hashlib.sha1(str(soundfont).encode()).hexdigest()[:8]}" if soundfont else "synth"
    key = (f"{corpus_key(cfg.audio)}-{len(corpus)}-sr{sample_rate}-clip{clip_samples}-{cfg.piece_seconds:g}s-"
           f"{renderer}-r{RENDERER}")
    path = cache_root() / "corpus" / f"{key}.safetensors"
    if not path.is_file():
        tensors, meta = render_corpus(corpus, cfg, sample_rate, clip_samples, soundfont)
        save_tensors(path, tensors, meta)
    tensors, meta = load_tensors(path)
    tracks = [Track(pid, corpus.path or path, label, genre, "", sec)
              for pid, label, genre, sec in zip(meta["ids"], corpus.labels, meta["genres"], meta["seconds"])]
    full = ClipSet(tensors["clips"], tensors["track"], tensors["start"], tracks, list(corpus.splits), sample_rate,
                   [tuple(s) for s in meta.get("skipped", [])])
    if not cfg.pieces:
        return full
    keep = [False] * len(tracks)
    for artist in full.artists():  # the first pieces of each side, so that a few stay held out
        for split, n in (("train", cfg.pieces), ("val", max(1, round(0.15 * cfg.pieces)))):
            for p in [i for i, t in enumerate(tracks) if t.artist == artist and full.splits[i] == split][:n]:
                keep[p] = True
    return select(full, keep)


def render_corpus(corpus, cfg: DataConfig, sample_rate: int, clip_samples: int,
                  soundfont: Path | None) -> tuple[dict, dict]:
    """Every piece's first ``cfg.piece_seconds`` as clips (tensors), with each piece's genre, length and whether it
    was skipped (meta). Pieces render in ``cfg.jobs`` worker processes (``nexttoken.isolate``): a synthesizer that
    crashes or hangs on one piece costs that piece."""
    from nexttoken.midi.notes import FAMILIES
    from nexttoken.midi.render import render

    if soundfont is not None and importlib.util.find_spec("symusic") is None:  # what renders through a soundfont
        raise UserError(f"cannot render {cfg.audio} with {soundfont}: symusic is not installed (--soundfont synth "
                        f"renders with the built-in synthesizer)")

    def piece(p: int) -> tuple[np.ndarray, np.ndarray]:  # in a worker
        notes = corpus.notes(p)
        keep = notes.start < cfg.piece_seconds
        head = type(notes)(notes.start[keep], np.minimum(notes.end[keep], cfg.piece_seconds), notes.pitch[keep],
                           notes.velocity[keep], notes.family[keep], notes.tempo)
        clips, starts = extract_clips(render(head, sample_rate, soundfont)[: round(cfg.piece_seconds * sample_rate)],
                                      clip_samples, MIN_DB)
        return _pcm(clips).numpy(), starts

    with Progress(len(corpus), "render corpus", unit="piece") as bar:
        outcomes = map_isolated(piece, range(len(corpus)), timeout=max(60.0, cfg.piece_seconds), workers=cfg.jobs,
                                on_done=lambda i, outcome: bar.update(1))
    clips, track, starts, seconds, genres, skipped = [], [], [], [], [], []
    for p, outcome in enumerate(outcomes):
        notes = corpus.notes(p)
        genres.append(FAMILIES[int(np.bincount(notes.family).argmax())])
        seconds.append(float(notes.end.max()))
        c, s = outcome.value if outcome.ok else (np.zeros((0, clip_samples), np.int16), np.zeros(0, np.int64))
        if not outcome.ok:  # that piece gives no clips
            skipped.append((corpus.ids[p], f"not rendered ({outcome.error.splitlines()[0][:100]})"))
            warn(f"skipped {corpus.ids[p]}: {skipped[-1][1]}")
        clips.append(torch.from_numpy(c))
        starts.append(torch.from_numpy(s).long())
        track.append(torch.full((len(c),), p, dtype=torch.long))
    if len(skipped) == len(corpus):
        raise UserError(f"no piece of {cfg.audio} could be rendered: {skipped[0][1]}")
    return ({"clips": torch.cat(clips), "track": torch.cat(track), "start": torch.cat(starts)},
            {"ids": corpus.ids, "genres": genres, "seconds": seconds, "skipped": skipped})


def _pcm(clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.round(clips * 32767), -32768, 32767).astype(np.int16))


# ---- the sung lyrics set ---------------------------------------------------------------------------------------------
def lyrics_clips(n: int, sample_rate: int, clip_samples: int, val_fraction: float = 0.1, seed: int = 0,
                 voices: tuple[str, ...] = DEFAULT_VOICES) -> ClipSet:
    """``n`` sung lines as tracks whose audio is padded with silence to whole clips, with their syllable timings."""
    sung_by = "" if voices == DEFAULT_VOICES else "-" + "+".join(voices)
    name = f"n{n}-seed{seed}-sr{sample_rate}-clip{clip_samples}{sung_by}-r{RENDERER}"
    path = cache_root() / "lyrics" / f"{name}.safetensors"
    if not path.is_file():
        clips, track, starts, lines = [], [], [], []
        with Progress(n, "sing lyrics", unit="line") as bar:
            for i, ex in enumerate(lyrics_set(n, seed, sample_rate, voices)):
                audio = np.pad(ex.audio, (0, -len(ex.audio) % clip_samples))
                clips.append(_pcm(audio.reshape(-1, clip_samples)))
                starts.append(torch.arange(len(clips[-1])) * clip_samples)
                track.append(torch.full((len(clips[-1]),), i, dtype=torch.long))
                lines.append({"text": ex.text, "voice": ex.voice, "seconds": len(ex.audio) / sample_rate,
                              "starts": ex.starts.tolist(), "ends": ex.ends.tolist(), "chars": ex.chars.tolist()})
                bar.update(1)
        save_tensors(path, {"clips": torch.cat(clips), "track": torch.cat(track), "start": torch.cat(starts)},
                     {"lines": lines})
    tensors, meta = load_tensors(path)
    lines = meta["lines"]
    tracks = [Track(f"lyrics-{seed}/{i:05d}", path, f"{line['voice']}_voice", LYRICS_GENRE, line["text"],
                    line["seconds"]) for i, line in enumerate(lines)]
    timings = {t.id: {k: line[k] for k in ("starts", "ends", "chars")} for t, line in zip(tracks, lines)}
    splits = split_tracks([t.id for t in tracks], [t.artist for t in tracks], val_fraction)
    return ClipSet(tensors["clips"], tensors["track"], tensors["start"], tracks, splits, sample_rate, [], timings)


# ---- clip sets -------------------------------------------------------------------------------------------------------
def merge(a: ClipSet, b: ClipSet) -> ClipSet:
    """Both sets' tracks and clips in one set (the rates and clip lengths must agree)."""
    if a.sample_rate != b.sample_rate or a.clips.shape[1] != b.clips.shape[1]:
        raise ValueError("clip sets of different rates or clip lengths")
    return ClipSet(torch.cat([a.clips, b.clips]), torch.cat([a.track, b.track + len(a.tracks)]),
                   torch.cat([a.start, b.start]), a.tracks + b.tracks, a.splits + b.splits, a.sample_rate,
                   a.skipped + b.skipped, {**a.timings, **b.timings})


def select(clips: ClipSet, keep: list[bool]) -> ClipSet:
    """The tracks whose ``keep`` is True, with their clips."""
    new_index = torch.full((len(keep),), -1, dtype=torch.long)
    kept = [i for i, k in enumerate(keep) if k]
    new_index[kept] = torch.arange(len(kept))
    rows = new_index[clips.track] >= 0
    tracks = [clips.tracks[i] for i in kept]
    return ClipSet(clips.clips[rows], new_index[clips.track[rows]], clips.start[rows], tracks,
                   [clips.splits[i] for i in kept], clips.sample_rate, clips.skipped,
                   {t.id: clips.timings[t.id] for t in tracks if t.id in clips.timings})


def summary_rows(clips: ClipSet) -> list[dict]:
    """Per artist: tracks, held-out tracks, genres and minutes of audio (what ``prepare`` prints)."""
    seconds = clips.clips.shape[1] / clips.sample_rate
    counts = torch.bincount(clips.track, minlength=len(clips.tracks)).tolist()
    rows = []
    for artist in clips.artists():
        idx = [i for i, t in enumerate(clips.tracks) if t.artist == artist]
        rows.append({"artist": artist, "tracks": len(idx), "val": sum(clips.splits[i] == "val" for i in idx),
                     "genres": ",".join(sorted({clips.tracks[i].genre for i in idx})),
                     "minutes": sum(counts[i] for i in idx) * seconds / 60,
                     "lyrics": sum(bool(clips.tracks[i].lyrics) for i in idx)})
    return rows
