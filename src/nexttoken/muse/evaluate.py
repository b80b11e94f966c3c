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
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from nexttoken.muse.corpus import Corpus
from nexttoken.muse.encoding import DRUMS, FAMILIES, Notes

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


# ---- the composer classifier ----------------------------------------------------------------------------------------
@dataclass
class Classifier:
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # (features, classes)
    bias: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(((x - self.mean) / self.std) @ self.weight + self.bias, axis=1)


def fit_classifier(x: np.ndarray, y: np.ndarray, classes: list[str], weight_decay: float = 1e-3,
                   steps: int = 300) -> Classifier:
    """Multinomial logistic regression with balanced class weights, fitted by L-BFGS."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y)
    counts = np.bincount(y, minlength=len(classes))
    class_weight = torch.tensor(len(y) / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, weight=class_weight) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Classifier(classes, mean, std, w.detach().numpy(), b.detach().numpy())


@dataclass
class Evaluation:
    bits_per_note: float
    bits_per_note_by_kind: dict[str, float]  # how the bits per note split over the kinds of predicted token
    masked_bits_per_note: float | None  # under the rules the sampler enforces (MuseNet encoding)
    tokens_per_note: float
    held_out_pieces: int
    classifier_classes: list[str]
    chance: float
    real_accuracy: float  # the classifier on real held-out excerpts: the ceiling for generated ones
    generated_accuracy: float  # the classifier recognises the intended composer of generated excerpts
    per_composer: list[dict]  # distances generated-vs-real and real-half-vs-real-half

    def to_dict(self) -> dict:
        return asdict(self)


def real_features(corpus: Corpus, split: str, classes: list[str], seconds: float) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in (i for i, l in enumerate(corpus.labels) if l in classes and corpus.splits[i] == split):
        for ex in excerpts(corpus.notes(p), seconds):
            xs.append(histograms(ex).vector())
            ys.append(classes.index(corpus.labels[p]))
    return np.array(xs), np.array(ys, dtype=np.int64)


def main_family(corpus: Corpus, label: str) -> str:
    fams = np.concatenate([corpus.notes(p).family for p in range(len(corpus)) if corpus.labels[p] == label])
    return FAMILIES[int(np.bincount(fams).argmax())]


def real_halves(corpus: Corpus, label: str, seconds: float) -> tuple[list[Histograms], list[Histograms]]:
    idx = sorted((i for i, l in enumerate(corpus.labels) if l == label),
                 key=lambda i: hashlib.sha1(corpus.ids[i].encode()).hexdigest())
    half = [[histograms(ex) for p in part for ex in excerpts(corpus.notes(p), seconds)]
            for part in (idx[::2], idx[1::2])]
    return half[0], half[1]


def evaluate(model, encoding, cfg, corpus: Corpus, device: torch.device, n_per_composer: int = 4,
             seconds: float = 20.0, min_pieces: int = 4, temperature: float = 1.0, top_p: float = 0.95,
             seed: int = 0) -> Evaluation:
    from nexttoken.muse.generate import GenerateConfig, generate_pieces
    from nexttoken.muse.train import score_pieces

    val = corpus.indices("val")
    encoded = [encoding.encode(corpus.notes(p), corpus.labels[p]) for p in val]
    with torch.no_grad():
        score = score_pieces(model, encoded, [corpus.n_notes(p) for p in val], cfg.context,
                             kinds=encoding.token_kinds(), allowed_next=getattr(encoding, "allowed_next", None))

    classes = [c for c in cfg.composers if len(corpus.indices("train", c)) >= min_pieces and corpus.indices("val", c)]
    real_acc = gen_acc = float("nan")
    rows = []
    if len(classes) >= 2:
        x, y = real_features(corpus, "train", classes, seconds)
        clf = fit_classifier(x, y, classes)
        xv, yv = real_features(corpus, "val", classes, seconds)
        real_acc = float((clf.predict(xv) == yv).mean()) if len(yv) else float("nan")
        hits, total = 0, 0
        for k, composer in enumerate(classes):
            gen_cfg = GenerateConfig(composer=composer, instruments=[main_family(corpus, composer)], seconds=seconds,
                                     n=n_per_composer, temperature=temperature, top_p=top_p, seed=seed + k)
            pieces = generate_pieces(model, encoding, gen_cfg, device, cfg.tokens_per_second)
            generated = [histograms(p.notes) for p in pieces if len(p.notes) >= 4]
            if generated:
                pred = clf.predict(np.stack([h.vector() for h in generated]))
                hits += int((pred == k).sum())
                total += len(generated)
            real = [histograms(ex) for p in range(len(corpus)) if corpus.labels[p] == composer
                    for ex in excerpts(corpus.notes(p), seconds)]
            a, b = real_halves(corpus, composer, seconds)
            row = {"composer": composer, "generated": len(generated)}
            if generated:
                row.update({f"gen_{k2}": v for k2, v in distances(generated, real).items()})
            if a and b:
                row.update({f"real_{k2}": v for k2, v in distances(a, b).items()})
            rows.append(row)
        gen_acc = hits / max(total, 1)
    return Evaluation(score.bits_per_note, score.by_kind, score.masked_bits_per_note, score.tokens_per_note, len(val),
                      classes,
                      1 / len(classes) if classes else float("nan"), real_acc, gen_acc, rows)
