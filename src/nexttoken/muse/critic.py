"""MuseNet's inner critic: a judge of real versus generated music that picks the best of several samples.

    nexttoken muse critic RUN                        # fit it on the run's own samples; writes RUN/critic.safetensors
    nexttoken muse generate RUN --candidates 4       # sample 4x the pieces, keep the ones the critic finds most real

MuseNet drew several candidates and kept those an "inner critic", trained to tell real pieces from the model's own
samples, found most real. Here the critic reads the trained model itself, which is what makes it inner: a piece is
described by the model's final residual stream averaged over the piece's tokens, and by how surprised the model is
by them (mean, spread and quantiles of the per-token negative log-likelihood: samples tend to be too predictable,
or wander into tokens the model finds improbable). A logistic regression on these features is fitted on excerpts of
the real training pieces against samples of the same length drawn with the same settings as the ones to rank, and
scored on excerpts of the held-out pieces against fresh samples (other seeds).

Both sides go through the same path (notes -> MuseNet tokens with the composer's header), so the header and the
length carry no hint of which side a piece is from. The logistic regression is the composer classifier's
(``nexttoken.classifier``): a few lines of torch, no extra dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nexttoken.classifier import Classifier, fit_classifier
from nexttoken.config import option
from nexttoken.errors import UserError
from nexttoken.midi.corpus import Corpus
from nexttoken.midi.notes import Notes
from nexttoken.muse.data import make_row, piece_windows, stack
from nexttoken.muse.encoding import Encoded
from nexttoken.muse.evaluate import excerpts
from nexttoken.muse.generate import GenerateConfig, generate_pieces
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_json, load_tensors, save_tensors
from nexttoken.sampling import SamplingConfig

CRITIC_FILE = "critic.safetensors"
QUANTILES = (0.1, 0.5, 0.9)


@dataclass
class CriticConfig:
    """How much music the critic is fitted and tested on."""

    per_composer: int = option(16, "samples per composer to fit on (and as many fresh ones to test on)", ge=1,
                               le=1024)
    seconds: float = option(20.0, "length of the excerpts and samples", gt=0, le=600)


# ---- features: what the model itself makes of a piece -----------------------------------------------------------------
def feature_width(model) -> int:
    """How many features ``piece_features`` gives per piece."""
    return model.cfg.n_embd + 2 + len(QUANTILES)


@torch.no_grad()
def piece_features(model, encoded: list[Encoded], context: int, batch_size: int = 16,
                   progress: Progress | None = None) -> np.ndarray:
    """(pieces, n_embd + 5): the mean final residual stream over each piece's tokens after the header, then the mean,
    standard deviation and 10/50/90% quantiles of the model's per-token negative log-likelihood (nats).
    ``progress`` counts the windows."""
    windows = piece_windows(encoded, context)
    if progress is not None:
        progress.set_total(len(windows))
    rows = [make_row(encoded[k], s, context, count_header=False) for k, s in windows]  # targets: body tokens only
    owner = [k for k, _ in windows]
    device = next(model.parameters()).device
    width = model.cfg.n_embd
    hidden_sum = np.zeros((len(encoded), width))
    counts = np.zeros(len(encoded))
    nll: list[list[np.ndarray]] = [[] for _ in encoded]
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in stack(rows[i : i + batch_size], model.uses_timing).items()}
        targets = batch.pop("targets")
        hidden, loss = model.hidden_and_loss(batch.pop("idx"), targets, **batch)
        mask = targets != -1  # (B, T) positions that predict a body token
        h = (hidden.float() * mask[..., None]).sum(1).cpu().numpy()  # (B, n_embd)
        for j, k in enumerate(owner[i : i + batch_size]):
            hidden_sum[k] += h[j]
            counts[k] += float(mask[j].sum())
            nll[k].append(loss[j][mask[j]].float().cpu().numpy())
        if progress is not None:
            progress.update(len(owner[i : i + batch_size]))
    feats = []
    for k in range(len(encoded)):
        x = np.concatenate(nll[k]) if nll[k] else np.zeros(1)
        stats = [x.mean(), x.std(), *np.quantile(x, QUANTILES)]
        feats.append(np.concatenate([hidden_sum[k] / max(counts[k], 1), stats]))
    return np.array(feats, dtype=np.float64)


# ---- the critic -----------------------------------------------------------------------------------------------------------
@dataclass
class Critic:
    classifier: Classifier  # classes ["generated", "real"]
    seconds: float  # excerpt length it was fitted on
    temperature: float
    top_p: float

    def prob_real(self, features: np.ndarray) -> np.ndarray:
        return self.classifier.log_probs(features)[:, 1].exp().double().numpy()  # classes: generated, real

    def save(self, path: Path) -> None:
        save_tensors(path, self.classifier.tensors(),
                     {"seconds": self.seconds, "temperature": self.temperature, "top_p": self.top_p})

    @classmethod
    def load(cls, path: Path, width: int | None = None) -> "Critic":
        """The critic saved at ``path``; ``width``: the features its model gives (``feature_width``), checked."""
        if not path.is_file():
            raise UserError(f"{path.parent}: no critic yet; fit one with: nexttoken muse critic {path.parent}")
        tensors, meta = load_tensors(path)
        try:
            arrays = {k: tensors[k].float() for k in ("mean", "std", "weight", "bias")}
            critic = cls(Classifier(["generated", "real"], **arrays), float(meta["seconds"]),
                         float(meta["temperature"]), float(meta["top_p"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path} is damaged (no {e}); fit it again with: nexttoken muse critic "
                            f"{path.parent}") from None
        if tuple(critic.classifier.weight.shape) != (len(critic.classifier.mean), 2):
            raise UserError(f"{path} is damaged (its weights do not fit its features); fit it again with: "
                            f"nexttoken muse critic {path.parent}")
        if width is not None and len(critic.classifier.mean) != width:
            raise UserError(f"{path} reads features {len(critic.classifier.mean)} wide, and this run's model gives "
                            f"{width} (a critic of another run); fit it again with: nexttoken muse critic "
                            f"{path.parent}")
        return critic


def score_pieces_real(critic: Critic, model, encoding, notes: list[Notes], composers: list[str],
                      context: int, progress: Progress | None = None) -> np.ndarray:
    """The critic's probability that each piece is real (``progress`` counts the windows read)."""
    encoded = [encoding.encode(n, c) for n, c in zip(notes, composers)]
    return critic.prob_real(piece_features(model, encoded, context, progress=progress))


