"""Training rows from a corpus: MuseNet's augmentation, the header + window rows, and the batches ``fit`` asks for.

Every training row is the piece's header (composer, instruments, start, tempo) followed by a window of its events
starting anywhere in the piece, so the composer token conditions every window, as in MuseNet. Pieces are drawn in
proportion to their number of notes and augmented (transposition, tempo stretch, velocity shift) with a generator
seeded by the step alone, so resume and DDP see exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nexttoken.midi.corpus import Corpus
from nexttoken.midi.notes import DRUMS, Notes
from nexttoken.muse.encoding import Encoded
from nexttoken.muse.model import timing_features


@dataclass
class Augment:
    """MuseNet's augmentation: transposition, tempo (timing) stretch and volume changes, drawn once per piece."""

    transpose: int = 5  # semitones, up or down
    stretch: float = 0.1  # time scaled by a factor in [1/(1+s), 1+s]
    velocity: int = 12  # every velocity shifted by up to this much

    def __call__(self, notes: Notes, rng: np.random.Generator) -> Notes:
        melodic = notes.family != DRUMS
        if self.transpose and melodic.any():
            lo, hi = int(notes.pitch[melodic].min()), int(notes.pitch[melodic].max())
            shift = int(rng.integers(max(-self.transpose, -lo), min(self.transpose, 127 - hi) + 1))
            pitch = np.where(melodic, notes.pitch + shift, notes.pitch).astype(np.int16)
        else:
            pitch = notes.pitch
        factor = float(np.exp(rng.uniform(-1, 1) * np.log1p(self.stretch))) if self.stretch else 1.0
        shift_v = int(rng.integers(-self.velocity, self.velocity + 1)) if self.velocity else 0
        velocity = np.clip(notes.velocity + shift_v, 1, 127).astype(np.int16)
        return Notes(notes.start * factor, notes.end * factor, pitch, velocity, notes.family, notes.tempo / factor)


# ---- rows: header + a window of events --------------------------------------------------------------------------------
def row_positions(enc: Encoded, start: int, context: int) -> np.ndarray:
    """Where in the piece each token of a row comes from: the header, then events ``start ..`` up to the context."""
    H = enc.n_header
    return np.concatenate([np.arange(H), H + np.arange(start, min(start + context - H, len(enc.ids) - H))])


def piece_windows(encoded: list[Encoded], context: int) -> list[tuple[int, int]]:
    """(piece, start) of the rows that score every piece once, window after window: ``make_row`` leaves each
    window's last target to the next window, and the last window predicts nothing after it."""
    return [(k, s) for k, enc in enumerate(encoded)
            for s in range(0, max(len(enc.ids) - enc.n_header, 1), context - enc.n_header)]


def make_row(enc: Encoded, start: int, context: int, count_header: bool = True) -> dict[str, np.ndarray]:
    """One row: the header, then events ``start .. start + context - header`` of the piece; the targets are the
    next tokens, -1 where padded, at the last position (the next window predicts it) and, unless ``count_header``,
    on the header (so that scoring a piece window by window counts every token once)."""
    H = enc.n_header
    positions = row_positions(enc, start, context)
    idx = enc.ids[positions]
    targets = np.full(context, -1, dtype=np.int64)
    targets[: len(idx) - 1] = idx[1:]
    if not count_header:
        targets[: H - 1] = -1
    row_idx = np.zeros(context, dtype=np.int64)
    row_idx[: len(idx)] = idx
    timing = np.zeros((context, 4), dtype=np.int64)
    timing[: len(idx)] = timing_features(enc, positions)
    return {"idx": row_idx, "targets": targets, "timing": timing}


def stack(rows: list[dict], with_timing: bool) -> dict[str, Tensor]:
    batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in ("idx", "targets", "timing")}
    if not with_timing:
        del batch["timing"]
    return batch


class Batches:
    """``batch_fn(step)`` for ``fit``: the global batch of a step, from a generator seeded by (seed, step) alone."""

    def __init__(self, corpus: Corpus, encoding, cfg, batch_size: int, seed: int) -> None:
        self.corpus, self.encoding, self.cfg = corpus, encoding, cfg
        self.batch_size, self.seed = batch_size, seed
        self.train = np.array(corpus.indices("train"))
        weight = np.array([corpus.n_notes(i) for i in self.train], dtype=np.float64)
        self.p = weight / weight.sum()
        self.augment = Augment(cfg.transpose, cfg.stretch, cfg.velocity_shift)
        self.with_timing = cfg.encoding == "musenet"

    def __call__(self, step: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, step])
        rows = []
        for p in rng.choice(self.train, size=self.batch_size, p=self.p):
            notes = self.augment(self.corpus.notes(p), rng)
            enc = self.encoding.encode(notes, self.corpus.labels[p])
            body = len(enc.ids) - enc.n_header
            span = max(1, body - (self.cfg.context - enc.n_header) + 1)
            rows.append(make_row(enc, int(rng.integers(span)), self.cfg.context))
        return stack(rows, self.with_timing)


def validation_set(corpus: Corpus, encoding, limit: int) -> tuple[list[Encoded], list[int]]:
    """The encoded validation pieces (at most ``limit``, spread evenly; 0: all) and their numbers of notes."""
    val = corpus.indices("val")
    if limit and len(val) > limit:  # an even spread over the sorted ids keeps every label represented
        val = [val[int(i)] for i in np.linspace(0, len(val) - 1, limit)]
    encoded = [encoding.encode(corpus.notes(p), corpus.labels[p]) for p in val]
    return encoded, [corpus.n_notes(p) for p in val]


def tokens_per_second(corpus: Corpus, encoding, limit: int = 200) -> float:
    """95th percentile of tokens per second of music over (up to ``limit``) training pieces: sizes the token budget
    of generation."""
    idx = corpus.indices("train")[:limit]
    rates = [len(encoding.encode(corpus.notes(p), corpus.labels[p]).ids) / max(corpus.notes(p).seconds, 1.0)
             for p in idx]
    return float(np.percentile(rates, 95)) if rates else 50.0
