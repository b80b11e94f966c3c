"""A multinomial logistic regression on feature vectors: the small classifier behind every fidelity measure (is this
sample recognisably the composer or artist that was asked for? does it look real or generated?).

A few lines of torch fitted by L-BFGS, with balanced class weights so a rare class counts as much as a common one; no
extra dependency for what scikit-learn's LogisticRegression would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class Classifier:
    classes: list[str]
    mean: Tensor  # (features,) of the training rows
    std: Tensor
    weight: Tensor  # (features, classes)
    bias: Tensor  # (classes,)

    def log_probs(self, x: Tensor | np.ndarray) -> Tensor:
        """(..., features) -> (..., classes) log-probabilities."""
        z = (torch.as_tensor(x, dtype=torch.float32) - self.mean) / self.std
        return (z @ self.weight + self.bias).log_softmax(-1)

    def predict(self, x: Tensor | np.ndarray) -> np.ndarray:
        """(N, features) -> (N,) the most likely class of each row, as indices into ``classes``."""
        return self.log_probs(x).argmax(-1).numpy()

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}


def fit_classifier(x: Tensor | np.ndarray, labels: Sequence, classes: Sequence[str] | None = None,
                   weight_decay: float = 1e-3, steps: int = 300) -> Classifier:
    """Fit on rows ``x`` (N, features). ``labels`` are class names, or indices into ``classes``; the classes default
    to the sorted names.

    >>> x = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]])
    >>> fit_classifier(x, ["b", "b", "a", "a"]).predict(x).tolist()
    [1, 1, 0, 0]
    """
    names = [str(label) for label in labels]
    if classes is None:
        classes = sorted(set(names))
    classes = list(classes)
    if all(isinstance(label, (int, np.integer)) for label in labels):
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    else:
        y = torch.tensor([classes.index(name) for name in names])
    x = torch.as_tensor(x, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0, correction=0) + 1e-6
    z = ((x - mean) / std).double()
    counts = torch.bincount(y, minlength=len(classes)).double()
    row_weight = (len(y) / (len(classes) * counts.clamp_min(1)))[y]
    weight = torch.zeros(z.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(z @ weight + bias, y, reduction="none")
        loss = (row_weight * nll).sum() / row_weight.sum() + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Classifier(classes, mean, std, weight.detach().float(), bias.detach().float())
