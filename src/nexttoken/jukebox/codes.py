"""Audio as codes: every track's codes at every level, encoded once by the VQ-VAE and cached, so that the priors train
without the VQ-VAE in memory and never encode audio again; and the ``.npz`` files of ``encode`` and ``decode``.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341) trains its priors on the codes of a frozen VQ-VAE.
The clips of a track that follow each other (``audio.ClipSet`` drops quiet ones) form a segment, encoded as one piece
of audio (in stretches of at most ``CHUNK_SECONDS``), so a prior's window may span clips. ``RUN/codes.safetensors``
holds, per level, the segments' codes end to end with their offsets, and per segment its track and first sample;
the tracks' labels, lyrics, lengths, splits and syllable timings travel in its header.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nexttoken.errors import UserError
from nexttoken.jukebox.audio import ClipSet
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_bytes, load_tensors, save_tensors

CHUNK_SECONDS = 30.0  # longer segments are encoded in stretches of this length (bounded memory)


@dataclass
class CodeSet:
    levels: tuple[str, ...]  # bottom ... top
    hops: tuple[int, ...]
    codebook_size: int
    sample_rate: int
    codes: list[torch.Tensor]  # per level, (total,) int64: every segment's codes end to end
    offsets: list[torch.Tensor]  # per level, (segments + 1,) segment s owns codes[offsets[s]:offsets[s + 1]]
    segment_track: torch.Tensor  # (segments,) index into tracks
    segment_start: torch.Tensor  # (segments,) first sample of the segment in its track
    tracks: list[dict]  # id, artist, genre, lyrics, seconds, split
    artists: list[str]
    genres: list[str]
    timings: dict = field(default_factory=dict)  # track id -> syllable timings (see audio.ClipSet)
    step: int = 0  # the VQ-VAE step that encoded them

    def level(self, name: str) -> int:
        if name not in self.levels:
            raise UserError(f"--level {name}: this VQ-VAE's levels are {', '.join(self.levels)}")
        return self.levels.index(name)

    def segment(self, level: int, s: int) -> torch.Tensor:
        return self.codes[level][self.offsets[level][s] : self.offsets[level][s + 1]]

    def segments(self, split: str) -> list[int]:
        return [s for s, t in enumerate(self.segment_track.tolist()) if self.tracks[t]["split"] == split]

    def save(self, path: Path) -> None:
        tensors = {"segment_track": self.segment_track, "segment_start": self.segment_start}
        for i, name in enumerate(self.levels):
            tensors[f"{name}.codes"] = self.codes[i].to(torch.int16 if self.codebook_size <= 32768 else torch.int32)
            tensors[f"{name}.offsets"] = self.offsets[i]
        meta = {k: getattr(self, k) for k in ("levels", "hops", "codebook_size", "sample_rate", "tracks", "artists",
                                              "genres", "timings", "step")}
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: Path) -> "CodeSet":
        tensors, meta = load_tensors(path)
        try:
            return cls(tuple(meta["levels"]), tuple(meta["hops"]), meta["codebook_size"], meta["sample_rate"],
                       [tensors[f"{n}.codes"].long() for n in meta["levels"]],
                       [tensors[f"{n}.offsets"] for n in meta["levels"]], tensors["segment_track"],
                       tensors["segment_start"], meta["tracks"], meta["artists"], meta["genres"], meta["timings"],
                       meta["step"])
        except KeyError as e:
            raise UserError(f"{path} is damaged (no {e}); delete it and it is encoded again") from None


def segments_of(clips: ClipSet) -> list[torch.Tensor]:
    """Rows of ``clips`` grouped into runs of consecutive clips of one track, in track and time order."""
    track, start = clips.track.numpy(), clips.start.numpy()
    order = np.lexsort((start, track))  # by track, then time
    new_run = np.ones(len(order), dtype=bool)
    new_run[1:] = (np.diff(track[order]) != 0) | (np.diff(start[order]) != clips.clips.shape[1])
    return [torch.from_numpy(run) for run in np.split(order, np.flatnonzero(new_run)[1:])]


@torch.no_grad()
def encode_clips(vqvae, clips: ClipSet, step: int = 0, progress: bool = True, log: Path | None = None) -> CodeSet:
    """Every segment of ``clips`` encoded at every level (the model in eval mode, on its device); progress on stderr
    and in ``log``."""
    cfg = vqvae.config
    device = next(vqvae.parameters()).device
    vqvae.eval()
    runs = segments_of(clips)
    chunk = max(1, int(CHUNK_SECONDS * cfg.sample_rate) // cfg.hops[-1]) * cfg.hops[-1]
    per_level: list[list[torch.Tensor]] = [[] for _ in cfg.hops]  # per level, one (N,) tensor per segment
    with Progress(len(runs), "encode audio", unit="segment", enabled=progress, log=log) as bar:
        for rows in runs:
            audio = clips.audio(rows).reshape(1, -1)  # (1, samples) the segment's clips end to end
            pieces = [vqvae.encode(piece.to(device)) for piece in audio.split(chunk, dim=1)]
            for i in range(len(cfg.hops)):
                per_level[i].append(torch.cat([p[i][0].cpu() for p in pieces]))
            bar.update(1)
    codes = [torch.cat(level) for level in per_level]
    offsets = [torch.tensor(np.cumsum([0] + [len(c) for c in level]), dtype=torch.long) for level in per_level]
    tracks = [{"id": t.id, "artist": t.artist, "genre": t.genre, "lyrics": t.lyrics, "seconds": t.seconds,
               "split": s} for t, s in zip(clips.tracks, clips.splits)]
    return CodeSet(cfg.levels, cfg.hops, cfg.codebook_size, cfg.sample_rate, codes, offsets,
                   torch.stack([clips.track[rows[0]] for rows in runs]),
                   torch.stack([clips.start[rows[0]] for rows in runs]), tracks, clips.artists(), clips.genres(),
                   dict(clips.timings), step)


# ---- the files of `encode` and `decode` ------------------------------------------------------------------------------
def write_npz(path: str | Path, codes: list[torch.Tensor], levels, hops, sample_rate: int, samples: int) -> Path:
    """One file of every level's codes ((N,) or (B, N) each, named by level) and what decoding needs."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{name: c.cpu().numpy().astype(np.int32) for name, c in zip(levels, codes)},
             hops=np.array(hops), sample_rate=np.array(sample_rate), samples=np.array(samples))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


