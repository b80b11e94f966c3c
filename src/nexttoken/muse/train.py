"""Train a MuseNet-style model: the shared GPT on composer-conditioned token streams, scored in bits per note.

    nexttoken muse train                                   # CPU-sized default on the music21 subset
    nexttoken muse train --corpus music21 --n-layer 12 --n-embd 768 --context 2048 --device cuda
    nexttoken muse train --encoding remi                   # MidiTok's REMI instead, same model, same budget
    nexttoken muse train --resume runs/muse-train-...      # continue a killed run

Every training row is the piece's header (composer, instruments, start, tempo) followed by a window of its events
starting anywhere in the piece, so the composer token conditions every window, as in MuseNet. Pieces are drawn in
proportion to their number of notes and augmented (transposition, tempo stretch, velocity shift) with a generator
seeded by the step alone, so resume and DDP see exactly the rows of an uninterrupted run.

MuseNet's extra embeddings enter the core GPT through its additive per-position input ``x_add``: a timing embedding
of the absolute time (sinusoids of the seconds, shared by every token of one instant) plus the token's index within
its instant (a chord); and two structural embeddings, the position within the piece in 128 parts and a countdown to
its end (the seconds left, in 64 log-spaced steps). When generating, the piece's length is the requested one, so the
countdown tells the model how long it has left to finish. ``--no-timing-embedding``, ``--no-structure-embedding`` and
``--no-countdown-embedding`` drop them.

Bits per note = the validation pieces' total negative log2-likelihood (every token after the composer token, each
counted once) divided by their number of notes: it does not depend on the vocabulary, so encodings compare fairly.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from nexttoken.errors import UserError
from nexttoken.model import GPT, GPTConfig
from nexttoken.muse.corpus import Augment, Corpus, load_corpus
from nexttoken.muse.encoding import QUANTUM, Encoded, make_encoding
from nexttoken.plots import plot_metrics
from nexttoken.runs import Run, default_run_dir, read_json
from nexttoken.training import Dist, LoopConfig, OptimConfig, fit, init_distributed, seed_everything

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


@dataclass
class MuseConfig:
    corpus: str = "music21-small"
    encoding: str = "musenet"  # musenet | remi | midilike
    composers: list[str] = field(default_factory=list)  # filled from the corpus: the composer tokens
    families: list[str] = field(default_factory=list)  # filled from the corpus: the instruments with note tokens
    context: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # CPU-minute runs underfit; dropout only slows them (the GPU script uses 0.1)
    timing_embedding: bool = True
    structure_embedding: bool = True
    countdown_embedding: bool = True
    transpose: int = 5
    stretch: float = 0.1
    velocity_shift: int = 12
    val_pieces: int = 40  # validation pieces scored at every evaluation (0: all of them)
    tokens_per_second: float = 0.0  # 95th percentile over the training pieces: sizes the generation budget

    @property
    def augment(self) -> Augment:
        return Augment(self.transpose, self.stretch, self.velocity_shift)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.context, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout)

    @classmethod
    def from_dict(cls, d: dict) -> "MuseConfig":
        d = {"countdown_embedding": False, **d}  # runs from before the countdown embedding have none
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ---- the model: the core GPT plus MuseNet's extra embeddings ---------------------------------------------------------
class MusicalEmbedding(nn.Module):
    """MuseNet's timing and structural embeddings from ``where`` (B, T, 4) = (time in quanta, index within the
    instant, part of the piece 0..127, countdown step); the sum goes into the GPT as ``x_add``."""

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
        # help (the gradients of an embedding do not depend on its value). Random embeddings at the tokens' own scale
        # cost 0.5-1.3 bits per note over a 300-step CPU run: they drown the token identity while training is young.
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, where: Tensor) -> Tensor:
        quanta, chord, part, left = where.unbind(-1)  # each (B, T)
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
    """The core ``GPT`` with the optional ``MusicalEmbedding``; ``where`` is passed by batches and by the sampler."""

    def __init__(self, gpt_cfg: GPTConfig, timing: bool, structure: bool, countdown: bool = False) -> None:
        super().__init__()
        self.gpt = GPT(gpt_cfg)
        extras = timing or structure or countdown
        self.music = MusicalEmbedding(gpt_cfg.n_embd, timing, structure, countdown) if extras else None

    @property
    def cfg(self) -> GPTConfig:
        return self.gpt.cfg

    def new_cache(self, batch_size: int, max_len: int | None = None):
        return self.gpt.new_cache(batch_size, max_len)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, where: Tensor | None = None, cache=None,
                reduction: str = "mean"):
        x_add = self.music(where) if self.music is not None and where is not None else None
        return self.gpt(idx, targets, x_add=x_add, cache=cache, reduction=reduction)


def build_model(cfg: MuseConfig, vocab_size: int) -> MuseModel:
    extras = cfg.encoding == "musenet"  # the extra embeddings read MuseNet tokens' times
    return MuseModel(cfg.gpt_config(vocab_size), cfg.timing_embedding and extras, cfg.structure_embedding and extras,
                     cfg.countdown_embedding and extras)


# ---- rows: header + a window of events --------------------------------------------------------------------------------
def where_of(enc: Encoded, positions: np.ndarray) -> np.ndarray:
    """(len(positions), 4) timing inputs of the tokens at ``positions`` of the piece (header tokens: zeros)."""
    if enc.times is None:
        return np.zeros((len(positions), 4), dtype=np.int64)
    t = enc.times
    quanta = t.quanta[positions]
    part = np.minimum(quanta * N_PARTS // t.total_quanta, N_PARTS - 1)
    where = np.stack([quanta, np.minimum(t.chord_index[positions], MAX_CHORD - 1), part,
                      countdown_step(t.total_quanta - quanta)], axis=1)
    where[positions < enc.n_header] = 0
    return where


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
    where = np.zeros((context, 4), dtype=np.int64)
    where[: len(idx)] = where_of(enc, positions)
    return {"idx": row_idx, "targets": targets, "where": where}


def stack(rows: list[dict], with_where: bool) -> dict[str, Tensor]:
    batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in ("idx", "targets", "where")}
    if not with_where:
        del batch["where"]
    return batch


class Batches:
    """``batch_fn(step)`` for ``fit``: the global batch of a step, from a generator seeded by (seed, step) alone."""

    def __init__(self, corpus: Corpus, encoding, cfg: MuseConfig, batch_size: int, seed: int) -> None:
        self.corpus, self.encoding, self.cfg = corpus, encoding, cfg
        self.batch_size, self.seed = batch_size, seed
        self.train = np.array(corpus.indices("train"))
        weight = np.array([corpus.n_notes(i) for i in self.train], dtype=np.float64)
        self.p = weight / weight.sum()
        self.augment = cfg.augment
        self.with_where = cfg.encoding == "musenet"

    def __call__(self, step: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, step])
        rows = []
        for p in rng.choice(self.train, size=self.batch_size, p=self.p):
            notes = self.augment(self.corpus.notes(p), rng)
            enc = self.encoding.encode(notes, self.corpus.labels[p])
            body = len(enc.ids) - enc.n_header
            span = max(1, body - (self.cfg.context - enc.n_header) + 1)
            rows.append(make_row(enc, int(rng.integers(span)), self.cfg.context))
        return stack(rows, self.with_where)


# ---- bits per note ---------------------------------------------------------------------------------------------------
@dataclass
class Score:
    bits_per_note: float
    nats_per_token: float
    tokens_per_note: float
    notes: int
    tokens: int
    by_kind: dict[str, float] = field(default_factory=dict)  # bits per note spent on each kind of token
    masked_bits_per_note: float | None = None  # under the sampler's rules (MuseNet encoding only)


def score_pieces(model: MuseModel, encoded: list[Encoded], n_notes: list[int], context: int,
                 batch_size: int = 16, kinds: np.ndarray | None = None, allowed_next=None) -> Score:
    """Total negative log-likelihood of whole pieces, window by window, every token after the composer once; with
    ``kinds`` (the kind of each token id), also split by the kind of the predicted token. With ``allowed_next``
    (``MuseNetEncoding.allowed_next``), ``masked_bits_per_note`` scores the model under the rules its sampler
    enforces: each prediction renormalised over the tokens those rules allow."""
    windows = piece_windows(encoded, context)
    device = next(model.parameters()).device
    with_where = model.music is not None
    nats = masked_nats = 0.0
    names, kind_index = np.unique(kinds, return_inverse=True) if kinds is not None else ([], None)
    kind_nats = np.zeros(len(names))
    allowed_of: dict[int, np.ndarray] = {}  # the current piece's (T, vocab) rules
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        batch = {k: v.to(device) for k, v in
                 stack([make_row(encoded[k], s, context, count_header=s == 0) for k, s in chunk], with_where).items()}
        targets = batch.pop("targets")
        logits, loss = model(batch.pop("idx"), targets, reduction="none", **batch)
        nats += loss.double().sum().item()
        if kind_index is not None:
            t = targets.cpu().numpy()
            kind_nats += np.bincount(kind_index[t[t >= 0]], weights=loss.double().cpu().numpy()[t >= 0],
                                     minlength=len(names))
        if allowed_next is not None:
            masks = []
            for k, s in chunk:
                if k not in allowed_of:
                    allowed_of.clear()
                    allowed_of[k] = allowed_next(encoded[k].ids, encoded[k].n_header)
                masks.append(_row_rules(allowed_of[k], encoded[k], s, context))
            allowed = torch.from_numpy(np.stack(masks)).to(device)
            safe = targets.clamp(min=0)[..., None]
            allowed.scatter_(-1, safe, True)  # a token the rules forbid (none in encoded music) is scored unmasked
            logp = logits.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)
            masked_nats += (-logp.gather(-1, safe)[..., 0] * (targets >= 0)).double().sum().item()
    count = sum(len(e.ids) - 1 for e in encoded)
    notes = max(sum(n_notes), 1)
    by_kind = {name: float(v / math.log(2) / notes) for name, v in zip(names, kind_nats) if v > 0}
    masked = masked_nats / math.log(2) / notes if allowed_next is not None else None
    return Score(nats / math.log(2) / notes, nats / max(count, 1), (count + len(encoded)) / notes,
                 sum(n_notes), count + len(encoded), by_kind, masked)


def _row_rules(allowed: np.ndarray, enc: Encoded, start: int, context: int) -> np.ndarray:
    """The (context, vocab) rules of the row ``make_row(enc, start, context)``: position j predicts what follows it in
    the piece, and the header's last token predicts the window's first event, so it takes the rules after the event
    before the window."""
    H = enc.n_header
    positions = row_positions(enc, start, context)
    positions[H - 1] = H + start - 1
    out = np.ones((context, allowed.shape[1]), dtype=bool)
    out[: len(positions)] = allowed[positions]
    return out


def validation_set(corpus: Corpus, encoding, limit: int) -> tuple[list[Encoded], list[int]]:
    val = corpus.indices("val")
    if limit and len(val) > limit:  # an even spread over the sorted ids keeps every label represented
        val = [val[int(i)] for i in np.linspace(0, len(val) - 1, limit)]
    encoded = [encoding.encode(corpus.notes(p), corpus.labels[p]) for p in val]
    return encoded, [corpus.n_notes(p) for p in val]


# ---- the command -------------------------------------------------------------------------------------------------------
def train(cfg: MuseConfig, optim: OptimConfig, loop: LoopConfig, out: Path | None = None, device: str = "auto",
          resume: Path | None = None, jobs: int = 2, quiet: bool = False) -> Path:
    """Train and write a run folder; returns its path. With ``resume``, the run's own config is used."""
    dist = init_distributed(device)
    if resume is not None:
        run = Run.open(resume, enabled=dist.is_main)
        cfg = MuseConfig.from_dict(run.config["muse"])
        optim = OptimConfig(**run.config["optim"])
        loop = LoopConfig(**run.config["loop"])
    seed_everything(loop.seed)
    corpus = _load_corpus_once(cfg.corpus, jobs, dist)
    if not cfg.composers:
        cfg.composers = corpus.composers()
    if not cfg.families:
        cfg.families = corpus.families()
    if len(corpus.indices("train")) == 0:
        raise UserError(f"{cfg.corpus}: no training pieces")
    encoding = make_encoding(cfg.encoding, cfg.composers, cfg.families)
    if not cfg.tokens_per_second:
        cfg.tokens_per_second = tokens_per_second(corpus, encoding)
    model = build_model(cfg, encoding.vocab_size).to(dist.device)
    if resume is None:
        run = Run.create(out or default_run_dir("muse", "train"),
                         {"muse": asdict(cfg), "gpt": model.cfg.to_dict(), "optim": asdict(optim), "loop": asdict(loop)},
                         enabled=dist.is_main)
    val_encoded, val_notes = validation_set(corpus, encoding, cfg.val_pieces)

    kinds = encoding.token_kinds()
    by_kind: dict[str, float] = {}

    rules = getattr(encoding, "allowed_next", None)

    def eval_fn(m: MuseModel) -> dict:
        s = score_pieces(m, val_encoded, val_notes, cfg.context, kinds=kinds, allowed_next=rules)
        by_kind.clear()
        by_kind.update(s.by_kind)
        out = {"val_loss": s.nats_per_token, "bits_per_note": s.bits_per_note}
        return out if s.masked_bits_per_note is None else {**out, "masked_bits_per_note": s.masked_bits_per_note}

    t0 = time.time()
    batches = Batches(corpus, encoding, cfg, loop.batch_size, loop.seed)
    result = fit(model, batches, optim, loop, run, dist=dist, eval_fn=eval_fn, resume=resume is not None)
    record = result.record
    if not by_kind:  # resuming a finished run trains nothing: keep what its summary says
        summary = run.path / "summary.json"
        by_kind.update(read_json(summary).get("bits_per_note_by_kind", {}) if summary.is_file() else {})
    if dist.is_main:
        plot_metrics(run.metrics(), ["train_loss", "val_loss"], run.path / "loss.png", ylabel="nats per token",
                     title=f"{cfg.encoding}: loss")
        plot_metrics(run.metrics(), ["bits_per_note"], run.path / "bits_per_note.png", ylabel="bits per note",
                     title="validation bits per note")
        run.write_summary({
            "bits_per_note": record.get("bits_per_note"), "bits_per_note_by_kind": by_kind,
            "masked_bits_per_note": record.get("masked_bits_per_note"),
            "val_loss": record.get("val_loss"),
            "train_loss": record.get("train_loss"), "steps": result.steps, "encoding": cfg.encoding,
            "params": sum(p.numel() for p in model.parameters()), "vocab_size": encoding.vocab_size,
            "tokens_per_note": score_tokens_per_note(val_encoded, val_notes), "train_seconds": time.time() - t0,
            "device": str(dist.device), "corpus": cfg.corpus, "composers": cfg.composers,
            "train_pieces": len(corpus.indices("train")), "val_pieces": len(corpus.indices("val")),
            "skipped_files": corpus.skipped,
        })
    return run.path


