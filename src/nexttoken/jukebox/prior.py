"""Jukebox's priors: the shared GPT over one level's codes, with the conditioning each level gets.

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341 (section 4 and appendix B.2):

- every prior: artist and genre as two prefix condition tokens (the core GPT's ``cond``), and a start token at the
  head of every window, from which the window's first code is predicted;
- the top prior: timing through the additive input (embeddings of the total length of the piece, of the time of
  each position and of the fraction of the piece elapsed, summed), and lyrics through a small non-causal transformer
  over their characters, to which every ``cross_every``-th block of the GPT attends (the core GPT's ``memory``);
- an upsampler (middle, bottom): the codes of the level above, embedded, passed through a few non-causal dilated
  residual conv blocks and a transposed conv that stretches them by the ratio of the hop lengths, added to the input
  of every position (the core GPT's ``x_add``). Its own codes stay causal: only the level above is seen whole.

The timing embeddings and the conditioner's last layer start at zero, so each prior starts as an unconditional model
and learns to use what helps (docs/muse.md measured random starts of extra embeddings drowning the tokens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch import Tensor

from nexttoken.config import check, option
from nexttoken.errors import UserError
from nexttoken.jukebox.vqvae import ResBlock
from nexttoken.model import GPT, GPTConfig

LEVELS = ("top", "middle", "bottom")
CHARS = " abcdefghijklmnopqrstuvwxyz0123456789'.,!?-"
PAD, START, UNKNOWN = 0, 1, 2  # character ids; the characters follow
CHAR_VOCAB = 3 + len(CHARS)


def char_ids(text: str, max_chars: int) -> list[int]:
    """The lyrics encoder's input: a start id (so a song without words still has one key), then one id per character.

    >>> char_ids("Da ki!", 8)
    [1, 7, 4, 3, 14, 12, 43]
    """
    index = {c: i + 3 for i, c in enumerate(CHARS)}
    return [START] + [index.get(c, UNKNOWN) for c in text.lower()[:max_chars]]


def chars_batch(texts: list[str], max_chars: int) -> Tensor:
    """(B, longest + 1) character ids, padded with PAD."""
    rows = [char_ids(t, max_chars) for t in texts]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


@dataclass
class PriorConfig:
    context: int = option(256, "codes per window (the start token and the two condition tokens come on top)", ge=8,
                          le=65536)
    n_layer: int = option(4, "transformer blocks", ge=1, le=256)
    n_head: int = option(4, "attention heads", ge=1, le=256)
    n_embd: int = option(128, "width of the residual stream", ge=8, le=65536)
    dropout: float = option(0.0, "dropout probability", ge=0, lt=1)
    lyrics: bool = option(True, "top prior: attend to the lyrics' characters")
    cross_every: int = option(2, "top prior: cross-attention to the lyrics in every k-th block", ge=1, le=256)
    lyrics_width: int = option(64, "top prior: width of the lyrics encoder", ge=8, le=4096)
    lyrics_layers: int = option(2, "top prior: layers of the lyrics encoder", ge=1, le=64)
    max_chars: int = option(96, "top prior: characters of lyrics kept per piece", ge=1, le=4096)
    timing_buckets: int = option(64, "top prior: buckets of each timing embedding", ge=2, le=100_000)
    conditioner_width: int = option(64, "upsamplers: width of the conv net over the level above", ge=8, le=4096)
    conditioner_depth: int = option(2, "upsamplers: dilated residual blocks of that conv net", ge=0, le=64)
    # Filled in from the codes when the prior is made (the CLI does not set them):
    level: str = option("top", "the level this prior models", choices=LEVELS, flag=False)
    codebook_size: int = option(256, "codes per level", ge=2, flag=False)
    artists: list[str] = option(default_factory=list, help="artist condition tokens", flag=False)
    genres: list[str] = option(default_factory=list, help="genre condition tokens", flag=False)
    ratio: int = option(1, "hop of the level above / this level's hop (upsamplers)", ge=1, flag=False)
    hop: int = option(128, "this level's hop length in samples", ge=1, flag=False)
    sample_rate: int = option(16000, "audio samples per second", ge=1, flag=False)
    max_seconds: float = option(600.0, "the longest piece the timing embeddings cover", gt=0, flag=False)

    @property
    def is_top(self) -> bool:
        return self.level == "top"

    def validate(self) -> "PriorConfig":
        check(self)
        if self.n_embd % self.n_head:
            raise UserError(f"--n-embd {self.n_embd} must be a multiple of --n-head {self.n_head}")
        if self.is_top and self.lyrics and self.lyrics_width % 4:  # only a top prior with lyrics has the encoder
            raise UserError(f"--lyrics-width {self.lyrics_width} must be a multiple of 4 (the encoder's 4 heads)")
        if self.is_top and self.lyrics and self.cross_every > self.n_layer:
            raise UserError(f"--cross-every {self.cross_every} leaves no block of the {self.n_layer} attending to the "
                            f"lyrics; choose at most {self.n_layer} (or --no-lyrics)")
        if self.context % self.ratio:
            raise UserError(f"--context {self.context} must be a multiple of {self.ratio}, the ratio of the hop "
                            f"lengths of the {self.level} level and the level above")
        return self

    def gpt_config(self) -> GPTConfig:
        lyrics = self.is_top and self.lyrics
        # positions: the two condition tokens, the start token, the codes but the last, and the slot that
        # ``sampling.generate`` counts for the last code it samples (never fed back)
        return GPTConfig(vocab_size=self.codebook_size + 1, block_size=self.context + 3, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
                         n_cond=len(self.artists) + len(self.genres), cross_every=self.cross_every if lyrics else 0,
                         memory_dim=self.lyrics_width if lyrics else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def start_token(self) -> int:
        return self.codebook_size


# ---- conditioning modules --------------------------------------------------------------------------------------------
class TimingEmbedding(nn.Module):
    """Total length, time of each position and fraction elapsed, each bucketed and embedded, summed."""

    def __init__(self, n_embd: int, buckets: int, max_seconds: float) -> None:
        super().__init__()
        self.buckets, self.max_seconds = buckets, max_seconds
        self.total, self.time, self.fraction = (nn.Embedding(buckets, n_embd) for _ in range(3))
        for table in (self.total, self.time, self.fraction):
            nn.init.zeros_(table.weight)

    def _bucket(self, x: Tensor) -> Tensor:
        return (x * self.buckets).long().clamp(0, self.buckets - 1)

    def forward(self, seconds: Tensor, total: Tensor) -> Tensor:
        """``seconds`` (B, T) time of each position, ``total`` (B,) length of the piece -> (B, T, n_embd)."""
        total = total[:, None].clamp_min(1e-6)
        return (self.total(self._bucket(total.expand_as(seconds) / self.max_seconds))
                + self.time(self._bucket(seconds / self.max_seconds)) + self.fraction(self._bucket(seconds / total)))


class LyricsEncoder(nn.Module):
    """Characters (B, S) -> (B, S, width): a small non-causal transformer with learned positions."""

    def __init__(self, width: int, layers: int, max_chars: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(CHAR_VOCAB, width)
        self.pos = nn.Embedding(max_chars + 1, width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, chars: Tensor) -> Tensor:
        x = self.embed(chars) + self.pos(torch.arange(chars.shape[1], device=chars.device))  # (B, S, width)
        return self.norm(self.encoder(x, src_key_padding_mask=chars == PAD))


class Conditioner(nn.Module):
    """Codes of the level above (B, N) -> (B, N * ratio, n_embd), each position's share of the conditioning."""

    def __init__(self, codebook_size: int, width: int, depth: int, ratio: int, n_embd: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(codebook_size, width)
        self.blocks = nn.Sequential(*(ResBlock(width, 3 ** i) for i in range(depth)))  # non-causal: all is known
        # kernel 2r, stride r, padding r/2 gives exactly N * r outputs
        self.up = nn.ConvTranspose1d(width, width, 2 * ratio, stride=ratio, padding=ratio // 2)
        self.out = nn.Linear(width, n_embd)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, upper: Tensor) -> Tensor:
        x = self.blocks(self.embed(upper).transpose(1, 2))  # (B, width, N)
        return self.out(self.up(x).transpose(1, 2))  # (B, N * ratio, n_embd)


# ---- the prior -------------------------------------------------------------------------------------------------------
class Prior(nn.Module):
    """A level's prior. Inputs are a window's tokens, the start token first (see ``window_tokens``), and its
    conditioning: ``cond`` (B, 2) artist and genre ids; the top's ``seconds`` (B, T) time of each position and
    ``total`` (B,) piece length, and ``chars`` (B, S) lyrics; an upsampler's ``upper`` (B, T // ratio) codes."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gpt = GPT(cfg.gpt_config())
        if cfg.is_top:
            self.timing = TimingEmbedding(cfg.n_embd, cfg.timing_buckets, cfg.max_seconds)
            if cfg.lyrics:
                self.lyrics = LyricsEncoder(cfg.lyrics_width, cfg.lyrics_layers, cfg.max_chars, cfg.dropout)
        else:
            self.conditioner = Conditioner(cfg.codebook_size, cfg.conditioner_width, cfg.conditioner_depth,
                                           cfg.ratio, cfg.n_embd)

    def condition(self, cond: Tensor, seconds: Tensor | None = None, total: Tensor | None = None,
                  chars: Tensor | None = None, upper: Tensor | None = None) -> dict:
        """The core GPT's conditioning inputs for a window of T positions (the start token and T - 1 codes), which
        predict its T codes: ``seconds`` (B, T) and ``upper`` (B, T // ratio) describe those T codes."""
        out = {"cond": cond, "x_add": self.additive(seconds, total, upper)}
        if self.cfg.is_top and self.cfg.lyrics:
            out["memory"], out["memory_mask"] = self.lyrics(chars), chars != PAD
        return out

    def additive(self, seconds: Tensor | None = None, total: Tensor | None = None,
                 upper: Tensor | None = None) -> Tensor:
        """(B, T, n_embd) the additive input: timing (top) or the level above (upsamplers). Position t (the start
        token, then code t - 1) predicts code t, so it gets code t's share."""
        return self.timing(seconds, total) if self.cfg.is_top else self.conditioner(upper)

    def forward(self, idx: Tensor, targets: Tensor | None = None, **conditioning) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, codebook + 1) and, given targets, the per-token loss (B, T) (0 where targets are -1)."""
        return self.gpt(idx, targets, reduction="none", **self.condition(**conditioning))


def window_tokens(codes: Tensor, start_token: int) -> tuple[Tensor, Tensor]:
    """A window of codes (B, T) -> (input tokens, targets), both (B, T): the start token, then the codes but the
    last; every code is a target, so the first is predicted from the conditioning alone.

    >>> window_tokens(torch.tensor([[5, 6, 7]]), 9)
    (tensor([[9, 5, 6]]), tensor([[5, 6, 7]]))
    """
    start = torch.full_like(codes[:, :1], start_token)
    return torch.cat([start, codes[:, :-1]], dim=1), codes


def position_seconds(first_sample: Tensor, n: int, hop: int, sample_rate: int) -> Tensor:
    """(B,) first sample of a window -> (B, n) the time (s) at which each of its n codes starts."""
    steps = torch.arange(n, dtype=torch.float64, device=first_sample.device)
    return (first_sample[:, None].double() + hop * steps).float() / sample_rate


def bits_per_second(nats_per_code: float, cfg: PriorConfig) -> float:
    """Held-out bits per second of audio at this level: nats per code in bits, times codes per second."""
    return nats_per_code / math.log(2) * cfg.sample_rate / cfg.hop
