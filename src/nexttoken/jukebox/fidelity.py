"""Conditioning fidelity: does a sample sound like the artist it was asked for? A classifier trained on real clips'
features says which artist each generated clip is by; above chance means the artist token steers the music.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341, section 5) judged artist and genre conditioning by
ear; this is the measurable version (the same kind of fidelity measure as ``nexttoken muse evaluate``). Features are
the mean and standard deviation over time of each band of a 64-band log-mel spectrogram, per second of audio; the
classifier is a multinomial logistic regression with balanced class weights fitted by L-BFGS, and a clip's verdict
sums its seconds' log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nexttoken.jukebox.spectral import log_mel


def features(audio: Tensor, sample_rate: int, seconds: float = 1.0) -> Tensor:
    """(B, samples) audio -> (B, pieces, 128) features of each whole ``seconds`` of it (at least one piece)."""
    n = max(1, int(round(seconds * sample_rate)))
    pieces = max(1, audio.shape[1] // n)
    chunks = audio[:, : pieces * n].reshape(-1, n) if audio.shape[1] >= n else audio
    mel = log_mel(chunks.float(), sample_rate)  # (B * pieces, 64, frames)
    feats = torch.cat([mel.mean(-1), mel.std(-1)], dim=1)
    return feats.view(audio.shape[0], -1, feats.shape[1])


@dataclass
class Classifier:
    classes: list[str]
    mean: Tensor
    std: Tensor
    weight: Tensor  # (features, classes)
    bias: Tensor

    def log_probs(self, x: Tensor) -> Tensor:
        """(B, pieces, features) -> (B, classes): each clip's summed log-probabilities over its pieces."""
        z = (x - self.mean) / self.std
        return (z @ self.weight + self.bias).log_softmax(-1).sum(1)

    def predict(self, x: Tensor) -> list[str]:
        return [self.classes[i] for i in self.log_probs(x).argmax(-1).tolist()]


def fit_classifier(x: Tensor, labels: list[str], weight_decay: float = 1e-2, steps: int = 200) -> Classifier:
    """Multinomial logistic regression on (N, features) rows with balanced class weights (rare artists count as much
    as common ones)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(l) for l in labels])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mean) / std).double()
    counts = torch.bincount(y, minlength=len(classes)).double()
    w_row = (len(y) / (len(classes) * counts))[y]
    weight = torch.zeros(z.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(z @ weight + bias, y, reduction="none")
        loss = (w_row * nll).sum() / w_row.sum() + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Classifier(classes, mean, std, weight.detach().float(), bias.detach().float())


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
    said = classifier.predict(generated)
    hits = [s == a for s, a in zip(said, asked)]
    per = {a: sum(h for h, b in zip(hits, asked) if b == a) / asked.count(a) for a in sorted(set(asked))}
    real = classifier.predict(real_val)
    real_acc = sum(r == l for r, l in zip(real, real_labels)) / max(len(real_labels), 1)
    return Recognition(sum(hits) / max(len(hits), 1), 1 / len(classifier.classes), real_acc, per, len(hits))