@dataclass
class CodesFile:
    codes: dict[str, np.ndarray]  # level name -> (N,) or (B, N) codes
    hops: tuple[int, ...]
    sample_rate: int
    samples: int  # the audio's length before padding to whole codes


def read_npz(path: str | Path) -> CodesFile:
    """A file ``write_npz`` wrote; anything else is one clear error."""

    def refused(why: str) -> UserError:
        return UserError(f"{path}: not a codes file of `nexttoken jukebox encode` ({why})")

    try:
        z = np.load(path)
        if not isinstance(z, np.lib.npyio.NpzFile):  # an .npy file: one array, no levels
            raise refused("one array, not named levels")
        with z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise refused(type(e).__name__) from None
    meta = []
    for name, dims in (("hops", 1), ("sample_rate", 0), ("samples", 0)):
        a = arrays.pop(name, None)
        if a is None or a.dtype.kind not in "iu" or a.ndim != dims or (a <= 0).any():
            raise refused(f"{name} is not " + ("a list of positive whole numbers" if dims else "one positive whole "
                                                  "number"))
        meta.append(tuple(int(h) for h in a) if dims else int(a))
    for level, c in arrays.items():
        if c.dtype.kind not in "iu" or c.ndim not in (1, 2):
            raise refused(f"{level} is not a row, or rows, of whole numbers")
        if not c.size:
            raise refused(f"{level} holds no codes")
    return CodesFile(arrays, *meta)