def score_tokens_per_note(encoded: list[Encoded], n_notes: list[int]) -> float:
    return sum(len(e.ids) for e in encoded) / max(sum(n_notes), 1)


def tokens_per_second(corpus: Corpus, encoding, limit: int = 200) -> float:
    """95th percentile of tokens per second of music over (up to ``limit``) training pieces."""
    idx = corpus.indices("train")[:limit]
    rates = [len(encoding.encode(corpus.notes(p), corpus.labels[p]).ids) / max(corpus.notes(p).seconds, 1.0)
             for p in idx]
    return float(np.percentile(rates, 95)) if rates else 50.0


def _load_corpus_once(name: str, jobs: int, dist: Dist) -> Corpus:
    """Rank 0 prepares the cache; the other ranks wait, then read it."""
    if dist.enabled:
        import torch.distributed as torch_dist

        if dist.is_main:
            corpus = load_corpus(name, jobs)
        torch_dist.barrier()
        if not dist.is_main:
            corpus = load_corpus(name, jobs)
        return corpus
    return load_corpus(name, jobs)


def load_run(path: Path, device: torch.device) -> tuple[MuseModel, object, MuseConfig, Run]:
    """The trained model of a run folder, its encoding and config (for generate, evaluate, embeddings)."""
    run = Run.open(path)
    if "muse" not in run.config:
        raise UserError(f"{path} is not a muse training run")
    if not run.has_checkpoint():
        raise UserError(f"{path} has no checkpoint yet")
    cfg = MuseConfig.from_dict(run.config["muse"])
    encoding = make_encoding(cfg.encoding, cfg.composers, cfg.families)
    model = build_model(cfg, encoding.vocab_size)
    run.load_checkpoint(model, restore_rng_state=False)
    return model.to(device).eval(), encoding, cfg, run
