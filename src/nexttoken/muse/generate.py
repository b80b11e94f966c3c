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
the previous one, so the composer token conditions every token, as in training. ``write_samples`` writes each piece
as MIDI, WAV (a soundfont, or the built-in synthesizer) and a piano-roll PNG, with the critic's pick of the best when
asked for several candidates.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nexttoken.config import check, option
from nexttoken.errors import UserError, warn
from nexttoken.midi.corpus import label_of
from nexttoken.midi.notes import FAMILIES, Notes, read_user_midi, write_midi
from nexttoken.muse.encoding import MAX_WAIT, QUANTUM, Encoded, MuseNetEncoding, encode_events, header, token_times
from nexttoken.muse.model import MuseModel, timing_features
from nexttoken.progress import Progress
from nexttoken.sampling import SamplingConfig, sample

# The most pieces sampled in one batch (--n x --candidates): each row holds a KV cache of the whole context.
MAX_ROWS = 1024
# Nucleus sampling (top-p 0.95) is the default of every muse command that samples.
MUSE_SAMPLING = SamplingConfig(top_p=0.95)


@dataclass
class GenerateConfig:
    """What to compose; how to draw each token is ``sampling``."""

    composer: str = option("", "a composer of the run, as `muse prepare` lists it or as the corpus names it "
                               "('J. S. Bach' is j_s_bach; default: the run's first)")
    instruments: list[str] = option(default_factory=lambda: ["piano"],
                                    help="comma-separated instrument families, e.g. piano,strings")
    strict: bool = option(False, "mask every other instrument (default: a strong suggestion)")
    prime: str | None = option(None, "start from the opening of this MIDI file")
    prime_notes: int = option(6, "notes of the prime to start from", ge=1, le=100_000)
    seconds: float = option(30.0, "length of each piece", gt=0, le=3600)
    n: int = option(4, "pieces to sample (one batch)", ge=1, le=MAX_ROWS)
    candidates: int = option(1, "sample this many times --n pieces and keep the --n the critic finds most real "
                                "(needs `nexttoken muse critic RUN` first)", ge=1, le=64)
    tempo: float = option(120.0, "the header's tempo when not priming (then the prime's own)", gt=0, le=1000)
    sampling: SamplingConfig = option(default_factory=lambda: replace(MUSE_SAMPLING), flag=False)

    def validate(self) -> "GenerateConfig":
        check(self)
        check(self.sampling)
        if self.composer:  # the corpus's labels went through label_of, so 'Bach' names the label 'bach'
            self.composer = label_of(self.composer)
        if not self.instruments:
            raise UserError("--instruments needs at least one instrument")
        for name in self.instruments:
            if name not in FAMILIES:
                raise UserError(f"unknown instrument {name!r}; choose from {', '.join(FAMILIES)}")
        if self.n * self.candidates > MAX_ROWS:
            raise UserError(f"--n {self.n} x --candidates {self.candidates} is {self.n * self.candidates} pieces in "
                            f"one batch; the most is {MAX_ROWS}")
        return self


@dataclass
class Piece:
    ids: np.ndarray  # the whole token stream, header included
    notes: Notes
    prime_seconds: float
    finished: bool  # reached ``end`` (always, unless the token budget ran out)


def prime_events(path: str, n_notes: int, encoding: MuseNetEncoding, fallback: str) -> tuple[np.ndarray, float, float]:
    """The events of ``path`` up to its ``n_notes``-th note-on, its tempo and how many seconds they span. Instruments
    the model has no tokens for are played by ``fallback``."""
    notes = read_user_midi(path)
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
                    tokens_per_second: float = 40.0, use_cache: bool = True, progress: bool = False,
                    log: Path | None = None) -> list[Piece]:
    """``cfg.n`` pieces, sampled as one batch (``use_cache=False`` recomputes every window: for tests and
    benchmarks). ``progress`` shows the seconds of music composed so far and the time left, on stderr and in
    ``log``."""
    cfg.validate()
    if not isinstance(encoding, MuseNetEncoding):
        raise UserError("generate needs a run trained with --encoding musenet (MidiTok encodings are for comparing "
                        "bits per note)")
    # A report composes several batches one after another: each line says which one it counts.
    what = (f"compose {cfg.n} piece{'s' if cfg.n > 1 else ''} of {cfg.composer or encoding.vocab.composers[0]} "
            f"for {','.join(cfg.instruments)}{', primed' if cfg.prime else ''}")
    with Progress(math.ceil(cfg.seconds), what, unit="second", enabled=progress, log=log) as bar:
        if device.type != "cpu":
            return _generate(model, encoding, cfg, device, tokens_per_second, use_cache, bar)
        # Decoding a few rows at a time is latency-bound: on a CPU one thread beats several, which spend each tiny
        # matmul waking each other (docs/muse.md).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _generate(model, encoding, cfg, device, tokens_per_second, use_cache, bar)
        finally:
            torch.set_num_threads(threads)


