"""Lyrics alignment: where the top prior's encoder-decoder attention looks while each syllable is being sung.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341, section 5.3 and figure 4) shows that one
encoder-decoder attention head of the top prior learns to follow the lyrics: its attention over the characters moves
along the words as they are sung. With the built-in lyrics set the syllable timings are known (``lyrics.py``), so this
is measured: at each top-level position during a syllable, does the head's attention argmax fall on that syllable's
characters? The head is chosen on training lines and scored on held-out ones; beside it, the mean over every head,
chance (a character drawn uniformly) and the linear heuristic (the character at the same fraction of the text as the
position is of the line's sung time), which is how Jukebox aligned its lyrics before training. A head could beat that
heuristic without listening, by knowing how the tunes go (the last note is held); so the stronger baseline is the best
guess from timing alone, learnt from the training lines: for each number of syllables and fraction of the sung time, the
syllable most often sung there. Where that clock is wrong, a head that still finds the sung syllable has heard it.

What the words are worth to the prior is measured too: held-out bits per second of the sung lines read with their own
lyrics and with another line's. A head can only have a reason to follow the words where knowing them lowers the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nexttoken.jukebox.codes import CodeSet
from nexttoken.jukebox.prior import Prior, PriorConfig, bits_per_second, chars_batch, position_seconds
from nexttoken.jukebox.train import window_rows


def cross_patterns(prior: Prior, batch: dict) -> Tensor:
    """(layers, B, heads, T, S) the encoder-decoder attention of every block that has it, for a batch of windows."""
    gpt = prior.gpt
    names = [f"blocks.{i}.cross.hook_pattern" for i, b in enumerate(gpt.blocks) if b.has_cross]
    batch = dict(batch)
    idx = batch.pop("idx")
    batch.pop("targets", None)
    with torch.no_grad():
        _, acts = gpt.run_with_cache(idx, names=names, **prior.condition(**batch))
    return torch.stack([acts[n][..., -idx.shape[1] :, :] for n in names])  # the condition tokens' queries dropped


def sung_syllable(seconds: np.ndarray, timing: dict) -> np.ndarray:
    """(T,) the syllable being sung at each time (-1 between syllables).

    >>> sung_syllable(np.array([0.0, 0.3, 0.6, 0.9]), {"starts": [0.0, 0.5], "ends": [0.4, 0.8]}).tolist()
    [0, 0, 1, -1]
    """
    out = np.full(len(seconds), -1)
    for k, (a, b) in enumerate(zip(timing["starts"], timing["ends"])):
        out[(seconds >= a) & (seconds < b)] = k
    return out


@dataclass
class AlignmentScore:
    accuracy: float  # the chosen head's hit rate on the scored lines
    layer: int  # the chosen head: its block (counting the cross-attention blocks) and head
    head: int
    mean_accuracy: float  # every head's hit rate, averaged
    chance: float  # a character drawn uniformly (the start id included)
    linear: float  # the character at the position's fraction of the sung time
    positions: int  # top-level positions during a syllable
    lines: int
    clock: float = 0.0  # the best guess from timing alone (``TimingClock``)
    off_clock: float = 0.0  # the chosen head's hit rate where that clock is wrong: what it hears
    off_clock_chance: float = 0.0  # a uniformly drawn character's there
    own_bits: float = 0.0  # held-out bits per second of the sung lines with their own lyrics
    swapped_bits: float = 0.0  # and with the next held-out line's lyrics


def timed_lines(codes: CodeSet, split: str) -> list[int]:
    """The segments of ``split`` whose syllable timings are known (the built-in sung lines)."""
    return [s for s in codes.segments(split) if codes.tracks[int(codes.segment_track[s])]["id"] in codes.timings]


def line_windows(codes: CodeSet, cfg: PriorConfig, s: int) -> dict:
    """Back-to-back windows over the whole of segment ``s``, as one batch."""
    starts = list(range(0, len(codes.segment(codes.level("top"), s)), cfg.context))
    return window_rows(codes, cfg, [s] * len(starts), starts)


@torch.no_grad()
def lyrics_bits(prior: Prior, codes: CodeSet, split: str = "val", most: int = 32) -> tuple[float, float]:
    """Bits per second of the top prior on up to ``most`` timed lines of ``split``, read with their own lyrics and
    with the next line's (the last line takes the first's)."""
    cfg = prior.cfg
    device = next(prior.parameters()).device
    lines = timed_lines(codes, split)[:most]
    own = swapped = count = 0
    for i, s in enumerate(lines):
        batch = {k: v.to(device) for k, v in line_windows(codes, cfg, s).items()}
        other = codes.tracks[int(codes.segment_track[lines[(i + 1) % len(lines)]])]["lyrics"]
        own += float(prior(**batch)[1].sum())
        batch["chars"] = chars_batch([other] * len(batch["idx"]), cfg.max_chars).to(device)
        swapped += float(prior(**batch)[1].sum())
        count += int((batch["targets"] >= 0).sum())
    return bits_per_second(own / max(count, 1), cfg), bits_per_second(swapped / max(count, 1), cfg)


def sung_fraction(seconds: np.ndarray, timing: dict) -> np.ndarray:
    """(T,) how far into the line's sung time each time lies, in [0, 1)."""
    a, b = timing["starts"][0], timing["ends"][-1]
    return np.clip((seconds - a) / max(b - a, 1e-9), 0, 1 - 1e-9)


