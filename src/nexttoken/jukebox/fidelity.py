"""Conditioning fidelity: does a sample sound like the artist it was asked for? A classifier trained on real clips'
features says which artist each generated clip is by; above chance means the artist token steers the music.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341, section 5) judged artist and genre conditioning by
ear; this is the measurable version (the same kind of fidelity measure as ``nexttoken muse evaluate``). Features are
the mean and standard deviation over time of each band of a 64-band log-mel spectrogram, per second of audio; the
classifier is the core's (``nexttoken.classifier``: a balanced multinomial logistic regression), and a clip's verdict
sums its seconds' log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nexttoken.classifier import Classifier, fit_classifier
from nexttoken.jukebox.spectral import log_mel


def features(audio: Tensor, sample_rate: int, seconds: float = 1.0) -> Tensor:
    """(B, samples) audio -> (B, pieces, 128) features of each whole ``seconds`` of it (at least one piece)."""
    n = max(1, int(round(seconds * sample_rate)))
    pieces = max(1, audio.shape[1] // n)
    chunks = audio[:, : pieces * n].reshape(-1, n) if audio.shape[1] >= n else audio
    mel = log_mel(chunks.float(), sample_rate)  # (B * pieces, 64, frames)
    feats = torch.cat([mel.mean(-1), mel.std(-1)], dim=1)
    return feats.view(audio.shape[0], -1, feats.shape[1])


def fit_artist_classifier(x: Tensor, labels: list[str]) -> Classifier:
    """The core's classifier on (clips, pieces, features): each second of a clip is one row, labelled with the clip's
    artist."""
    per_second = [label for label in labels for _ in range(x.shape[1])]
    return fit_classifier(x.flatten(0, 1), per_second, weight_decay=1e-2, steps=200)


def clip_verdicts(classifier: Classifier, x: Tensor) -> list[str]:
    """(B, pieces, features) -> the artist of each clip: the class with the largest log-probability summed over its
    seconds."""
    best = classifier.log_probs(x).sum(1).argmax(-1)
    return [classifier.classes[i] for i in best.tolist()]


@dataclass
class Recognition:
    accuracy: float  # generated clips recognised as the artist they were asked for
    chance: float  # 1 / artists
    real_accuracy: float  # held-out real clips recognised (what the classifier can do at best)
    per_artist: dict[str, float]
    clips: int


def recognition(classifier: Classifier, generated: Tensor, asked: list[str], real_val: Tensor,
                real_labels: list[str]) -> Recognition:
    """How often the classifier names the asked-for artist in ``generated`` features (B, pieces, F), beside its
    accuracy on held-out real clips."""
    said = clip_verdicts(classifier, generated)
    hits = [s == a for s, a in zip(said, asked)]
    per = {a: sum(h for h, b in zip(hits, asked) if b == a) / asked.count(a) for a in sorted(set(asked))}
    real = clip_verdicts(classifier, real_val)
    real_acc = sum(r == l for r, l in zip(real, real_labels)) / max(len(real_labels), 1)
    return Recognition(sum(hits) / max(len(hits), 1), 1 / len(classifier.classes), real_acc, per, len(hits))