# ---- fitting ---------------------------------------------------------------------------------------------------------------
def real_excerpts(corpus: Corpus, split: str, classes: list[str], seconds: float, most: int,
                  rng: np.random.Generator) -> tuple[list[Notes], list[str]]:
    """The opening ``seconds`` of up to ``most`` pieces of ``classes`` in ``split`` (openings, as samples start at the
    beginning of a piece: where an excerpt starts must not give it away)."""
    notes, labels = [], []
    for p in (i for i, l in enumerate(corpus.labels) if l in classes and corpus.splits[i] == split):
        for ex in excerpts(corpus.notes(p), seconds, most=1):
            notes.append(ex)
            labels.append(corpus.labels[p])
    if len(notes) > most:
        keep = np.sort(rng.choice(len(notes), most, replace=False))
        notes, labels = [notes[i] for i in keep], [labels[i] for i in keep]
    return notes, labels


def sampled_excerpts(model, encoding, corpus: Corpus, classes: list[str], per_class: int, seconds: float,
                     temperature: float, top_p: float, device, tokens_per_second: float,
                     seed: int, log: Path | None = None) -> tuple[list[Notes], list[str]]:
    notes, labels = [], []
    with Progress(len(classes) * per_class, "critic: sampling", unit="piece", log=log) as bar:
        for k, composer in enumerate(classes):
            cfg = GenerateConfig(composer=composer, instruments=[corpus.main_family(composer)], seconds=seconds,
                                 n=per_class, sampling=SamplingConfig(temperature, top_p=top_p, seed=seed + k))
            for piece in generate_pieces(model, encoding, cfg, device, tokens_per_second):
                if len(piece.notes):
                    notes.append(piece.notes)
                    labels.append(composer)
            bar.update(per_class)
    return notes, labels


@dataclass
class CriticReport:
    classes: list[str]
    seconds: float
    train_real: int
    train_generated: int
    test_real: int
    test_generated: int
    accuracy_real: float  # held-out real excerpts judged real
    accuracy_generated: float  # fresh samples judged generated
    balanced_accuracy: float
    auc: float  # probability that a real excerpt scores above a generated one

    def to_dict(self) -> dict:
        return asdict(self)