def _generate(model: MuseModel, encoding, cfg: GenerateConfig, device: torch.device, tokens_per_second: float,
              use_cache: bool, bar: Progress) -> list[Piece]:
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
        warn(f"the model never saw {unplayable} (its corpus has {', '.join(vocab.families)}); the request stays in "
             f"the header as a suggestion")
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

    rng = torch.Generator(device=device).manual_seed(cfg.sampling.seed)
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
            if bar.enabled:  # the slowest row's progress, in whole seconds of music
                bar.update(int(now.clamp(max=total_q).min()) // round(1 / QUANTUM) - bar.n)
            left_q = total_q - now
            left_tokens = budget - made - (tokens.shape[1] - start)
            mask = allowed_static & (~is_off | (before + sounding(tokens[:, H:]) > 0))  # (B, vocab)
            mask = torch.where((left_q <= 0)[:, None], end_only, mask)
            # Out of tokens: the longest wait that fits, until the length is reached.
            short = (left_tokens <= (left_q + MAX_WAIT - 1) // MAX_WAIT + 1) & (left_q > 0)
            return torch.where(short[:, None], wait_value == left_q.clamp(max=MAX_WAIT)[:, None], mask)

        logits_fn = _logits_fn(model, vocab, H, offset_q, total_q)
        draw = cfg.sampling
        out = sample(logits_fn, prompt, steps, temperature=draw.temperature, top_k=draw.top_k or None,
                     top_p=draw.top_p, allowed=allowed, stop_tokens=[vocab.end],
                     cache=model.new_cache(B) if use_cache else None, generator=rng)
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
        timing = None
        if model.uses_timing:
            start = window.shape[1] - tokens.shape[1]
            timing = torch.stack([_timing(row, vocab, H, int(off), total_q, start) for row, off in
                                  zip(window.cpu().numpy(), offset_q.tolist())]).to(tokens.device)
        logits, _ = model(tokens, timing=timing, cache=cache)
        return logits

    return logits_fn


def _timing(row: np.ndarray, vocab, H: int, offset_q: int, total_q: int, start: int) -> torch.Tensor:
    """(len(row) - start, 4) timing features of the row's tokens from ``start``, in a piece of ``total_q`` quanta
    whose window begins ``offset_q`` quanta in."""
    times = token_times(row, vocab, total_quanta=total_q)
    times.quanta = times.quanta + offset_q
    positions = np.arange(start, len(row))
    return torch.from_numpy(timing_features(Encoded(row, H, times), positions))


# ---- samples on disk ------------------------------------------------------------------------------------------------
def write_samples(run_dir: Path, cfg: GenerateConfig, out: Path | None, device: torch.device,
                  soundfont: str | Path | None = None, title: str = "", progress: bool = True,
                  rewrite: bool = False) -> list[dict]:
    """Generate, then write sample-NN.mid/.wav/.png and samples.json into ``out`` (default: a new
    ``RUN/samples-<time>`` folder), which must be new or empty unless ``rewrite`` (a report's own folders, always
    written with the same names); returns one record per sample. With ``cfg.candidates`` > 1, ``candidates * n``
    pieces are sampled and the critic keeps the ``n`` best. Nothing is written until every piece is ready.
    ``progress``: each part's progress on stderr and in the run's log.txt."""
    from nexttoken.midi.render import find_soundfont, render_wav
    from nexttoken.muse.critic import CRITIC_FILE, Critic, feature_width, keep_best, score_pieces_real
    from nexttoken.muse.train import check_out, load_run
    from nexttoken.files import atomic_write_json
    from nexttoken.runs import unique_dir

    cfg.validate()
    check_out(out)
    if out is not None and not rewrite and out.is_dir() and any(out.iterdir()):
        # Earlier samples would stay beside the new ones, and samples.json would list only the new.
        raise UserError(f"{out} already holds files; choose a new or empty --out")
    model, encoding, muse_cfg, run = load_run(run_dir, device)
    if cfg.composer and cfg.composer not in muse_cfg.composers:
        raise UserError(f"unknown composer {cfg.composer!r}; this run knows: {', '.join(muse_cfg.composers)}")
    critic = Critic.load(run.path / CRITIC_FILE, feature_width(model)) if cfg.candidates > 1 else None
    sf = find_soundfont(soundfont)
    composer = cfg.composer or muse_cfg.composers[0]
    t0 = time.time()
    pieces = generate_pieces(model, encoding, replace(cfg, n=cfg.n * cfg.candidates), device,
                             muse_cfg.tokens_per_second, progress=progress, log=run.log_path)
    scores = None
    if critic is not None:
        with Progress(0, f"critic: ranking {len(pieces)} candidates", unit="window", enabled=progress,
                      log=run.log_path) as bar:
            scores = score_pieces_real(critic, model, encoding, [p.notes for p in pieces], [composer] * len(pieces),
                                       muse_cfg.context, progress=bar)
        best = keep_best(scores, cfg.n)
        pieces, scores = [pieces[i] for i in best], scores[best]
    elapsed = time.time() - t0
    if out is None:
        out = unique_dir(run.path, f"samples-{time.strftime('%Y%m%d-%H%M%S')}")
    else:
        out.mkdir(parents=True, exist_ok=True)
    records = []
    # Rendering audio grows with --n and --seconds as sampling does, so it is counted too.
    with Progress(len(pieces), f"write {len(pieces)} sample{'s' if len(pieces) > 1 else ''}", unit="piece",
                  enabled=progress, log=run.log_path) as bar:
        for k, piece in enumerate(pieces):
            stem = out / f"sample-{k:02d}"
            write_midi(piece.notes, stem.with_suffix(".mid"))
            caption = title or f"{composer} / {','.join(cfg.instruments)} / sample {k}"
            piano_roll(piece.notes, stem.with_suffix(".png"), caption, piece.prime_seconds)
            render_wav(piece.notes, stem.with_suffix(".wav"), sf)
            record = {"midi": str(stem.with_suffix(".mid")), "wav": str(stem.with_suffix(".wav")),
                      "png": str(stem.with_suffix(".png")), "seconds": piece.notes.seconds,
                      "notes": len(piece.notes), "tokens": len(piece.ids), "finished": piece.finished}
            if scores is not None:
                record["critic_real"] = float(scores[k])
            records.append(record)
            bar.update(1)
    atomic_write_json(out / "samples.json", {"run": str(run_dir), "config": asdict(cfg), "candidates": cfg.candidates,
                                             "soundfont": str(sf) if sf else "built-in synthesizer",
                                             "sampling_seconds": elapsed, "samples": records})
    return records


COLORS = dict(zip(FAMILIES, ("#1f77b4", "#17becf", "#8c564b", "#ff7f0e", "#7f7f7f", "#2ca02c", "#9467bd",
                              "#d62728", "#bcbd22", "#e377c2", "#000000")))


def piano_roll(notes: Notes, path: str | Path, title: str = "", prime_seconds: float = 0.0) -> Path:
    """Notes as horizontal bars (time x pitch), one colour per instrument family; the prime is shaded."""
    from nexttoken.plots import figure, save

    fig, ax = figure(9, 3.6)
    for f in np.unique(notes.family):
        sel = notes.family == f
        ax.barh(notes.pitch[sel], notes.end[sel] - notes.start[sel], left=notes.start[sel], height=0.8,
                color=COLORS[FAMILIES[f]], label=FAMILIES[f], linewidth=0)
    if prime_seconds > 0:
        ax.axvspan(0, prime_seconds, color="#ffd54f", alpha=0.3, label="prime")
    if len(notes):
        ax.set_ylim(notes.pitch.min() - 2, notes.pitch.max() + 2)
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, fontsize=9)
    return save(fig, path)
