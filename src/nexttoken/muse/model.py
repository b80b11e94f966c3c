"""The MuseNet model: the core GPT plus MuseNet's timing and structural embeddings, and the features they read.

MuseNet's extra embeddings enter the core GPT through its additive per-position input ``x_add``: a timing embedding
of the absolute time (sinusoids of the seconds, shared by every token of one instant) plus the token's index within
its instant (a chord); and two structural embeddings, the position within the piece in 128 parts and a countdown to
its end (the seconds left, in 64 log-spaced steps). When generating, the piece's length is the requested one, so the
countdown tells the model how long it has left to finish.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nexttoken.model import GPT, GPTConfig
from nexttoken.muse.encoding import QUANTUM, Encoded

N_PARTS = 128  # MuseNet's structural embedding: the piece in 128 parts
MAX_CHORD = 32  # index within an instant, clamped
N_FREQ = 16  # sinusoid pairs of the timing embedding, periods from 40 ms to 20 minutes
N_COUNTDOWN = 64  # countdown steps: 0 for the header, then 1 + 6 log2(1 + seconds left), clamped (24 minutes)


def countdown_step(quanta_left: np.ndarray) -> np.ndarray:
    """The countdown embedding's index for the time left to the end of the piece (in 10 ms quanta).

    >>> countdown_step(np.array([0, 100, 6000, 10**7])).tolist()
    [1, 7, 36, 63]
    """
    seconds = np.maximum(quanta_left, 0) * QUANTUM
    return np.minimum(1 + np.floor(6 * np.log2(1 + seconds)).astype(np.int64), N_COUNTDOWN - 1)


def timing_features(enc: Encoded, positions: np.ndarray) -> np.ndarray:
    """(len(positions), 4) inputs of the extra embeddings for the tokens at ``positions`` of the piece: time in
    quanta, index within the instant, part of the piece (0..127), countdown step; zeros for header tokens."""
    if enc.times is None:
        return np.zeros((len(positions), 4), dtype=np.int64)
    t = enc.times
    quanta = t.quanta[positions]
    part = np.minimum(quanta * N_PARTS // t.total_quanta, N_PARTS - 1)
    timing = np.stack([quanta, np.minimum(t.chord_index[positions], MAX_CHORD - 1), part,
                       countdown_step(t.total_quanta - quanta)], axis=1)
    timing[positions < enc.n_header] = 0
    return timing


class MusicalEmbedding(nn.Module):
    """MuseNet's timing and structural embeddings of ``timing_features`` (B, T, 4); the sum goes into the GPT as
    ``x_add``."""

    def __init__(self, n_embd: int, timing: bool, structure: bool, countdown: bool = False) -> None:
        super().__init__()
        self.timing, self.structure, self.countdown = timing, structure, countdown
        if timing:
            periods = 0.04 * (30_000 ** (torch.arange(N_FREQ) / (N_FREQ - 1)))  # seconds, 0.04 .. 1200
            self.register_buffer("omega", 2 * math.pi / periods, persistent=False)
            self.time_proj = nn.Linear(2 * N_FREQ, n_embd, bias=False)
            self.chord_emb = nn.Embedding(MAX_CHORD, n_embd)
        if structure:
            self.part_emb = nn.Embedding(N_PARTS, n_embd)
        if countdown:
            self.countdown_emb = nn.Embedding(N_COUNTDOWN, n_embd)
        # Zero at the start, so the model starts as the plain GPT and learns to use time and place as far as they
        # help (the gradients of an embedding do not depend on its value); random embeddings at the tokens' own scale
        # drown the token identity while training is young (docs/muse.md).
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, features: Tensor) -> Tensor:
        quanta, chord, part, left = features.unbind(-1)  # each (B, T)
        out = 0
        if self.timing:
            angle = (quanta.float() * QUANTUM)[..., None] * self.omega  # (B, T, N_FREQ)
            out = out + self.time_proj(torch.cat([angle.sin(), angle.cos()], dim=-1)) + self.chord_emb(chord)
        if self.structure:
            out = out + self.part_emb(part)
        if self.countdown:
            out = out + self.countdown_emb(left)
        return out


class MuseModel(nn.Module):
    """The core ``GPT`` with the optional ``MusicalEmbedding``; batches and the sampler pass ``timing`` (B, T, 4), the
    features of ``timing_features``, whenever ``uses_timing``."""

    def __init__(self, gpt_cfg: GPTConfig, timing: bool, structure: bool, countdown: bool = False) -> None:
        super().__init__()
        self.gpt = GPT(gpt_cfg)
        extras = timing or structure or countdown
        self.music = MusicalEmbedding(gpt_cfg.n_embd, timing, structure, countdown) if extras else None

    @property
    def cfg(self) -> GPTConfig:
        return self.gpt.cfg

    @property
    def uses_timing(self) -> bool:
        return self.music is not None

    def new_cache(self, batch_size: int, max_len: int | None = None):
        return self.gpt.new_cache(batch_size, max_len)

    def _x_add(self, timing: Tensor | None) -> Tensor | None:
        return self.music(timing) if self.music is not None and timing is not None else None

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, timing: Tensor | None = None, cache=None,
                reduction: str = "mean"):
        return self.gpt(idx, targets, x_add=self._x_add(timing), cache=cache, reduction=reduction)

    def hidden_and_loss(self, idx: Tensor, targets: Tensor, *, timing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The final hidden states (B, T, n_embd) and the per-token loss (B, T), zero where ``targets`` is -1: what
        the inner critic reads of a piece."""
        hidden = self.gpt.hidden(idx, x_add=self._x_add(timing))
        logits = self.gpt.head(hidden)  # (B, T, vocab)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
        return hidden, loss.view(targets.shape)

    def token_embeddings(self, ids: Tensor) -> Tensor:
        """(len(ids), n_embd) the input embeddings of the token ids (a copy, out of the graph)."""
        return self.gpt.tok_emb.weight[ids].detach().clone()


def build_model(cfg, vocab_size: int) -> MuseModel:
    """The model a ``MuseConfig`` describes; the extra embeddings only for MuseNet tokens, whose times they read."""
    extras = cfg.encoding == "musenet"
    return MuseModel(cfg.gpt_config(vocab_size), cfg.timing_embedding and extras, cfg.structure_embedding and extras,
                     cfg.countdown_embedding and extras)
