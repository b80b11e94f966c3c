"""The audio a Jukebox model learns from: the user's files, read safely, as fixed-length mono clips with labels.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341) trains on raw mono audio labelled with artist, genre
and lyrics. Here a source is

    a folder    every .wav/.flac/.ogg/.mp3/.aiff under it; artist: the first sub-folder's name; genre: "unknown"
    a CSV       columns path, artist, genre and optionally lyrics (paths relative to the CSV)

Files are decoded by libsndfile (``soundfile``; MP3 where the installed libsndfile reads it), mixed to mono and
resampled by ``soxr`` block by block, so a long file never sits in memory at its original rate. Decoding runs in
worker processes (``nexttoken.isolate``): a file that crashes or hangs the decoder is skipped like an unreadable, empty
or silent one, with one warning line each and a count. Each track is cut into non-overlapping clips of a fixed length;
clips quieter than ``min_db`` (RMS, dBFS) are dropped.

Every track's clips are cached as int16 under ``$NEXTTOKEN_CACHE/jukebox`` (default ``~/.cache/nexttoken/jukebox``),
keyed by the file's path, size and time and by the sample rate, clip length and loudness floor: a preparation that is
killed resumes with the files it has done, and a changed file is read again. A file's verdict is cached too, so the
same file always gives the same verdict; only timeouts, which may come from a busy machine, are tried again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nexttoken.errors import UserError, warn
from nexttoken.isolate import Outcome, map_isolated
from nexttoken.midi.corpus import labels_of
from nexttoken.files import atomic_write_bytes, atomic_write_json, load_tensors, read_json, read_text, save_tensors
from nexttoken.progress import Progress

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
MIN_DB = -50.0  # clips whose RMS is below this (dBFS) are silence, not music


def cache_root() -> Path:
    return Path(os.environ.get("NEXTTOKEN_CACHE", "~/.cache/nexttoken")).expanduser() / "jukebox"


# ---- one file --------------------------------------------------------------------------------------------------------
def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """(samples,) float32 mono audio of a file at ``sample_rate``; an unreadable or empty file is a UserError."""
    try:
        return _decode(path, sample_rate)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _decode(path: str | Path, sample_rate: int, block_seconds: float = 10.0) -> np.ndarray:
    import soundfile
    import soxr

    if not Path(path).is_file():  # libsndfile would call it a "System error"
        raise UserError("no such file" if not Path(path).exists() else "not a file")
    parts = []
    try:
        with soundfile.SoundFile(str(path)) as f:
            stream = None
            if f.samplerate != sample_rate:
                stream = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
            for block in f.blocks(blocksize=max(1, int(block_seconds * f.samplerate)), dtype="float32",
                                  always_2d=True):
                mono = np.ascontiguousarray(block.mean(axis=1))  # (frames,), the channels' average
                parts.append(mono if stream is None else stream.resample_chunk(mono))
            if stream is not None:
                parts.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    except Exception as e:  # libsndfile's message says what is wrong with the file
        raise UserError(f"unreadable audio ({e})") from e
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if not len(audio):
        raise UserError("no audio in the file")
    return np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def extract_clips(audio: np.ndarray, clip_samples: int, min_db: float = MIN_DB) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping clips of ``clip_samples`` (the tail shorter than a clip is dropped) whose RMS level reaches
    ``min_db``: (clips (k, clip_samples) float32, first sample of each clip (k,)).

    >>> clips, starts = extract_clips(np.r_[np.zeros(100), np.ones(250)].astype(np.float32), 100)
    >>> clips.shape, starts.tolist()
    ((2, 100), [100, 200])
    """
    n = len(audio) // clip_samples
    clips = audio[: n * clip_samples].reshape(n, clip_samples)  # (n, clip_samples)
    rms = np.sqrt(np.mean(np.square(clips, dtype=np.float64), axis=1))
    loud = 20 * np.log10(np.maximum(rms, 1e-12)) >= min_db
    return clips[loud], (np.arange(n) * clip_samples)[loud]


