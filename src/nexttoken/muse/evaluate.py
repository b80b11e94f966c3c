"""How good is a trained model: bits per note, conditioning fidelity, and how close its music is to the real thing.

    nexttoken muse evaluate RUN                      # writes RUN/evaluation.json and prints the tables

1. Bits per note on every held-out piece (vocabulary-independent, so encodings compare).
2. Conditioning fidelity: a logistic-regression classifier of the composer, trained on excerpts of the real training
   pieces, is asked to recognise the intended composer of generated excerpts; reported as accuracy against chance
   (and, as a ceiling, its accuracy on real held-out excerpts).
3. Distances between generated and real music per composer, as MusPy and mgeval measure it: total variation distance
   between pooled pitch-class, melodic-interval and inter-onset-interval histograms, and the relative difference in
   note density; next to the same distances between two halves of the real pieces (what "as close as real music is to
   itself" looks like).

The classifier and the histograms are a few lines of numpy/torch: the features are the point, not the model.
``score_pieces`` (bits per note) is also what training reports at every evaluation.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from nexttoken.classifier import fit_classifier
from nexttoken.config import option
from nexttoken.midi.corpus import Corpus
from nexttoken.midi.notes import DRUMS, Notes
from nexttoken.muse.data import make_row, piece_windows, row_positions, stack
from nexttoken.muse.encoding import Encoded, MuseNetEncoding
from nexttoken.progress import Progress
from nexttoken.sampling import SamplingConfig

IOI_EDGES = np.array([0.0, 0.03, 0.07, 0.12, 0.18, 0.26, 0.37, 0.52, 0.75, 1.05, 1.5, np.inf])  # seconds


@dataclass
class Histograms:
    pitch_class: np.ndarray  # (12,) counts of note-ons per pitch class
    interval: np.ndarray  # (25,) intervals between successive onsets of the top line, -12..+12 semitones (clipped)
    ioi: np.ndarray  # (11,) inter-onset intervals between distinct onset times
    density: float  # notes per second

    def vector(self) -> np.ndarray:
        """Normalised features for the classifier (transposition-dependent on purpose: keys are part of a style)."""
        def norm(h):
            return h / max(h.sum(), 1)

        return np.concatenate([norm(self.pitch_class), norm(self.interval), norm(self.ioi), [np.log1p(self.density)]])


def histograms(notes: Notes) -> Histograms:
    """Pitched notes only (drums have no pitch class).

    >>> n = Notes(np.array([0.0, 0.5, 1.0]), np.array([0.5, 1.0, 1.5]), np.array([60, 62, 64]), np.full(3, 80), np.zeros(3, dtype=int))
    >>> h = histograms(n); h.pitch_class[[0, 2, 4]].tolist(), float(h.interval[12 + 2]), round(float(h.density), 2)
    ([1.0, 1.0, 1.0], 2.0, 2.0)
    """
    pitched = notes.take(np.flatnonzero(notes.family != DRUMS)) if len(notes) else notes
    pc = np.bincount(pitched.pitch % 12, minlength=12).astype(float)
    rounded = np.round(pitched.start, 2)
    order = np.lexsort((pitched.pitch, rounded))  # by onset, then pitch
    onsets, last = np.unique(rounded[order][::-1], return_index=True)  # last = the highest pitch of each onset
    top = pitched.pitch[order][::-1][last]  # the top line: the highest pitch starting at each onset
    interval = np.bincount(np.clip(np.diff(top.astype(int)), -12, 12) + 12, minlength=25).astype(float)
    ioi = np.histogram(np.diff(onsets), bins=IOI_EDGES)[0].astype(float)
    seconds = max(notes.seconds - (notes.start.min() if len(notes) else 0), 1e-3)
    return Histograms(pc, interval, ioi, len(pitched) / seconds)


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two count histograms (0 identical, 1 disjoint)."""
    return 0.5 * float(np.abs(p / max(p.sum(), 1) - q / max(q.sum(), 1)).sum())


