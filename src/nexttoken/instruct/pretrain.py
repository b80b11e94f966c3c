"""Pretrain a base language model on the generated corpus: maximise sum_i log P(u_i | u_<i) over its pages.

InstructGPT starts from GPT-3 (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155); here the base models are the
shared GPT at a few sizes, trained on the world's corpus (``corpus.py``), whose instruction lists teach the habit
InstructGPT sets out to fix: asked something, a base model continues the list.

    nexttoken instruct pretrain --size tiny --out runs/base-tiny
    nexttoken instruct pretrain --size small --tokenizer runs/base-tiny/tokenizer.json   # one vocabulary for all
    nexttoken instruct pretrain --init smollm2 --steps 20 --lr 1e-5   # or continue a real model on the corpus

Pages are joined with EOS into one token stream; each row is a window at a place drawn from the step alone, so a
resumed run sees exactly the rows of an uninterrupted one. The held-out pages' loss (nats per token) is logged; it is
the likelihood that the alignment tax is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nexttoken.config import option
from nexttoken.distributed import Dist, main_first
from nexttoken.errors import UserError
from nexttoken.instruct.corpus import make_corpus
from nexttoken.instruct.evaluate import heldout_nll
from nexttoken.instruct.policy import (POLICY_FILE, GPTPolicy, Policy, lm_loss_sum, load_policy, save_model,
                                      weights_file)
from nexttoken.instruct.stage import kept_summary
from nexttoken.instruct.tokenizer import BPETokenizer, train_tokenizer
from nexttoken.instruct.world import make_world
from nexttoken.model import GPT, GPTConfig
from nexttoken.plots import plot_metrics
from nexttoken.files import load_meta
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, fit, seed_everything

# name -> (layers, heads, width, peak LR). The first three train on a 2-core CPU in tens of minutes in all; the
# non-embedding parameters grow 0.10M, 0.34M, 0.79M (8x from tiny to medium); large and xl are a GPU's sizes.
SIZES = {
    "tiny": (2, 4, 64, 3e-3),
    "small": (3, 4, 96, 2.5e-3),
    "medium": (4, 4, 128, 2e-3),
    "large": (6, 6, 192, 1.5e-3),
    "xl": (8, 8, 384, 6e-4),
}


@dataclass
class PretrainConfig:
    size: str = option("tiny", "model size (layers x width)", choices=tuple(SIZES))
    init: str = option("", "continue pretraining this model instead (a run folder, a Hugging Face folder, a .gguf, "
                           "smollm2)")
    tokenizer: str = option("", "a tokenizer.json to use (default: train one on the corpus)")
    vocab_size: int = option(2048, "the most entries of a newly trained tokenizer", ge=260, le=65536)
    context: int = option(256, "tokens per training row (the model's context; with --init, at most the model's own)",
                          ge=16, le=8192)
    corpus_chars: int = option(3_000_000, "characters of training pages", ge=1000, le=10**9)
    heldout_pages: int = option(200, "held-out pages scored at each evaluation", ge=1)
    world_seed: int = option(0, "seed of the generated world", ge=0)
    corpus_seed: int = option(0, "seed of the corpus pages", ge=0)


def build_gpt(cfg: PretrainConfig, vocab_size: int) -> GPT:
    layers, heads, width, _ = SIZES[cfg.size]
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=cfg.context, n_layer=layers, n_head=heads, n_embd=width,
                         pos="rope", tie_embeddings=True, dropout=0.0))


def default_lr(size: str) -> float:
    return SIZES[size][3]


FIXED_BY_INIT = ("size", "vocab_size", "tokenizer")  # a model to continue brings its own


def new_run_configs(configs: dict, given: dict[str, dict]) -> dict:
    """The configs of a new pretrain run, ``given`` the flags the user set ({config name: {field: value}}): --init
    refuses the flags its model fixes, and the peak LR defaults to that of the model's size."""
    cfg = configs["pretrain"]
    fixed = [k for k in FIXED_BY_INIT if k in given.get("pretrain", {})] if cfg.init else []
    if fixed:
        raise UserError(f"--{fixed[0].replace('_', '-')} cannot go with --init: the model to continue brings its own "
                        f"size and tokenizer")
    own = init_gpt(cfg.init).get("block_size") if cfg.init else None
    if own is not None:  # rows as long as the model to continue takes, and config.json says so
        if "context" in given.get("pretrain", {}) and cfg.context > own:
            raise UserError(f"--context {cfg.context} is longer than the context of {cfg.init} ({own} tokens)")
        configs = {**configs, "pretrain": replace(cfg, context=min(cfg.context, own))}
    if "lr" in given.get("optim", {}):
        return configs
    size = init_size(cfg.init) if cfg.init else cfg.size
    if size is None:
        raise UserError(f"pretrain --init {cfg.init} needs --lr: the model is none of the sizes "
                        f"({', '.join(SIZES)}) whose peak LR is known")
    return {**configs, "optim": replace(configs["optim"], lr=default_lr(size))}


