"""A character-level language model on a text Python ships (the Zen of Python): the shared fixture of the core tests."""

import ast
import codecs
import importlib.util
import math
from collections import Counter
from pathlib import Path

import torch

from nexttoken.model import GPT, GPTConfig


def _zen() -> str:
    """The text of the `this` module, read without importing it (the import prints it)."""
    source = Path(importlib.util.find_spec("this").origin).read_text()
    assign = next(n for n in ast.parse(source).body if isinstance(n, ast.Assign) and n.targets[0].id == "s")
    return codecs.decode(ast.literal_eval(assign.value), "rot13")


TEXT = _zen() * 4
CHARS = sorted(set(TEXT))
DATA = torch.tensor([CHARS.index(c) for c in TEXT])


def unigram_entropy() -> float:
    counts = Counter(TEXT)
    n = len(TEXT)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def batch_fn(block: int, batch_size: int, seed: int = 0):
    """Global batch of step s: random windows drawn from a generator seeded by (seed, s) alone."""

    def fn(step: int) -> dict:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(DATA) - block - 1, (batch_size,), generator=g)
        rows = torch.stack([DATA[s : s + block + 1] for s in starts])
        return {"idx": rows[:, :-1], "targets": rows[:, 1:]}

    return fn


def char_model(dropout: float = 0.0, seed: int = 0) -> GPT:
    """A two-layer GPT over the text's characters, initialised from ``seed``."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(CHARS), block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=dropout))


def eval_loss(model: GPT) -> dict:
    """The loss on one fixed batch of 64 windows, as an evaluation record."""
    b = batch_fn(32, 64, seed=99)(0)
    return {"val_loss": model(b["idx"], b["targets"])[1].item()}


class FakeClock:
    """A clock that only moves when a batch is built: timing tests that a loaded machine cannot fail."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def batches(self, seconds_per_step: float):
        base = batch_fn(32, 8)

        def fn(step):
            self.now += seconds_per_step
            return base(step)

        return fn