def pooled(hs: list[Histograms]) -> Histograms:
    return Histograms(sum(h.pitch_class for h in hs), sum(h.interval for h in hs), sum(h.ioi for h in hs),
                      float(np.mean([h.density for h in hs])))


def distances(a: list[Histograms], b: list[Histograms]) -> dict[str, float]:
    pa, pb = pooled(a), pooled(b)
    return {"pitch_class_tvd": tvd(pa.pitch_class, pb.pitch_class), "interval_tvd": tvd(pa.interval, pb.interval),
            "ioi_tvd": tvd(pa.ioi, pb.ioi),
            "density_rel_diff": abs(pa.density - pb.density) / max(pb.density, 1e-9)}


def excerpts(notes: Notes, seconds: float, most: int = 4) -> list[Notes]:
    """Up to ``most`` consecutive excerpts of ``seconds`` each (generated pieces and real ones compare like for like)."""
    out = []
    for k in range(most):
        sel = np.flatnonzero((notes.start >= k * seconds) & (notes.start < (k + 1) * seconds))
        if len(sel) >= 4:
            part = notes.take(sel)
            out.append(Notes(part.start - k * seconds, np.minimum(part.end - k * seconds, seconds), part.pitch,
                             part.velocity, part.family, part.tempo))
    return out


# ---- bits per note ---------------------------------------------------------------------------------------------------
@dataclass
class BitsPerNote:
    """How well a model predicts whole pieces, in bits per note (and per token, and by the kind of token)."""

    bits_per_note: float
    nats_per_token: float
    tokens_per_note: float
    notes: int
    tokens: int
    by_kind: dict[str, float] = field(default_factory=dict)  # bits per note spent on each kind of token
    masked_bits_per_note: float | None = None  # under the sampler's rules (MuseNet encoding only)