def track_clips(item: tuple[str, int, int, float]) -> dict:
    """Read one file and cut it into clips (what the worker processes run): int16 clips, their first samples, the
    track's length in seconds and how many clips were too quiet. A file with no clip is a UserError saying why."""
    path, sample_rate, clip_samples, min_db = item
    audio = _decode(path, sample_rate)
    seconds = len(audio) / sample_rate
    if len(audio) < clip_samples:
        raise UserError(f"shorter ({seconds:.2f} s) than one clip ({clip_samples / sample_rate:g} s)")
    clips, starts = extract_clips(audio, clip_samples, min_db)
    if not len(clips):
        raise UserError(f"silent (no clip reaches {min_db:g} dBFS)")
    pcm = np.clip(np.round(clips * 32767), -32768, 32767).astype(np.int16)
    return {"clips": pcm, "starts": starts, "seconds": seconds, "quiet": len(audio) // clip_samples - len(clips)}


# ---- sources ---------------------------------------------------------------------------------------------------------
@dataclass
class Track:
    id: str  # the path as the source names it
    path: Path
    artist: str
    genre: str = "unknown"
    lyrics: str = ""
    seconds: float = 0.0  # the whole track's length (its clips may cover less of it)


def folder_tracks(root: Path) -> list[Track]:
    """Every audio file under ``root``; its artist is the first sub-folder it sits in (files at the top: the root's)."""
    # not is_file(): a broken link is read, and skipped with the reason, like any other file that cannot be read
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_dir())
    rels = [path.relative_to(root) for path in paths]
    artists = labels_of([rel.parts[0] if len(rel.parts) > 1 else root.resolve().name for rel in rels], "folders",
                        "artist")
    return [Track(rel.as_posix(), path, artist) for rel, path, artist in zip(rels, paths, artists)]


def csv_tracks(csv_path: Path) -> list[Track]:
    """Rows of a CSV with columns path, artist, genre and optionally lyrics; paths are relative to the CSV."""
    reader = csv.DictReader(io.StringIO(read_text(csv_path), newline=""))  # Excel's "CSV UTF-8" has a BOM
    rows = list(reader)
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    names = [c.lower().strip() for c in reader.fieldnames or [] if c]
    twice = next((c for c in ("path", "artist", "genre", "lyrics") if names.count(c) > 1), None)
    if twice:  # a row would keep only the last of them
        raise UserError(f"{csv_path}: two columns are named {twice!r}; keep one")
    cols = {c.lower().strip(): c for c in rows[0] if c}
    missing = [c for c in ("path", "artist", "genre") if c not in cols]
    if missing:
        raise UserError(f"{csv_path}: needs columns path, artist, genre (lyrics optional); "
                        f"missing {', '.join(missing)}")
    lyrics = cols.get("lyrics")
    # A row cut short holds None in the columns it lacks.
    pathless = sum(not (r[cols["path"]] or "").strip() for r in rows)
    if pathless:
        warn(f"{csv_path}: {pathless} row(s) name no path; they are skipped")
        rows = [r for r in rows if (r[cols["path"]] or "").strip()]
    labels = {}
    for kind in ("artist", "genre"):
        names = [(r[cols[kind]] or "").strip() for r in rows]
        if names.count(""):
            warn(f"{csv_path}: {names.count('')} row(s) name no {kind}; they are {kind} 'unknown'")
        labels[kind] = labels_of(names, f"{csv_path}: {kind}s", kind)
    artists, genres = labels["artist"], labels["genre"]
    return [Track(r[cols["path"]], csv_path.parent / r[cols["path"]], artist, genre,
                  (r[lyrics] or "").strip() if lyrics else "") for r, artist, genre in zip(rows, artists, genres)]


def find_tracks(source: str | Path) -> list[Track]:
    source = Path(source).expanduser()
    if source.is_dir():
        tracks = folder_tracks(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        tracks = csv_tracks(source)
    else:
        raise UserError(f"{source}: not a folder of audio files or a CSV of path, artist, genre")
    if not tracks:
        raise UserError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return tracks


def split_tracks(ids: list[str], artists: list[str], val_fraction: float) -> list[str]:
    """'val' for the ``val_fraction`` of each artist's tracks with the smallest hash of their id (at least one when
    the artist has two tracks or more), else 'train'. A hash, not a shuffle: a track keeps its side as the set grows."""
    splits = ["train"] * len(ids)
    by_artist: dict[str, list[int]] = {}
    for i, artist in enumerate(artists):
        by_artist.setdefault(artist, []).append(i)
    for idx in by_artist.values():
        if len(idx) >= 2 and val_fraction > 0:
            idx = sorted(idx, key=lambda i: hashlib.sha1(ids[i].encode()).hexdigest())
            for i in idx[: max(1, round(val_fraction * len(idx)))]:
                splits[i] = "val"
    return splits


# ---- the clip set ----------------------------------------------------------------------------------------------------
@dataclass
class ClipSet:
    clips: torch.Tensor  # (N, clip_samples) int16
    track: torch.Tensor  # (N,) int64 index into tracks
    start: torch.Tensor  # (N,) int64 first sample of the clip in its track
    tracks: list[Track]
    splits: list[str]  # one per track: train | val
    sample_rate: int
    skipped: list[tuple[str, str]]  # (track id, reason) of every file that gave no clip
    # track id -> when each syllable of its lyrics is sung ({"starts", "ends": seconds, "chars": [[a, b], ...]}), for
    # the tracks whose timing is known (the built-in lyrics set)
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clips)

    def audio(self, rows) -> torch.Tensor:
        """(B, clip_samples) float32 in [-1, 1] of the given clip rows."""
        return self.clips[rows].float() / 32768

    def rows(self, split: str) -> torch.Tensor:
        keep = torch.tensor([s == split for s in self.splits], dtype=torch.bool)
        return torch.nonzero(keep[self.track]).flatten()

    def artists(self) -> list[str]:
        return sorted({t.artist for t in self.tracks})

    def genres(self) -> list[str]:
        return sorted({t.genre for t in self.tracks})