def auc(real: np.ndarray, generated: np.ndarray) -> float:
    """Probability that a random real score exceeds a random generated one (ties count half)."""
    if not len(real) or not len(generated):
        return float("nan")
    diff = real[:, None] - generated[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def fit_critic(model, encoding, cfg, corpus: Corpus, device, per_class: int = 16, seconds: float = 20.0,
               temperature: float = 1.0, top_p: float = 0.95, most_real: int = 400, seed: int = 0,
               min_pieces: int = 2, progress: bool = False, log: Path | None = None) -> tuple[Critic, CriticReport]:
    """Fit the critic on real training excerpts vs the model's samples; report it on held-out excerpts vs fresh
    samples. ``progress``: the features' progress too (the sampling's always shows), on stderr and in ``log``."""
    classes = [c for c in cfg.composers if len(corpus.indices("train", c)) >= min_pieces]
    if not classes:
        raise UserError(f"the critic needs {min_pieces} or more real training pieces of at least one of the run's "
                        f"composers")
    rng = np.random.default_rng(seed)
    context = model.cfg.block_size

    def features(notes: list[Notes], labels: list[str], what: str) -> np.ndarray:
        # The model reads every excerpt, up to ``most_real`` of them, before the first sample is drawn.
        with Progress(0, f"critic: features of {len(notes)} {what}", unit="window", enabled=progress,
                      log=log) as bar:
            return piece_features(model, [encoding.encode(n, c) for n, c in zip(notes, labels)], context,
                                  progress=bar)

    def sampled(offset: int) -> np.ndarray:
        notes, labels = sampled_excerpts(model, encoding, corpus, classes, per_class, seconds, temperature, top_p,
                                         device, cfg.tokens_per_second, seed + offset, log=log)
        return features(notes, labels, "samples")

    real_train = features(*real_excerpts(corpus, "train", classes, seconds, most_real, rng), "real excerpts")
    if not len(real_train):
        raise UserError(f"no real {seconds:g}-second excerpts of 4 notes or more to fit the critic on; try a "
                        f"longer --seconds")
    gen_train = sampled(0)
    if not len(gen_train):
        why = ("greedy sampling (--temperature 0) draws the likeliest tokens, and here they hold no note; try "
               "--temperature 1" if temperature == 0 else "train the model longer or try a higher --temperature")
        raise UserError(f"none of the {len(classes) * per_class} samples drawn to fit the critic holds a note: {why}")
    x = np.concatenate([gen_train, real_train])
    y = np.concatenate([np.zeros(len(gen_train)), np.ones(len(real_train))]).astype(np.int64)
    critic = Critic(fit_classifier(x, y, ["generated", "real"], weight_decay=1e-2), seconds, temperature, top_p)

    real_test = features(*real_excerpts(corpus, "val", classes, seconds, most_real, rng), "real excerpts")
    gen_test = sampled(10_000)  # other seeds than the training samples
    p_real, p_gen = critic.prob_real(real_test), critic.prob_real(gen_test)
    acc_real = float((p_real > 0.5).mean()) if len(p_real) else float("nan")
    acc_gen = float((p_gen <= 0.5).mean()) if len(p_gen) else float("nan")
    report = CriticReport(classes, seconds, len(real_train), len(gen_train), len(real_test), len(gen_test), acc_real,
                          acc_gen, float(np.nanmean([acc_real, acc_gen])), auc(p_real, p_gen))
    return critic, report


def fit_and_save(run_dir: Path, device, jobs: int = 2, progress: bool = False, **kwargs) -> CriticReport:
    """``nexttoken muse critic``: fit, then write RUN/critic.safetensors and RUN/critic.json (``progress``: every
    part's progress on stderr and in RUN/log.txt)."""
    from nexttoken.midi.corpus import load_corpus
    from nexttoken.muse.train import load_run

    model, encoding, cfg, run = load_run(run_dir, device)
    if cfg.encoding != "musenet":
        raise UserError("the critic ranks samples, and only runs trained with --encoding musenet generate")
    corpus = load_corpus(cfg.corpus, jobs)
    critic, report = fit_critic(model, encoding, cfg, corpus, device, progress=progress,
                                log=run.log_path if progress else None, **kwargs)
    critic.save(run.path / CRITIC_FILE)
    atomic_write_json(run.path / "critic.json", report.to_dict())
    return report


def format_report(r: CriticReport) -> str:
    return (f"critic over {len(r.classes)} composers, {r.seconds:g}-second excerpts; fitted on {r.train_real} real "
            f"vs {r.train_generated} sampled\n"
            f"held out ({r.test_real} real, {r.test_generated} fresh samples): real judged real {r.accuracy_real:.2f}, "
            f"samples judged generated {r.accuracy_generated:.2f}, balanced accuracy {r.balanced_accuracy:.2f}, "
            f"AUC {r.auc:.2f}")


def keep_best(scores: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` highest scores, best first (ties: the earlier sample).

    >>> keep_best(np.array([0.2, 0.9, 0.5, 0.9]), 3)
    [1, 3, 2]
    """
    return [int(i) for i in np.argsort(-scores, kind="stable")[:n]]