def score_pieces(model, encoded: list[Encoded], n_notes: list[int], context: int,
                 batch_size: int = 16, kinds: np.ndarray | None = None, allowed_next=None,
                 progress: Progress | None = None) -> BitsPerNote:
    """Total negative log-likelihood of whole pieces, window by window, every token after the composer once; with
    ``kinds`` (the kind of each token id), also split by the kind of the predicted token. With ``allowed_next``
    (``MuseNetEncoding.allowed_next``), ``masked_bits_per_note`` scores the model under the rules its sampler
    enforces: each prediction renormalised over the tokens those rules allow. ``progress`` counts the windows."""
    windows = piece_windows(encoded, context)
    if progress is not None:
        progress.set_total(len(windows))
    device = next(model.parameters()).device
    with_timing = model.uses_timing
    nats = masked_nats = 0.0
    names, kind_index = np.unique(kinds, return_inverse=True) if kinds is not None else ([], None)
    kind_nats = np.zeros(len(names))
    allowed_of: dict[int, np.ndarray] = {}  # the current piece's (T, vocab) rules
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        batch = {k: v.to(device) for k, v in
                 stack([make_row(encoded[k], s, context, count_header=s == 0) for k, s in chunk], with_timing).items()}
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
        if progress is not None:
            progress.update(len(chunk))
    count = sum(len(e.ids) - 1 for e in encoded)
    notes = max(sum(n_notes), 1)
    by_kind = {name: float(v / math.log(2) / notes) for name, v in zip(names, kind_nats) if v > 0}
    masked = masked_nats / math.log(2) / notes if allowed_next is not None else None
    return BitsPerNote(nats / math.log(2) / notes, nats / max(count, 1), (count + len(encoded)) / notes,
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


@dataclass
class EvaluateConfig:
    """How much music ``evaluate`` generates and compares."""

    n_per_composer: int = option(4, "pieces generated per composer", ge=1, le=256)
    seconds: float = option(20.0, "length of generated (and real) excerpts", gt=0, le=600)


@dataclass
class EvaluationReport:
    """What ``nexttoken muse evaluate`` measures. The classifier's fields are None when fewer than two composers have
    enough pieces to train it (``min_pieces`` training pieces and a held-out one)."""

    bits_per_note: float | None  # None (as the two below) when the corpus holds no held-out piece
    bits_per_note_by_kind: dict[str, float]  # how the bits per note split over the kinds of predicted token
    masked_bits_per_note: float | None  # under the rules the sampler enforces (MuseNet encoding)
    tokens_per_note: float | None
    held_out_pieces: int
    classifier_classes: list[str]
    chance: float | None
    real_accuracy: float | None  # the classifier on real held-out excerpts: the ceiling for generated ones
    generated_accuracy: float | None  # the classifier recognises the intended composer of generated excerpts
    per_composer: list[dict]  # distances generated-vs-real and real-half-vs-real-half
    min_pieces: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def real_features(corpus: Corpus, split: str, classes: list[str], seconds: float) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in (i for i, l in enumerate(corpus.labels) if l in classes and corpus.splits[i] == split):
        for ex in excerpts(corpus.notes(p), seconds):
            xs.append(histograms(ex).vector())
            ys.append(classes.index(corpus.labels[p]))
    return np.array(xs), np.array(ys, dtype=np.int64)


def real_halves(corpus: Corpus, label: str, seconds: float) -> tuple[list[Histograms], list[Histograms]]:
    idx = sorted((i for i, l in enumerate(corpus.labels) if l == label),
                 key=lambda i: hashlib.sha1(corpus.ids[i].encode()).hexdigest())
    half = [[histograms(ex) for p in part for ex in excerpts(corpus.notes(p), seconds)]
            for part in (idx[::2], idx[1::2])]
    return half[0], half[1]


def evaluate(model, encoding, cfg, corpus: Corpus, device: torch.device, n_per_composer: int = 4,
             seconds: float = 20.0, min_pieces: int = 4, sampling: SamplingConfig | None = None,
             progress: bool = False, log: Path | None = None) -> EvaluationReport:
    """Bits per note on every held-out piece, the composer classifier on real and generated excerpts, and the
    histogram distances per composer (``cfg`` is the run's ``MuseConfig``). ``progress``: each part's progress on
    stderr and in ``log``."""
    from nexttoken.muse.generate import GenerateConfig, generate_pieces

    sampling = sampling or SamplingConfig(top_p=0.95)
    val = corpus.indices("val")
    encoded = [encoding.encode(corpus.notes(p), corpus.labels[p]) for p in val]
    with torch.no_grad(), Progress(0, f"evaluate: bits per note on {len(val)} held-out pieces", unit="window",
                                   enabled=progress, log=log) as bar:
        score = score_pieces(model, encoded, [corpus.n_notes(p) for p in val], cfg.context,
                             kinds=encoding.token_kinds(), allowed_next=getattr(encoding, "allowed_next", None),
                             progress=bar)

    classes = [c for c in cfg.composers if len(corpus.indices("train", c)) >= min_pieces and corpus.indices("val", c)]
    real_acc = gen_acc = None
    rows = []
    if len(classes) >= 2:
        x, y = real_features(corpus, "train", classes, seconds)
        clf = fit_classifier(x, y, classes)
        xv, yv = real_features(corpus, "val", classes, seconds)
        real_acc = float((clf.predict(xv) == yv).mean()) if len(yv) else None
    if len(classes) >= 2 and isinstance(encoding, MuseNetEncoding):  # the MidiTok encodings are for bits per note
        hits, total = 0, 0
        with Progress(len(classes) * n_per_composer, f"evaluate: sampling {n_per_composer} excerpts per composer",
                      unit="excerpt", enabled=progress, log=log) as bar:
            for k, composer in enumerate(classes):
                gen_cfg = GenerateConfig(composer=composer, instruments=[corpus.main_family(composer)], seconds=seconds,
                                         n=n_per_composer, sampling=replace(sampling, seed=sampling.seed + k))
                pieces = generate_pieces(model, encoding, gen_cfg, device, cfg.tokens_per_second)
                bar.update(n_per_composer)
                generated = [histograms(p.notes) for p in pieces if len(p.notes) >= 4]
                if generated:
                    pred = clf.predict(np.stack([h.vector() for h in generated]))
                    hits += int((pred == k).sum())
                    total += len(generated)
                real = [histograms(ex) for p in range(len(corpus)) if corpus.labels[p] == composer
                        for ex in excerpts(corpus.notes(p), seconds)]
                a, b = real_halves(corpus, composer, seconds)
                row = {"composer": composer, "generated": len(generated)}
                if generated and real:
                    row.update({f"gen_{k2}": v for k2, v in distances(generated, real).items()})
                if a and b:
                    row.update({f"real_{k2}": v for k2, v in distances(a, b).items()})
                rows.append(row)
        gen_acc = hits / total if total else None
    if not val:
        score = replace(score, bits_per_note=None, masked_bits_per_note=None, tokens_per_note=None)
    return EvaluationReport(score.bits_per_note, score.by_kind, score.masked_bits_per_note, score.tokens_per_note,
                            len(val), classes, 1 / len(classes) if len(classes) >= 2 else None, real_acc, gen_acc,
                            rows, min_pieces)


def evaluate_run(run_dir, device: torch.device, cfg: EvaluateConfig | None = None,
                 sampling: SamplingConfig | None = None, jobs: int = 2) -> EvaluationReport:
    """``nexttoken muse evaluate``: evaluate a trained run on its own corpus; writes RUN/evaluation.json."""
    from nexttoken.midi.corpus import load_corpus
    from nexttoken.muse.train import load_run
    from nexttoken.files import atomic_write_json

    cfg = cfg or EvaluateConfig()
    model, encoding, muse_cfg, run = load_run(run_dir, device)
    corpus = load_corpus(muse_cfg.corpus, jobs)
    ev = evaluate(model, encoding, muse_cfg, corpus, device, cfg.n_per_composer, cfg.seconds, sampling=sampling,
                  progress=True, log=run.log_path)
    atomic_write_json(run.path / "evaluation.json", ev.to_dict())
    return ev


def format_report(ev: EvaluationReport) -> str:
    """The report as ``nexttoken muse evaluate`` prints it; a value that could not be measured is "-"."""
    def num(v: float | None, width: int = 0, digits: int = 2) -> str:
        return f"{'-' if v is None else f'{v:.{digits}f}':{width}}"

    masked = "" if ev.masked_bits_per_note is None else f", {ev.masked_bits_per_note:.3f} under the sampler's rules"
    if ev.bits_per_note is None:
        lines = ["bits per note: not measured; the corpus holds no held-out pieces"]
    else:
        lines = [f"bits per note on {ev.held_out_pieces} held-out piece{'s' if ev.held_out_pieces > 1 else ''}: "
                 f"{ev.bits_per_note:.3f}{masked} ({ev.tokens_per_note:.2f} tokens per note): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ev.bits_per_note_by_kind.items(),
                                                               key=lambda kv: -kv[1]))]
    if len(ev.classifier_classes) < 2:
        lines.append(f"composer classifier: not measured; it needs two composers with {ev.min_pieces} or more "
                     f"training pieces and a held-out one (this run has {len(ev.classifier_classes)})")
        return "\n".join(lines)
    lines.append(f"composer classifier over {len(ev.classifier_classes)} composers (chance {num(ev.chance)}): "
                 f"real held-out excerpts {num(ev.real_accuracy)}, generated excerpts {num(ev.generated_accuracy)}")
    if not ev.per_composer:
        lines.append("no excerpts sampled: generation needs a run trained with --encoding musenet")
        return "\n".join(lines)
    keys = ["pitch_class_tvd", "interval_tvd", "ioi_tvd", "density_rel_diff"]
    lines.append(f"{'composer':16} " + " ".join(f"{k[:-4] if k.endswith('_tvd') else 'density':^22}" for k in keys)
                 + "   (generated vs real | real half vs half)")
    for r in ev.per_composer:
        cells = [f"{num(r.get('gen_' + k), 10, 3):>10} | {num(r.get('real_' + k), 9, 3):<9}" for k in keys]
        lines.append(f"{r['composer']:16} " + " ".join(cells))
    return "\n".join(lines)