class TimingClock:
    """The best guess of the syllable being sung from timing alone: for a line of S syllables, at a fraction f of its
    sung time, the syllable most often sung there in the training lines (an even spread where they have no example).
    """

    def __init__(self, codes: CodeSet, split: str = "train", buckets: int = 50) -> None:
        self.buckets = buckets
        level = codes.level("top")
        counts: dict[tuple[int, int], np.ndarray] = {}
        for s in timed_lines(codes, split):
            timing = codes.timings[codes.tracks[int(codes.segment_track[s])]["id"]]
            n = len(timing["starts"])
            seconds = position_seconds(codes.segment_start[s : s + 1], len(codes.segment(level, s)), codes.hops[level],
                                       codes.sample_rate)[0].numpy()
            sung = sung_syllable(seconds, timing)
            for b, k in zip(self._bucket(sung_fraction(seconds, timing))[sung >= 0], sung[sung >= 0]):
                counts.setdefault((n, int(b)), np.zeros(n, dtype=np.int64))[k] += 1
        self.table = {key: int(c.argmax()) for key, c in counts.items()}

    def _bucket(self, fraction: np.ndarray) -> np.ndarray:
        return (fraction * self.buckets).astype(int)

    def __call__(self, fraction: np.ndarray, n: int) -> np.ndarray:
        """(T,) the syllable guessed at each fraction of the sung time of a line of ``n`` syllables."""
        return np.array([self.table.get((n, int(b)), int(f * n)) for b, f in zip(self._bucket(fraction), fraction)],
                        dtype=np.int64)


@dataclass
class Hits:
    """Counts over the sung positions of some lines: per (cross block, head), the positions whose attention argmax
    falls on the syllable being sung, in all and where the timing clock misses it."""
    heads: Tensor  # (L, H)
    positions: int
    chance: float  # hits expected of a character drawn uniformly
    linear: float  # hits of the linear heuristic
    clock: float  # hits of the timing clock
    off_heads: Tensor  # (L, H) hits where the timing clock misses
    off_positions: int
    off_chance: float
    lines: int


@torch.no_grad()
def head_hits(prior: Prior, codes: CodeSet, split: str, clock: TimingClock, most: int = 32) -> Hits:
    """Hits of every cross-attention head over the sung positions of up to ``most`` timed lines of ``split``."""
    cfg = prior.cfg
    device = next(prior.parameters()).device
    lines = timed_lines(codes, split)[:most]
    blocks = sum(b.has_cross for b in prior.gpt.blocks)
    hits = Hits(torch.zeros(blocks, cfg.n_head, dtype=torch.long), 0, 0.0, 0.0, 0.0,
                torch.zeros(blocks, cfg.n_head, dtype=torch.long), 0, 0.0, len(lines))
    for s in lines:
        track = codes.tracks[int(codes.segment_track[s])]
        timing, n_chars = codes.timings[track["id"]], len(track["lyrics"][: cfg.max_chars])
        batch = line_windows(codes, cfg, s)
        pattern = cross_patterns(prior, {k: v.to(device) for k, v in batch.items()}).cpu()  # (L, W, H, T, S)
        argmax = pattern.argmax(-1)  # (L, W, H, T) the character each head looks at most
        for w in range(len(batch["idx"])):
            sung = sung_syllable(batch["seconds"][w].numpy(), timing)
            valid = (sung >= 0) & (batch["targets"][w].numpy() >= 0)
            if not valid.any():
                continue
            ranges = np.array(timing["chars"])[sung[valid]] + 1  # (P, 2) memory indices: the start id comes first
            look = argmax[:, w][..., torch.from_numpy(valid)]  # (L, H, P)
            on = (look >= torch.from_numpy(ranges[:, 0])) & (look < torch.from_numpy(ranges[:, 1]))  # (L, H, P)
            chance = (ranges[:, 1] - ranges[:, 0]) / (n_chars + 1)  # (P,)
            frac = sung_fraction(batch["seconds"][w].numpy()[valid], timing)
            guess = 1 + np.floor(frac * n_chars)  # the linear heuristic's character
            timed = clock(frac, len(timing["starts"])) == sung[valid]  # (P,) the timing clock's hits
            hits.heads += on.sum(-1)
            hits.positions += len(frac)
            hits.chance += float(chance.sum())
            hits.linear += float(((guess >= ranges[:, 0]) & (guess < ranges[:, 1])).sum())
            hits.clock += float(timed.sum())
            hits.off_heads += on[..., torch.from_numpy(~timed)].sum(-1)
            hits.off_positions += int((~timed).sum())
            hits.off_chance += float(chance[~timed].sum())
    return hits


