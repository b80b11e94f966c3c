"""Compose with a trained model: a composer, instruments, optionally the opening notes of a real piece, a length.

    nexttoken muse generate RUN --composer bach --instruments piano,strings --seconds 30 --n 4
    nexttoken muse generate RUN --composer folk_ryan --prime nocturne.mid --prime-notes 6 --temperature 0.9 --top-p 0.95

The prompt is the header MuseNet would see (``composer:bach inst:piano inst:strings start tempo:120``) followed by
the prime's first notes. The core sampler draws the rest with the KV cache and a token mask that keeps every sample
well formed: no header tokens after the header; a note-off only for a note that is sounding (the model's wish to end
a note goes to a note that can end, instead of leaving it hanging); nothing but ``end`` once the requested length is
reached, and only waits when the token budget runs short. The last wait is shortened to land on the length, so each
piece lasts exactly ``--seconds``. The requested instruments are strong suggestions, as in MuseNet (they sit in the
header); ``--strict`` also masks the note-ons of every other instrument.

A piece longer than the context is sampled window by window: each new window is the header plus the second half of
the previous one, so the composer token conditions every token, as in training.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nexttoken.errors import UserError
from nexttoken.muse.encoding import (DRUMS, FAMILIES, MAX_WAIT, QUANTUM, Encoded, MuseNetEncoding, Notes,
                                     encode_events, header, read_midi, token_times)
from nexttoken.muse.train import MuseModel, where_of
from nexttoken.sampling import sample


@dataclass
class GenerateConfig:
    composer: str = ""  # default: the run's first composer
    instruments: list[str] = field(default_factory=lambda: ["piano"])
    strict: bool = False
    prime: str | None = None
    prime_notes: int = 6
    seconds: float = 30.0
    temperature: float = 1.0
    top_p: float = 0.95
    n: int = 4
    tempo: float = 120.0  # the header's tempo token when there is no prime (then the prime's own)
    seed: int = 0


@dataclass
class Piece:
    ids: np.ndarray  # the whole token stream, header included
    notes: Notes
    prime_seconds: float
    finished: bool  # reached ``end`` (always, unless the token budget ran out)


def prime_events(path: str, n_notes: int, encoding: MuseNetEncoding, fallback: str) -> tuple[np.ndarray, float, float]:
    """The events of ``path`` up to its ``n_notes``-th note-on, its tempo and how many seconds they span. Instruments
    the model has no tokens for are played by ``fallback``."""
    notes = read_midi(path)
    if not len(notes):
        raise UserError(f"{path}: no notes to prime with")
    vocab = encoding.vocab
    missing = vocab.note_base[notes.family] < 0
    family = np.where(missing, FAMILIES.index(fallback), notes.family).astype(np.int8)
    notes = Notes(notes.start - notes.start.min(), notes.end - notes.start.min(), notes.pitch, notes.velocity,
                  family, notes.tempo)
    events = encode_events(notes, vocab)
    on = np.flatnonzero(vocab.is_note_on(events))
    events = events[: on[min(n_notes, len(on)) - 1] + 1]
    return events, notes.tempo, float(vocab.wait_value[events].sum() * QUANTUM)


def generate_pieces(model: MuseModel, encoding, cfg: GenerateConfig, device: torch.device,
                    tokens_per_second: float = 40.0, use_cache: bool = True) -> list[Piece]:
    """``cfg.n`` pieces, sampled as one batch (``use_cache=False`` recomputes every window: for benchmarks)."""
    if device.type != "cpu":
        return _generate(model, encoding, cfg, device, tokens_per_second, use_cache)
    # Decoding a few rows at a time is latency-bound: on a CPU one thread beats several, which spend each tiny
    # matmul waking each other (30x slower here when another process holds a core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(model, encoding, cfg, device, tokens_per_second, use_cache)
    finally:
        torch.set_num_threads(threads)


def _generate(model: MuseModel, encoding, cfg: GenerateConfig, device: torch.device,
              tokens_per_second: float, use_cache: bool) -> list[Piece]:
    if not isinstance(encoding, MuseNetEncoding):
        raise UserError("generate needs a run trained with --encoding musenet (MidiTok encodings are for comparing "
                        "bits per note)")
    vocab = encoding.vocab
    composer = cfg.composer or vocab.composers[0]
    for inst in cfg.instruments:
        vocab.inst_id(inst)  # a clear error for a name that is no instrument family
    playable = [i for i in cfg.instruments if vocab.note_base[FAMILIES.index(i)] >= 0]
    if len(playable) < len(cfg.instruments):
        unplayable = ", ".join(i for i in cfg.instruments if i not in playable)
        if cfg.strict and not playable:
            raise UserError(f"--strict: the model has no notes for {unplayable} (its corpus has "
                            f"{', '.join(vocab.families)})")
        print(f"nexttoken: warning: the model never saw {unplayable} (its corpus has {', '.join(vocab.families)}); "
              f"the request stays in the header as a suggestion", file=sys.stderr)
    events, tempo, prime_seconds = np.zeros(0, dtype=np.int64), cfg.tempo, 0.0
    if cfg.prime:
        events, tempo, prime_seconds = prime_events(cfg.prime, cfg.prime_notes, encoding, (playable or
                                                    vocab.families)[0])
    head = header(vocab, composer, cfg.instruments, tempo)
    H = len(head)
    total_q = int(round(cfg.seconds / QUANTUM))
    if total_q * QUANTUM <= prime_seconds:
        raise UserError(f"--seconds {cfg.seconds} is not longer than the prime ({prime_seconds:.1f} s)")
    budget = int(math.ceil(cfg.seconds * tokens_per_second * 1.5)) + 32  # new tokens at most

    # The static part of the mask: never a header token after the header; --strict: only the requested note-ons.
    allowed_static = torch.ones(len(vocab), dtype=torch.bool)
    allowed_static[torch.from_numpy(vocab.header_ids())] = False
    allowed_static[vocab.end] = False  # allowed only once the piece has its length
    if cfg.strict:
        keep = [FAMILIES.index(i) for i in cfg.instruments]
        other_on = vocab.is_note_on(np.arange(len(vocab))) & ~np.isin(vocab.note_family, keep)
        allowed_static[torch.from_numpy(other_on)] = False
    allowed_static = allowed_static.to(device)
    wait_value = torch.from_numpy(vocab.wait_value).to(device)
    is_off = torch.from_numpy((vocab.note_family >= 0) & (vocab.note_velocity == 0)).to(device)
    off_of = torch.from_numpy(np.maximum(vocab.note_off_of, 0)).to(device)
    # +1 for a note-on, -1 for a note-off, at the column of the note-off that ends it: sounding notes per row.
    sign = torch.from_numpy(np.where(vocab.note_off_of < 0, 0, np.where(vocab.note_velocity > 0, 1, -1))).to(device)

    def sounding(tokens: torch.Tensor) -> torch.Tensor:  # (B, t) -> (B, vocab) notes each note-off would end
        return torch.zeros(tokens.shape[0], len(vocab), dtype=torch.long, device=device).scatter_add_(
            1, off_of[tokens], sign[tokens])

    end_only = torch.zeros(len(vocab), dtype=torch.bool, device=device)
    end_only[vocab.end] = True

    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    B = cfg.n
    body = torch.from_numpy(events).to(device)[None].repeat(B, 1)  # (B, prime) every token after the header
    head_t = torch.from_numpy(head).to(device)[None].repeat(B, 1)  # (B, H)
    context = model.cfg.block_size
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    made = 0
    while made < budget and not bool(finished.all()):
        keep = min(body.shape[1], (context - H) // 2 if made else context - H - 1)
        dropped = body[:, : body.shape[1] - keep]
        offset_q = wait_value[dropped].sum(1)  # (B,) time of the dropped tokens
        sounding_before = sounding(dropped)
        prompt = torch.cat([head_t, body[:, body.shape[1] - keep :]], dim=1)  # (B, H + keep)
        steps = min(budget - made, context - prompt.shape[1])

        def allowed(tokens: torch.Tensor, offset_q=offset_q, before=sounding_before, made=made,
                    start=prompt.shape[1]) -> torch.Tensor:
            now = offset_q + wait_value[tokens[:, H:]].sum(1)  # (B,) quanta elapsed
            left_q = total_q - now
            left_tokens = budget - made - (tokens.shape[1] - start)
            mask = allowed_static & (~is_off | (before + sounding(tokens[:, H:]) > 0))  # (B, vocab)
            mask = torch.where((left_q <= 0)[:, None], end_only, mask)
            # Out of tokens: the longest wait that fits, until the length is reached.
            short = (left_tokens <= (left_q + MAX_WAIT - 1) // MAX_WAIT + 1) & (left_q > 0)
            return torch.where(short[:, None], wait_value == left_q.clamp(max=MAX_WAIT)[:, None], mask)

        logits_fn = _logits_fn(model, vocab, H, offset_q, total_q)
        out = sample(logits_fn, prompt, steps, temperature=cfg.temperature, top_p=cfg.top_p, allowed=allowed,
                     stop_tokens=[vocab.end], cache=model.new_cache(B) if use_cache else None, generator=rng)
        new = out.tokens[:, prompt.shape[1] :]
        body = torch.cat([body, new.clamp(min=0)], dim=1)
        finished |= out.finished
        made += new.shape[1]
    pieces = []
    for b in range(B):
        row = body[b].cpu().numpy()
        if (row == vocab.end).any():
            row = row[: int(np.argmax(row == vocab.end)) + 1]
        elapsed = np.cumsum(vocab.wait_value[row])
        if len(row) and elapsed[-1] > total_q:  # the last wait overshot: shorten it to land on the length
            last = int(np.argmax(elapsed >= total_q))
            row[last] = vocab.wait_base + int(vocab.wait_value[row[last]] - (elapsed[last] - total_q))
        ids = np.concatenate([head, row])
        pieces.append(Piece(ids, encoding.decode(ids), prime_seconds, bool(finished[b])))
    return pieces


def _logits_fn(model: MuseModel, vocab, H: int, offset_q: torch.Tensor, total_q: int):
    """Logits for the core sampler, with the timing inputs of MuseNet's extra embeddings computed from the tokens
    sampled so far (the time of a future token depends on the waits sampled before it)."""
    seen: list[torch.Tensor] = []

    def logits_fn(tokens: torch.Tensor, cache) -> torch.Tensor:
        if cache is None or cache.pos == 0:
            seen[:] = [tokens]
        else:
            seen.append(tokens)
        window = torch.cat(seen, dim=1) if len(seen) > 1 else seen[0]
        where = None
        if model.music is not None:
            start = window.shape[1] - tokens.shape[1]
            where = torch.stack([_where(row, vocab, H, int(off), total_q, start) for row, off in
                                 zip(window.cpu().numpy(), offset_q.tolist())]).to(tokens.device)
        logits, _ = model(tokens, where=where, cache=cache)
        return logits

    return logits_fn


def _where(row: np.ndarray, vocab, H: int, offset_q: int, total_q: int, start: int) -> torch.Tensor:
    times = token_times(row, vocab, total_quanta=total_q)
    times.quanta = times.quanta + offset_q
    positions = np.arange(start, len(row))
    return torch.from_numpy(where_of(Encoded(row, H, times), positions))