def init_gpt(source: str) -> dict:
    """The GPT settings of a model to continue that is our GPT (a run folder or policy file), else {}."""
    weights = weights_file(Path(source), POLICY_FILE)
    spec = load_meta(weights).get("spec", {}) if weights is not None else {}
    return spec.get("gpt", {}) if spec.get("type") == "gpt" else {}


def init_size(source: str) -> str | None:
    """The size whose architecture a model to continue has (a run folder or policy file of our GPT), else None."""
    gpt = init_gpt(source)
    shape = (gpt.get("n_layer"), gpt.get("n_head"), gpt.get("n_embd"))
    return next((name for name, (*arch, _) in SIZES.items() if tuple(arch) == shape), None)


def token_stream(tokenizer, pages) -> np.ndarray:
    """Every page followed by EOS, as one array of token ids."""
    ids: list[int] = []
    for page in pages:
        ids += tokenizer.encode(page, eos=True)
    return np.asarray(ids, dtype=np.int64)


class Windows:
    """``batch_fn`` of the loop: rows of ``context`` tokens (and their next tokens) from places drawn by the step."""

    def __init__(self, stream: np.ndarray, context: int, batch_size: int, seed: int) -> None:
        if len(stream) <= context + 1:
            raise UserError(f"the corpus has {len(stream)} tokens, fewer than one row of {context}; give more "
                            f"--corpus-chars or a shorter --context")
        self.stream, self.context, self.batch_size, self.seed = stream, context, batch_size, seed

    def __call__(self, step: int) -> dict:
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.stream) - self.context - 1, self.batch_size)
        rows = np.stack([self.stream[s : s + self.context + 1] for s in starts])
        rows = torch.from_numpy(rows)
        return {"ids": rows[:, :-1], "targets": rows[:, 1:]}


def base_policy(cfg: PretrainConfig, corpus, run: Run) -> Policy:
    """The model to pretrain: ``cfg.init`` loaded, or a new GPT with a tokenizer (given, saved, or trained now)."""
    if cfg.init:
        return load_policy(cfg.init)
    saved = run.path / "tokenizer.json"
    if saved.is_file():  # a resumed run keeps the vocabulary it started with
        tok = BPETokenizer.load(saved)
    elif cfg.tokenizer:
        tok = BPETokenizer.load(cfg.tokenizer)
    else:
        tok = train_tokenizer(corpus.train, cfg.vocab_size)
    if run.enabled:
        tok.save(saved)
    return GPTPolicy(build_gpt(cfg, tok.vocab_size), tok)


def pretrain(cfg: PretrainConfig, optim: OptimConfig, loop: LoopConfig, run: Run, dist: Dist, resume: bool = False,
             progress: bool = True) -> dict:
    """Train the base model of ``cfg`` into ``run``; writes RUN/policy.safetensors and returns the summary (on rank 0;
    the other processes of a torchrun return {})."""
    if (kept := kept_summary(run, resume, loop)) is not None:
        return kept
    seed_everything(loop.seed)
    corpus = make_corpus(make_world(cfg.world_seed), cfg.corpus_chars, cfg.corpus_seed)
    with main_first(dist):  # rank 0 trains the tokenizer and saves it, the others load it
        policy = base_policy(cfg, corpus, run).to(dist.device)
    stream = token_stream(policy.tokenizer, corpus.train)
    heldout = corpus.heldout[: cfg.heldout_pages]
    window = min(cfg.context, policy.context - 1)  # a model to continue may have a shorter context
    result = fit(policy, Windows(stream, window, loop.batch_size, loop.seed), optim,
                 loop, run, eval_fn=lambda m: {"heldout_nll": heldout_nll(m, heldout)}, resume=resume,
                 loss_fn=lm_loss_sum, dist=dist, progress=progress)
    if not dist.is_main:
        return {}
    save_model(policy, run.path / POLICY_FILE)
    plot_metrics(run.metrics(), ["train_loss", "heldout_nll"], run.path / "loss.png", ylabel="nats per token",
                 title=f"pretraining ({cfg.init or cfg.size})")
    n_params = sum(p.numel() for p in policy.parameters())
    summary = {
        "size": cfg.size if not cfg.init else cfg.init,
        "params": n_params,
        "non_embedding_params": policy.gpt.num_params() if isinstance(policy, GPTPolicy) else n_params,
        "vocab_size": policy.tokenizer.vocab_size,
        "corpus_tokens": int(len(stream)),
        "steps": result.steps,
        "tokens_seen": result.steps * loop.batch_size * window,
        "train_loss": result.record.get("train_loss"),
        "heldout_nll": heldout_nll(policy, heldout),
        "seconds": round(result.seconds, 1),
        "device": str(dist.device),
    }
    run.write_summary(summary)
    return summary


CONFIGS = {"pretrain": PretrainConfig, "optim": OptimConfig, "loop": LoopConfig}
DEFAULTS = {"optim": {"lr": 3e-3, "warmup_steps": 50},
            "loop": {"steps": 1000, "batch_size": 8, "eval_every": 100, "ckpt_every": 100}}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    return pretrain(c["pretrain"], c["optim"], c["loop"], run, dist, resume, progress)