def alignment_score(prior: Prior, codes: CodeSet, most: int = 32) -> AlignmentScore | None:
    """The alignment of the top prior on held-out lines (None when the data has no timed lyrics or the prior no
    lyrics), with the head chosen on training lines."""
    if not (prior.cfg.is_top and prior.cfg.lyrics) or not codes.timings:
        return None
    clock = TimingClock(codes)
    train, val = head_hits(prior, codes, "train", clock, most), head_hits(prior, codes, "val", clock, most)
    if not (train.positions and val.positions):
        return None
    layer, head = divmod(int(train.heads.flatten().argmax()), train.heads.shape[1])
    n, off = val.positions, max(val.off_positions, 1)
    return AlignmentScore(float(val.heads[layer, head]) / n, layer, head, float(val.heads.float().mean()) / n,
                          val.chance / n, val.linear / n, n, val.lines, val.clock / n,
                          float(val.off_heads[layer, head]) / off, val.off_chance / off,
                          *lyrics_bits(prior, codes, "val", most))


def plot_alignment(pattern: Tensor, text: str, seconds: np.ndarray, path: str | Path, title: str = "",
                   timing: dict | None = None) -> Path:
    """The attention of one head over the characters (rows) at each top-level position (columns), as Jukebox's
    figure 4; with known timings, each syllable's characters and sung time are outlined."""
    from nexttoken import plots

    chars = ["<start>"] + ["_" if c == " " else c for c in text]
    fig, ax = plots.figure(9, 0.16 * len(chars) + 1.6)
    ax.imshow(pattern[:, : len(chars)].T.numpy(), aspect="auto", origin="lower", cmap="magma",
              extent=(seconds[0], seconds[-1], -0.5, len(chars) - 0.5))
    ax.set_yticks(range(len(chars)))
    ax.set_yticklabels(chars, fontsize=7, family="monospace")
    for a, b, (c0, c1) in zip(*(timing[k] for k in ("starts", "ends", "chars"))) if timing else ():
        ax.add_patch(plots.pyplot().Rectangle((a, c0 + 0.5), b - a, c1 - c0, fill=False, edgecolor="cyan", lw=1))
    ax.set_xlabel("seconds")
    ax.set_title(title or "encoder-decoder attention over the lyrics")
    return plots.save(fig, path)


@torch.no_grad()
def sampled_attention(prior: Prior, codes: Tensor, cond: list[int], total_seconds: float, lyrics: str, layer: int,
                      head: int) -> tuple[Tensor, np.ndarray]:
    """One head's attention (T, S) while the top prior reads a sample's first window of codes (N,) back, and the
    time of each position: what it attended to while it sampled them (cached decoding equals this recomputation)."""
    cfg = prior.cfg
    device = next(prior.parameters()).device
    window = codes[None, : cfg.context].long()
    idx = torch.cat([torch.full_like(window[:, :1], cfg.start_token), window[:, :-1]], dim=1)
    seconds = position_seconds(torch.zeros(1), window.shape[1], cfg.hop, cfg.sample_rate)
    batch = {"idx": idx, "cond": torch.tensor([cond]), "seconds": seconds,
             "total": torch.tensor([total_seconds]), "chars": chars_batch([lyrics], cfg.max_chars)}
    pattern = cross_patterns(prior, {k: v.to(device) for k, v in batch.items()}).cpu()
    return pattern[layer, 0, head], seconds[0].numpy()