def _entry(folder: Path, track: Track) -> Path:
    try:
        st = track.path.stat()
        stamp = f"{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return folder / hashlib.sha1(f"{track.path.resolve()}|{stamp}".encode()).hexdigest()[:20]


def _store(entry: Path, outcome: Outcome) -> None:
    if outcome.ok:
        v = outcome.value
        save_tensors(entry.with_suffix(".safetensors"),
                     {"clips": torch.from_numpy(v["clips"]), "starts": torch.from_numpy(v["starts"]).long()},
                     {"seconds": v["seconds"], "quiet": v["quiet"]})
    elif not outcome.error.startswith("timed out"):  # a busy machine may finish it next time
        atomic_write_json(entry.with_suffix(".json"), {"skipped": outcome.error})


def load_clips(source: str | Path, sample_rate: int, clip_seconds: float, *, min_db: float = MIN_DB,
               val_fraction: float = 0.1, jobs: int = 2, timeout: float = 120.0) -> ClipSet:
    """The clips of a folder or CSV of audio files (see the module docstring), read once and cached per file."""
    tracks = find_tracks(source)
    clip_samples = round(clip_seconds * sample_rate)
    if clip_samples < 1:
        raise UserError(f"clip length {clip_seconds} s holds no sample at {sample_rate} Hz")
    folder = cache_root() / "tracks" / f"sr{sample_rate}-clip{clip_samples}-min{min_db:g}"
    entries = [_entry(folder, t) for t in tracks]
    todo = [i for i, e in enumerate(entries)
            if not e.with_suffix(".safetensors").is_file() and not e.with_suffix(".json").is_file()]
    fresh: dict[int, str] = {}  # verdicts of this run (timeouts are not cached: they are known only from here)
    if todo:
        bar = Progress(len(todo), desc="read audio", unit="file")

        def done(k: int, outcome: Outcome) -> None:
            bar.update(1)
            _store(entries[todo[k]], outcome)
            if not outcome.ok:
                fresh[todo[k]] = outcome.error

        items = [(str(tracks[i].path), sample_rate, clip_samples, min_db) for i in todo]
        try:
            map_isolated(track_clips, items, timeout=timeout, workers=jobs, on_done=done)
        finally:
            bar.close()
    return _assemble(source, tracks, entries, fresh, sample_rate, val_fraction)


def _assemble(source, tracks, entries, fresh, sample_rate, val_fraction) -> ClipSet:
    kept, clips, track_index, starts, skipped, quiet = [], [], [], [], [], 0
    for i, (track, entry) in enumerate(zip(tracks, entries)):
        if i in fresh or entry.with_suffix(".json").is_file():
            reason = fresh.get(i) or read_json(entry.with_suffix(".json"))["skipped"]
            warn(f"skipped {track.id}: {reason}")
            skipped.append((track.id, reason))
            continue
        tensors, meta = load_tensors(entry.with_suffix(".safetensors"))
        clips.append(tensors["clips"])
        starts.append(tensors["starts"])
        track_index.append(torch.full((len(tensors["clips"]),), len(kept), dtype=torch.long))
        quiet += meta["quiet"]
        track.seconds = float(meta["seconds"])
        kept.append(track)
    if not kept:
        raise UserError(f"{source}: none of the {len(tracks)} audio files is usable (unreadable, empty, too short or "
                        f"silent; the warnings above say which)")
    if skipped:
        warn(f"{len(skipped)} of {len(tracks)} audio files skipped")
    if quiet:
        warn(f"{quiet} clips quieter than the loudness floor dropped")
    splits = split_tracks([t.id for t in kept], [t.artist for t in kept], val_fraction)
    return ClipSet(torch.cat(clips), torch.cat(track_index), torch.cat(starts), kept, splits, sample_rate, skipped)


def clip_summary(clips: ClipSet) -> dict:
    """The numbers a run records about its data."""
    seconds = len(clips) * clips.clips.shape[1] / clips.sample_rate
    return {"clips": len(clips), "hours": seconds / 3600, "tracks": len(clips.tracks), "skipped": len(clips.skipped),
            "artists": clips.artists(), "genres": clips.genres(), "sample_rate": clips.sample_rate,
            "val_clips": len(clips.rows("val"))}



def write_wav(path: str | Path, audio, sample_rate: int) -> Path:
    """A 16-bit mono WAV of (samples,) float audio in [-1, 1], written atomically."""
    import io

    import soundfile

    buf = io.BytesIO()
    samples = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1, 1)
    soundfile.write(buf, samples, sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
